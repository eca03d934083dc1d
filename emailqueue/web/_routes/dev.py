"""``/api/dev/outbox``: the local outbox, like letter_opener or Mailpit. Dev mode only."""

from __future__ import annotations

import html

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import HTMLResponse

from emailqueue.web._deps import SettingsDep

router = APIRouter(prefix="/dev", tags=["dev"], include_in_schema=False)


def _require_dev(settings: SettingsDep) -> None:
    # Outside dev mode the page does not exist: a 404, not a 401 that would admit it does.
    if not settings.dev_mode:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="Not Found")


@router.get("/outbox", response_class=HTMLResponse)
def outbox_index(settings: SettingsDep) -> str:
    """Every email in the outbox, newest first, with links to each."""
    _require_dev(settings)
    from emailqueue._outbox import list_outbox

    entries = list_outbox(settings.emailqueue_outbox_dir)
    rows = "".join(
        f"<tr><td>{html.escape(e.written_at)}</td><td>{html.escape(', '.join(e.payload.get('to', [])))}</td>"
        f"<td><a href='/api/dev/outbox/{html.escape(e.id)}'>{html.escape(str(e.payload.get('subject', '')))}"
        "</a></td></tr>"
        for e in entries
    )
    return (
        "<!doctype html><meta charset='utf-8'><title>emailqueue outbox</title>"
        "<style>body{font:14px system-ui;margin:2em}td{padding:.3em 1em .3em 0}</style>"
        f"<h1>Outbox</h1><p>{len(entries)} email(s) in {html.escape(settings.emailqueue_outbox_dir)}/ "
        "(nothing was sent: RESEND_API_KEY is not set)</p>"
        f"<table><tr><th>written</th><th>to</th><th>subject</th></tr>{rows}</table>"
    )


@router.get("/outbox/{entry_id}", response_class=HTMLResponse)
def outbox_entry(entry_id: str, settings: SettingsDep) -> str:
    """One email, rendered."""
    _require_dev(settings)
    from emailqueue._outbox import find_entry, render_html

    entry = find_entry(entry_id, settings.emailqueue_outbox_dir)
    if entry is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such email in the outbox")
    return render_html(entry.payload)
