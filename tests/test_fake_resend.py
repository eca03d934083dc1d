"""The fake Resend server behaves as docs/PLATFORM.md says Resend does, and injects its faults."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from emailqueue.testing._fake_resend import FakeResend

EMAIL: dict[str, Any] = {
    "from": "Acme <hello@acme.test>",
    "to": "ada@example.com",
    "subject": "Welcome",
    "html": "<p>Hi</p>",
}
# Built once: each httpx.post would otherwise load the CA bundle again (~40 ms a request).
TLS = ssl.create_default_context()


def other(n: int) -> dict[str, Any]:
    return {**EMAIL, "to": [f"user{n}@example.com"], "subject": f"Hello {n}"}


def post(
    fake: FakeResend,
    body: Any = EMAIL,
    *,
    path: str = "/emails",
    key: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> httpx.Response:
    """POST as a well-behaved client would, on a fresh connection (safe from any thread)."""
    sent = {"Authorization": f"Bearer {fake.api_key}"}
    if key is not None:
        sent["Idempotency-Key"] = key
    sent.update(headers or {})
    return httpx.post(fake.url + path, json=body, headers=sent, timeout=timeout, verify=TLS)


def name_of(response: httpx.Response) -> str:
    body = response.json()
    assert body["statusCode"] == response.status_code
    return str(body["name"])


def eventually(call: Any, until: Any, within: float = 3.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = call()
        if until(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.02)


@pytest.fixture
def fake() -> Iterator[FakeResend]:
    with FakeResend() as server:
        yield server


def test_send_is_accepted_recorded_and_answered_with_its_id(fake: FakeResend) -> None:
    response = post(fake, key="k-1")

    assert response.status_code == 200
    [email] = fake.accepted
    assert response.json() == {"id": email.id}
    uuid.UUID(email.id)
    assert (email.to, email.subject, email.payload) == (["ada@example.com"], "Welcome", EMAIL)
    assert (email.idempotency_key, email.batch, email.batch_index) == ("k-1", False, None)
    assert email.headers["user-agent"].startswith("python-httpx/")
    [request] = fake.requests
    assert (request.method, request.path, request.status) == ("POST", "/emails", 200)
    assert request.headers["idempotency-key"] == "k-1"
    assert b'"subject"' in request.body
    assert fake.accepted_count_by_key() == {"k-1": 1}


@pytest.mark.parametrize(
    ("authorization", "status", "name"),
    [
        (None, 401, "missing_api_key"),
        ("Bearer re_wrong", 403, "invalid_api_key"),
        ("re_test_fake", 403, "invalid_api_key"),
    ],
)
def test_auth_is_required(fake: FakeResend, authorization: str | None, status: int, name: str) -> None:
    headers = {"User-Agent": "test"} if authorization is None else {"Authorization": authorization}
    response = httpx.post(fake.url + "/emails", json=EMAIL, headers=headers)

    assert (response.status_code, name_of(response)) == (status, name)
    assert fake.accepted == []


def test_missing_user_agent_is_403(fake: FakeResend) -> None:
    with httpx.Client(headers={"Authorization": f"Bearer {fake.api_key}"}) as client:
        del client.headers["user-agent"]
        response = client.post(fake.url + "/emails", json=EMAIL)

    assert (response.status_code, name_of(response)) == (403, "missing_user_agent")
    assert fake.accepted == []


@pytest.mark.parametrize(
    ("body", "name", "field"),
    [
        ({k: v for k, v in EMAIL.items() if k != "from"}, "missing_required_field", "`from`"),
        ({k: v for k, v in EMAIL.items() if k != "to"}, "missing_required_field", "`to`"),
        ({k: v for k, v in EMAIL.items() if k != "subject"}, "missing_required_field", "`subject`"),
        ({k: v for k, v in EMAIL.items() if k != "html"}, "missing_required_field", "`html`"),
        ({**EMAIL, "to": [f"u{i}@example.com" for i in range(51)]}, "validation_error", "`to`"),
        ({**EMAIL, "subject": 7}, "validation_error", "`subject`"),
        ({**EMAIL, "tags": [{"name": "has space", "value": "x"}]}, "validation_error", "tag"),
        ({**EMAIL, "tags": 5}, "validation_error", "tag"),
        (["not", "an", "object"], "validation_error", "object"),
    ],
)
def test_invalid_email_is_422_naming_the_problem(fake: FakeResend, body: Any, name: str, field: str) -> None:
    response = post(fake, body)

    assert (response.status_code, name_of(response)) == (422, name)
    assert field in response.json()["message"]
    assert fake.accepted == []


def test_text_alone_and_fifty_recipients_are_valid(fake: FakeResend) -> None:
    body = {**EMAIL, "to": [f"u{i}@example.com" for i in range(50)], "text": "Hi"}
    del body["html"]

    assert post(fake, body).status_code == 200


def test_unknown_path_is_404_and_wrong_method_is_405(fake: FakeResend) -> None:
    missing = httpx.post(fake.url + "/nope", json={})
    wrong = httpx.get(fake.url + "/emails/batch")

    assert (missing.status_code, name_of(missing)) == (404, "not_found")
    assert (wrong.status_code, name_of(wrong)) == (405, "method_not_allowed")
    assert [r.status for r in fake.requests] == [404, 405]


def test_same_key_and_body_replays_the_original_reply_without_sending_again(fake: FakeResend) -> None:
    first = post(fake, key="k-1")
    # Key order differs: the body is compared as parsed JSON, not as bytes.
    second = post(fake, dict(reversed(list(EMAIL.items()))), key="k-1")

    assert second.status_code == 200
    assert second.json() == first.json()
    assert len(fake.accepted) == 1
    assert fake.replays == 1
    assert fake.accepted_count_by_key() == {"k-1": 1}


def test_same_key_with_a_different_body_is_409(fake: FakeResend) -> None:
    post(fake, key="k-1")
    response = post(fake, other(2), key="k-1")

    assert (response.status_code, name_of(response)) == (409, "invalid_idempotent_request")
    assert len(fake.accepted) == 1


@pytest.mark.parametrize("key", ["", "x" * 257])
def test_idempotency_key_must_be_1_to_256_characters(fake: FakeResend, key: str) -> None:
    response = post(fake, key=key)

    assert (response.status_code, name_of(response)) == (400, "invalid_idempotency_key")
    assert fake.accepted == []


def test_same_key_while_the_first_is_in_flight_is_409_concurrent(fake: FakeResend) -> None:
    gate = fake.hold()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, fake, key="k-1")
        assert gate.arrived.wait(5)
        assert fake.held.is_set()
        second = post(fake, key="k-1")
        assert fake.accepted == []
        gate.release()
        assert first.result(5).status_code == 200

    assert (second.status_code, name_of(second)) == (409, "concurrent_idempotent_requests")
    assert len(fake.accepted) == 1
    assert post(fake, key="k-1").json() == first.result().json()


def test_concurrent_sends_with_one_key_are_accepted_once(fake: FakeResend) -> None:
    fake.latency = 0.05  # keep the first request in flight while the others arrive
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: post(fake, key="same"), range(12)))

    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 409}
    assert len(fake.accepted) == 1
    assert {r.json()["id"] for r in responses if r.status_code == 200} == {fake.accepted[0].id}


def test_many_concurrent_clients_are_all_served(fake: FakeResend) -> None:
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda n: post(fake, other(n), key=f"k-{n}"), range(60)))

    assert [r.status_code for r in responses] == [200] * 60
    assert len({e.id for e in fake.accepted}) == 60
    assert set(fake.accepted_count_by_key().values()) == {1}


def test_fail_next_429_carries_retry_after_and_is_not_cached(fake: FakeResend) -> None:
    fake.fail_next(2, 429, "rate_limit_exceeded", retry_after=0.2)

    failed = [post(fake, key="k-1") for _ in range(2)]
    succeeded = post(fake, key="k-1")

    for response in failed:
        assert (response.status_code, name_of(response)) == (429, "rate_limit_exceeded")
        assert response.json()["message"] == "injected"
        assert response.headers["retry-after"] == "0.2"
        assert response.headers["ratelimit-remaining"] == "0"
        assert {"ratelimit-limit", "ratelimit-reset"} <= response.headers.keys()
    assert succeeded.status_code == 200
    assert (len(fake.accepted), fake.replays) == (1, 0)


def test_fail_next_500_then_the_retry_is_processed_fresh(fake: FakeResend) -> None:
    fake.fail_next(1, 500, "internal_server_error", "boom")

    failed = post(fake, key="k-1")
    retried = post(fake, key="k-1")

    assert (failed.status_code, name_of(failed), failed.json()["message"]) == (
        500,
        "internal_server_error",
        "boom",
    )
    assert "retry-after" not in failed.headers
    assert retried.status_code == 200
    assert fake.accepted_count_by_key() == {"k-1": 1}


def test_drop_after_accept_closes_the_connection_then_the_retry_gets_the_original_reply(
    fake: FakeResend,
) -> None:
    fake.drop_after_accept(1)
    with pytest.raises(httpx.RemoteProtocolError):
        post(fake, key="k-drop")
    assert len(fake.accepted) == 1  # accepted although the client saw the connection drop
    replay = post(fake, key="k-drop")
    assert replay.status_code == 200 and replay.json()["id"] == fake.accepted[0].id
    assert [r.status for r in fake.requests] == [0, 200] and fake.replays == 1
    assert len(fake.accepted) == 1


def test_drop_after_accept_in_process_raises_what_httpx_raises_over_http() -> None:
    from emailqueue.testing import ResendModel

    model = ResendModel()
    model.drop_after_accept(1)
    with httpx.Client(transport=model.transport()) as http:
        headers = {"Authorization": f"Bearer {model.api_key}", "Idempotency-Key": "k", "User-Agent": "t"}
        with pytest.raises(httpx.RemoteProtocolError):
            http.post("https://api.resend.com/emails", json=EMAIL, headers=headers)
        assert http.post("https://api.resend.com/emails", json=EMAIL, headers=headers).status_code == 200
    assert len(model.accepted) == 1 and model.replays == 1


def test_timeout_after_accept_then_the_retry_gets_the_original_reply(fake: FakeResend) -> None:
    fake.timeout_after_accept(1, delay=0.5)

    with pytest.raises(httpx.ReadTimeout):
        post(fake, key="k-1", timeout=0.1)
    assert len(fake.accepted) == 1  # accepted although the client saw a timeout
    early = post(fake, key="k-1")
    late = eventually(lambda: post(fake, key="k-1"), lambda r: r.status_code != 409)

    assert (early.status_code, name_of(early)) == (409, "concurrent_idempotent_requests")
    assert late.status_code == 200
    assert late.json() == {"id": fake.accepted[0].id}
    assert fake.accepted_count_by_key() == {"k-1": 1}
    assert fake.replays == 1


def test_a_client_hanging_up_mid_reply_is_quiet(fake: FakeResend, capfd: pytest.CaptureFixture[str]) -> None:
    fake.latency = 0.2
    with socket.create_connection(("127.0.0.1", int(fake.url.rsplit(":", 1)[1]))) as raw:
        raw.sendall(b"POST /emails HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
    with pytest.raises(httpx.ReadTimeout):
        post(fake, timeout=0.05)
    fake.latency = 0.0

    eventually(lambda: len(fake.requests), lambda n: n == 2)
    assert post(fake).status_code == 200
    assert capfd.readouterr().err == ""


def test_batch_strict_rejects_the_whole_batch_for_one_bad_email(fake: FakeResend) -> None:
    fake.reject_recipients = {"user1@example.com"}

    response = post(fake, [other(0), other(1)], path="/emails/batch")

    assert (response.status_code, name_of(response)) == (422, "validation_error")
    assert "emails[1]" in response.json()["message"]
    assert fake.accepted == []


def test_batch_strict_accepts_all_under_the_batch_key(fake: FakeResend) -> None:
    response = post(fake, [other(0), other(1)], path="/emails/batch", key="b-1")
    replay = post(fake, [other(0), other(1)], path="/emails/batch", key="b-1")

    accepted = fake.accepted
    assert response.json() == {"data": [{"id": e.id} for e in accepted]}
    assert [(e.batch, e.batch_index, e.idempotency_key, e.to) for e in accepted] == [
        (True, 0, "b-1", ["user0@example.com"]),
        (True, 1, "b-1", ["user1@example.com"]),
    ]
    assert replay.json() == response.json()
    assert fake.accepted_count_by_key() == {"b-1": 1}


def test_batch_permissive_sends_the_valid_and_reports_the_rest(fake: FakeResend) -> None:
    fake.reject_recipients = {"user1@example.com"}
    items = [other(0), other(1), {**other(2), "subject": ""}, other(3)]

    response = post(fake, items, path="/emails/batch", headers={"x-batch-validation": "permissive"})

    assert response.status_code == 200
    body = response.json()
    assert body["data"] == [{"id": e.id} for e in fake.accepted]
    assert [e.batch_index for e in fake.accepted] == [0, 3]
    assert body["errors"][0] == {"index": 1, "message": "invalid recipient"}
    assert body["errors"][1]["index"] == 2
    assert "`subject`" in body["errors"][1]["message"]


@pytest.mark.parametrize("field", ["attachments", "scheduled_at"])
@pytest.mark.parametrize("mode", ["strict", "permissive"])
def test_batch_refuses_attachments_and_scheduled_at(fake: FakeResend, field: str, mode: str) -> None:
    items = [other(0), {**other(1), field: "x"}]

    response = post(fake, items, path="/emails/batch", headers={"x-batch-validation": mode})

    assert (response.status_code, name_of(response)) == (422, "validation_error")
    assert field in response.json()["message"]
    assert fake.accepted == []


@pytest.mark.parametrize("size", [0, 101])
def test_batch_holds_1_to_100_emails(fake: FakeResend, size: int) -> None:
    response = post(fake, [other(n) for n in range(size)], path="/emails/batch")

    assert (response.status_code, name_of(response)) == (422, "validation_error")


def test_rate_limit_answers_429_over_the_limit() -> None:
    now = [100.0]
    with FakeResend(rate_limit=5, clock=lambda: now[0]) as fake:
        responses = [post(fake, other(n)) for n in range(10)]  # all inside one window
        now[0] += 1.0  # the window has moved on
        after = post(fake, other(10))

    statuses = [r.status_code for r in responses]
    assert statuses == [200] * 5 + [429] * 5
    assert after.status_code == 200
    assert len(fake.accepted) == 6
    limited = responses[5]
    assert (limited.status_code, name_of(limited)) == (429, "rate_limit_exceeded")
    assert limited.headers["retry-after"] == "1"
    assert limited.headers["ratelimit-limit"] == "5"
    assert limited.headers["ratelimit-remaining"] == "0"
    assert limited.headers["ratelimit-reset"] == "1"


def test_random_faults_repeat_for_the_same_seed(fake: FakeResend) -> None:
    def run(seed: int) -> list[int]:
        fake.reset()
        fake.set_error_rate(p500=0.3, p429=0.3, seed=seed)
        return [post(fake, other(n)).status_code for n in range(30)]

    first, again, different = run(1), run(1), run(2)

    assert first == again
    assert first != different
    assert {200, 429, 500} <= set(first)
    assert len(fake.accepted) == different.count(200)


def test_random_timeouts_accept_then_reply_late(fake: FakeResend) -> None:
    fake.set_error_rate(p_timeout=1.0, timeout_delay=0.3)

    with pytest.raises(httpx.ReadTimeout):
        post(fake, timeout=0.05)

    assert len(fake.accepted) == 1


def test_set_error_rate_rejects_impossible_rates(fake: FakeResend) -> None:
    with pytest.raises(ValueError, match="sum to at most 1"):
        fake.set_error_rate(p500=0.6, p429=0.6)


def test_reset_forgets_the_record_the_cache_and_the_faults(fake: FakeResend) -> None:
    post(fake, key="k-1")
    fake.fail_next(3, 500, "internal_server_error")
    fake.reset()

    assert (fake.accepted, fake.requests, fake.replays) == ([], [], 0)
    assert post(fake, key="k-1").status_code == 200  # neither failed nor replayed
    assert fake.replays == 0


def test_stop_is_prompt_and_releases_a_held_request() -> None:
    fake = FakeResend(latency=0.0).start()
    gate = fake.hold()
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(post, fake)
        assert gate.arrived.wait(5)
        fake.stop()  # releases the held request instead of waiting for it
        assert held.result(5).status_code == 200

    with pytest.raises(RuntimeError, match="not running"):
        _ = fake.url


# --- model and server apart; run by hand ---


def test_the_model_answers_in_process_through_an_httpx_mock_transport() -> None:
    from emailqueue import ResendClient
    from emailqueue.testing import ResendModel

    model = ResendModel()
    with httpx.Client(transport=model.transport()) as http:
        client = ResendClient(http, api_key=model.api_key)
        email_id = client.send(EMAIL, idempotency_key="k-1")
        assert client.send(EMAIL, idempotency_key="k-1") == email_id  # replayed, not sent again
    assert [e.to for e in model.accepted] == [["ada@example.com"]]
    assert model.replays == 1


def test_get_emails_lists_what_was_accepted_and_each_request_is_logged(
    fake: FakeResend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="emailqueue.fake_resend")
    post(fake, other(1))
    post(fake, {**EMAIL, "to": []})  # refused: not listed
    listing = httpx.get(fake.url + "/emails", headers={"Authorization": f"Bearer {fake.api_key}"})
    assert listing.status_code == 200
    assert [(e["to"], e["subject"]) for e in listing.json()["data"]] == [(["user1@example.com"], "Hello 1")]
    assert httpx.get(fake.url + "/emails").status_code == 401  # the listing needs the key too
    lines = [r.getMessage() for r in caplog.records if r.name == "emailqueue.fake_resend"]
    assert [line.split()[:3] for line in lines] == [
        ["POST", "/emails", "200"],
        ["POST", "/emails", "422"],
        ["GET", "/emails", "200"],
        ["GET", "/emails", "401"],
    ]


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "emailqueue.testing"],
        [sys.executable, "-m", "emailqueue.testing._fake_resend"],
        [str(Path(sys.executable).with_name("emailqueue-fake-resend"))],
    ],
    ids=["python -m emailqueue.testing", "python -m ..._fake_resend", "console script"],
)
def test_it_runs_standalone_without_warnings(command: list[str], tmp_path: Path) -> None:
    """A person runs the fake by hand: it serves, lists what it accepted, logs each request,
    and prints no warning (PYTHONWARNINGS=error would turn one into a crash)."""
    proc = subprocess.Popen(
        [*command, "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"PYTHONWARNINGS": "error", "PATH": "/usr/bin:/bin"},
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+", banner)
        assert match is not None, banner + proc.stdout.read()
        url = match.group() + "/emails"
        headers = {"Authorization": "Bearer re_test_fake"}
        assert httpx.post(url, json=EMAIL, headers=headers).status_code == 200
        assert len(httpx.get(url, headers=headers).json()["data"]) == 1
    finally:
        proc.terminate()
        rest, _ = proc.communicate(timeout=10)
    assert "Warning" not in banner + rest, banner + rest
    assert "POST /emails 200" in rest and "GET /emails 200" in rest, rest
