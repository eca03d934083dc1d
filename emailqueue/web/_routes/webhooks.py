"""``POST /api/webhooks/resend``: Resend's delivery events, checked against ``RESEND_WEBHOOK_SECRET``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from emailqueue.web._deps import ConnectionDep, SettingsDep
from emailqueue.web._route import EmailQueueRoute

router = APIRouter(prefix="/webhooks", tags=["webhooks"], route_class=EmailQueueRoute)


@router.post("/resend")
async def post_resend_webhook(
    request: Request, settings: SettingsDep, connection: ConnectionDep
) -> dict[str, Any]:
    """Record a signed event: 200 ``{"type", "state", "recorded"}`` (a retried event: recorded
    false); 401 for a missing or wrong signature, 400 for a body that is not an event, 503 when
    ``RESEND_WEBHOOK_SECRET`` is unset. A refused webhook changes nothing."""
    from emailqueue._webhook import handle_webhook

    body = await request.body()  # the raw bytes: the signature covers them exactly
    result = await run_in_threadpool(handle_webhook, connection, settings, body, dict(request.headers))
    return result.to_dict()
