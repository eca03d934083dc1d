"""Each email's life after the queue: sent (with Resend's id) and what Resend's webhooks report.

- **Sent**: the ack that settles a sent job also writes, in the same pipeline (no round trip of
  its own), the hour's sent index ``emailqueue:sent:<YYYYmmddHH>``: ``r:<resend id>`` ->
  ``<job id>|<masked recipient>|<time>``, ``j:<job id>`` and ``a:<address digest>`` -> the
  Resend id, and ``n``, the hour's count. Three commands per ack, however many emails.
- **After**: each webhook's state goes on ``emailqueue:email:<resend id>`` (a field per state:
  ``delivered``, ``delivery_delayed``, ``bounced``, ``complained``, ``failed``, ``suppressed``,
  ``sent``; value ``<time>|<svix id>[|<detail>]``, the detail being a bounce's type), and the
  hour's counters ``emailqueue:hourly`` (fields ``<YYYYmmddHH>:<state>``, pruned past 48 hours when read)
  feed the dashboard's chart.

Everything expires after ``EMAIL_EVENTS_TTL_S`` (30 days by default). No full address is stored
(an address is found by a digest), so nothing here can leak one.

A webhook event costs one EVALSHA and three or four commands inside it (:data:`RECORD_EVENT`). Each state
is recorded once: Resend retries an undelivered webhook with the same ``svix-id`` for about a
day, and a retry finds its state already recorded (HSETNX) and changes nothing.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import redis

from ._constants import KEY_PREFIX, SUPPRESSED_KEY
from ._payload import Payload
from ._redact import mask_email, split_address

#: The states a webhook can record, by Resend's event type.
EVENT_STATES: Final = {
    "email.sent": "sent",
    "email.delivered": "delivered",
    "email.delivery_delayed": "delivery_delayed",
    "email.bounced": "bounced",
    "email.complained": "complained",
    "email.failed": "failed",
    "email.suppressed": "suppressed",
}
#: The order of the states in a timeline when two share a timestamp.
_ORDER: Final = (
    "queued",
    "sent",
    "delivery_delayed",
    "delivered",
    "bounced",
    "complained",
    "failed",
    "suppressed",
)
HOURLY_TTL_S: Final = 48 * 3600

#: KEYS: the email's hash, the hourly counters, the suppression mirror. ARGV: state, value, ttl,
#: the counter's field (``<YYYYmmddHH>:<state>``), then an address digest and its mirror entry
#: (a permanent bounce or a complaint suppresses the address) or ``''``.
#: Returns 0 when the state was already recorded (a retried webhook): nothing changes.
RECORD_EVENT: Final = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('HINCRBY', KEYS[2], ARGV[4], 1)
if ARGV[5] ~= '' then redis.call('HSET', KEYS[3], ARGV[5], ARGV[6]) end
return 1
"""


def email_key(resend_id: str) -> str:
    return f"{KEY_PREFIX}email:{resend_id}"


def sent_key(t: float) -> str:
    return f"{KEY_PREFIX}sent:{datetime.fromtimestamp(t, UTC):%Y%m%d%H}"


def digest(address: str) -> str:
    """An address's index name: a digest of its lower-cased address part, never the address."""
    _, addr = split_address(address)
    return hashlib.sha256(addr.lower().encode()).hexdigest()[:32]


#: The webhook states counted by hour: one hash, fields ``<YYYYmmddHH>:<state>``. It has no TTL
#: (a TTL would cost a command per event): :func:`hourly_counts` drops hours past 48.
HOURLY_KEY: Final = KEY_PREFIX + "hourly"


def hour_of(t: float) -> str:
    return f"{datetime.fromtimestamp(t, UTC):%Y%m%d%H}"


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class SentEmail:
    """One email Resend accepted: its job, Resend's id and its (first) recipient."""

    job_id: str
    resend_id: str
    to: str


@dataclass(frozen=True)
class Step:
    """One state of an email's timeline: when, and a detail (a bounce's type)."""

    state: str
    at: str
    detail: str = ""


@dataclass
class Lifecycle:
    """What is known of one email, safe to show: masked recipient, no body."""

    resend_id: str
    job_id: str | None
    to: str | None
    steps: list[Step] = field(default_factory=list)

    @property
    def state(self) -> str:
        """The latest state reached."""
        return self.steps[-1].state if self.steps else "unknown"

    def to_dict(self) -> dict[str, Any]:
        return {
            "resend_id": self.resend_id,
            "job_id": self.job_id,
            "to": self.to,
            "state": self.state,
            "timeline": [{"state": s.state, "at": s.at, "detail": s.detail} for s in self.steps],
        }


def sent_emails(job_id: str, payload: Payload, resend_ids: dict[int, str]) -> list[SentEmail]:
    """The emails of ``payload`` Resend accepted (``resend_ids``: index -> Resend id), each under
    its own job id (a batch's recipients have one each)."""
    out = []
    for index, resend_id in sorted(resend_ids.items()):
        if index >= len(payload.emails):
            continue
        to = payload.emails[index].get("to")
        first = to[0] if isinstance(to, list) and to else to
        owner = payload.ids[index] if payload.batch and index < len(payload.ids) else job_id
        out.append(SentEmail(job_id=owner, resend_id=resend_id, to=str(first or "")))
    return out


def record_sent(pipe: Any, sent: list[SentEmail], *, ttl: int, now: float) -> None:
    """Queue on ``pipe`` the three commands that record ``sent`` in the hour's sent index: the
    caller's pipeline runs them with its own round trip (the drain's ack), so recording costs no
    round trip of its own, and three commands however many emails the ack holds."""
    if not sent:
        return
    at = _stamp(now)
    fields: dict[str, str] = {}
    for email in sent:
        fields[f"r:{email.resend_id}"] = f"{email.job_id}|{mask_email(email.to)}|{at}"
        fields[f"j:{email.job_id}"] = email.resend_id
        fields[f"a:{digest(email.to)}"] = email.resend_id
    key = sent_key(now)
    pipe.hset(key, mapping=fields)
    pipe.hincrby(key, "n", len(sent))
    pipe.expire(key, ttl)


def record_event(
    conn: redis.Redis,
    *,
    resend_id: str,
    state: str,
    value: str,
    ttl: int,
    now: float | None = None,
    suppress: tuple[str, str] | None = None,
) -> bool:
    """Record one webhook's state on its email, and with ``suppress`` (digest, entry) put an
    address on the suppression mirror: one round trip, at most five commands. False when that
    state was already recorded (a retried webhook), in which case nothing changed."""
    t = time.time() if now is None else now
    script = conn.register_script(RECORD_EVENT)
    digest_, entry = suppress or ("", "")
    keys = [email_key(resend_id), HOURLY_KEY, SUPPRESSED_KEY]
    return bool(script(keys=keys, args=[state, value, ttl, f"{hour_of(t)}:{state}", digest_, entry]))


def _parse(resend_id: str, sent: str | None, fields: dict[str, str]) -> Lifecycle:
    job_id = to = None
    steps = []
    if sent is not None:
        job_id, to, at = sent.split("|", 2)
        steps.append(Step(state="sent", at=at))
    for state in _ORDER:
        raw = fields.get(state)
        if raw is None or (state == "sent" and sent is not None):
            continue
        at, _, rest = raw.partition("|")
        _svix, _, detail = rest.partition("|")
        steps.append(Step(state=state, at=at, detail=detail))
    steps.sort(key=lambda s: (s.at, _ORDER.index(s.state)))
    return Lifecycle(resend_id=resend_id, job_id=job_id, to=to, steps=steps)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def lookup(conn: redis.Redis, query: str, *, ttl: int, now: float | None = None) -> list[Lifecycle]:
    """The lifecycles matching ``query``: an address (its emails, newest first), a job id, or a
    Resend id. Empty if nothing is known (never recorded, or expired). Reads the sent index of
    every hour of the last ``ttl`` seconds in one pipeline: a rare admin call, not a hot path."""
    t = time.time() if now is None else now
    query = query.strip()
    hours = [t - 3600 * i for i in range(ttl // 3600 + 1)]
    ids = _resend_ids(conn, query, hours)
    return _lifecycles(conn, ids, hours) if ids else []


def _resend_ids(conn: redis.Redis, query: str, hours: list[float]) -> list[str]:
    """The Resend ids ``query`` names, from the sent index of each hour in ``hours``."""
    field = f"a:{digest(query)}" if "@" in query else f"j:{query}"
    with conn.pipeline(transaction=False) as pipe:
        for h in hours:
            pipe.hmget(sent_key(h), field, f"r:{query}")
        replies = pipe.execute()
    ids: list[str] = []
    for by_index, as_id in replies:
        if by_index is not None and _text(by_index) not in ids:
            ids.append(_text(by_index))
        if as_id is not None and query not in ids:
            ids.append(query)
    if not ids and "@" not in query:
        ids = [query]  # a Resend id whose send was not recorded here: its webhooks may be
    return ids


def _lifecycles(conn: redis.Redis, ids: list[str], hours: list[float]) -> list[Lifecycle]:
    """The lifecycle of each of ``ids`` that has a sent step or an event recorded."""
    with conn.pipeline(transaction=False) as pipe:
        for rid in ids:
            pipe.hgetall(email_key(rid))
        events = pipe.execute()
        for h in hours:
            pipe.hmget(sent_key(h), *[f"r:{rid}" for rid in ids])
        sent_rows = pipe.execute()
    found: list[Lifecycle] = []
    for i, (rid, raw) in enumerate(zip(ids, events, strict=True)):
        sent = next((_text(row[i]) for row in sent_rows if row[i] is not None), None)
        if sent is None and not raw:
            continue
        found.append(_parse(rid, sent, {_text(k): _text(v) for k, v in raw.items()}))
    return found


def hourly_counts(
    conn: redis.Redis, *, hours: int = 24, now: float | None = None
) -> list[tuple[str, dict[str, int]]]:
    """(hour ``YYYY-mm-dd HH:00``, {state: count}) for the last ``hours`` hours, oldest first:
    ``sent`` from the sent index, the other states from the webhooks' counters. Counters older
    than :data:`HOURLY_TTL_S` are deleted on the way."""
    t = time.time() if now is None else now
    starts = [t - 3600 * i for i in range(hours - 1, -1, -1)]
    with conn.pipeline(transaction=False) as pipe:
        pipe.hgetall(HOURLY_KEY)
        for s in starts:
            pipe.hget(sent_key(s), "n")
        counters, *sent = pipe.execute()
    oldest = hour_of(t - HOURLY_TTL_S)
    by_hour: dict[str, dict[str, int]] = {}
    stale = []
    for k, v in counters.items():
        hour, _, state = _text(k).partition(":")
        if hour < oldest:
            stale.append(k)
        else:
            by_hour.setdefault(hour, {})[state] = int(v)
    if stale:
        conn.hdel(HOURLY_KEY, *stale)
    out = []
    for s, n in zip(starts, sent, strict=True):
        counts = {k: v for k, v in by_hour.get(hour_of(s), {}).items() if k != "sent"}
        counts["sent"] = int(n or 0)
        out.append((f"{datetime.fromtimestamp(s, UTC):%Y-%m-%d %H}:00", counts))
    return out
