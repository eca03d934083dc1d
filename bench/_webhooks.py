"""Resend's webhooks (issue 14, target 11): Redis commands and round trips of one signed event
recorded through :func:`emailqueue._webhook.handle_webhook` (what ``POST /api/webhooks/resend``
runs), warm. Stock RQ has no equivalent, so there is no baseline; the idle cron (target 4) is
measured by its own row, unchanged by webhooks.
"""

from __future__ import annotations

import base64

from pydantic import SecretStr

from emailqueue._webhook import handle_webhook
from emailqueue.testing import signed_webhook

from ._counting import lean_client, measure
from ._env import Env, Sample, expect

SECRET = "whsec_" + base64.b64encode(b"bench-webhook-secret-0123456789ab").decode()
KINDS = ("email.sent", "email.delivered", "email.bounced", "email.complained")


def webhook_cost(env: Env) -> Sample:
    """The most commands (and round trips) any one event of :data:`KINDS` cost, and a retry's."""
    env.fresh()
    settings = env.settings().model_copy(update={"resend_webhook_secret": SecretStr(SECRET)})
    conn, trips = lean_client(env.url)
    handle_webhook(conn, settings, *signed_webhook(SECRET, _event("email.sent", "warm")))
    worst_cmds = worst_trips = 0
    for kind in KINDS:
        body, headers = signed_webhook(SECRET, _event(kind, "e-1"))
        with measure(env.observer, trips) as cost:
            result = handle_webhook(conn, settings, body, headers)
        expect(f"webhook {kind} recorded", result.duplicate, False)
        worst_cmds, worst_trips = max(worst_cmds, cost.commands), max(worst_trips, cost.round_trips)
        env.notes[f"webhook {kind}"] = {"emailqueue": cost.by_command}
    with measure(env.observer, trips) as retry:
        result = handle_webhook(conn, settings, body, headers)
    expect("webhook retry is a duplicate", result.duplicate, True)
    conn.close()
    return {
        "webhook_cmds": worst_cmds,
        "webhook_trips": worst_trips,
        "webhook_retry_cmds": retry.commands,
    }


def _event(kind: str, email_id: str) -> dict[str, object]:
    data: dict[str, object] = {"email_id": email_id, "to": ["someone@example.com"]}
    if kind == "email.bounced":
        data["bounce"] = {"type": "Permanent", "subType": "General"}
    return {"type": kind, "created_at": "2026-11-30T10:00:00.000Z", "data": data}
