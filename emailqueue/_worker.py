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
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any
from urllib.parse import quote

from rq.job import Job

from ._constants import JOB_FUNC_PATH
from ._exceptions import PermanentSendError
from ._settings import Settings

JOB_CLASS_PATH = "emailqueue.EmailJob"


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
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None

    def send_webhooks(self, status: Any, *, exc_string: str | None = None) -> None:
        return None


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
    return argv, {"RQ_REDIS_URL": url, "RQ_JOB_CLASS": JOB_CLASS_PATH}


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
