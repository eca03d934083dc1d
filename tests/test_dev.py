"""`emailqueue dev` as a new user meets it: in a fresh directory, from its console script.

Each test starts its own dev and manages its own process tree (tests/helpers/devproc.py reads
the tree from /proc while dev runs and checks every process of it is gone afterwards); nothing
is matched by name across the machine. No test times anything: waits are bounded, never judged.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from emailqueue.testing import FakeResend
from tests.helpers.devproc import EXE, clean_env, descendants, free_port, pid_alive, running_dev, wait_for

SEND = (
    "from emailqueue import send_email; "
    "print(send_email(to='ada@example.com', subject='Hello from dev', html='<p>hi</p>', text='hi there'))"
)


def python(code: str, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def cli(*argv: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_dev_runs_api_and_worker_on_its_own_embedded_redis_with_outbox(tmp_path: Path) -> None:
    env = clean_env()
    with running_dev(tmp_path, env=env) as dev:
        state = dev.state()
        server_pid = int(redis.Redis.from_url(str(state["redis_url"])).info("server")["process_id"])
        assert server_pid in dev.tree
        assert httpx.get(f"{dev.url}/api/health", timeout=5).status_code == 200  # "API on" means it answers

        # The library, from a subdirectory and with no configuration, finds dev's Redis and
        # needs no EMAIL_FROM: dev mode supplies a sender.
        (tmp_path / "src" / "pkg").mkdir(parents=True)
        job_id = python(SEND, tmp_path / "src" / "pkg", env)
        assert job_id.startswith("em_")

        outbox = tmp_path / ".emailqueue" / "outbox"
        wait_for(lambda: list(outbox.glob("*.json")), 30, "the email in the outbox")
        (entry,) = [json.loads(p.read_text()) for p in outbox.glob("*.json")]
        assert entry["email"]["to"] == ["ada@example.com"]
        assert entry["email"]["from"] == "emailqueue dev <onboarding@resend.dev>"
        assert entry["idempotency_key"] == f"emailqueue-{job_id}"

        page = httpx.get(f"{dev.url}/api/dev/outbox", timeout=5)
        assert page.status_code == 200 and "Hello from dev" in page.text
        assert "UTC" in page.text and "T" + entry["written_at"][9:] not in page.text  # readable time
        shown = httpx.get(f"{dev.url}/api/dev/outbox/{entry['id']}", timeout=5).text
        assert "Text part" in shown and "hi there" in shown
        landing = httpx.get(f"{dev.url}/", timeout=5)
        assert landing.status_code == 200
        for link in ("/api/dev/outbox", "/api/health", "/docs"):
            assert f"href='{link}'" in landing.text
        assert httpx.get(f"{dev.url}/openapi.json", timeout=5).json()["info"]["title"] == "emailqueue"
        # Quiet by default: the API runs without a reloader scanning the project.
        argvs = [Path(f"/proc/{pid}/cmdline").read_text().split("\0") for pid in dev.tree if pid_alive(pid)]
        assert any("uvicorn" in argv for argv in argvs)
        assert not any("--reload" in argv for argv in argvs)
        code = dev.stop()
    output = dev.output
    assert code == 0, output
    assert "Redis: embedded valkey " in output and "valkey-server" in output
    assert "NOTHING IS SENT" in output and "[api]" in output and "[worker]" in output
    assert output.index("API on") > output.index("Application startup complete")
    assert not pid_alive(server_pid), "the embedded server is still running"
    assert not (tmp_path / ".emailqueue" / "dev.json").exists()
    assert dev.leftovers() == [], "dev left processes of its tree running"


def test_every_entry_point_agrees_on_settings_from_dotenv(
    tmp_path: Path, redis_url: str, real_conn: redis.Redis, fake_resend: FakeResend
) -> None:
    """Issue 12's reproduction: a directory with only a `.env`. The library, check, send, status,
    drain, worker, dev (and its API's cron route) all use the `.env` Redis and queue."""
    (tmp_path / ".env").write_text(
        f"QUEUE_REDIS_URL={redis_url}\nEMAIL_QUEUE_NAME=dotenvq\nRESEND_API_KEY={fake_resend.api_key}\n"
        f"RESEND_API_URL={fake_resend.url}\nRESEND_RATE_LIMIT=0\nEMAIL_FROM=App <app@example.com>\n"
    )
    env = clean_env()
    queue_key = "rq:queue:dotenvq"
    agreed: list[str] = []

    seen = python(
        "from emailqueue import load_settings as l; s = l(); print(s.queue_redis_url, s.email_queue_name)",
        tmp_path,
        env,
    )
    assert seen == f"{redis_url} dotenvq"
    agreed.append("library: load_settings")

    check = json.loads(cli("check", "--json", cwd=tmp_path, env=env).stdout)
    url_step = next(s for s in check["steps"] if s["name"] == "url")
    assert check["ok"] and url_step["detail"] == f"QUEUE_REDIS_URL in .env = {redis_url}"
    agreed.append("emailqueue check")

    assert (
        cli(
            "send", "--to", "a@example.com", "--subject", "1", "--text", "x", cwd=tmp_path, env=env
        ).returncode
        == 0
    )
    assert real_conn.llen(queue_key) == 1
    agreed.append("emailqueue send")

    assert json.loads(cli("status", "--json", cwd=tmp_path, env=env).stdout)["queued"] == 1
    agreed.append("emailqueue status")

    assert json.loads(cli("drain", "--json", cwd=tmp_path, env=env).stdout)["sent"] == 1
    assert len(fake_resend.accepted) == 1
    agreed.append("emailqueue drain")

    python(SEND, tmp_path, env)
    worker = cli("worker", "--burst", cwd=tmp_path, env=env)
    assert worker.returncode == 0, worker.stderr[-2000:]
    assert len(fake_resend.accepted) == 2
    agreed.append("emailqueue worker")

    with running_dev(tmp_path, env=env) as dev:
        assert dev.state()["redis_url"] == redis_url
        assert f"Redis: {redis_url} (from QUEUE_REDIS_URL in .env)" in dev.output
        (tmp_path / "sub").mkdir()
        python(SEND, tmp_path / "sub", env)  # from a subdirectory: found through dev's state
        wait_for(lambda: len(fake_resend.accepted) == 3, 30, "dev's worker to deliver the email")
        agreed.append("emailqueue dev (worker)")
        python(SEND.replace("send_email(", "send_email(idempotency_key='cron', "), tmp_path, env)
        reply = httpx.post(f"{dev.url}/api/cron/process-email-queue", timeout=30).json()
        wait_for(lambda: len(fake_resend.accepted) == 4, 30, "the email sent by the cron route or the worker")
        assert set(reply) >= {"processed", "sent"}
        agreed.append("emailqueue dev (API cron route)")
    assert real_conn.llen(queue_key) == 0
    print(f"entry points that agree on the .env settings: {len(agreed)}: {', '.join(agreed)}")
    assert len(agreed) == 8


def test_dev_refuses_a_busy_port_with_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = cli("dev", "--port", str(port), cwd=tmp_path, env=clean_env())
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and f"--port {port + 1}" in done.stderr, done.stderr
    assert "API on" not in done.stdout and "Traceback" not in done.stderr
    assert not (tmp_path / ".emailqueue" / "dev.json").exists()


def test_dev_without_the_server_extra_says_which_to_install(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['uvicorn'] = None  # as if the extra were not installed\n"
        "from emailqueue._cli import main; raise SystemExit(main(['dev', '--port', sys.argv[1]]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(free_port())],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "pip install 'emailqueue[server]'" in done.stderr and done.stderr.count("\n") == 1
    assert "API on" not in done.stdout


def test_dev_with_an_unreachable_redis_exits_1_with_the_diagnosis(tmp_path: Path) -> None:
    env = clean_env(QUEUE_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    done = cli("dev", "--port", str(free_port()), cwd=tmp_path, env=env)
    assert done.returncode == 1
    assert "connection refused" in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert "API on" not in done.stdout


def test_dev_never_shares_a_queue_with_another_project(
    tmp_path: Path, redis_url: str, real_conn: redis.Redis
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for project in (first, second):
        project.mkdir()
        (project / ".env").write_text(f"QUEUE_REDIS_URL={redis_url}\n")
    with running_dev(first) as dev:
        again = cli("dev", "--port", str(free_port()), cwd=first / ".", env=clean_env())
        assert again.returncode == 1 and "already runs for this project" in again.stderr
        other = cli("dev", "--port", str(free_port()), cwd=second, env=clean_env())
        assert other.returncode == 1, other.stdout
        assert "another project's emailqueue dev" in other.stderr and str(first) in other.stderr
        assert "EMAIL_QUEUE_NAME" in other.stderr and other.stderr.count("\n") == 1
        assert dev.proc.poll() is None  # the first one is undisturbed
    # Once the first stops, its claim is gone and the second may use the queue.
    with running_dev(second) as dev2:
        assert dev2.state(second)["redis_url"] == redis_url


def test_dev_survives_its_reader_going_away(tmp_path: Path) -> None:
    """`emailqueue dev 2>&1 | tee log`, then Ctrl-C: tee dies first. No BrokenPipeError, no stale state."""
    proc = subprocess.Popen(
        [EXE, "dev", "--port", str(free_port())],
        cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    tree: set[int] = set()
    try:
        for line in proc.stdout:
            if "API on" in line:
                break
        tree = descendants(proc.pid)
        proc.stdout.close()  # the reader (tee) is gone
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    proc.stderr.close()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert proc.returncode == 0
    assert not (tmp_path / ".emailqueue" / "dev.json").exists()
    alive = [pid for pid in tree if pid_alive(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert alive == []


@pytest.mark.parametrize("subdir", ["", "a/b/c"])
def test_dev_state_is_found_from_any_subdirectory(tmp_path: Path, subdir: str) -> None:
    from emailqueue._devstate import DevState, find_state, write_state

    (tmp_path / "pyproject.toml").write_text("")
    state = DevState("redis://127.0.0.1:1/0", os.getpid(), str(tmp_path), str(tmp_path / "outbox"))
    write_state(state, tmp_path / ".emailqueue")
    (tmp_path / subdir).mkdir(parents=True, exist_ok=True)
    assert find_state(tmp_path / subdir) == state
    # Outside the project (above its marker) it is not found.
    assert find_state(tmp_path.parent) is None
