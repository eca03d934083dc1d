"""A small Resend client on an injected ``httpx.Client``.

Every Resend reply and every httpx exception is translated into the :class:`SendError`
tree here and nowhere else (docs/PLATFORM.md, "Resend": error names and which are permanent).
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import Any

import httpx

from ._exceptions import PermanentSendError, QuotaExceededError, RetryableSendError, SendError
from ._redact import redact_text
from ._version import __version__

USER_AGENT = f"emailqueue/{__version__}"

# 409 names: a mismatch is our bug (permanent); a concurrent request is still running (retry).
_CONCURRENT = "concurrent_idempotent_requests"
_QUOTA_NAMES = frozenset({"daily_quota_exceeded", "monthly_quota_exceeded"})
_RETRYABLE_4XX = frozenset({408, 425})


def build_http_client(*, connect_timeout: float = 5.0, read_timeout: float = 15.0) -> httpx.Client:
    """An ``httpx.Client`` with explicit timeouts: a send can never block a worker forever
    (RQ's thread-safe death penalty cannot interrupt a blocking socket read)."""
    timeout = httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout)
    return httpx.Client(timeout=timeout, headers={"User-Agent": USER_AGENT})


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``retry-after`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def error_from_response(response: httpx.Response, *secrets: str) -> SendError:
    """Map a non-2xx Resend reply to the right :class:`SendError` subclass.

    The message is redacted here, once, before it can reach a log, a job record or a traceback:
    addresses are masked, and API keys (``secrets`` literally, and anything shaped like one) and
    URL credentials are removed.
    """
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    name = str(body.get("name") or f"http_{status}")
    message = redact_text(str(body.get("message") or response.reason_phrase or "no message"), *secrets)
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    kwargs: dict[str, Any] = {"status_code": status, "name": name, "retry_after": retry_after}
    if status == 429 and name in _QUOTA_NAMES:
        return QuotaExceededError(message, **kwargs)
    if status == 429 or status >= 500 or status in _RETRYABLE_4XX:
        return RetryableSendError(message, **kwargs)
    if status == 409 and name == _CONCURRENT:
        return RetryableSendError(message, **kwargs)
    if 400 <= status < 500:
        return PermanentSendError(message, **kwargs)
    return RetryableSendError(f"unexpected reply {status}: {message}", **kwargs)


def error_from_exception(exc: httpx.HTTPError) -> SendError:
    """Map an httpx exception (timeouts, network errors) to a retryable :class:`SendError`.

    A timeout is retryable because the retry carries the same Idempotency-Key: if Resend did
    accept the first request, it answers the retry with the original reply and sends nothing.
    A connection that never opened (``connect_timeout``, ``connect_error``; a pool timeout is one
    too) is told apart: that request cannot have reached Resend (see ``_retry.is_ambiguous``).
    """
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return RetryableSendError(
            f"could not connect to Resend in time ({type(exc).__name__})", name="connect_timeout"
        )
    if isinstance(exc, httpx.ConnectError):
        return RetryableSendError(f"could not connect to Resend ({type(exc).__name__})", name="connect_error")
    if isinstance(exc, httpx.TimeoutException):
        return RetryableSendError(f"no reply from Resend in time ({type(exc).__name__})", name="timeout")
    if isinstance(exc, httpx.TransportError):
        return RetryableSendError(f"could not reach Resend ({type(exc).__name__})", name="network_error")
    return RetryableSendError(f"HTTP error talking to Resend ({type(exc).__name__})", name="http_error")


@dataclass(frozen=True)
class BatchResult:
    """What Resend did with a batch: email id by index, and the reason for each rejected index."""

    ids: dict[int, str]
    errors: dict[int, str]


class ResendClient:
    """Sends emails to Resend's REST API.

    Args:
        http: the ``httpx.Client`` to use; tests pass one with ``httpx.MockTransport`` or one
            pointed at :class:`emailqueue.testing.FakeResend`.
        api_key: the Resend API key.
        base_url: ``https://api.resend.com`` unless testing.
    """

    def __init__(self, http: httpx.Client, *, api_key: str, base_url: str = "https://api.resend.com") -> None:
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._headers = {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT}

    def close(self) -> None:
        """Close the ``httpx.Client`` (its connection pool)."""
        self._http.close()

    def send(self, email: dict[str, Any], *, idempotency_key: str) -> str:
        """``POST /emails`` with an Idempotency-Key; returns Resend's email id.

        Raises:
            RetryableSendError: transient (timeout, network, 5xx, 429, concurrent 409).
            QuotaExceededError: the daily or monthly quota is used up.
            PermanentSendError: Resend rejected the email for good.
        """
        reply = self._post("/emails", email, idempotency_key)
        if not isinstance(reply, dict) or not isinstance(reply.get("id"), str):
            raise RetryableSendError("Resend replied 200 without an email id", name="bad_reply")
        return str(reply["id"])

    def send_batch(self, emails: list[dict[str, Any]], *, idempotency_key: str) -> BatchResult:
        """``POST /emails/batch`` in permissive mode: the valid emails are sent even if some
        are rejected. One Idempotency-Key covers the whole batch.

        Returns:
            The Resend id of each accepted email by its index, and each rejected index's reason.

        Raises:
            The same errors as :meth:`send`, for the batch as a whole.
        """
        reply = self._post("/emails/batch", emails, idempotency_key, {"x-batch-validation": "permissive"})
        data = reply.get("data") if isinstance(reply, dict) else None
        if not isinstance(data, list):
            raise RetryableSendError("Resend replied 200 to a batch without 'data'", name="bad_reply")
        errors = {
            int(e["index"]): redact_text(str(e.get("message", "rejected")), self._api_key)
            for e in reply.get("errors") or []
            if isinstance(e, dict) and isinstance(e.get("index"), int)
        }
        accepted = [i for i in range(len(emails)) if i not in errors]
        ids = {i: str(d.get("id", "")) for i, d in zip(accepted, data, strict=False) if isinstance(d, dict)}
        return BatchResult(ids=ids, errors=errors)

    def list_suppressions(self, *, page_size: int = 100) -> list[dict[str, Any]]:
        """Every entry of the team's suppression list (``GET /suppressions``, page by page):
        dicts with ``id``, ``email``, ``origin`` (bounce, complaint, manual) and ``created_at``.

        Raises:
            SendError: as for :meth:`send` (the call is safe to repeat).
        """
        rows: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page_size, **({"after": after} if after else {})}
            reply = self._request("GET", "/suppressions", params=params)
            data = reply.get("data") if isinstance(reply, dict) else None
            if not isinstance(data, list):
                raise RetryableSendError(
                    "Resend replied to GET /suppressions without 'data'", name="bad_reply"
                )
            page = [d for d in data if isinstance(d, dict)]
            rows += page
            if not reply.get("has_more") or not page:
                return rows
            after = str(page[-1].get("id"))

    def remove_suppression(self, address: str) -> None:
        """``DELETE /suppressions/{email}``: Resend may send to ``address`` again. A 404 (not on
        the list) counts as removed.

        Raises:
            SendError: as for :meth:`send`.
        """
        from urllib.parse import quote

        try:
            self._request("DELETE", f"/suppressions/{quote(address, safe='@')}")
        except SendError as exc:
            if exc.status_code != 404:
                raise

    def _request(self, method: str, path: str, params: dict[str, Any] | None = None) -> Any:
        try:
            response = self._http.request(method, self._base_url + path, params=params, headers=self._headers)
        except httpx.HTTPError as exc:
            raise error_from_exception(exc) from exc
        return self._reply(response)

    def _post(self, path: str, body: Any, idempotency_key: str, extra: dict[str, str] | None = None) -> Any:
        headers = {**self._headers, "Idempotency-Key": idempotency_key, **(extra or {})}
        try:
            response = self._http.post(self._base_url + path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise error_from_exception(exc) from exc
        return self._reply(response)

    def _reply(self, response: httpx.Response) -> Any:
        """A successful reply's JSON body; otherwise the mapped :class:`SendError`."""
        if not response.is_success:
            raise error_from_response(response, self._api_key)
        try:
            return response.json()
        except ValueError as exc:
            raise RetryableSendError("Resend replied with invalid JSON", name="bad_reply") from exc
