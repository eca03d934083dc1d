"""`emailqueue check` / scripts/test_queue_connection.py against real servers the test starts.

Every case names the diagnosis a user would read and the exit code a script would see.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from emailqueue._check import check_api_key, main, run_checks
from emailqueue._check_redis import PROBE_FUNC_PATH, StepResult, probe, upstash_tls_hint
from emailqueue._embedded import EmbeddedRedis
from emailqueue._settings import REDIS_URL_VARIABLES, Settings, load_settings, redis_url_source
from emailqueue.testing import FakeResend

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "test_queue_connection.py"
REDIS_STEPS = [
    "url",
    "dns",
    "tcp",
    "tls",
    "auth",
    "ping",
    "server",
    "durability",
    "eval",
    "client",
    "round_trip",
]
# Every variable the check or the settings read: the caller's environment must not leak in.
ENV_VARS = {"QUEUE_REDIS_CA_CERT", *REDIS_URL_VARIABLES, *(name.upper() for name in Settings.model_fields)}
GOOD_KEY = "re_AbCd1234_EfGhIjKlMnOpQrStUvWxYz0123"
RIGHT_PW, WRONG_PW = "Right-Pw-4f9c2a", "Wrong-Pw-7b1e5d"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing from the caller's environment or a .env file in the working directory leaks in."""
    for name in list(os.environ):
        if name.upper() in ENV_VARS:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedRedis]:
    """A good server: it also fsyncs every write before replying, so no step warns."""
    with EmbeddedRedis(appendonly=True, extra_args=["--appendfsync", "always"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    aclfile = tmp_path_factory.mktemp("acl") / "users.acl"
    aclfile.write_text(
        "user default on nopass ~* &* +@all\n"
        "user limited on >pw ~* &* +@all -eval -evalsha -client\n"
        "user noclient on >pw ~* &* +@all -client\n"
        "user nodel on >pw ~* &* +@all -del -unlink\n"
    )
    with EmbeddedRedis(aclfile=aclfile) as srv:
        yield srv


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def by_name(results: list[StepResult]) -> dict[str, StepResult]:
    return {r.name: r for r in results}


def statuses(results: list[StepResult]) -> dict[str, str]:
    return {r.name: r.status for r in results}


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out + err


def test_a_good_server_passes_every_step_and_leaves_no_key_behind(
    server: EmbeddedRedis, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = redis.Redis.from_url(server.url)
    try:
        conn.set("app:data", "kept")
        before = conn.dbsize()
        code, out = run_main(capsys, "--url", server.url)
        assert code == 0, out
        assert conn.dbsize() == before
        assert conn.get("app:data") == b"kept"
        assert not conn.exists("rq:queues")
    finally:
        conn.close()
    lines = {line[7:18].strip(): line for line in out.splitlines() if line.startswith("[")}
    assert list(lines) == ["settings", *REDIS_STEPS, "api_key"]
    assert all(line.startswith(("[ ok ]", "[WARN]")) for line in lines.values()), out
    assert "no keys left behind" in lines["round_trip"]
    assert "valkey 9." in lines["server"]
    assert "median" in lines["ping"] and "ms" in lines["ping"]
    assert out.rstrip().splitlines()[-1].startswith("OK: every required step passed")


def test_the_probe_job_function_is_importable_by_its_path() -> None:
    module, _, name = PROBE_FUNC_PATH.rpartition(".")
    assert getattr(sys.modules[module], name) is probe
    assert probe(token="x") == "ok"


def test_a_closed_port_is_connection_refused_and_later_steps_are_skipped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    code, out = run_main(capsys, "--url", f"redis://127.0.0.1:{port}/0")
    assert code == 1
    assert f"connection refused: is Redis running on 127.0.0.1:{port}?" in out
    results = run_checks(f"redis://127.0.0.1:{port}/0")
    assert statuses(results)["tcp"] == "fail"
    assert "start Redis" in by_name(results)["tcp"].fix
    assert [r.status for r in results[3:10]] == ["skip"] * 7


def test_a_wrong_password_fails_auth_and_is_never_printed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with EmbeddedRedis(password=RIGHT_PW) as srv:
        monkeypatch.setenv("QUEUE_REDIS_URL", f"redis://:{WRONG_PW}@127.0.0.1:{srv.port}/0")
        code, out = run_main(capsys)
        code_json, out_json = run_main(capsys, "--json")
    assert code == 1 and code_json == 1
    assert "[FAIL] auth" in out
    assert "Redis refused the password" in out
    assert "fix: check the password in QUEUE_REDIS_URL" in out
    assert f"QUEUE_REDIS_URL = redis://:***@127.0.0.1:{srv.port}/0" in out
    for text in (out, out_json):
        assert WRONG_PW not in text and RIGHT_PW not in text
    steps = {s["name"]: s for s in json.loads(out_json)["steps"]}
    assert steps["auth"]["status"] == "fail"
    assert steps["auth"]["fix"] == "check the password in QUEUE_REDIS_URL"


def test_a_missing_password_gets_the_noauth_explanation(monkeypatch: pytest.MonkeyPatch) -> None:
    with EmbeddedRedis(password=RIGHT_PW) as srv:
        results = run_checks(f"redis://127.0.0.1:{srv.port}/0", source="REDIS_URL")
    auth = by_name(results)["auth"]
    assert auth.status == "fail"
    assert "requires a password and the URL has none (NOAUTH" in auth.detail
    assert auth.fix.startswith("put the password in REDIS_URL")
    assert statuses(results)["round_trip"] == "skip"


def test_a_user_without_eval_fails_the_eval_step_naming_the_command(
    acl_server: EmbeddedRedis, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://limited:pw@127.0.0.1:{acl_server.port}/0"
    code, out = run_main(capsys, "--url", url)
    assert code == 1
    results = by_name(run_checks(url))
    assert results["eval"].status == "fail"
    assert "EVAL is refused" in results["eval"].detail
    assert "no permissions to run the 'eval' command" in results["eval"].detail
    assert "+eval +evalsha" in results["eval"].fix
    # Not blocking: the rest of the diagnosis still runs.
    assert results["client"].status == "warn"
    assert results["round_trip"].status == "ok"
    assert "[FAIL] eval" in out


def test_a_user_without_client_only_gets_a_warning(
    acl_server: EmbeddedRedis, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://noclient:pw@127.0.0.1:{acl_server.port}/0"
    code, out = run_main(capsys, "--url", url)
    assert code == 0, out
    assert "[WARN] client" in out
    assert "'client|setname'" in out
    assert "logged in as 'noclient'" in out
    assert "[ ok ] round_trip" in out


def test_a_user_who_cannot_delete_is_told_which_probe_keys_are_left(acl_server: EmbeddedRedis) -> None:
    results = by_name(run_checks(f"redis://nodel:pw@127.0.0.1:{acl_server.port}/0"))
    trip = results["round_trip"]
    assert trip.status == "fail"
    assert trip.detail.startswith("could not delete the probe's keys: ")
    named = trip.detail.split(": ", 1)[1].split(", ")
    admin = redis.Redis.from_url(acl_server.url)
    try:
        assert named and all(admin.exists(key) for key in named)  # the report tells the truth
        assert all(
            key.startswith(("rq:job:emailqueue-check-", "rq:queue:emailqueue-check-")) for key in named
        )
        admin.delete(*named)
    finally:
        admin.close()


def test_a_password_with_url_escapes_works_and_is_never_printed(capsys: pytest.CaptureFixture[str]) -> None:
    password = "p@ss w/rd%41:x"
    with EmbeddedRedis(password=password) as srv:
        code, out = run_main(capsys, "--url", srv.url, "--json")
    assert code == 0, out
    assert password not in out and quote(password, safe="") not in out
    assert json.loads(out)["steps"][1]["detail"] == f"--url = redis://:***@127.0.0.1:{srv.port}/0"


def test_a_unix_socket_url_skips_the_network_steps(tmp_path: Path) -> None:
    path = tmp_path / "redis.sock"
    with EmbeddedRedis(extra_args=["--unixsocket", str(path), "--unixsocketperm", "700"]) as srv:
        results = by_name(run_checks(f"unix://{path}?db=0"))
        assert srv.is_running()
    assert [results[n].status for n in ("dns", "tcp", "tls")] == ["ok"] * 3
    assert results["tcp"].detail == "not needed for a unix socket"
    # Every step passes; durability warns (this server keeps no AOF), as on any such server.
    assert all(results[n].status == "ok" for n in REDIS_STEPS if n != "durability"), results
    assert results["durability"].status == "warn"


def test_an_unresolvable_host_fails_dns_and_skips_the_rest(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_main(capsys, "--url", "redis://no-such-host.invalid:6379")
    assert code == 1
    assert "[FAIL] dns        cannot resolve host 'no-such-host.invalid'" in out
    assert "check the host name in --url" in out
    for step in REDIS_STEPS[2:]:
        assert f"[skip] {step:<10} skipped: the dns step failed" in out


def test_a_plain_redis_url_to_upstash_gets_the_rediss_hint() -> None:
    hint = upstash_tls_hint("redis://default:tok3n@eu1-fancy-cat-123.upstash.io:6379")
    assert hint == "Upstash only accepts TLS: use rediss://default:***@eu1-fancy-cat-123.upstash.io:6379"
    assert upstash_tls_hint("rediss://default:tok3n@eu1-fancy-cat-123.upstash.io:6379") is None
    assert upstash_tls_hint("redis://localhost:6379") is None
    assert upstash_tls_hint("redis://upstash.io.evil.example:6379") is None


def test_the_upstash_hint_fails_the_url_step_before_any_network_use() -> None:
    def no_dns(host: str, port: int) -> list[str]:
        raise AssertionError("the check should not resolve a URL it knows is wrong")

    url = "redis://default:tok3n@eu1-fancy-cat-123.upstash.io:6379"
    results = by_name(run_checks(url, source="KV_URL", resolve=no_dns))
    assert results["url"].status == "fail"
    assert results["url"].detail == "KV_URL = redis://default:***@eu1-fancy-cat-123.upstash.io:6379: " + (
        "a plain redis:// URL to Upstash"
    )
    assert (
        results["url"].fix
        == "Upstash only accepts TLS: use rediss://default:***@eu1-fancy-cat-123.upstash.io:6379"
    )
    assert results["dns"].status == "skip"
    assert all("tok3n" not in r.detail + r.fix for r in results.values())


def test_rediss_to_a_server_without_tls_fails_the_tls_step(server: EmbeddedRedis) -> None:
    results = by_name(run_checks(f"rediss://127.0.0.1:{server.port}/0", timeout=0.5))
    assert results["tcp"].status == "ok"
    assert results["tls"].status == "fail"
    assert "use redis:// for a server without TLS" in results["tls"].fix
    assert results["auth"].status == "skip"


def test_a_missing_ca_file_is_named(server: EmbeddedRedis, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    results = by_name(run_checks(f"rediss://127.0.0.1:{server.port}/0", ca_cert=str(missing), timeout=0.5))
    assert results["tls"].detail == f"CA file {missing} not found"
    assert "QUEUE_REDIS_CA_CERT" in results["tls"].fix


def test_json_output_parses_and_matches_the_steps(
    server: EmbeddedRedis, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESEND_API_KEY", GOOD_KEY)
    code, out = run_main(capsys, "--url", server.url, "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True
    assert [s["name"] for s in report["steps"]] == ["settings", *REDIS_STEPS, "api_key"]
    assert all(set(s) == {"name", "status", "detail", "fix"} for s in report["steps"])
    assert {s["status"] for s in report["steps"]} == {"ok"}
    assert GOOD_KEY not in out

    code, out = run_main(capsys, "--url", f"redis://127.0.0.1:{free_port()}/0", "--json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    got = {s["name"]: s["status"] for s in report["steps"]}
    assert got["tcp"] == "fail" and got["round_trip"] == "skip" and got["api_key"] == "ok"


def test_no_redis_url_at_all_fails_the_url_step(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_main(capsys)
    assert code == 1
    assert "[FAIL] url        no Redis URL: QUEUE_REDIS_URL is not set (nor REDIS_URL or KV_URL)" in out
    assert "[skip] dns" in out


def test_a_bad_setting_fails_but_the_connection_is_still_diagnosed(
    server: EmbeddedRedis, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMAIL_MAX_ATTEMPTS", "0")
    monkeypatch.setenv("REDIS_URL", server.url)
    code, out = run_main(capsys)
    assert code == 1
    assert "[FAIL] settings   invalid configuration: EMAIL_MAX_ATTEMPTS" in out
    assert f"[ ok ] url        REDIS_URL = {server.url}" in out
    assert "[ ok ] round_trip" in out


def test_a_url_that_is_not_a_redis_url_fails_the_url_step(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KV_URL", "https://user:s3cr3t-token@example.com")
    code, out = run_main(capsys)
    assert code == 1
    assert "[FAIL] url        KV_URL = https://user:***@example.com is not a valid Redis URL" in out
    assert "[skip] dns" in out
    assert "s3cr3t-token" not in out


def test_the_url_source_names_where_the_settings_found_the_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("QUEUE_REDIS_URL", "REDIS_URL", "KV_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REDIS_URL", "redis://a:1")
    monkeypatch.setenv("KV_URL", "redis://b:1")
    settings = load_settings()
    assert (settings.queue_redis_url, redis_url_source(settings)) == ("redis://a:1", "REDIS_URL")
    monkeypatch.delenv("REDIS_URL")
    (tmp_path / ".env").write_text("QUEUE_REDIS_URL=redis://c:1\n")
    settings = load_settings()
    assert (settings.queue_redis_url, redis_url_source(settings)) == ("redis://b:1", "KV_URL")
    monkeypatch.delenv("KV_URL")
    settings = load_settings()
    assert (settings.queue_redis_url, redis_url_source(settings)) == (
        "redis://c:1",
        "QUEUE_REDIS_URL in .env",
    )
    # An empty variable is ignored, as the settings ignore it (env_ignore_empty).
    monkeypatch.setenv("QUEUE_REDIS_URL", "")
    monkeypatch.setenv("REDIS_URL", "redis://a:1")
    settings = load_settings()
    assert (settings.queue_redis_url, redis_url_source(settings)) == ("redis://a:1", "REDIS_URL")


def test_an_empty_queue_redis_url_does_not_hide_redis_url(
    server: EmbeddedRedis, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUEUE_REDIS_URL", "")
    monkeypatch.setenv("REDIS_URL", server.url)
    code, out = run_main(capsys)
    assert code == 0, out
    assert f"REDIS_URL = {server.url}" in out


def test_the_url_in_dot_env_is_found_and_named(
    server: EmbeddedRedis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(f"KV_URL={server.url}\n")
    code, out = run_main(capsys)
    assert code == 0, out
    assert f"KV_URL in .env = {server.url}" in out


@pytest.mark.parametrize(
    ("key", "status", "expected"),
    [
        (None, "warn", "RESEND_API_KEY is not set"),
        ("", "warn", "RESEND_API_KEY is not set"),
        ("sk_live_0123456789abcdef", "fail", "does not start with re_ (24 chars)"),
        ("re_short", "fail", "has unexpected characters or length (8 chars)"),
        ("re_abc def ghijklmnop", "fail", "has unexpected characters or length"),
        (GOOD_KEY, "ok", f"RESEND_API_KEY is set: re_…({len(GOOD_KEY)} chars)"),
    ],
)
def test_the_resend_api_key_check(key: str | None, status: str, expected: str) -> None:
    result = check_api_key(key)
    assert result.status == status
    assert expected in result.detail
    assert status == "ok" or "resend.com/api-keys" in result.fix
    if key:
        assert key not in result.detail + result.fix


def test_send_test_sends_exactly_one_email_through_resend(
    server: EmbeddedRedis, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeResend() as fake:
        monkeypatch.setenv("RESEND_API_KEY", fake.api_key)
        monkeypatch.setenv("RESEND_API_URL", fake.url)
        monkeypatch.setenv("EMAIL_FROM", "Acme <hello@acme.dev>")
        code, out = run_main(capsys, "--url", server.url, "--send-test", "ada@example.com")
        accepted = fake.accepted
    assert code == 0, out
    assert [e.to for e in accepted] == [["ada@example.com"]]
    assert accepted[0].payload["from"] == "Acme <hello@acme.dev>"
    assert "[ ok ] send_test  Resend accepted a test email to a***@example.com" in out
    assert fake.api_key not in out


def test_send_test_with_a_key_resend_rejects_fails_with_the_fix(server: EmbeddedRedis) -> None:
    with FakeResend() as fake:
        results = run_checks(
            server.url,
            api_key=GOOD_KEY,
            send_to="ada@example.com",
            sender="a@acme.dev",
            resend_api_url=fake.url,
        )
        assert fake.accepted == []
    send = by_name(results)["send_test"]
    assert send.status == "fail"
    assert "403 invalid_api_key" in send.detail
    assert send.fix == "check RESEND_API_KEY (resend.com/api-keys)"
    assert GOOD_KEY not in send.detail


def test_send_test_without_a_key_or_sender_fails(server: EmbeddedRedis) -> None:
    no_key = by_name(run_checks(server.url, send_to="ada@example.com", sender="a@acme.dev"))
    assert no_key["send_test"].status == "fail"
    assert "no usable RESEND_API_KEY" in no_key["send_test"].detail
    no_sender = by_name(run_checks(server.url, api_key=GOOD_KEY, send_to="ada@example.com"))
    assert no_sender["send_test"].detail == "no sender: set EMAIL_FROM or pass --from"


def test_the_script_runs_as_a_subprocess(server: EmbeddedRedis, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k.upper() not in ENV_VARS}
    env["REDIS_URL"] = server.url
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert by_name([StepResult(**s) for s in report["steps"]])["url"].detail == f"REDIS_URL = {server.url}"

    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--url", f"redis://127.0.0.1:{free_port()}/0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "connection refused" in done.stdout


def test_steps_are_pure_functions_of_a_frozen_probe() -> None:
    from emailqueue._check_redis import Probe, check_url

    start = Probe("redis://:pw@example.com:6380/2", "QUEUE_REDIS_URL")
    (status, detail, _), after = check_url(start)
    assert status == "ok" and "pw" not in detail
    assert (after.host, after.port) == ("example.com", 6380)
    assert (start.host, start.port, dict(start.opts)) == ("localhost", 6379, {})  # the input is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        start.host = "elsewhere"  # type: ignore[misc]


def test_checker_modules_import_no_private_names() -> None:
    """STYLE: a name used by another module is public in its own module."""
    for name in ("_check.py", "_check_redis.py", "_check_server.py", "_connection.py", "_dev.py", "_cli.py"):
        tree = ast.parse((ROOT / "emailqueue" / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{name} imports private {private} from {node.module}"


def test_durability_warns_that_a_server_without_persistence_loses_everything_on_a_crash() -> None:
    with EmbeddedRedis() as srv:
        results = by_name(run_checks(url=srv.url, source="--url"))
    step = results["durability"]
    assert step.status == "warn"
    assert "AOF off" in step.detail and "0 replica(s)" in step.detail and "lose everything" in step.detail
    assert "appendonly yes" in step.fix


@pytest.mark.parametrize(
    ("fsync", "status", "says"),
    [("everysec", "warn", "last 1-2 s"), ("always", "ok", "every acknowledged write is on disk")],
)
def test_durability_reports_the_aof_policy_and_what_closes_the_gap(
    fsync: str, status: str, says: str
) -> None:
    with EmbeddedRedis(appendonly=True, extra_args=["--appendfsync", fsync]) as srv:
        step = by_name(run_checks(url=srv.url, source="--url"))["durability"]
    assert step.status == status
    assert f"AOF on (appendfsync {fsync})" in step.detail and says in step.detail
    if status == "warn":  # durable=True is refused under everysec: the fix is the fsync policy
        assert "appendfsync always" in step.fix and "EMAIL_DURABLE=1" in step.fix


def test_durability_without_config_access_still_reads_info(tmp_path: Path) -> None:
    """Upstash restricts CONFIG: the step reads INFO and says the fsync policy is unknown."""
    aclfile = tmp_path / "users.acl"
    aclfile.write_text("user default on nopass ~* &* +@all -config\n")
    with EmbeddedRedis(appendonly=True, aclfile=aclfile) as srv:
        step = by_name(run_checks(url=srv.url, source="--url"))["durability"]
    assert step.status == "warn"
    assert "appendfsync unknown" in step.detail and "RDB unknown" in step.detail
