"""The HTTP API: the cron drain, the admin routes, the health check (and the dev outbox page).

Serve it from your Vercel project's ``api/index.py``::

    from emailqueue.web import create_app

    app = create_app()

Building the app reads no settings and opens no connection: that happens on the first request.
"""

from ._app import create_app

__all__ = ["create_app"]
