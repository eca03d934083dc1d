"""The dashboard's HTML, rendered on the server from plain string templates (no JavaScript, no
build step). Every value is escaped; recipients arrive masked."""

from __future__ import annotations

from html import escape
from typing import Any

_STYLE = """
body{font:14px system-ui,sans-serif;margin:2rem;color:#222;max-width:72rem}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:left}
.counts{display:flex;gap:1rem}.count{border:1px solid #ccc;border-radius:6px;padding:.6rem 1rem}
.count b{display:block;font-size:1.6rem}.sent{fill:#2a7}.failed{fill:#c33}.bounced{fill:#e90}
.legend span{margin-right:1rem}.msg{background:#eef;padding:.5rem 1rem;border-radius:6px}
"""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def login_page(error: str = "") -> str:
    note = f'<p class="msg" id="error">{_e(error)}</p>' if error else ""
    return page(
        "emailqueue: sign in",
        "<h1>emailqueue</h1>" + note + '<form method="post" action="login"><label>Admin token '
        '<input type="password" name="token" id="token" autocomplete="off"></label> '
        '<button type="submit" id="sign-in">Sign in</button></form>',
    )


def _counts(status: dict[str, Any]) -> str:
    cells = []
    for name, label in (
        ("queued", "queued"),
        ("started", "started"),
        ("in_packs", "in packs"),
        ("scheduled", "scheduled"),
        ("failed", "failed"),
    ):
        value = status.get(name, 0)
        cells.append(f'<div class="count" id="count-{name}"><b>{_e(value)}</b>{_e(label)}</div>')
    return '<div class="counts">' + "".join(cells) + "</div>"


def chart(hours: list[tuple[str, dict[str, int]]]) -> str:
    """Grouped bars of sent, failed and bounced per hour, as inline SVG."""
    series = ("sent", "failed", "bounced")
    peak = max([1] + [counts.get(s, 0) for _, counts in hours for s in series])
    width, height, slot = 24 * 30, 120, 30
    bars = []
    for i, (hour, counts) in enumerate(hours):
        for j, name in enumerate(series):
            value = counts.get(name, 0)
            h = round(value / peak * (height - 20))
            x, y = i * slot + j * 9 + 2, height - h
            bars.append(
                f'<rect class="{name}" x="{x}" y="{y}" width="8" height="{h}">'
                f"<title>{_e(hour)} {name}: {value}</title></rect>"
            )
    totals = {s: sum(c.get(s, 0) for _, c in hours) for s in series}
    legend = "".join(f'<span id="total-{s}">{s}: {totals[s]}</span>' for s in series)
    return (
        f'<svg id="chart" role="img" aria-label="sent, failed and bounced per hour" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">{"".join(bars)}</svg>'
        f'<p class="legend">last {len(hours)} hours: {legend}</p>'
    )


def _failures(failed: list[dict[str, Any]], csrf: str) -> str:
    if not failed:
        return '<p id="no-failures">No failed jobs.</p>'
    rows = []
    for job in failed:
        error = job.get("error") or {}
        rows.append(
            f'<tr data-job="{_e(job["id"])}"><td>{_e(job["id"])}</td>'
            f"<td>{_e(', '.join(job.get('to') or []))}</td>"
            f"<td>{_e(job.get('subject'))}</td><td>{_e(error.get('name'))}: {_e(error.get('message'))}</td>"
            f"<td>{_e(job.get('failed_at'))}</td><td>"
            f'<form method="post" action="requeue"><input type="hidden" name="csrf" value="{_e(csrf)}">'
            f'<input type="hidden" name="job_id" value="{_e(job["id"])}">'
            f'<button type="submit" class="requeue">Requeue</button></form></td></tr>'
        )
    head = "<tr><th>job</th><th>to</th><th>subject</th><th>error</th><th>failed at</th><th></th></tr>"
    return f'<table id="failures">{head}{"".join(rows)}</table>'


def _timeline(query: str, emails: list[dict[str, Any]]) -> str:
    form = (
        '<form method="get" action="."><label>Job id, Resend id or address '
        f'<input name="q" id="q" value="{_e(query)}"></label> '
        '<button type="submit" id="look-up">Look up</button></form>'
    )
    if not query:
        return form
    if not emails:
        return form + '<p id="timeline-empty">Nothing known for that (never sent, or expired).</p>'
    parts = [form]
    for email in emails:
        steps = "".join(
            f'<li class="step" data-state="{_e(s["state"])}">{_e(s["at"])} <b>{_e(s["state"])}</b>'
            + (f" ({_e(s['detail'])})" if s["detail"] else "")
            + "</li>"
            for s in email["timeline"]
        )
        parts.append(
            f'<div class="timeline" data-state="{_e(email["state"])}"><p>email {_e(email["resend_id"])} '
            f"(job {_e(email['job_id'] or '?')}) to {_e(email['to'] or '?')}: <b>{_e(email['state'])}</b></p>"
            f"<ol>{steps}</ol></div>"
        )
    return "".join(parts)


def _suppressions(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return '<p id="no-suppressions">No suppressed addresses.</p>'
    body = "".join(
        f"<tr><td>{_e(r['address'])}</td><td>{_e(r['origin'])}</td><td>{_e(r['created_at'])}</td></tr>"
        for r in rows
    )
    return f'<table id="suppressions"><tr><th>address</th><th>origin</th><th>since</th></tr>{body}</table>'


def dashboard_page(
    *,
    status: dict[str, Any],
    hours: list[tuple[str, dict[str, int]]],
    query: str,
    emails: list[dict[str, Any]],
    suppressions: list[dict[str, Any]],
    csrf: str,
    message: str = "",
) -> str:
    note = f'<p class="msg" id="message">{_e(message)}</p>' if message else ""
    body = (
        f"<h1>emailqueue: queue {_e(status['queue'])}</h1>{note}"
        f"{_counts(status)}<h2>Sent, failed and bounced by hour</h2>{chart(hours)}"
        f"<h2>Recent failures</h2>{_failures(status['recent_failed'], csrf)}"
        f"<h2>One email's timeline</h2>{_timeline(query, emails)}"
        f"<h2>Suppression list</h2>{_suppressions(suppressions)}"
    )
    return page("emailqueue dashboard", body)
