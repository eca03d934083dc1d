"""Every error of emailqueue's routes is a small JSON object: ``{"error": code, "message": text}``.

Never an HTML page or a traceback, and never a secret (messages are scrubbed of URLs'
credentials, keys and addresses). :func:`error_for` maps an exception to that reply; the app's
exception handlers and the public router's route class both use it, so the routes answer the
same whether they run in :func:`create_app` or inside someone else's app.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from emailqueue._exceptions import ConfigurationError, QueueError, WebhookError

log = logging.getLogger("emailqueue.api")

_HTTP_ERRORS = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


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


def error_for(request: Request, exc: Exception) -> JSONResponse:
    """The JSON reply to ``exc`` raised while serving ``request`` (500 for anything unexpected)."""
    where = f"{request.method} {request.url.path}"
    if isinstance(exc, QueueError):
        message = scrub_text(str(exc))
        log.warning("%s: queue unavailable: %s", where, message)
        return error_response(status.HTTP_503_SERVICE_UNAVAILABLE, "queue_unavailable", message)
    if isinstance(exc, ConfigurationError):
        message = scrub_text(str(exc))
        log.error("%s: misconfigured: %s", where, message)
        return error_response(status.HTTP_503_SERVICE_UNAVAILABLE, "misconfigured", message)
    if isinstance(exc, WebhookError):
        log.warning("%s: webhook refused: %s", where, exc)
        return error_response(exc.status_code, "invalid_webhook", str(exc))
    if isinstance(exc, HTTPException):
        return error_response(
            exc.status_code,
            _HTTP_ERRORS.get(exc.status_code, "http_error"),
            str(exc.detail),
            headers=exc.headers,
        )
    if isinstance(exc, RequestValidationError):
        # loc, msg and type only: pydantic's "input" would echo the request back.
        details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        code = status.HTTP_422_UNPROCESSABLE_CONTENT
        return error_response(code, "invalid_request", "the request is invalid", details=details)
    log.error("%s: unhandled error", where, exc_info=exc)
    return error_response(status.HTTP_500_INTERNAL_SERVER_ERROR, "internal_error")


async def handle_error(request: Request, exc: Exception) -> JSONResponse:
    """An app-level exception handler (``app.add_exception_handler``) built on :func:`error_for`."""
    return error_for(request, exc)
