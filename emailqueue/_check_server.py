"""The server half of ``emailqueue check``, after a connection is made: latency, server version,
what the server persists (so what a crash of its host can lose), the permissions RQ needs (Lua,
CLIENT) and an RQ round trip that leaves no keys. Steps in the shape of
:mod:`emailqueue._check_redis`: a :class:`Probe` in, an outcome and a probe out.
"""

from __future__ import annotations

import hashlib
import secrets
import statistics
import time
from contextlib import suppress

import redis
from rq import Queue
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.serializers import JSONSerializer

from ._check_redis import CONNECTION_STEPS, PROBE_FUNC_PATH, PROBE_PREFIX, Outcome, Probe, Step, StepFailed
from ._durable import read_persistence
from ._exceptions import ConfigurationError

_PING_COUNT = 5
_SLOW_PING_MS = 100.0
_SCAN_CALLS = 50  # at most 50 x 1000 keys: Upstash bills each SCAN call


def ping(p: Probe) -> tuple[Outcome, Probe]:
    times = []
    for _ in range(_PING_COUNT):
        start = time.perf_counter()
        p.conn.ping()
        times.append((time.perf_counter() - start) * 1000)
    median = statistics.median(times)
    detail = f"median {median:.1f} ms over {_PING_COUNT} PINGs"
    if median > _SLOW_PING_MS:
        fix = "a worker makes about 27 round trips per email: run it in the same region as Redis"
        return ("warn", detail + " (slow)", fix), p
    return ("ok", detail, ""), p


def server(p: Probe) -> tuple[Outcome, Probe]:
    try:
        info = p.conn.info("server")
    except redis.ResponseError as exc:
        fix = "allow INFO for this Redis user: RQ workers read the server version with INFO server"
        raise StepFailed(f"INFO is not allowed: {exc}", fix, blocking=False) from None
    name = "valkey" if "valkey_version" in info else str(info.get("server_name") or "redis")
    version = info.get("valkey_version") or info.get("redis_version") or "unknown"
    return ("ok", f"{name} {version} (redis_version {info.get('redis_version', '?')})", ""), p


def persistence(p: Probe) -> tuple[Outcome, Probe]:
    """What survives a crash of the Redis host: AOF and its fsync policy, RDB, replicas. Read
    with INFO (CONFIG, which Upstash restricts, only where allowed). Warns when an accepted
    email can be lost, and says what closes the gap."""
    try:
        found = read_persistence(p.conn)
    except redis.ResponseError as exc:
        fix = "allow INFO for this Redis user to see what survives a crash"
        return ("warn", f"INFO persistence/replication is not allowed: {exc}", fix), p
    aof = f"AOF on (appendfsync {found.fsync})" if found.aof else "AOF off"
    rdb = "RDB unknown" if found.rdb == "unknown" else (f"RDB save '{found.rdb}'" if found.rdb else "RDB off")
    detail = f"{aof}, {rdb}, {found.replicas} replica(s) (role {found.role})"
    loss = found.loss_on_crash()
    if not loss:
        return ("ok", detail + ": every acknowledged write is on disk", ""), p
    try:
        wait = found.wait_command(1000)
    except ConfigurationError:
        fix = (
            "set `appendonly yes` with `appendfsync always` (then durable=True / EMAIL_DURABLE=1 works), "
            "or add a replica; see docs/RELIABILITY.md"
        )
    else:
        fix = (
            f"for email that must not be lost, send with durable=True or set EMAIL_DURABLE=1 (this server "
            f"confirms with {wait[0] if wait else 'the reply'}); or set `appendfsync always`; see "
            "docs/RELIABILITY.md"
        )
    return ("warn", f"{detail}: a crash of the Redis host can lose {loss}, queued emails included", fix), p


def lua(p: Probe) -> tuple[Outcome, Probe]:
    script = "return 1"
    for command in ("EVAL", "EVALSHA"):
        try:
            if command == "EVAL":
                p.conn.eval(script, 0)
            else:
                p.conn.evalsha(hashlib.sha1(script.encode()).hexdigest(), 0)
        except redis.ResponseError as exc:
            fix = "allow Lua scripts for this Redis user (ACL +eval +evalsha, or +@scripting)"
            detail = f"{command} is refused ({exc}): emailqueue and RQ both run Lua scripts"
            raise StepFailed(detail, fix, blocking=False) from None
    return ("ok", "EVAL and EVALSHA work (Lua scripting)", ""), p


def client_commands(p: Probe) -> tuple[Outcome, Probe]:
    # RQ workers name their connection and read their address back (CLIENT INFO, else LIST).
    try:
        p.conn.client_setname(PROBE_PREFIX + "connection")
        try:
            p.conn.client_info()
        except redis.ResponseError:
            p.conn.client_list()
    except redis.ResponseError as exc:
        detail = (
            f"CLIENT is refused ({exc}): RQ workers still run, but warn and show their address as unknown"
        )
        return ("warn", detail, "optional: allow +client|setname +client|info +client|list for this user"), p
    return ("ok", "CLIENT SETNAME and CLIENT INFO work (used by RQ workers)", ""), p


def round_trip(p: Probe) -> tuple[Outcome, Probe]:
    token = secrets.token_hex(8)
    queue = Queue(PROBE_PREFIX + token, connection=p.conn, serializer=JSONSerializer)
    start, failure = time.perf_counter(), None
    try:
        queue.enqueue_call(
            func=PROBE_FUNC_PATH, kwargs={"token": token}, job_id=queue.name, result_ttl=0, ttl=60
        )
        popped = Queue.dequeue_any([queue], None, connection=p.conn, serializer=JSONSerializer)
        if popped is None or popped[0].id != queue.name:
            failure = StepFailed("the probe job vanished between enqueue and dequeue", "is a worker on it?")
        elif popped[0].func(**popped[0].kwargs) != "ok":
            failure = StepFailed("the probe job did not run", "reinstall emailqueue")
    except redis.RedisError as exc:
        failure = StepFailed(f"Redis refused part of the RQ round trip: {exc}", "give this user +@all on ~*")
    ms = (time.perf_counter() - start) * 1000
    unexpected, left, complete = _clean_up(p.conn, queue, token)
    if left:
        fix = "delete them by hand (they belong to the check only) and allow DEL for this user"
        raise StepFailed(f"could not delete the probe's keys: {', '.join(left)}", fix)
    if failure is not None:
        raise failure
    if unexpected:
        detail = f"RQ made keys the check did not expect: {', '.join(unexpected)} (now deleted)"
        return ("warn", detail, "report this as an emailqueue bug"), p
    scanned = "" if complete else "; the keyspace is too large to scan it all"
    return ("ok", f"enqueued and dequeued a probe job in {ms:.0f} ms, no keys left behind{scanned}", ""), p


def _clean_up(conn: redis.Redis, queue: Queue, token: str) -> tuple[list[str], list[str], bool]:
    """Delete what the probe made; return the keys it made unexpectedly, the keys still left
    and whether the scan covered the whole keyspace."""
    # By hand: Queue.delete(delete_jobs=True) empties the queue with a Lua script, which a
    # user without EVAL cannot run, and the check must clean up after itself regardless.
    intermediate = IntermediateQueue(queue.key, conn)
    job_id, planned = queue.name, [queue.key, intermediate.key]
    planned += [Job.key_for(job_id), intermediate.get_first_seen_key(job_id)]
    unexpected: list[str] = []
    found: set[str] = set()
    complete = True
    for attempt in range(2):
        with suppress(redis.RedisError), conn.pipeline(transaction=False) as pipe:
            pipe.delete(*planned, *(k for k in unexpected if " " not in k))
            pipe.srem(queue.redis_queues_keys, queue.key)
            pipe.execute()
        found, complete = _keys_matching(conn, token)
        if conn.sismember(queue.redis_queues_keys, queue.key):
            found.add(f"{queue.key} in {queue.redis_queues_keys}")
        unexpected = unexpected if attempt else sorted(found)
    return unexpected, sorted(found), complete


def _keys_matching(conn: redis.Redis, token: str) -> tuple[set[str], bool]:
    found: set[str] = set()
    cursor = 0
    for _ in range(_SCAN_CALLS):
        cursor, keys = conn.scan(cursor, match=f"*{token}*", count=1000)
        found.update(k.decode() if isinstance(k, bytes) else str(k) for k in keys)
        if cursor == 0:
            return found, True
    return found, False


#: The steps of the connection itself: enough to say why a command could not reach Redis.


#: Every Redis step of ``emailqueue check``, in order.
REDIS_STEPS: tuple[tuple[str, Step], ...] = (
    *CONNECTION_STEPS, ("ping", ping), ("server", server), ("durability", persistence), ("eval", lua),
    ("client", client_commands), ("round_trip", round_trip),
)  # fmt: skip
