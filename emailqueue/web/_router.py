"""The public router: emailqueue's routes, ready to include in any FastAPI app.

Its routes carry their own error handling and body cap (``EmailQueueRoute``), so including
them changes nothing about the host app's other routes, middleware or exception handlers.
"""

from __future__ import annotations

from fastapi import APIRouter

from emailqueue._exceptions import ConfigurationError

DEFAULT_PREFIX = "/api"


def create_router(prefix: str = DEFAULT_PREFIX) -> APIRouter:
    """emailqueue's HTTP routes, to include in your own FastAPI app::

        from fastapi import FastAPI
        from emailqueue.web import create_router

        app = FastAPI()
        app.include_router(create_router())  # /api/cron/..., /api/admin/..., /api/health

    Args:
        prefix: the path the routes live under (default ``/api``): ``"/jobs/email"`` gives
            ``/jobs/email/cron/process-email-queue``. Point ``crons[].path`` in vercel.json at it.

    Returns:
        An ``APIRouter`` with ``GET|POST {prefix}/cron/process-email-queue``,
        ``GET {prefix}/admin/queue-status``, ``POST {prefix}/admin/failed/requeue``,
        ``GET {prefix}/admin/emails?q=...``, the suppression routes, the HTML dashboard
        ``{prefix}/admin/dashboard/``, ``POST {prefix}/webhooks/resend`` and
        ``GET {prefix}/health``.

    Raises:
        ConfigurationError: ``prefix`` is not empty and does not start with ``/``, or ends with ``/``.
    """
    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        raise ConfigurationError(
            f"prefix {prefix!r} must start with '/' and not end with one, e.g. '/api' (or be '')"
        )
    from emailqueue.web._routes import admin, cron, dashboard, health, webhooks

    router = APIRouter(prefix=prefix)
    router.include_router(cron.router)
    router.include_router(admin.router)
    router.include_router(health.router)
    router.include_router(webhooks.router)
    router.include_router(dashboard.router)
    return router
