"""``emailqueue worker``: RQ's own ``rq worker``, with emailqueue loaded once in the parent.

RQ forks a work horse per job. Loaded in the parent before the first fork, the job module, the
settings and the Resend client are inherited by every horse instead of being rebuilt per job
(about 0.5 s each, measured), which otherwise caps a VM worker near 2 jobs a second.
"""

from __future__ import annotations

import contextlib
import sys


def main() -> None:
    from rq.cli.cli import main as rq_main

    from . import _jobs
    from ._exceptions import ConfigurationError

    # Without a key each job reports it and waits for the fix without spending an attempt.
    with contextlib.suppress(ConfigurationError):
        _jobs._default_runtime()
    rq_main(args=sys.argv[1:], prog_name="rq")


if __name__ == "__main__":
    main()
