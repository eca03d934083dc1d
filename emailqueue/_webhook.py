"""Resend's webhooks: check the Svix signature, then record the event on its email's lifecycle.

Resend signs each webhook the Svix way (docs/PLATFORM.md, "Resend: webhooks"): headers
``svix-id``, ``svix-timestamp`` (Unix seconds) and ``svix-signature`` (space-separated
``v1,<base64 HMAC-SHA256>`` entries, several during a secret rotation), over
``<svix-id>.<svix-timestamp>.<raw body>`` with the key of the ``whsec_<base64>`` secret. The check
is the ``standardwebhooks`` library's (the same scheme under ``webhook-*`` header names): every
listed signature is tried in constant time, and a timestamp more than 5 minutes off is refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from ._events import EVENT_STATES, digest, record_event
from ._exceptions import ConfigurationError, WebhookError
from ._settings import Settings
from ._suppress import add_suppression, entry, remove_local

_HEADERS = ("id", "timestamp", "signature")


def verify_webhook(body: bytes, headers: Mapping[str, str], secrets: list[str]) -> dict[str, Any]:
    """The event in ``body`` if a signature in ``headers`` matches one of ``secrets``.

    Raises:
        WebhookError: a header is missing, the timestamp is outside the tolerance, no signature
            matches (401), or the signed body is not a JSON object (400).
    """
    from standardwebhooks import Webhook, WebhookVerificationError

    lowered = {k.lower(): v for k, v in headers.items()}
    missing = [f"svix-{h}" for h in _HEADERS if not lowered.get(f"svix-{h}")]
    if missing:
        raise WebhookError(f"missing webhook header(s): {', '.join(missing)}")
    renamed = {f"webhook-{h}": lowered[f"svix-{h}"] for h in _HEADERS}
    problem = "no signature matches"
    for secret in secrets:
        try:
            Webhook(secret).verify(body, renamed, json_parse=False)
            break
        except WebhookVerificationError as exc:
            problem = str(exc)
        except ValueError:  # a malformed signature entry, or a body that is not UTF-8
            problem = "malformed svix-signature"
    else:
        raise WebhookError(f"webhook signature refused: {problem.lower()}")
    try:
        event = json.loads(body)
    except ValueError:
        event = None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        problem = "the webhook body is not a Resend event (a JSON object with a type)"
        raise WebhookError(problem, status_code=400)
    return event


def webhook_secrets(settings: Settings) -> list[str]:
    """The secrets of ``RESEND_WEBHOOK_SECRET`` (whitespace-separated, to rotate one of ours).

    Raises:
        ConfigurationError: unset: the route stays closed (503), even in development mode.
    """
    raw = settings.resend_webhook_secret.get_secret_value() if settings.resend_webhook_secret else ""
    secrets = raw.split()
    if not secrets:
        raise ConfigurationError(
            "RESEND_WEBHOOK_SECRET is not set, so the webhook route is closed; set it to the signing "
            "secret (whsec_...) Resend shows for the webhook"
        )
    return secrets


@dataclass(frozen=True)
class WebhookResult:
    """What a webhook did: the state recorded (or None: an event type not tracked), and whether it
    was a retry of one already recorded."""

    type: str
    state: str | None
    duplicate: bool = False

    def to_dict(self) -> dict[str, Any]:
        recorded = self.state is not None and not self.duplicate
        return {"type": self.type, "state": self.state, "recorded": recorded}


def _detail(state: str, data: dict[str, Any]) -> str:
    if state != "bounced":
        return ""
    raw = data.get("bounce")
    bounce: dict[str, Any] = raw if isinstance(raw, dict) else {}
    kind, sub = str(bounce.get("type") or ""), str(bounce.get("subType") or "")
    return f"{kind}/{sub}" if sub else kind


def _at(event: dict[str, Any], svix_timestamp: str) -> str:
    created = event.get("created_at")
    if isinstance(created, str):
        try:
            parsed = datetime.fromisoformat(created.replace("Z", "+00:00"))
            return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            pass
    return datetime.fromtimestamp(float(svix_timestamp), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def handle_webhook(
    conn: redis.Redis, settings: Settings, body: bytes, headers: Mapping[str, str]
) -> WebhookResult:
    """Check one Resend webhook and record its event. A refused webhook changes nothing.

    Raises:
        ConfigurationError: ``RESEND_WEBHOOK_SECRET`` is unset (answer 503).
        WebhookError: the signature or the body is wrong (answer 401 or 400).
    """
    event = verify_webhook(body, headers, webhook_secrets(settings))
    lowered = {k.lower(): v for k, v in headers.items()}
    kind = event["type"]
    state = EVENT_STATES.get(kind)
    raw = event.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    at = _at(event, lowered["svix-timestamp"])
    if kind in SUPPRESSION_EVENTS:
        return _suppression_event(conn, kind, data, at)
    email_id = data.get("email_id")
    if state is None or not isinstance(email_id, str) or not email_id:
        return WebhookResult(type=kind, state=None)
    parts = [at, lowered["svix-id"]]
    detail = _detail(state, data)
    if detail:
        parts.append(detail)
    recorded = record_event(
        conn,
        resend_id=email_id,
        state=state,
        value="|".join(parts),
        ttl=settings.email_events_ttl_s,
        now=time.time(),
        suppress=_suppresses(state, detail, data, at),
    )
    return WebhookResult(type=kind, state=state, duplicate=not recorded)


#: Resend's events about its suppression list itself (not about one email).
SUPPRESSION_EVENTS = ("suppression.added", "suppression.removed")


def _recipient(data: dict[str, Any]) -> str | None:
    to = data.get("to") if "to" in data else data.get("email")
    first = to[0] if isinstance(to, list) and to else to
    return first if isinstance(first, str) and "@" in first else None


def _suppresses(state: str, detail: str, data: dict[str, Any], at: str) -> tuple[str, str] | None:
    """A permanent bounce or a complaint puts the recipient on Resend's list: mirror it."""
    if state == "bounced" and detail.lower().startswith("permanent"):
        origin = "bounce"
    elif state == "complained":
        origin = "complaint"
    else:
        return None
    address = _recipient(data)
    return (digest(address), entry(address, origin, at)) if address else None


def _suppression_event(conn: redis.Redis, kind: str, data: dict[str, Any], at: str) -> WebhookResult:
    """``suppression.added``: mirror the entry; ``suppression.removed``: drop it. One command;
    a repeat writes the same thing again."""
    address = _recipient(data)
    if address is None:
        return WebhookResult(type=kind, state=None)
    if kind == "suppression.added":
        origin = str(data.get("origin") or "manual")
        add_suppression(conn, address, origin, str(data.get("created_at") or at), str(data.get("id") or ""))
        return WebhookResult(type=kind, state="suppressed")
    remove_local(conn, address)
    return WebhookResult(type=kind, state="unsuppressed")
