"""``emailqueue worker``: RQ's own ``rq worker``, hardened and with emailqueue loaded once.

- **Loaded once.** RQ forks a work horse per job. Loaded in the parent before the first fork,
  the job module, the settings and the Resend client are inherited by every horse instead of
  being rebuilt per job (about 0.5 s each), which otherwise caps a worker near 2-3 jobs a second.
- **Only our job runs.** JSON stops pickle gadgets, but a stock worker still imports and calls
  any function a job names. :class:`EmailJob` refuses everything but emailqueue's job function,
  and ignores job callbacks and webhooks, so whoever can write to Redis cannot run code on the
  worker host.
- **No secret in argv.** The Redis URL (and its password) is passed as ``RQ_REDIS_URL`` in the
  environment, not ``--url``, so ``ps`` does not show it.
- **It settles abandoned executions.** A job whose worker died mid-send on its last attempt may
  have been accepted by Resend: :class:`EmailJob`'s own failure callback (RQ's maintenance) and
  :meth:`EmailWorker.handle_work_horse_killed` (a work horse killed under a live worker) hold on
  to it under its key instead of letting RQ fail it (``_retry.apply_abandoned_policy``).
- **It packs.** :class:`EmailWorker` (``--worker-class``) sends queued single emails up to 100 per
  ``POST /emails/batch`` (:mod:`._pack`), by running the serverless drain's own code in the worker
  process, bounded (:data:`ROUND_MAX_REQUESTS` requests, :data:`ROUND_BUDGET_S` s): after a job
  when more are queued behind it (one ``LLEN`` per job), and when the worker starts and on RQ's
  maintenance cadence (every 10 minutes), so the packs of a dead worker (or drain) are recovered
  even where no drain runs. The job RQ dequeued is never in a pack: RQ runs it first, as it always
  does, and a round only takes what is still queued.

  **Fork hazard.** RQ forks a work horse per job, and the horse inherits the parent's memory: the
  Resend client of ``_jobs.RUNTIME`` (preloaded, see above) is the horses'. A round therefore
  sends through an ``httpx`` client of its own, made for the round and closed after it; no horse
  is forked while a round runs (a round runs between jobs, in the worker's only thread), so no
  horse inherits a live client of a round.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import redis
from rq.exceptions import StopRequested
from rq.job import Job
from rq.queue import Queue
from rq.worker import Worker, WorkerStatus

from ._constants import JOB_FUNC_PATH
from ._exceptions import ConfigurationError, PermanentSendError
from ._pack_scripts import PackKeys
from ._send import Sender
from ._settings import Settings

if TYPE_CHECKING:
    from ._drain import DrainReport

JOB_CLASS_PATH = "emailqueue.EmailJob"
WORKER_CLASS_PATH = "emailqueue.EmailWorker"
#: A worker's packing round makes at most this many requests to Resend (a pack of up to 100 emails
#: is one) ...
ROUND_MAX_REQUESTS = 100
#: ... and takes no new work past this many seconds (the Resend timeouts are fitted to it as for a
#: drain: docs in ``_budget``). Well under the 120 s after which a drain's sweep counts a job left
#: in RQ's intermediate list as a dead worker's, and under the worker's 420 s heartbeat TTL.
ROUND_BUDGET_S = 60.0


class EmailJob(Job):
    """An RQ job that runs only ``emailqueue._jobs.deliver``. Use it with a stock worker too::

    rq worker --with-scheduler --serializer json --job-class emailqueue.EmailJob emails
    """

    def perform(self) -> Any:
        if self.func_name != JOB_FUNC_PATH:
            raise PermanentSendError(
                f"refused: not an emailqueue job ({str(self.func_name)[:80]})", name="bad_payload"
            )
        return super().perform()

    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> Callable[..., None]:
        # Ours, fixed: an execution RQ's cleanup finds abandoned is settled by emailqueue's policy.
        from ._jobs import on_failure

        return on_failure

    @property
    def stopped_callback(self) -> None:
        return None

    def send_webhooks(self, status: Any, *, exc_string: str | None = None) -> None:
        return None


def round_client(settings: Settings) -> Sender:
    """The Resend client of one packing round: a new one, never ``_jobs.RUNTIME``'s (the horses').
    In dev mode without a key, the local outbox.

    Raises:
        ConfigurationError: no RESEND_API_KEY outside dev mode.
    """
    from ._outbox import OutboxClient
    from ._resend import ResendClient, build_http_client

    if settings.resend_api_key is None and settings.dev_mode:
        return OutboxClient(settings.emailqueue_outbox_dir)
    key = settings.require_api_key()
    http = build_http_client(
        connect_timeout=settings.resend_connect_timeout_s, read_timeout=settings.resend_timeout_s
    )
    return ResendClient(http, api_key=key, base_url=settings.resend_api_url)


def pack_round(
    connection: redis.Redis,
    settings: Settings,
    *,
    make_client: Callable[[Settings], Sender] = round_client,
) -> DrainReport:
    """One bounded drain run in a worker's process, through a client of its own, closed after.

    Raises:
        ConfigurationError: no RESEND_API_KEY outside dev mode; nothing was taken.
        QueueError: Redis failed; what was taken is recovered as after a drain's failure.
    """
    from ._budget import fit_to_budget
    from ._drain import drain

    fitted = fit_to_budget(settings, ROUND_BUDGET_S)
    client = make_client(fitted)
    try:
        return drain(
            max_jobs=ROUND_MAX_REQUESTS,
            time_budget=ROUND_BUDGET_S,
            connection=connection,
            settings=fitted,
            client=client,
        )
    finally:
        close = getattr(client, "close", None)
        if callable(close):
            close()


class EmailWorker(Worker):
    """RQ's forking worker, packing queued single emails (see the module docstring). Use it with a
    stock worker too::

        rq worker --with-scheduler --serializer json --job-class emailqueue.EmailJob \\
            --worker-class emailqueue.EmailWorker emails
    """

    def execute_job(self, job: Job, queue: Queue) -> None:
        super().execute_job(job, queue)
        settings = self._round_settings(queue.name)
        if settings is not None and settings.email_pack and self.connection.llen(queue.key):
            self._round(settings, "backlog")

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
        for queue in self.queues:
            settings = self._round_settings(queue.name)
            if settings is None:
                continue
            # Packing off: still resend the packs left from when it was on, as a drain would.
            if settings.email_pack or self.connection.exists(PackKeys.of(queue.name).packs):
                self._round(settings, "maintenance")

    def handle_work_horse_killed(self, job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
        """A work horse died mid-job (the OOM killer, a SIGKILL) while this worker lives: RQ retries
        or fails the job right after this. Its execution was abandoned, maybe after Resend accepted
        the email, so emailqueue's policy for that sets which (``_jobs.settle_abandoned``)."""
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)  # type: ignore[no-untyped-call]
        from ._jobs import settle_abandoned

        try:
            job.get_meta(refresh=True)  # the horse may have saved a failure record since
            settle_abandoned(job)
        except Exception as exc:  # RQ then settles the job as it would without us
            self.log.error(
                "Worker %s: job %s: settling its abandoned execution failed: %r", self.name, job.id, exc
            )

    def _round_settings(self, queue_name: str) -> Settings | None:
        """The settings of a round on ``queue_name``; None when this worker cannot send."""
        from ._jobs import RUNTIME

        try:
            settings, _ = RUNTIME.get()  # the settings only: its client is the horses'
        except ConfigurationError:
            return None  # no key: each job reports it and waits (see _retry.keep_for_later)
        if settings.email_queue_name != queue_name:
            settings = settings.model_copy(update={"email_queue_name": queue_name})
        return settings

    def _round(self, settings: Settings, why: str) -> None:
        # Busy while the round runs: a SIGTERM then asks for a warm stop after it (RQ raises
        # StopRequested at once in an idle worker, which would break off the round's sends).
        previous = self.get_state()
        self.set_state(WorkerStatus.BUSY)
        try:
            report = pack_round(self.connection, settings)
        except Exception as exc:  # RQ's loop quits on any exception: a round must not stop the worker
            self.log.error("Worker %s: packing round (%s) failed: %r", self.name, why, exc)
        else:
            if report.requests or report.promoted or report.recovered:
                self.log.info(
                    "Worker %s: packing round (%s): %d request(s), %d sent in %d pack(s), %d failed, "
                    "%d retrying, %d recovered",
                    self.name, why, report.requests, report.sent, report.packs, report.failed,
                    report.retrying, report.recovered,
                )  # fmt: skip
        finally:
            self.set_state(previous)
        if self._stop_requested:
            # A SIGTERM came during the round: stop now, as RQ does when one comes while idle,
            # rather than in the wait for the next job (up to 405 s) that may follow a round.
            raise StopRequested()


def worker_command(settings: Settings, url: str, *, burst: bool = False) -> tuple[list[str], dict[str, str]]:
    """The argv and the environment additions that run a hardened, preloaded ``rq worker``."""
    if settings.queue_redis_ca_cert:
        joiner = "&" if "?" in url else "?"
        url = f"{url}{joiner}ssl_ca_certs={quote(settings.queue_redis_ca_cert)}"
    argv = [
        sys.executable,
        "-m",
        "emailqueue._worker",
        "worker",
        "--with-scheduler",
        "--serializer",
        "json",
        settings.email_queue_name,
    ]
    if burst:
        argv.append("--burst")
    env = {"RQ_REDIS_URL": url, "RQ_JOB_CLASS": JOB_CLASS_PATH, "RQ_WORKER_CLASS": WORKER_CLASS_PATH}
    return argv, env


class OneLineJobErrors(logging.Filter):
    """A job that fails with one of emailqueue's own errors (no API key, a send Resend refused) is
    logged as that error's one line, not RQ's full traceback: it says what is wrong already."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args and "exception raised while executing" in str(record.msg):
            last = (str(args[-1]).strip().splitlines() or [""])[-1]
            if last.startswith("emailqueue."):
                qualified, _, message = last.partition(": ")
                record.msg = "Worker %s: job %s: %s: %s"
                record.args = (args[0], args[1], qualified.rsplit(".", 1)[-1], message)
        return True


def main() -> None:
    from rq.cli.cli import main as rq_main

    from ._exceptions import ConfigurationError
    from ._jobs import RUNTIME

    # Without a key each job reports it and waits for the fix without spending an attempt.
    with contextlib.suppress(ConfigurationError):
        RUNTIME.get()
    logging.getLogger("rq.worker").addFilter(OneLineJobErrors())
    rq_main(args=sys.argv[1:], prog_name="rq")


if __name__ == "__main__":
    main()
