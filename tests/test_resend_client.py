"""The Resend client through httpx.MockTransport: headers, and every reply mapped to the right
error class (docs/PLATFORM.md "Resend": permanent vs transient error names)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from emailqueue import PermanentSendError, QuotaExceededError, ResendClient, RetryableSendError, SendError
from emailqueue._resend import USER_AGENT, error_from_exception, parse_retry_after

EMAIL = {"from": "a@example.com", "to": ["b@example.com"], "subject": "s", "text": "t"}


def client_replying(
    status: int,
    body: Any = None,
    headers: dict[str, str] | None = None,
    seen: list[httpx.Request] | None = None,
) -> ResendClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, json=body, headers=headers)

    return ResendClient(
        httpx.Client(transport=httpx.MockTransport(handler)), api_key="re_123", base_url="https://r"
    )


def test_send_posts_with_auth_user_agent_and_idempotency_key() -> None:
    seen: list[httpx.Request] = []
    assert client_replying(200, {"id": "e1"}, seen=seen).send(EMAIL, idempotency_key="emailqueue-j1") == "e1"
    (request,) = seen
    assert request.url == "https://r/emails"
    assert request.headers["authorization"] == "Bearer re_123"
    assert request.headers["user-agent"] == USER_AGENT
    assert request.headers["idempotency-key"] == "emailqueue-j1"
    assert json.loads(request.content) == EMAIL


def err(status: int, name: str) -> dict[str, Any]:
    return {"statusCode": status, "name": name, "message": f"{name} for jo@example.com"}


CASES = [
    (400, "invalid_idempotency_key", PermanentSendError),
    (401, "missing_api_key", PermanentSendError),
    (401, "restricted_api_key", PermanentSendError),
    (403, "invalid_api_key", PermanentSendError),
    (404, "not_found", PermanentSendError),
    (405, "method_not_allowed", PermanentSendError),
    (409, "invalid_idempotent_request", PermanentSendError),
    (409, "concurrent_idempotent_requests", RetryableSendError),
    (422, "validation_error", PermanentSendError),
    (422, "invalid_from_address", PermanentSendError),
    (422, "invalid_attachment", PermanentSendError),
    (422, "missing_required_field", PermanentSendError),
    (451, "security_error", PermanentSendError),
    (429, "rate_limit_exceeded", RetryableSendError),
    (429, "daily_quota_exceeded", QuotaExceededError),
    (429, "monthly_quota_exceeded", QuotaExceededError),
    (500, "internal_server_error", RetryableSendError),
    (500, "application_error", RetryableSendError),
    (503, "service_unavailable", RetryableSendError),
]


@pytest.mark.parametrize(("status", "name", "kind"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_every_resend_error_is_mapped(status: int, name: str, kind: type[SendError]) -> None:
    with pytest.raises(SendError) as info:
        client_replying(status, err(status, name)).send(EMAIL, idempotency_key="k")
    assert type(info.value) is kind
    assert info.value.status_code == status
    assert info.value.name == name
    assert "jo@example.com" not in str(info.value)  # addresses in Resend's messages are masked
    assert "j***@example.com" in info.value.message


def test_quota_is_retryable_but_distinct() -> None:
    assert issubclass(QuotaExceededError, RetryableSendError)


def test_retry_after_is_read_from_429() -> None:
    client = client_replying(429, err(429, "rate_limit_exceeded"), headers={"retry-after": "2"})
    with pytest.raises(RetryableSendError) as info:
        client.send(EMAIL, idempotency_key="k")
    assert info.value.retry_after == 2.0


def test_non_json_error_body_still_classified() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>bad gateway</html>")

    client = ResendClient(
        httpx.Client(transport=httpx.MockTransport(handler)), api_key="k", base_url="https://r"
    )
    with pytest.raises(RetryableSendError) as info:
        client.send(EMAIL, idempotency_key="k")
    assert info.value.name == "http_502"


def test_200_without_id_is_retryable() -> None:
    with pytest.raises(RetryableSendError, match="without an email id"):
        client_replying(200, {"object": "x"}).send(EMAIL, idempotency_key="k")


EXCEPTIONS = [
    (httpx.ConnectTimeout("t"), "connect_timeout"),  # never sent: told apart (see _retry.is_ambiguous)
    (httpx.ReadTimeout("t"), "timeout"),
    (httpx.WriteTimeout("t"), "timeout"),
    (httpx.PoolTimeout("t"), "connect_timeout"),
    (httpx.ConnectError("c"), "connect_error"),
    (httpx.ReadError("r"), "network_error"),
    (httpx.RemoteProtocolError("p"), "network_error"),
    (httpx.DecodingError("d"), "http_error"),
]


@pytest.mark.parametrize(("exc", "name"), EXCEPTIONS, ids=[type(e).__name__ for e, _ in EXCEPTIONS])
def test_every_httpx_exception_is_mapped_to_retryable(exc: httpx.HTTPError, name: str) -> None:
    mapped = error_from_exception(exc)
    assert isinstance(mapped, RetryableSendError)
    assert mapped.name == name


def test_transport_exception_raised_by_send_is_translated() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    client = ResendClient(
        httpx.Client(transport=httpx.MockTransport(handler)), api_key="k", base_url="https://r"
    )
    with pytest.raises(RetryableSendError) as info:
        client.send(EMAIL, idempotency_key="k")
    assert info.value.name == "timeout"
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", now=0.0) == 10.0
