"""``/api/health``: does Redis answer? Public, so it says nothing about where Redis is."""

from __future__ import annotations

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse

from emailqueue.web._deps import ConnectionDep
from emailqueue.web._route import EmailQueueRoute

router = APIRouter(tags=["health"], route_class=EmailQueueRoute)


@router.get("/health")
def get_health(connection: ConnectionDep) -> JSONResponse:
    """200 ``{"ok": true, "redis": {"ok", "latency_ms", "error"}}``, or 503 when Redis is down."""
    from emailqueue import health

    result = health(connection)
    code = status.HTTP_200_OK if result.ok else status.HTTP_503_SERVICE_UNAVAILABLE
    return JSONResponse({"ok": result.ok, "redis": result.to_dict()}, status_code=code)
