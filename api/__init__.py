"""The HTTP API that Vercel serves: the cron drain, the admin routes and the health check.

Vercel turns every file under ``api/`` into a function except those whose path has a segment
starting with ``_`` or ``.``; so ``index.py`` is the one function and everything else is private.
"""
