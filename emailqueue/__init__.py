"""emailqueue: reliable application email through a Redis (RQ) queue, delivered by Resend.

::

    from emailqueue import send_email
    send_email(to="ada@example.com", subject="Welcome", html="<p>Hi!</p>")
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._exceptions import (
    ConfigurationError,
    EmailQueueError,
    FieldProblem,
    InvalidEmailError,
    PermanentSendError,
    QueueError,
    QuotaExceededError,
    RetryableSendError,
    SendError,
    SuppressedAddressError,
    WebhookError,
)
from ._version import __version__

if TYPE_CHECKING:
    from ._api import QueuedJobs, send_email, send_event_email
    from ._async import adeliver_now, asend_email, asend_event_email
    from ._drain import DrainReport, drain
    from ._jobs import configure_worker
    from ._message import Attachment, EmailMessage, Tag
    from ._now import deliver_now
    from ._now_attempt import NowOutcome
    from ._resend import ResendClient, build_http_client
    from ._settings import Settings, load_settings
    from ._status import Health, QueueStatus, RequeueReport, health, queue_status, requeue_failed
    from ._worker import EmailJob, EmailWorker

# The rest is imported on first use: a cold serverless function pays only for what it touches.
_LAZY = {
    "QueuedJobs": "_api",
    "send_email": "_api",
    "send_event_email": "_api",
    "adeliver_now": "_async",
    "asend_email": "_async",
    "asend_event_email": "_async",
    "NowOutcome": "_now_attempt",
    "deliver_now": "_now",
    "DrainReport": "_drain",
    "drain": "_drain",
    "configure_worker": "_jobs",
    "EmailJob": "_worker",
    "EmailWorker": "_worker",
    "Attachment": "_message",
    "EmailMessage": "_message",
    "Tag": "_message",
    "ResendClient": "_resend",
    "build_http_client": "_resend",
    "Settings": "_settings",
    "load_settings": "_settings",
    "Health": "_status",
    "QueueStatus": "_status",
    "RequeueReport": "_status",
    "health": "_status",
    "queue_status": "_status",
    "requeue_failed": "_status",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'emailqueue' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Attachment",
    "ConfigurationError",
    "DrainReport",
    "EmailJob",
    "EmailMessage",
    "EmailQueueError",
    "EmailWorker",
    "FieldProblem",
    "Health",
    "InvalidEmailError",
    "NowOutcome",
    "PermanentSendError",
    "QueueError",
    "QueueStatus",
    "QueuedJobs",
    "QuotaExceededError",
    "RequeueReport",
    "ResendClient",
    "RetryableSendError",
    "SendError",
    "Settings",
    "SuppressedAddressError",
    "Tag",
    "WebhookError",
    "__version__",
    "adeliver_now",
    "asend_email",
    "asend_event_email",
    "build_http_client",
    "configure_worker",
    "deliver_now",
    "drain",
    "health",
    "load_settings",
    "queue_status",
    "requeue_failed",
    "send_email",
    "send_event_email",
]
