"""The HTTP API: the cron drain, the admin routes, the health check (and the dev outbox page).

Serve it on its own from your Vercel project's ``api/index.py``::

    from emailqueue.web import create_app

    app = create_app()

or add the routes to your own FastAPI app, under a prefix of your choice::

    from emailqueue.web import create_router

    app.include_router(create_router(prefix="/api"))

Any other framework checks the cron secret with :func:`cron_authorized` and calls
``emailqueue.drain()``. Building an app or a router reads no settings and opens no connection:
that happens on the first request.
"""

from ._app import create_app
from ._auth import cron_authorized
from ._router import create_router

__all__ = ["create_app", "create_router", "cron_authorized"]
