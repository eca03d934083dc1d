"""Diagnose the queue's Redis and Resend setup step by step (the same as `emailqueue check`)."""

import sys

from emailqueue._check import main

if __name__ == "__main__":
    sys.exit(main())
