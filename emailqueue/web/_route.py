"""The route class of emailqueue's routes: each answers its own errors, whatever app it is in."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from emailqueue.web._errors import error_for, error_response
from emailqueue.web._limits import MAX_BODY_BYTES


class EmailQueueRoute(APIRoute):
    """A route that answers its own errors as JSON and refuses a declared body over the cap."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            declared = request.headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
                return error_response(
                    413,
                    "payload_too_large",
                    f"request bodies are capped at {MAX_BODY_BYTES} bytes",
                )
            try:
                return await handler(request)
            except Exception as exc:
                return error_for(request, exc)

        return guarded
