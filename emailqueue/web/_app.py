"""The standalone FastAPI app: emailqueue's routes under ``/api``, plus the dev outbox and landing pages.

Every error body is ``{"error": <code>, "message": <text>}`` (see ``_errors``): the routes answer
their own errors, and the app's handlers give unknown paths and methods the same shape.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from emailqueue import ConfigurationError, QueueError, __version__
from emailqueue.web._errors import handle_error
from emailqueue.web._limits import BodyLimit
from emailqueue.web._router import DEFAULT_PREFIX, create_router
from emailqueue.web._routes import dev, home


def create_app() -> FastAPI:
    """Build the app. It reads no settings and opens no connection until a request needs one."""
    app = FastAPI(title="emailqueue", version=__version__, openapi_url=None, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit)
    app.include_router(create_router(DEFAULT_PREFIX))
    app.include_router(dev.router, prefix=DEFAULT_PREFIX)
    app.include_router(home.router)  # GET /, /docs and /openapi.json, in dev mode only
    for exc_class in (QueueError, ConfigurationError, HTTPException, RequestValidationError, Exception):
        app.add_exception_handler(exc_class, handle_error)
    return app
