"""Diagnose the queue's Redis and Resend setup step by step.

The same as `emailqueue check` (installed with the package, as is `python -m emailqueue check`);
this script stays for checkouts of the repository.
"""

import sys

from emailqueue._cli import main

if __name__ == "__main__":
    sys.exit(main(["check", *sys.argv[1:]]))
