"""Durable enqueue (issue 15, target 11): what ``send_email(durable=True)`` costs against the
default ``send_email`` (and stock ``Queue.enqueue``).

A durable enqueue needs a server that fsyncs its AOF before each reply (``appendfsync always``;
under ``everysec`` it is refused, see emailqueue/_durable.py). The bench's shared server keeps no
AOF, so this scenario starts its own: ``appendfsync always`` for the durable call and the default
call beside it, and ``appendfsync everysec`` for the default call as most servers run it. So the
latency rows answer "what does it cost to make enqueues durable": the durable call on ``always``
against the default call on ``everysec``. Latency is the wall time of one call, ``n`` calls one
after another, warm. Fsync time depends on the disk: these are this machine's.
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
    for fsync in ("always", "everysec"):
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

            send(0, False)
            if fsync == "always":
                send(0, True)  # warm: the capability read and the script load, once per server
                with measure(observer, trips) as durable_cost:
                    send(1, True)
                with measure(observer, trips) as default_cost:
                    send(2, False)
                sample["durable_cmds"] = durable_cost.commands
                sample["durable_trips"] = durable_cost.round_trips
                sample["default_cmds"] = default_cost.commands
                sample["default_trips"] = default_cost.round_trips
                env.notes["one durable send_email vs one default send_email (AOF always)"] = {
                    "durable": durable_cost.by_command,
                    "default": default_cost.by_command,
                }
                sample["durable_always_ms"] = _p50_ms(lambda i: send(i, True), n)
            sample[f"default_{fsync}_ms"] = _p50_ms(lambda i: send(i, False), n)
            bconn, _ = stock_client(server.url)
            queue = raw.raw_queue(bconn)
            raw.enqueue_one(queue, env.fake.url, env.fake.api_key, 0)
            raw_ms = _p50_ms(lambda i, q=queue: raw.enqueue_one(q, env.fake.url, env.fake.api_key, i), n)
            sample[f"raw_enqueue_{fsync}_ms"] = raw_ms
            env.details[f"stock Queue.enqueue p50 on the AOF {fsync} server"] = f"{raw_ms:.2f} ms"
            for client in (conn, observer, bconn):
                client.close()
    CAPABILITIES.clear()
    return sample
