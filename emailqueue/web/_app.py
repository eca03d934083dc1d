"""The FastAPI app: routers, and error handlers that make every error a small JSON object.

Every error body is ``{"error": <code>, "message": <text>}``: never an HTML page or a traceback,
and never a secret (messages are scrubbed of URLs' credentials, keys and addresses).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from emailqueue import ConfigurationError, QueueError, __version__
from emailqueue.web._limits import BodyLimit
from emailqueue.web._routes import admin, cron, dev, health, home

log = logging.getLogger("emailqueue.api")

_HTTP_ERRORS = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
}


def create_app() -> FastAPI:
    """Build the app. It reads no settings and opens no connection until a request needs one."""
    app = FastAPI(title="emailqueue", version=__version__, openapi_url=None, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit)
    app.include_router(cron.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    app.include_router(dev.router)
    app.include_router(home.router)  # GET / in dev mode
    app.add_exception_handler(QueueError, _queue_error)
    app.add_exception_handler(ConfigurationError, _configuration_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
    return app


def error_response(
    status_code: int,
    error: str,
    message: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """The one shape of every error: ``{"error": code, "message": text, ...extra}``."""
    body: dict[str, Any] = {"error": error}
    if message is not None:
        body["message"] = message
    body.update(extra)
    return JSONResponse(body, status_code=status_code, headers=headers)


def scrub_text(text: str) -> str:
    from emailqueue._records import scrub_text  # imported on first error, not at cold start

    return scrub_text(text)


async def _queue_error(request: Request, exc: Exception) -> JSONResponse:
    message = scrub_text(str(exc))
    log.warning("%s %s: queue unavailable: %s", request.method, request.url.path, message)
    return error_response(status.HTTP_503_SERVICE_UNAVAILABLE, "queue_unavailable", message)


async def _configuration_error(request: Request, exc: Exception) -> JSONResponse:
    message = scrub_text(str(exc))
    log.error("%s %s: misconfigured: %s", request.method, request.url.path, message)
    return error_response(status.HTTP_503_SERVICE_UNAVAILABLE, "misconfigured", message)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error_response(
        exc.status_code, _HTTP_ERRORS.get(exc.status_code, "http_error"), str(exc.detail), headers=exc.headers
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # loc, msg and type only: pydantic's "input" would echo the request back.
    details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return error_response(
        status.HTTP_422_UNPROCESSABLE_CONTENT, "invalid_request", "the request is invalid", details=details
    )


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s: unhandled error", request.method, request.url.path, exc_info=exc)
    return error_response(status.HTTP_500_INTERNAL_SERVER_ERROR, "internal_error")
