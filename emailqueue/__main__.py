"""``python -m emailqueue``: the same command line as ``emailqueue`` (``python -m emailqueue check``)."""

from emailqueue._cli import main

raise SystemExit(main())
