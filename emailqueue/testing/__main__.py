"""``python -m emailqueue.testing``: serve a fake Resend API (see ``--help``)."""

from ._fake_resend import main

main()
