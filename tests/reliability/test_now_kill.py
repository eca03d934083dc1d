"""The immediate path killed at every step: each email is accepted exactly once, by the dead
caller's request or by a later drain.

A real caller process (``python -c``, settings from its environment) sends one email in one of
two ways, and is SIGKILLed at one of four points, each reached through a hook, never a timer:

- path ``send_now``: ``send_email(now=True)`` (write and claim in one script);
- path ``deliver_now``: ``send_email()`` then ``deliver_now(job_id)`` (queue in a transaction,
  send after the commit); the child waits on its stdin between the two calls.

Points:

- ``after_write``: ``send_now``: the write+claim script ran on the server and its reply is held
  at a TCP proxy (the caller never learns the job id); ``deliver_now``: the job is queued and the
  caller is killed before ``deliver_now`` (the stdin hook);
- ``after_claim``: the job is claimed and the caller waits for its send slot (another sender's
  429 paused the shared rate limit); nothing has reached Resend;
- ``mid_send``: the request is at Resend, held by FakeResend's gate; Resend accepts it after the
  caller is dead;
- ``after_accept``: Resend accepted the email and the caller's ack (ZREM + DEL) is held at the
  proxy, so it never reaches Redis.

Then later drains (``wall_clock`` past the claim's abandonment window) recover what is left.
Fact (docs/SEND_NOW.md, recovery): an immediate claim is a drain claim, so RECOVER requeues it
with its payload and so its Idempotency-Key; Resend answers the repeat from its idempotency cache.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import redis

from emailqueue import NowOutcome, Settings, deliver_now, send_email
from emailqueue._connection import connect
from emailqueue._now_scripts import CLAIM_QUEUED, WRITE_AND_CLAIM
from emailqueue._ratelimit import RateLimiter, limiter_key
from emailqueue.testing import FakeResend

from .conftest import recover
from .faults import RedisProxy, Trap, age_redis, redis_proxy, sigkill_tree, wait_for, worker_env
from .ledger import Ledger, registry_sizes

pytestmark = pytest.mark.real_redis

PATHS = ("send_now", "deliver_now")
POINTS = ("after_write", "after_claim", "mid_send", "after_accept")

#: The rate-limit pause that holds a claimed job before its send (``after_claim``); shorter than
#: EMAIL_NOW_MAX_WAIT_S, so the caller claims and waits instead of leaving the job queued.
PAUSE_S = 8.0

CHILD = r"""
import sys
import emailqueue

path, to = sys.argv[1], sys.argv[2]
if path == "send_now":
    job_id = emailqueue.send_email(to=to, subject="Your sign-in link", text="x", now=True)
    print("done", job_id, flush=True)
else:
    job_id = emailqueue.send_email(to=to, subject="Your sign-in link", text="x")
    print("queued", job_id, flush=True)
    sys.stdin.readline()  # the hook: the test says when the immediate attempt starts
    print("done", emailqueue.deliver_now(job_id), flush=True)
"""


@pytest.fixture
def proxy(redis_url: str) -> Iterator[RedisProxy]:
    url = urlparse(redis_url)
    assert url.port is not None
    with redis_proxy(url.port, int(url.path.lstrip("/") or 0)) as p:
        yield p


def claimed(conn: redis.Redis) -> bool:
    members = conn.zrange("rq:wip:emails", 0, -1)
    return any(conn.hget(f"rq:job:{m.decode().rsplit(':', 1)[0]}", "status") == b"started" for m in members)


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("path", PATHS)
def test_the_immediate_path_killed_at_every_step_delivers_exactly_once(
    path: str,
    point: str,
    real_conn: redis.Redis,
    redis_url: str,
    proxy: RedisProxy,
    fake_resend: FakeResend,
    rsettings: Settings,
    new_ledger: Callable[[str], Ledger],
    tmp_path: Path,
) -> None:
    address = f"{path}-{point}@example.com".replace("_", "-")
    ledger = new_ledger("now/sigkill")
    ledger.expect([address])
    env = worker_env(
        proxy.url,
        fake_resend.api_key,
        fake_resend.url,
        EMAIL_FROM="App <app@example.com>",
        EMAIL_NOW_MAX_WAIT_S="10",
        EMAIL_NOW_TIMEOUT_S="5",
    )
    for script in (WRITE_AND_CLAIM, CLAIM_QUEUED):
        real_conn.script_load(script)  # as on a warm server: the caller's first EVALSHA runs it
    trap: Trap | None = None
    gate = None
    if point == "after_write" and path == "send_now":
        trap = proxy.arm(b"EVALSHA")  # the write+claim script: let it run, hold its reply
    elif point == "after_claim":
        env["RESEND_RATE_LIMIT"] = "10"
        RateLimiter(real_conn, limiter_key("emails"), 10).pause(PAUSE_S)
    elif point == "mid_send":
        gate = fake_resend.hold()
    elif point == "after_accept":
        trap = proxy.arm(b"ZREM\r\n")  # the ack's pipeline: hold it before Redis sees it

    with open(tmp_path / "caller.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, path, address],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            if path == "deliver_now":
                line = proc.stdout.readline().decode()
                assert line.startswith("queued "), line
                if point != "after_write":
                    proc.stdin.write(b"go\n")
                    proc.stdin.flush()
            if point == "after_write" and trap is not None:
                assert trap.request_seen.wait(30), "the write+claim script never reached Redis"
                trap.forward()
                assert trap.reply_seen.wait(30), "Redis never answered the write+claim script"
            elif point == "after_claim":
                wait_for(lambda: claimed(real_conn), 30, "the immediate claim")
            elif point == "mid_send":
                assert gate is not None and gate.arrived.wait(30), "the request never reached Resend"
            elif point == "after_accept":
                assert trap is not None and trap.request_seen.wait(30), "the ack never started"
            requests_at_kill = len(fake_resend.requests)
            accepted_at_kill = len(fake_resend.accepted)
            sigkill_tree(proc)
        finally:
            if proc.poll() is None:
                sigkill_tree(proc)
            if gate is not None:
                gate.release()  # Resend goes on with the request the dead caller sent
            if trap is not None:
                if point == "after_accept":
                    trap.drop_request()  # the dead caller's ack never reaches Redis
                else:
                    trap.release()
            proc.stdout.close()
            proc.stdin.close()

    left = registry_sizes(real_conn)
    if point in ("after_write", "after_claim"):
        assert (requests_at_kill, accepted_at_kill) == (0, 0), "nothing may have reached Resend yet"
    if point == "after_write" and path == "deliver_now":
        assert (left["queued"], left["started"]) == (1, 0), left
    else:
        assert (left["queued"], left["started"]) == (0, 1), f"the kill at {point!r} left no claim: {left}"
    if point == "mid_send":
        wait_for(lambda: len(fake_resend.accepted) == 1, 10, "the held request's accept")
    if point == "after_accept":
        assert accepted_at_kill == 1
    accepted_by_caller = len(fake_resend.accepted)

    age_redis(real_conn)  # a later run: the pause and other short-lived keys have expired
    reports = recover(real_conn, rsettings)
    counts = ledger.finish(
        path=path,
        point=point,
        left=left,
        accepted_by="caller" if accepted_by_caller else "later drain",
        recovered=sum(r.recovered for r in reports),
        later_runs=len(reports),
    )
    assert (counts.lost, counts.duplicated, counts.duplicated_keys, counts.unexpected) == (0, 0, 0, 0), counts
    assert (counts.stuck, counts.failed, counts.accepted) == (0, 0, 1), counts
    assert registry_sizes(real_conn) == {k: 0 for k in left}


@pytest.mark.parametrize("step", ["claim", "ack"])
def test_a_redis_blip_after_the_write_never_reaches_the_caller(
    step: str,
    real_conn: redis.Redis,
    proxy: RedisProxy,
    fake_resend: FakeResend,
    rsettings: Settings,
    new_ledger: Callable[[str], Ledger],
) -> None:
    """Redis goes away at the claim (``deliver_now``) or at the ack (``send_email(now=True)``):
    the request is lost and the retry finds no server in time. The caller gets an outcome, not
    an exception, and the job is delivered once: by the queue, or by the caller and then
    recovered and replayed from Resend's idempotency cache."""
    ledger = new_ledger("now/redis-blip")
    address = f"blip-{step}@example.com"
    ledger.expect([address])
    for script in (WRITE_AND_CLAIM, CLAIM_QUEUED):
        real_conn.script_load(script)
    conn = connect(proxy.url, socket_timeout=0.3, connect_timeout=0.3, backoff_cap=0.05)
    job_id = ""
    if step == "claim":
        job_id = send_email(to=address, subject="Hi", text="x", connection=conn, settings=rsettings)
    trap = proxy.arm(b"EVALSHA" if step == "claim" else b"ZREM\r\n")
    results: list[object] = []

    def call() -> None:
        try:
            if step == "claim":
                results.append(deliver_now(job_id, connection=conn, settings=rsettings))
            else:
                results.append(
                    send_email(
                        to=address, subject="Hi", text="x", connection=conn, settings=rsettings, now=True
                    )
                )
        except BaseException as exc:  # the assertion below names it
            results.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert trap.request_seen.wait(30)
    proxy.hold_new_connections()  # redis-py's retry reaches no server
    trap.drop_request()
    caller.join(30)
    left = registry_sizes(real_conn)
    proxy.close()  # the held connections die with the blip; nothing they carried runs later
    assert len(results) == 1 and not isinstance(results[0], BaseException), results
    if step == "claim":
        assert isinstance(results[0], NowOutcome) and results[0].status == "left_to_recovery"
        assert fake_resend.accepted == [] and (left["queued"], left["started"]) == (1, 0), left
    else:
        assert isinstance(results[0], str) and len(fake_resend.accepted) == 1
        assert (left["queued"], left["started"]) == (0, 1), left  # sent, never acked
    age_redis(real_conn)
    recover(real_conn, rsettings)
    counts = ledger.finish(step=step, left=left)
    assert (counts.lost, counts.duplicated, counts.stuck, counts.failed, counts.accepted) == (
        0,
        0,
        0,
        0,
        1,
    ), counts
