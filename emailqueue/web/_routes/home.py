"""``GET /`` in dev mode: a landing page linking the outbox, the health check and the API docs.

Outside dev mode none of these routes exist (404), as with the outbox: a deployed API shows no
index and no schema.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from emailqueue.web._deps import SettingsDep

router = APIRouter(tags=["dev"], include_in_schema=False)

_LINKS = (
    ("/api/dev/outbox", "Outbox", "the emails dev wrote instead of sending them"),
    ("/api/health", "Health", "does Redis answer?"),
    ("/docs", "API docs", "every route, interactive (OpenAPI)"),
    ("/openapi.json", "OpenAPI schema", "the same, as JSON"),
)


def _require_dev(settings: SettingsDep) -> None:
    if not settings.dev_mode:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="Not Found")


@router.get("/", response_class=HTMLResponse)
def landing(settings: SettingsDep) -> str:
    """Where to look while ``emailqueue dev`` runs."""
    _require_dev(settings)
    items = "".join(f"<li><a href='{href}'>{name}</a>: {what}</li>" for href, name, what in _LINKS)
    return (
        "<!doctype html><meta charset='utf-8'><title>emailqueue dev</title>"
        "<style>body{font:15px system-ui;margin:2em;max-width:40em}li{margin:.4em 0}</style>"
        f"<h1>emailqueue dev</h1><ul>{items}</ul>"
    )


@router.get("/openapi.json")
def openapi_schema(request: Request, settings: SettingsDep) -> JSONResponse:
    _require_dev(settings)
    return JSONResponse(request.app.openapi())


@router.get("/docs", response_class=HTMLResponse)
def docs(settings: SettingsDep) -> HTMLResponse:
    _require_dev(settings)
    return get_swagger_ui_html(openapi_url="/openapi.json", title="emailqueue API")
