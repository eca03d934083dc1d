"""Vercel's entry point: the Python runtime serves this module's top-level ASGI ``app``.

``vercel.json`` rewrites every ``/api/*`` path here, so this one function serves all routes.
The routes live in the installed package (``emailqueue.web``), so any project can serve them
with these two lines.
"""

from emailqueue.web import create_app

app = create_app()
