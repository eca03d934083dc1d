"""Test tools for apps that use emailqueue: a local fake Resend server (a real HTTP server)."""

from ._fake_resend import AcceptedEmail, FakeResend, RecordedRequest

__all__ = ["AcceptedEmail", "FakeResend", "RecordedRequest"]
