"""``/api/admin/dashboard/``: an HTML page of the queue, under ``QUEUE_ADMIN_TOKEN``.

A browser signs in once with the token (a form); it then holds an HttpOnly, SameSite=Strict
cookie carrying an HMAC of the token (never the token itself). ``Authorization: Bearer`` works
too. The requeue buttons are forms that carry a CSRF value derived from the token. With no
token set the page is closed (503), except in development mode, where it is open.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Annotated
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from emailqueue._exceptions import ConfigurationError
from emailqueue._settings import Settings
from emailqueue.web._auth import bearer_authorized
from emailqueue.web._deps import ConnectionDep, SettingsDep
from emailqueue.web._route import EmailQueueRoute

# Hidden from the OpenAPI schema: HTML pages, not an API (tests/test_dashboard*.py cover them).
router = APIRouter(
    prefix="/admin/dashboard", tags=["dashboard"], route_class=EmailQueueRoute, include_in_schema=False
)

COOKIE = "emailqueue_admin"
HOURS = 24


def _derived(settings: Settings, purpose: str) -> str:
    token = settings.queue_admin_token.get_secret_value().strip() if settings.queue_admin_token else ""
    return hmac.new(token.encode(), f"emailqueue-dashboard:{purpose}".encode(), hashlib.sha256).hexdigest()


def _authorized(request: Request, settings: Settings, authorization: str | None) -> bool:
    """Bearer token or the sign-in cookie. Raises ConfigurationError (503) with no token set,
    outside development mode."""
    if bearer_authorized(
        authorization, settings.queue_admin_token, "QUEUE_ADMIN_TOKEN", dev_mode=settings.dev_mode
    ):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), _derived(settings, "session").encode())


def _to_login() -> RedirectResponse:
    return RedirectResponse("login", status_code=303)


@router.get("", include_in_schema=False)
def get_dashboard_root() -> RedirectResponse:
    return RedirectResponse("dashboard/", status_code=307)


@router.get("/", response_class=HTMLResponse)
def get_dashboard(
    request: Request,
    settings: SettingsDep,
    connection: ConnectionDep,
    q: Annotated[str, Query(max_length=320)] = "",
    message: Annotated[str, Query(max_length=200)] = "",
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    """Counts, a chart of the last 24 hours, recent failures with requeue buttons, one email's
    timeline (``?q=`` job id, Resend id or address) and the suppression list; all masked."""
    if not _authorized(request, settings, authorization):
        return _to_login()
    from emailqueue._events import hourly_counts, lookup
    from emailqueue._status import queue_status
    from emailqueue._suppress import list_suppressions
    from emailqueue.web._dashboard_html import dashboard_page

    status = queue_status(connection, settings, failed_limit=20).to_dict()
    hours = hourly_counts(connection, hours=HOURS)
    _add_queue_failures(connection, settings, hours)
    emails = [life.to_dict() for life in lookup(connection, q, ttl=settings.email_events_ttl_s)] if q else []
    html = dashboard_page(
        status=status,
        hours=hours,
        query=q,
        emails=emails,
        suppressions=[s.to_dict() for s in list_suppressions(connection)],
        csrf=_derived(settings, "csrf"),
        message=message,
    )
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


def _add_queue_failures(
    connection: object, settings: Settings, hours: list[tuple[str, dict[str, int]]]
) -> None:
    """Jobs the queue failed, by hour: the failed registry scores a job with the moment it
    failed plus its failure TTL (RQ's way), so each hour is one ZCOUNT."""
    import redis

    from emailqueue._keys import QueueKeys
    from emailqueue._store import JobStore

    assert isinstance(connection, redis.Redis)
    key = QueueKeys.of(JobStore(connection, settings.email_queue_name, settings).queue).failed
    now = time.time()
    ttl = settings.email_failure_ttl_s
    starts = [now - 3600 * (HOURS - 1 - i) for i in range(HOURS)]
    with connection.pipeline(transaction=False) as pipe:
        for s in starts:
            hour = s - s % 3600
            pipe.zcount(key, hour + ttl, f"({hour + 3600 + ttl}")
        counts = pipe.execute()
    for (_, bucket), n in zip(hours, counts, strict=True):
        bucket["failed"] = bucket.get("failed", 0) + int(n)


@router.get("/login", response_class=HTMLResponse)
def get_login(settings: SettingsDep) -> HTMLResponse:
    from emailqueue.web._dashboard_html import login_page

    return HTMLResponse(login_page())


@router.post("/login", response_class=HTMLResponse)
async def post_login(request: Request, settings: SettingsDep) -> Response:
    """A form post of the admin token: a cookie and the dashboard, or the form again."""
    from emailqueue.web._dashboard_html import login_page

    if not (settings.queue_admin_token and settings.queue_admin_token.get_secret_value().strip()):
        if settings.dev_mode:
            return RedirectResponse("./", status_code=303)
        raise ConfigurationError(
            "QUEUE_ADMIN_TOKEN is not set, so the dashboard is closed; set QUEUE_ADMIN_TOKEN "
            "(for local development only, EMAILQUEUE_DEV=1 opens it)"
        )
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    given = (form.get("token") or [""])[0].strip()
    expected = settings.queue_admin_token.get_secret_value().strip()
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return HTMLResponse(login_page("Wrong token."), status_code=401)
    response = RedirectResponse("./", status_code=303)
    secure = request.url.scheme == "https"
    response.set_cookie(
        COOKIE, _derived(settings, "session"), httponly=True, samesite="strict", secure=secure, path="/"
    )
    return response


@router.post("/requeue")
async def post_requeue(
    request: Request,
    settings: SettingsDep,
    connection: ConnectionDep,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    """The requeue button of one failed job (a form with the CSRF value)."""
    if not _authorized(request, settings, authorization):
        return _to_login()
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    csrf = (form.get("csrf") or [""])[0]
    job_id = (form.get("job_id") or [""])[0]
    if not hmac.compare_digest(csrf.encode(), _derived(settings, "csrf").encode()):
        return HTMLResponse("stale form: reload the dashboard", status_code=403)
    from emailqueue import requeue_failed

    report = await run_in_threadpool(requeue_failed, connection, settings, [job_id])
    done = report.to_dict()
    if job_id in done.get("requeued", []):
        message = f"requeued {job_id}"
    elif job_id in done.get("already_delivered", []):
        message = f"{job_id} was already accepted by Resend: deleted, not sent again"
    elif job_id in done.get("needs_force", []):
        message = (
            f"{job_id} was not requeued: its outcome is unknown, Resend may have delivered it; "
            "check Resend, then requeue it with `emailqueue failed requeue --force` to send it anyway"
        )
    else:
        message = f"{job_id} is not a failed job"
    return RedirectResponse(f"./?message={quote(message)}", status_code=303)
