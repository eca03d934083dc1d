"""The ``emailqueue`` command line (also ``python -m emailqueue``).

Every command resolves its settings the same way (:func:`emailqueue.load_settings`: the
environment, ``.env``, then a running ``emailqueue dev`` of this project). Errors are one clear
line on stderr and exit code 1 (``--debug`` shows the traceback); a Redis that cannot be used
gets the connection checker's diagnosis, with its fix.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import IO, Any

from ._exceptions import EmailQueueError

WORKER_HELP = "rq worker --with-scheduler --serializer json --url $QUEUE_REDIS_URL <queue>"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emailqueue", description="Reliable email through a Redis queue.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run the API and a worker together (embedded Redis, local outbox)")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument(
        "--reload",
        action="store_true",
        help="restart the API when emailqueue's own code changes (contributors)",
    )
    dev.add_argument("--no-reload", action="store_true", help=argparse.SUPPRESS)  # the default now

    worker = sub.add_parser("worker", help=f"run a VM worker: {WORKER_HELP}")
    worker.add_argument("--burst", action="store_true", help="stop when the queue is empty")

    check = sub.add_parser(
        "check", help="diagnose the Redis URL and the Resend key (check --help)", add_help=False
    )
    check.add_argument("rest", nargs=argparse.REMAINDER)

    drain = sub.add_parser("drain", help="deliver a bounded batch now, as the cron route does")
    drain.add_argument("--max-jobs", type=int, default=None)
    drain.add_argument("--time-budget", type=float, default=None, help="seconds")
    drain.add_argument("--json", action="store_true")

    status = sub.add_parser(
        "status", help="queue counts, workers and recent failures; or one email's lifecycle"
    )
    status.add_argument(
        "query",
        nargs="?",
        default=None,
        help="a job id, a Resend email id or an address: its emails' lifecycle",
    )
    status.add_argument("--json", action="store_true")
    status.add_argument("--limit", type=int, default=10, help="failed jobs to show")

    failed = sub.add_parser("failed", help="list or requeue failed jobs")
    failed_sub = failed.add_subparsers(dest="failed_command", required=True)
    failed_list = failed_sub.add_parser("list")
    failed_list.add_argument("--limit", type=int, default=20)
    failed_list.add_argument("--json", action="store_true")
    requeue = failed_sub.add_parser("requeue", help="requeue failed jobs (they keep their idempotency keys)")
    requeue.add_argument("ids", nargs="*")
    requeue.add_argument("--all", action="store_true")
    requeue.add_argument(
        "--force",
        action="store_true",
        help="requeue outcome_unknown jobs too (Resend may have delivered them: they may be sent twice)",
    )
    requeue.add_argument("--json", action="store_true")

    suppressions = sub.add_parser("suppressions", help="the suppression list mirrored from Resend")
    supp_sub = suppressions.add_subparsers(dest="suppressions_command", required=True)
    supp_list = supp_sub.add_parser("list", help="the mirrored list (masked addresses)")
    supp_list.add_argument("--json", action="store_true")
    supp_sub.add_parser("sync", help="replace the mirror with Resend's list (GET /suppressions)")
    supp_remove = supp_sub.add_parser("remove", help="remove an address from Resend's list, then the mirror")
    supp_remove.add_argument("address")

    send = sub.add_parser("send", help="queue a test email")
    send.add_argument("--to", action="append", required=True)
    send.add_argument("--subject", required=True)
    body = send.add_mutually_exclusive_group(required=True)
    body.add_argument("--text")
    body.add_argument("--html")
    send.add_argument("--from", dest="from_")
    return parser


def _print_json(data: Any, out: IO[str]) -> None:
    out.write(json.dumps(data, indent=2, default=str) + "\n")


def _progress(out: IO[str], total: int) -> Any:
    def draw(report: Any) -> None:
        done = min(report.processed, total)
        filled = int(30 * done / max(total, 1))
        out.write(
            f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total}  sent {report.sent}  "
            f"retrying {report.retrying}  failed {report.failed}"
        )
        out.flush()

    return draw


def _cmd_drain(args: argparse.Namespace, out: IO[str]) -> int:
    from ._drain import drain

    conn, settings = _connection_and_settings(
        "drain"
    )  # the URL is checked before the key  # the URL is checked before the key
    total = args.max_jobs or settings.drain_max_jobs
    interactive = out.isatty() and not args.json
    report = drain(
        max_jobs=args.max_jobs,
        time_budget=args.time_budget,
        connection=conn,
        settings=settings,
        client=_dev_outbox(settings),
        on_progress=_progress(out, total) if interactive else None,
    )
    if interactive:
        out.write("\n")
    if args.json:
        _print_json(report.to_dict(), out)
    else:
        out.write(
            f"processed {report.processed}: sent {report.sent}, retrying {report.retrying}, "
            f"failed {report.failed}; {report.remaining} still queued (stopped: {report.stopped}, "
            f"{report.duration_ms} ms)\n"
        )
    return 0


def _dev_outbox(settings: Any) -> Any:
    """Next to ``emailqueue dev`` and without a key, the outbox dev's own cron route writes to."""
    from ._outbox import dev_outbox

    return dev_outbox(settings)


def _connection_and_settings(action: str, *, check: bool = True) -> tuple[Any, Any]:
    """The settings, and a connection to their Redis; with ``check``, one PING first, so a Redis
    that cannot be used is reported (with the checker's diagnosis) before anything else."""
    from ._connection import connect_from, ensure_reachable
    from ._settings import load_settings

    settings = load_settings()
    conn = connect_from(settings)
    if check:
        ensure_reachable(conn, action)
    return conn, settings


def _cmd_status(args: argparse.Namespace, out: IO[str]) -> int:
    from ._status import queue_status

    conn, settings = _connection_and_settings("queue status")
    if args.query is not None:
        return _write_lifecycles(conn, args.query, args.json, out, ttl=settings.email_events_ttl_s)
    status = queue_status(conn, settings, failed_limit=args.limit).to_dict()
    if args.json:
        _print_json(status, out)
        return 0
    age = status.get("oldest_queued_age_s")
    out.write(
        f"queue {settings.email_queue_name}: {status['queued']} queued, {status['started']} in progress, "
        f"{status['scheduled']} waiting to retry, {status['failed']} failed"
        + (f", {status['in_packs']} in {status['packs']} pack(s)" if status.get("packs") else "")
        + (f"; oldest queued {age:.0f}s ago" if age is not None else "")
        + "\n"
    )
    out.write(f"workers: {len(status.get('workers', []))}\n")
    if status.get("orphans_removed") or status.get("orphans_requeued"):
        out.write(
            f"orphan job hashes swept (no registry, no TTL): {status['orphans_removed']} deleted, "
            f"{status['orphans_requeued']} requeued\n"
        )
    _write_failed(status.get("recent_failed", []), out)
    return 0


def _write_lifecycles(conn: Any, query: str, as_json: bool, out: IO[str], *, ttl: int) -> int:
    from ._events import lookup
    from ._redact import mask_email

    lives = [life.to_dict() for life in lookup(conn, query, ttl=ttl)]
    if as_json:
        _print_json({"emails": lives}, out)
    shown = mask_email(query) if "@" in query else query
    if not lives:
        if not as_json:
            out.write(f"no email known for {shown} (never sent, or its record expired)\n")
        return 1
    if as_json:
        return 0
    for life in lives:
        job, to = life["job_id"] or "?", life["to"] or "?"
        out.write(f"email {life['resend_id']} (job {job}) to {to}: {life['state']}\n")
        for step in life["timeline"]:
            detail = f" ({step['detail']})" if step["detail"] else ""
            out.write(f"  {step['at']}  {step['state']}{detail}\n")
    return 0


def _write_failed(failed: list[dict[str, Any]], out: IO[str]) -> None:
    for job in failed:
        error = job.get("error") or {}
        out.write(
            f"  {job['id']}  to {', '.join(job.get('to', []))}  {job.get('subject', '')!r}  "
            f"{error.get('name', '?')}: {error.get('message', '')}  (attempts {job.get('attempts')})\n"
        )


def _cmd_suppressions(args: argparse.Namespace, out: IO[str]) -> int:
    from ._redact import mask_email
    from ._suppress import list_suppressions, remove_suppression, sync_suppressions

    conn, settings = _connection_and_settings("suppressions")
    if args.suppressions_command == "sync":
        out.write(f"synced from Resend: {sync_suppressions(conn, settings)} suppressed address(es)\n")
        return 0
    if args.suppressions_command == "remove":
        had = remove_suppression(conn, settings, args.address)
        where = "Resend and the local mirror" if had else "Resend (the mirror did not hold it)"
        out.write(f"removed {mask_email(args.address)} from {where}\n")
        return 0
    rows = [s.to_dict() for s in list_suppressions(conn)]
    if args.json:
        _print_json(rows, out)
        return 0
    out.write(f"{len(rows)} suppressed address(es)\n")
    for row in rows:
        out.write(f"  {row['address']}  {row['origin']}  since {row['created_at']}\n")
    return 0


def _cmd_failed(args: argparse.Namespace, out: IO[str]) -> int:
    from ._status import queue_status, requeue_failed

    conn, settings = _connection_and_settings("failed jobs")
    if args.failed_command == "list":
        failed = queue_status(conn, settings, failed_limit=args.limit).to_dict()["recent_failed"]
        if args.json:
            _print_json(failed, out)
        else:
            out.write(f"{len(failed)} failed job(s) shown\n")
            _write_failed(failed, out)
        return 0
    if bool(args.ids) == bool(args.all):
        raise EmailQueueError("name the job ids to requeue, or pass --all (not both)")
    ids = None if args.all else list(args.ids)
    result = requeue_failed(conn, settings, ids, force=args.force).to_dict()
    if args.json:
        _print_json(result, out)
    else:
        out.write(f"requeued {len(result['requeued'])} job(s)")
        out.write(
            f"; not in the failed registry: {', '.join(result['not_found'])}\n"
            if result["not_found"]
            else "\n"
        )
        if result["already_delivered"]:
            delivered = ", ".join(result["already_delivered"])
            out.write(f"already accepted by Resend (deleted, not sent again): {delivered}\n")
        if result["needs_force"]:
            out.write(f"not requeued: {', '.join(result['needs_force'])}\n")
            out.write(f"  {result['needs_force_reason']} (--force)\n")
    return 0 if not (result["not_found"] or result["needs_force"]) else 1


def _cmd_send(args: argparse.Namespace, out: IO[str]) -> int:
    from ._api import send_email

    conn, settings = _connection_and_settings("send", check=False)  # send_email diagnoses
    fields: dict[str, Any] = {"to": args.to, "subject": args.subject, "text": args.text, "html": args.html}
    if args.from_:
        fields["from_"] = args.from_
    job_id = send_email(
        connection=conn, settings=settings, **{k: v for k, v in fields.items() if v is not None}
    )
    out.write(f"queued {job_id}\n")
    return 0


def _cmd_worker(args: argparse.Namespace, out: IO[str]) -> int:
    from ._worker import worker_command

    conn, settings = _connection_and_settings("worker")
    conn.close()
    if settings.resend_api_key is None and _dev_outbox(settings) is None:
        sys.stderr.write(
            "emailqueue worker: warning: RESEND_API_KEY is not set: jobs wait, unsent and without "
            "spending attempts, until it is (create a key at resend.com/api-keys)\n"
        )
    argv, env = worker_command(settings, settings.require_redis_url(), burst=args.burst)
    out.flush()
    sys.stderr.flush()
    # RQ's own CLI: `rq worker --with-scheduler --serializer json emails`, with the URL in the
    # environment (not argv), emailqueue's job class, and emailqueue preloaded.
    os.execve(argv[0], argv, {**os.environ, **env})


def _cmd_dev(args: argparse.Namespace, out: IO[str]) -> int:
    from ._dev import DevRunner

    return DevRunner(host=args.host, port=args.port, reload=args.reload, out=out).run()


COMMANDS = {
    "dev": _cmd_dev,
    "worker": _cmd_worker,
    "drain": _cmd_drain,
    "status": _cmd_status,
    "failed": _cmd_failed,
    "suppressions": _cmd_suppressions,
    "send": _cmd_send,
}


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    """Entry point of the ``emailqueue`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is not None and argv[first] == "check":
        from ._check import main as check_main

        return check_main(argv[first + 1 :])
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args, out)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            raise
        sys.stderr.write(f"emailqueue {args.command}: error: {_one_line(exc)}\n")
        return 1


def _one_line(exc: BaseException) -> str:
    """The error as one line, with nothing secret in it; an unexpected one says how to see more."""
    from ._redact import redact_text

    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, (EmailQueueError, OSError)):
        text = f"{type(exc).__name__}: {text} (run with --debug for the traceback)"
    return redact_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
