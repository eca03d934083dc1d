"""``/api/cron/process-email-queue``: what Vercel Cron calls every minute."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from emailqueue.web._deps import ConnectionDep, CronAuthorized, SettingsDep
from emailqueue.web._route import EmailQueueRoute

router = APIRouter(prefix="/cron", tags=["cron"], route_class=EmailQueueRoute)


@router.get("/process-email-queue")
@router.post("/process-email-queue")
def process_email_queue(
    _auth: CronAuthorized, settings: SettingsDep, connection: ConnectionDep
) -> dict[str, Any]:
    """One bounded drain run: at most ``DRAIN_MAX_JOBS`` jobs, within the time budget.

    Vercel Cron sends a GET with ``Authorization: Bearer $CRON_SECRET``; POST is for manual runs.
    A sync route: FastAPI runs it in its threadpool, where the drain is safe (no signals).
    """
    from emailqueue import drain  # imported per use: cold starts import only what runs

    return drain(connection=connection, settings=settings).to_dict()
