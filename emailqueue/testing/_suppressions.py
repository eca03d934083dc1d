"""Resend's Suppressions API, as the fake serves it: ``GET /suppressions`` (``origin``,
``limit``, ``after``: a cursor, the last id of the previous page), ``GET`` and ``DELETE
/suppressions/{id or email}``, ``POST /suppressions`` ``{"email"}`` (a manual entry)."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote

from ._wire import Reply, error_reply, json_reply

PREFIX = "/suppressions"
ORIGINS = ("bounce", "complaint", "manual")


class SuppressionList:
    """The team's suppression list: address (lower-cased) -> its entry, in insertion order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}

    def add(self, address: str, origin: str = "manual") -> dict[str, Any]:
        if origin not in ORIGINS:
            raise ValueError(f"origin must be one of {ORIGINS}, not {origin!r}")
        with self._lock:
            key = address.strip().lower()
            row = self._entries.get(key) or {
                "object": "suppression",
                "id": str(uuid.uuid4()),
                "email": key,
                "origin": origin,
                "created_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00"),
            }
            self._entries[key] = row
            return dict(row)

    def __contains__(self, address: object) -> bool:
        with self._lock:
            return isinstance(address, str) and address.strip().lower() in self._entries

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._entries.values()]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _find(self, ref: str) -> str | None:
        ref = unquote(ref).strip().lower()
        if ref in self._entries:
            return ref
        return next((k for k, r in self._entries.items() if r["id"] == ref), None)

    def handle(self, method: str, path: str, query: str, body: bytes) -> Reply:
        """Answer one authenticated request under ``/suppressions``."""
        ref = path[len(PREFIX) :].strip("/")
        if not ref:
            if method == "GET":
                return self._list(parse_qs(query))
            if method == "POST":
                try:
                    email = json.loads(body or b"{}").get("email")
                except (ValueError, AttributeError):
                    email = None
                if not isinstance(email, str) or "@" not in email:
                    return error_reply(422, "validation_error", "`email` must be an email address.")
                row = self.add(email)
                return json_reply(201, {"object": "suppression", "id": row["id"]})
            return error_reply(405, "method_not_allowed", "Method is not allowed for the requested path.")
        with self._lock:
            key = self._find(ref)
            if key is None:
                return error_reply(404, "not_found", "Suppression not found.")
            if method == "GET":
                return json_reply(200, dict(self._entries[key]))
            if method == "DELETE":
                row = self._entries.pop(key)
                return json_reply(200, {"object": "suppression", "id": row["id"], "deleted": True})
        return error_reply(405, "method_not_allowed", "Method is not allowed for the requested path.")

    def _list(self, params: dict[str, list[str]]) -> Reply:
        origin = next(iter(params.get("origin", [])), None)
        try:
            limit = int((params.get("limit") or ["20"])[0])
        except ValueError:
            limit = -1
        if not 1 <= limit <= 100:
            return error_reply(422, "validation_error", "`limit` must be between 1 and 100.")
        after = next(iter(params.get("after", [])), None)
        with self._lock:
            rows = [dict(r) for r in self._entries.values() if origin is None or r["origin"] == origin]
        if after is not None:
            ids = [r["id"] for r in rows]
            rows = rows[ids.index(after) + 1 :] if after in ids else []
        page = rows[:limit]
        return json_reply(200, {"object": "list", "has_more": len(rows) > limit, "data": page})
