"""Durable enqueue (issue 15, target 11): what ``send_email(durable=True)`` costs against the
default ``send_email`` (and stock ``Queue.enqueue``), on servers that keep an AOF.

The bench's shared server keeps none, so this scenario starts two of its own: ``appendonly yes``
with ``appendfsync everysec`` (the usual setting: the durable call waits for the next fsync) and
with ``appendfsync always`` (every write is fsynced before its reply: ``WAITAOF`` returns at
once). Latency is the wall time of one call, ``n`` calls one after another, warm.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import redis

from emailqueue import Settings, send_email
from emailqueue._durable import CAPABILITIES
from emailqueue._embedded import EmbeddedRedis

from . import _rawrq as raw
from ._counting import lean_client, measure, stock_client
from ._env import Env, Sample


def _p50_ms(call: Callable[[int], object], n: int) -> float:
    times = []
    for i in range(n):
        start = time.perf_counter()
        call(i)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def durable_cost(env: Env, n: int) -> Sample:
    """Target 11: commands, round trips and p50 latency of a durable vs a default send_email."""
    sample: Sample = {}
    for fsync in ("everysec", "always"):
        CAPABILITIES.clear()
        with EmbeddedRedis(appendonly=True, extra_args=["--appendfsync", fsync]) as server:
            settings = env.settings(queue_redis_url=server.url)
            conn, trips = lean_client(server.url)
            observer = redis.Redis.from_url(server.url)
            observer.ping()

            def send(i: int, durable: bool, conn: redis.Redis = conn, settings: Settings = settings) -> str:
                return send_email(
                    to=f"d{i}@example.com", subject="Hi", text="x", connection=conn, settings=settings,
                    durable=durable,
                )  # fmt: skip

            send(0, True)  # warm: the capability read and the script load, once per server
            send(0, False)
            with measure(observer, trips) as durable_cost:
                send(1, True)
            with measure(observer, trips) as default_cost:
                send(2, False)
            durable_ms = _p50_ms(lambda i: send(i, True), n)
            default_ms = _p50_ms(lambda i: send(i, False), n)
            bconn, _ = stock_client(server.url)
            queue = raw.raw_queue(bconn)
            raw.enqueue_one(queue, env.fake.url, env.fake.api_key, 0)
            raw_ms = _p50_ms(lambda i, q=queue: raw.enqueue_one(q, env.fake.url, env.fake.api_key, i), n)
            for client in (conn, observer, bconn):
                client.close()
        sample[f"durable_{fsync}_ms"] = durable_ms
        sample[f"default_{fsync}_ms"] = default_ms
        sample[f"raw_enqueue_{fsync}_ms"] = raw_ms
        env.details[f"stock Queue.enqueue p50 on the AOF {fsync} server"] = f"{raw_ms:.2f} ms"
        if fsync == "everysec":
            sample["durable_cmds"] = durable_cost.commands
            sample["durable_trips"] = durable_cost.round_trips
            sample["default_cmds"] = default_cost.commands
            sample["default_trips"] = default_cost.round_trips
            env.notes["one durable send_email vs one default send_email (AOF everysec)"] = {
                "durable": durable_cost.by_command,
                "default": default_cost.by_command,
            }
    CAPABILITIES.clear()
    return sample
