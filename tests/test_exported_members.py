import emailqueue

EXPECTED = [
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


def test_public_api_is_exactly_the_documented_list() -> None:
    assert emailqueue.__all__ == EXPECTED
    assert sorted(emailqueue.__all__) == emailqueue.__all__
    for name in EXPECTED:
        assert getattr(emailqueue, name) is not None


def test_every_public_exception_is_an_emailqueue_error() -> None:
    for name in emailqueue.__all__:
        obj = getattr(emailqueue, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, emailqueue.EmailQueueError), name
