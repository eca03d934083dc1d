"""The one exception tree of emailqueue.

::

    EmailQueueError
    ├── ConfigurationError          a setting is missing or invalid
    ├── InvalidEmailError           a message failed validation at enqueue; nothing was queued
    │   └── SuppressedAddressError  a recipient is on the suppression list
    ├── QueueError                  Redis could not be reached or refused a command
    ├── WebhookError                a webhook's signature or body is wrong; nothing was recorded
    └── SendError                   Resend did not accept an email
        ├── RetryableSendError      transient: retried with backoff and the same idempotency key
        │   └── QuotaExceededError  daily/monthly quota: the email waits, attempts are not spent
        └── PermanentSendError      the job fails at once; retrying cannot help

Every error that leaves the package is one of these, so callers can catch
``EmailQueueError`` and know nothing else escapes.
"""

from __future__ import annotations

from dataclasses import dataclass


class EmailQueueError(Exception):
    """Base class of every error raised by emailqueue."""


class ConfigurationError(EmailQueueError):
    """A setting is missing or invalid. The message names the variable and the fix."""


@dataclass(frozen=True)
class FieldProblem:
    """One validation problem: the field it belongs to (``to[3]``, ``tags[0].name``) and what is wrong."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class InvalidEmailError(EmailQueueError, ValueError):
    """A message failed validation. Raised at enqueue time, before anything is written to Redis.

    Attributes:
        problems: every problem found, each naming its field.
    """

    def __init__(self, problems: list[FieldProblem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        count = len(self.problems)
        super().__init__(f"invalid email ({count} problem{'s' if count != 1 else ''}):\n{lines}")

    @property
    def fields(self) -> list[str]:
        """The names of the fields that have a problem, in order."""
        return [p.field for p in self.problems]


class SuppressedAddressError(InvalidEmailError):
    """A recipient is on the suppression list (Resend's, mirrored locally): nothing was queued.

    Attributes:
        origins: masked address -> where its suppression came from (bounce, complaint, manual).
    """

    def __init__(self, origins: dict[str, str]) -> None:
        self.origins = dict(origins)
        super().__init__(
            [
                FieldProblem(
                    "to",
                    f"{address} is on the suppression list (origin: {origin}); Resend would not "
                    "deliver it. Remove it (`emailqueue suppressions remove`) or pass "
                    "allow_suppressed=True",
                )
                for address, origin in sorted(self.origins.items())
            ]
        )


class QueueError(EmailQueueError):
    """Redis could not be reached, timed out, or refused a command. Nothing was half-written."""


class WebhookError(EmailQueueError):
    """A webhook was refused: a missing or wrong signature, a stale timestamp, or a body that is
    not a Resend event. Nothing was recorded.

    Attributes:
        status_code: 401 for a signature problem, 400 for a signed body that is not an event.
    """

    def __init__(self, message: str, *, status_code: int = 401) -> None:
        super().__init__(message)
        self.status_code = status_code


class SendError(EmailQueueError):
    """Resend did not accept an email.

    Attributes:
        status_code: the HTTP status, or ``None`` for a network error or timeout.
        name: Resend's error name (``validation_error``, ``rate_limit_exceeded``, ...) or ours
            (``timeout``, ``network_error``, ``connect_timeout``, ``connect_error``,
            ``outcome_unknown``).
        retry_after: seconds Resend asked us to wait, if it said.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        name: str = "unknown_error",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.name = name
        self.retry_after = retry_after

    def __str__(self) -> str:
        status = f"{self.status_code} " if self.status_code is not None else ""
        return f"{status}{self.name}: {self.message}"


class RetryableSendError(SendError):
    """A transient failure: network error, timeout, 5xx, 429 rate limit, concurrent idempotent request."""


class QuotaExceededError(RetryableSendError):
    """Resend's daily or monthly quota is used up. The email is kept and retried later without
    spending an attempt."""


class PermanentSendError(SendError):
    """Resend rejected the email for good (400, 401, 403, 404, 405, 409 mismatch, 422, 451)."""
