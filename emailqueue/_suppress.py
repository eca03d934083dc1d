"""A local mirror of Resend's suppression list, checked at enqueue.

Resend keeps one suppression list per team (docs/PLATFORM.md, "Resend: suppressions and webhooks"): it adds
an address after a hard bounce or a complaint, takes manual entries, and skips any send to a
listed address. Resend stays the source of truth; the mirror, one hash
``emailqueue:suppressed`` (address digest -> ``origin|created_at|masked address|Resend id``),
is fed by the webhooks (a permanent bounce, a complaint, ``suppression.added``,
``suppression.removed``) and by :func:`sync_suppressions` (Resend's ``GET /suppressions``).
The ENQUEUE script reads it in the enqueue's own round trip (one HMGET per call).
Removing an entry removes it from Resend first (``DELETE /suppressions/{email}``), then here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from ._constants import KEY_PREFIX, SUPPRESSED_KEY
from ._events import digest
from ._redact import mask_email, split_address
from ._resend import ResendClient, build_http_client
from ._settings import Settings

#: Origins Resend gives a suppression.
ORIGINS = ("bounce", "complaint", "manual")


@dataclass(frozen=True)
class Suppression:
    """One suppressed address, safe to show: masked."""

    address: str
    origin: str
    created_at: str
    resend_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "origin": self.origin, "created_at": self.created_at}


def entry(address: str, origin: str, created_at: str, resend_id: str = "") -> str:
    """The mirror's value of one address (masked: the mirror never holds a full address)."""
    return f"{origin}|{created_at}|{mask_email(address)}|{resend_id}"


def parse_entry(value: str) -> Suppression:
    origin, _, rest = value.partition("|")
    created_at, _, rest = rest.partition("|")
    masked, _, resend_id = rest.partition("|")
    return Suppression(address=masked, origin=origin, created_at=created_at, resend_id=resend_id)


def address_digests(addresses: list[str]) -> tuple[str, ...]:
    """The digests the ENQUEUE script looks up, one per distinct address."""
    return tuple(dict.fromkeys(digest(a) for a in addresses))


def origins_of(hits: dict[str, str], addresses: list[str]) -> dict[str, str]:
    """Masked address -> origin, for the addresses of ``addresses`` whose digest is in ``hits``."""
    return {mask_email(a): parse_entry(hits[digest(a)]).origin for a in addresses if digest(a) in hits}


def add_suppression(
    conn: redis.Redis, address: str, origin: str, created_at: str, resend_id: str = ""
) -> None:
    conn.hset(SUPPRESSED_KEY, digest(address), entry(address, origin, created_at, resend_id))


def list_suppressions(conn: redis.Redis) -> list[Suppression]:
    """Every mirrored suppression, newest first."""
    raw = conn.hgetall(SUPPRESSED_KEY)
    items = [parse_entry(v.decode() if isinstance(v, bytes) else str(v)) for v in raw.values()]
    return sorted(items, key=lambda s: s.created_at, reverse=True)


def is_suppressed(conn: redis.Redis, address: str) -> Suppression | None:
    value = conn.hget(SUPPRESSED_KEY, digest(address))
    return parse_entry(value.decode() if isinstance(value, bytes) else str(value)) if value else None


def remove_local(conn: redis.Redis, address: str) -> bool:
    return bool(conn.hdel(SUPPRESSED_KEY, digest(address)))


def replace_all(conn: redis.Redis, rows: list[dict[str, Any]]) -> int:
    """Make the mirror exactly ``rows`` (Resend's list: ``email``, ``origin``, ``created_at``,
    ``id``), atomically: written aside, then renamed over the mirror. Returns the count."""
    mapping: dict[Any, Any] = {}
    for row in rows:
        address = str(row.get("email") or "")
        if "@" not in split_address(address)[1]:
            continue
        origin = str(row.get("origin") or "manual")
        mapping[digest(address)] = entry(
            address, origin, str(row.get("created_at") or ""), str(row.get("id") or "")
        )
    staging = f"{KEY_PREFIX}suppressed-sync"
    with conn.pipeline(transaction=True) as pipe:
        pipe.delete(staging)
        if mapping:
            pipe.hset(staging, mapping=mapping)
            pipe.rename(staging, SUPPRESSED_KEY)
        else:
            pipe.delete(SUPPRESSED_KEY)
        pipe.execute()
    return len(mapping)


def _client(settings: Settings) -> ResendClient:
    http = build_http_client(
        connect_timeout=settings.resend_connect_timeout_s, read_timeout=settings.resend_timeout_s
    )
    return ResendClient(http, api_key=settings.require_api_key(), base_url=settings.resend_api_url)


def sync_suppressions(conn: redis.Redis, settings: Settings, client: ResendClient | None = None) -> int:
    """Replace the mirror with Resend's suppression list (``GET /suppressions``, every page).

    Returns:
        How many addresses are suppressed now.

    Raises:
        ConfigurationError: no ``RESEND_API_KEY``.
        SendError: Resend failed; the mirror is left as it was.
    """
    own = client is None
    resend = client or _client(settings)
    try:
        rows = resend.list_suppressions()
    finally:
        if own:
            resend.close()
    return replace_all(conn, rows)


def remove_suppression(
    conn: redis.Redis, settings: Settings, address: str, client: ResendClient | None = None
) -> bool:
    """Remove ``address`` from Resend's list (``DELETE /suppressions/{email}``), then from the
    mirror, so the two agree. Returns whether the mirror held it.

    Raises:
        ConfigurationError: no ``RESEND_API_KEY``.
        SendError: Resend failed; the mirror still holds the address.
    """
    own = client is None
    resend = client or _client(settings)
    try:
        resend.remove_suppression(split_address(address)[1])
    finally:
        if own:
            resend.close()
    return remove_local(conn, address)
