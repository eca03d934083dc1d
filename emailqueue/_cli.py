"""The ``emailqueue`` command line.

Errors are one clear line on stderr and exit code 1 (``--debug`` shows the traceback).
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
    dev.add_argument("--no-reload", action="store_true", help="don't restart the API on code changes")
    dev.add_argument("--probe-url", default=None, help=argparse.SUPPRESS)

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

    status = sub.add_parser("status", help="queue counts, workers and recent failures")
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
    requeue.add_argument("--json", action="store_true")

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
    from ._settings import load_settings

    settings = load_settings()
    total = args.max_jobs or settings.drain_max_jobs
    interactive = out.isatty() and not args.json
    report = drain(
        max_jobs=args.max_jobs,
        time_budget=args.time_budget,
        settings=settings,
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


def _connection_and_settings() -> tuple[Any, Any]:
    from ._connection import connect_from
    from ._settings import load_settings

    settings = load_settings()
    return connect_from(settings), settings


def _cmd_status(args: argparse.Namespace, out: IO[str]) -> int:
    from ._status import queue_status

    conn, settings = _connection_and_settings()
    status = queue_status(conn, settings, failed_limit=args.limit).to_dict()
    if args.json:
        _print_json(status, out)
        return 0
    age = status.get("oldest_queued_age_s")
    out.write(
        f"queue {settings.email_queue_name}: {status['queued']} queued, {status['started']} in progress, "
        f"{status['scheduled']} waiting to retry, {status['failed']} failed"
        + (f"; oldest queued {age:.0f}s ago" if age is not None else "")
        + "\n"
    )
    out.write(f"workers: {len(status.get('workers', []))}\n")
    _write_failed(status.get("recent_failed", []), out)
    return 0


def _write_failed(failed: list[dict[str, Any]], out: IO[str]) -> None:
    for job in failed:
        error = job.get("error") or {}
        out.write(
            f"  {job['id']}  to {', '.join(job.get('to', []))}  {job.get('subject', '')!r}  "
            f"{error.get('name', '?')}: {error.get('message', '')}  (attempts {job.get('attempts')})\n"
        )


def _cmd_failed(args: argparse.Namespace, out: IO[str]) -> int:
    from ._status import queue_status, requeue_failed

    conn, settings = _connection_and_settings()
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
    result = requeue_failed(conn, settings, None if args.all else list(args.ids)).to_dict()
    if args.json:
        _print_json(result, out)
    else:
        out.write(f"requeued {len(result['requeued'])} job(s)")
        out.write(
            f"; not in the failed registry: {', '.join(result['not_found'])}\n"
            if result["not_found"]
            else "\n"
        )
    return 0 if not result["not_found"] else 1


def _cmd_send(args: argparse.Namespace, out: IO[str]) -> int:
    from ._api import send_email

    conn, settings = _connection_and_settings()
    fields: dict[str, Any] = {"to": args.to, "subject": args.subject, "text": args.text, "html": args.html}
    if args.from_:
        fields["from_"] = args.from_
    job_id = send_email(
        connection=conn, settings=settings, **{k: v for k, v in fields.items() if v is not None}
    )
    out.write(f"queued {job_id}\n")
    return 0


def _cmd_worker(args: argparse.Namespace, out: IO[str]) -> int:
    from ._settings import load_settings
    from ._worker import worker_command

    settings = load_settings()
    argv, env = worker_command(settings, settings.require_redis_url(), burst=args.burst)
    out.flush()
    # RQ's own CLI: `rq worker --with-scheduler --serializer json emails`, with the URL in the
    # environment (not argv), emailqueue's job class, and emailqueue preloaded.
    os.execve(argv[0], argv, {**os.environ, **env})


def _cmd_dev(args: argparse.Namespace, out: IO[str]) -> int:
    from ._dev import DEFAULT_PROBE_URL, DevRunner

    runner = DevRunner(
        host=args.host,
        port=args.port,
        reload=not args.no_reload,
        probe_url=args.probe_url or DEFAULT_PROBE_URL,
        out=out,
    )
    return runner.run()


COMMANDS = {
    "dev": _cmd_dev,
    "worker": _cmd_worker,
    "drain": _cmd_drain,
    "status": _cmd_status,
    "failed": _cmd_failed,
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
    except (EmailQueueError, OSError) as exc:
        if args.debug:
            raise
        sys.stderr.write(f"emailqueue {args.command}: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
