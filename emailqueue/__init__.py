"""emailqueue: reliable application email through a Redis (RQ) queue, delivered by Resend.

::

    from emailqueue import send_email
    send_email(to="ada@example.com", subject="Welcome", html="<p>Hi!</p>")
"""

from ._api import send_email, send_event_email
from ._drain import DrainReport, drain
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
)
from ._jobs import configure_worker
from ._message import Attachment, EmailMessage, Tag
from ._resend import ResendClient, build_http_client
from ._settings import Settings, load_settings
from ._status import Health, QueueStatus, RequeueReport, health, queue_status, requeue_failed
from ._version import __version__

__all__ = [
    "Attachment",
    "ConfigurationError",
    "DrainReport",
    "EmailMessage",
    "EmailQueueError",
    "FieldProblem",
    "Health",
    "InvalidEmailError",
    "PermanentSendError",
    "QueueError",
    "QueueStatus",
    "QuotaExceededError",
    "RequeueReport",
    "ResendClient",
    "RetryableSendError",
    "SendError",
    "Settings",
    "Tag",
    "__version__",
    "build_http_client",
    "configure_worker",
    "drain",
    "health",
    "load_settings",
    "queue_status",
    "requeue_failed",
    "send_email",
    "send_event_email",
]
