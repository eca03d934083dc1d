"""``python -m bench``: emailqueue against a raw-RQ baseline, side by side in one run.

It starts its own Redis-protocol server (``EmbeddedRedis``) and a fake Resend, measures every
target of issue 6 (Redis commands and round trips per email, throughput, rate-limit behaviour,
cold start), prints a table and writes ``BENCHMARKS.md``. ``--quick`` is the CI smoke run: one
repetition, small sizes, written to a temp file unless ``--out`` says otherwise.

Run it from the repository root: it reuses the suite's counters (``tests/helpers``).
"""
