"""Async variants of the calls that touch Redis and Resend, for async apps (FastAPI, Starlette).

Each runs its sync twin in a worker thread (``asyncio.to_thread``), which is a deliberate choice
over a second, native implementation on ``httpx.AsyncClient`` and ``redis.asyncio``:

- **One code path for exactly-once.** The claim, the send and the ack must happen in the same
  order with the same failure handling whichever API the app calls; a second implementation
  would have to be kept identical forever, and kill-tested twice.
- **Cancellation cannot split an attempt.** If the awaiting task is cancelled (the client went
  away, a timeout in the app), the thread still finishes its step: an email accepted by Resend
  is acked, not left claimed. A native coroutine cancelled between the send and the ack would
  leave the job for a later drain (safe, but late).
- **The cost is small.** One thread hop per call (tens of microseconds) against a Redis round
  trip and an HTTPS request of tens to hundreds of milliseconds. The event loop is never
  blocked. The threads are the loop's default executor, so at most ``min(32, cores + 4)`` of
  these calls run at once per process; on a serverless function that handles one request at a
  time that is never the limit.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ._api import send_email, send_event_email
from ._now import deliver_now
from ._now_attempt import NowOutcome


async def asend_email(*args: Any, **kwargs: Any) -> str:
    """:func:`send_email` for async code (same arguments, ``now=True`` included)."""
    return await asyncio.to_thread(send_email, *args, **kwargs)


async def asend_event_email(*args: Any, **kwargs: Any) -> list[str]:
    """:func:`send_event_email` for async code (same arguments)."""
    return await asyncio.to_thread(send_event_email, *args, **kwargs)


async def adeliver_now(job_id: str, **kwargs: Any) -> NowOutcome:
    """:func:`deliver_now` for async code (same arguments)."""
    return await asyncio.to_thread(deliver_now, job_id, **kwargs)
