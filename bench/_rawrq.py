"""The raw-RQ baseline: what a team writes with stock RQ and no emailqueue.

A trivial JSON-serializable job function that POSTs one email to Resend with httpx, enqueued
with ``Queue.enqueue`` / ``enqueue_many`` (``result_ttl=0``, the JSON serializer), and delivered
by a stock ``SimpleWorker`` burst.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import httpx
import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

QUEUE_NAME = "raw-emails"

_client: httpx.Client | None = None
_client_lock = threading.Lock()


def post_email(api_url: str, api_key: str, email: dict[str, Any]) -> str:
    """The baseline job: one ``POST /emails``; raises on any non-2xx so RQ fails the job."""
    global _client
    with _client_lock:
        if _client is None:  # one client per worker process, as a careful team would write it
            _client = httpx.Client(timeout=15.0, headers={"User-Agent": "raw-rq-bench/1"})
        client = _client
    reply = client.post(f"{api_url}/emails", json=email, headers={"Authorization": f"Bearer {api_key}"})
    reply.raise_for_status()
    return str(reply.json()["id"])


def raw_queue(conn: redis.Redis) -> Queue:
    return Queue(QUEUE_NAME, connection=conn, serializer=JSONSerializer)


def email(i: int) -> dict[str, Any]:
    return {"from": "Bench <bench@example.com>", "to": f"u{i}@example.com", "subject": "Hi", "text": "x"}


def enqueue_one(queue: Queue, api_url: str, api_key: str, i: int) -> None:
    queue.enqueue(post_email, api_url, api_key, email(i), result_ttl=0)


def enqueue_many(queue: Queue, api_url: str, api_key: str, n: int) -> None:
    datas = [
        Queue.prepare_data(post_email, args=(api_url, api_key, email(i)), result_ttl=0) for i in range(n)
    ]
    queue.enqueue_many(datas)


def burst(queue: Queue) -> None:
    """A stock ``SimpleWorker`` burst in this (main) thread.

    ``work()`` installs SIGINT/SIGTERM handlers and leaves them behind; they are put back
    afterwards so Ctrl-C still stops the bench.
    """
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker = SimpleWorker([queue], connection=queue.connection, serializer=JSONSerializer)
        worker.work(burst=True, logging_level="WARNING")
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
