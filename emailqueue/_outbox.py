"""The local outbox: in development without a Resend key, emails are written to files instead.

Each email becomes ``<dir>/<time>-<job>.json`` (the exact Resend payload and its idempotency
key) and ``.html`` (a rendered preview), like letter_opener or Mailpit. Nothing leaves the
machine, so nobody real is emailed by accident. ``GET /api/dev/outbox`` lists and shows them.
"""

from __future__ import annotations

import html
import json
import os
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._resend import BatchResult

if TYPE_CHECKING:
    from ._settings import Settings

DEFAULT_OUTBOX = Path(".emailqueue") / "outbox"

_SAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class OutboxEntry:
    """One email in the outbox."""

    id: str
    path: Path
    payload: dict[str, Any]
    idempotency_key: str
    written_at: str  #: readable, e.g. ``2026-11-29 23:45:34 UTC``


class OutboxClient:
    """Stands in for :class:`ResendClient`: same ``send`` signature, writes files instead.

    Sending twice with the same idempotency key writes the email once, as Resend would.
    """

    def __init__(self, directory: str | Path = DEFAULT_OUTBOX) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()

    def send(self, email: dict[str, Any], *, idempotency_key: str) -> str:
        email_id = "outbox_" + _SAFE.sub("_", idempotency_key)[-60:]
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            if any(self.directory.glob(f"*-{email_id}.json")):
                return email_id  # an idempotent replay: already in the outbox
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
            base = self.directory / f"{stamp}-{email_id}"
            record = {"id": email_id, "idempotency_key": idempotency_key, "written_at": stamp, "email": email}
            _write_atomic(base.with_suffix(".html"), render_html(email))
            _write_atomic(base.with_suffix(".json"), json.dumps(record, indent=2, ensure_ascii=False))
        return email_id

    def send_batch(self, emails: list[dict[str, Any]], *, idempotency_key: str) -> BatchResult:
        """Write each email of a batch, as Resend's batch endpoint would send each."""
        ids = {
            i: self.send(email, idempotency_key=f"{idempotency_key}-{i}") for i, email in enumerate(emails)
        }
        return BatchResult(ids=ids, errors={})


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def render_html(email: dict[str, Any]) -> str:
    """A standalone preview page: the headers, then the HTML body (sandboxed) or the text."""

    def addresses(value: Any) -> str:
        return ", ".join(value) if isinstance(value, list) else str(value or "")

    rows = "".join(
        f"<tr><th>{name}</th><td>{html.escape(addresses(email.get(key)))}</td></tr>"
        for name, key in [
            ("From", "from"),
            ("To", "to"),
            ("Cc", "cc"),
            ("Bcc", "bcc"),
            ("Reply-To", "reply_to"),
            ("Subject", "subject"),
        ]
        if email.get(key)
    )
    parts = []
    if email.get("html"):
        parts.append(
            "<h3>HTML part</h3>"
            f'<iframe sandbox="" srcdoc="{html.escape(str(email["html"]), quote=True)}"></iframe>'
        )
    if email.get("text") or not parts:
        parts.append(f"<h3>Text part</h3><pre>{html.escape(str(email.get('text') or '(none)'))}</pre>")
    body = "".join(parts)
    return (
        "<!doctype html><meta charset='utf-8'><title>"
        + html.escape(str(email.get("subject", "")))
        + "</title>"
        "<style>body{font:14px system-ui;margin:2em}th{text-align:left;padding-right:1em;color:#555}"
        "iframe{width:100%;height:60vh;border:1px solid #ddd}pre{white-space:pre-wrap}</style>"
        f"<table>{rows}</table><hr>{body}"
    )


def readable_stamp(stamp: str) -> str:
    """``20261129T234534678643`` (the file name's sortable stamp) -> ``2026-11-29 23:45:34 UTC``."""
    try:
        return datetime.strptime(stamp, "%Y%m%dT%H%M%S%f").strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return stamp


def list_outbox(directory: str | Path = DEFAULT_OUTBOX) -> list[OutboxEntry]:
    """Emails in the outbox, newest first."""
    entries = []
    for path in sorted(Path(directory).glob("*.json"), reverse=True):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        entries.append(
            OutboxEntry(
                id=str(record["id"]),
                path=path,
                payload=record["email"],
                idempotency_key=str(record["idempotency_key"]),
                written_at=readable_stamp(str(record["written_at"])),
            )
        )
    return entries


def find_entry(entry_id: str, directory: str | Path = DEFAULT_OUTBOX) -> OutboxEntry | None:
    """The outbox email with this id, or None."""
    return next((e for e in list_outbox(directory) if e.id == entry_id), None)


def dev_outbox(settings: Settings) -> OutboxClient | None:
    """Where mail goes when there is no Resend key in development, or None.

    In dev mode (``EMAILQUEUE_DEV``), its outbox; in any process next to a running
    ``emailqueue dev`` of this project (same Redis), dev's own outbox, as its cron route and worker
    write. Never with a key, and never in Vercel production.
    """
    from ._settings import dev_state_for

    if settings.resend_api_key is not None:
        return None
    state = dev_state_for(settings)
    if state is not None:
        return OutboxClient(state.outbox_dir)
    return OutboxClient(settings.emailqueue_outbox_dir) if settings.dev_mode else None
