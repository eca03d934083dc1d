"""Resend's webhooks, signed the way Resend signs them (Svix), for what a fake accepted.

:func:`signed_webhook` signs any event; :func:`emit_webhooks` posts, for each accepted email,
``email.sent`` then ``email.delivered``, or ``email.bounced`` (a permanent bounce) for the
addresses in ``bounce``, and ``email.complained`` after delivery for those in ``complain``.
Use them to test your own webhook handler, or emailqueue's ``POST /api/webhooks/resend``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from ._wire import AcceptedEmail

__all__ = ["emit_webhooks", "signed_webhook", "webhook_events"]


def signed_webhook(
    secret: str, event: dict[str, Any], *, msg_id: str | None = None, timestamp: float | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and the ``svix-*`` headers of ``event`` signed with ``secret`` (``whsec_...``).

    Args:
        msg_id: the ``svix-id`` (default: a new ``msg_...``); Resend keeps it across retries.
        timestamp: Unix seconds (default: now); pass an old one to test the tolerance.
    """
    from standardwebhooks import Webhook

    body = json.dumps(event, separators=(",", ":")).encode()
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    ts = time.time() if timestamp is None else timestamp
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, UTC), body.decode())
    headers = {
        "svix-id": msg_id,
        "svix-timestamp": str(int(ts)),
        "svix-signature": signature,
        "content-type": "application/json",
    }
    return body, headers


def _event(kind: str, email: AcceptedEmail, at: float, **extra: Any) -> dict[str, Any]:
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    data: dict[str, Any] = {
        "email_id": email.id,
        "created_at": stamp,
        "from": email.payload.get("from"),
        "to": email.to,
        "subject": email.payload.get("subject"),
        **extra,
    }
    return {"type": kind, "created_at": stamp, "data": data}


def webhook_events(
    emails: Iterable[AcceptedEmail],
    *,
    bounce: Iterable[str] = (),
    complain: Iterable[str] = (),
    suppressed: Iterable[str] = (),
    now: float | None = None,
) -> list[dict[str, Any]]:
    """The events Resend would send for ``emails``, in order (one second apart per email). An
    email to an address in ``suppressed`` gets ``email.suppressed``: Resend never delivers it."""
    skipped = {a.lower() for a in suppressed}
    bounced = {a.lower() for a in bounce}
    complained = {a.lower() for a in complain}
    t = time.time() if now is None else now
    events = []
    for email in emails:
        to = {a.lower() for a in email.to}
        events.append(_event("email.sent", email, t))
        if to & skipped:
            info = {"type": "OnAccountSuppressionList", "message": "the recipient is on the suppression list"}
            events.append(_event("email.suppressed", email, t + 1, suppressed=info))
            continue
        if to & bounced:
            bounce_info = {"type": "Permanent", "subType": "General", "message": "mailbox does not exist"}
            events.append(_event("email.bounced", email, t + 1, bounce=bounce_info))
            continue
        events.append(_event("email.delivered", email, t + 1))
        if to & complained:
            events.append(_event("email.complained", email, t + 2))
    return events


def emit_webhooks(
    url: str,
    secret: str,
    emails: Sequence[AcceptedEmail],
    *,
    bounce: Iterable[str] = (),
    complain: Iterable[str] = (),
    suppressed: Iterable[str] = (),
    client: httpx.Client | None = None,
) -> list[httpx.Response]:
    """POST the signed :func:`webhook_events` of ``emails`` to ``url``; the responses, in order."""
    own = client is None
    http = client or httpx.Client(timeout=10.0)
    try:
        replies = []
        for event in webhook_events(emails, bounce=bounce, complain=complain, suppressed=suppressed):
            body, headers = signed_webhook(secret, event)
            replies.append(http.post(url, content=body, headers=headers))
        return replies
    finally:
        if own:
            http.close()
