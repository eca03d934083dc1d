"""Test tools for apps that use emailqueue: a model of Resend's email API (:class:`ResendModel`,
with an ``httpx.MockTransport`` for in-process tests) and a real local HTTP server of it
(:class:`FakeResend`), which can post signed webhooks (:func:`signed_webhook`).

The names load on first use, so ``python -m emailqueue.testing._fake_resend`` runs its module once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._fake_resend import FakeResend
    from ._model import AcceptedEmail, RecordedRequest, ResendModel
    from ._webhooks import signed_webhook

__all__ = ["AcceptedEmail", "FakeResend", "RecordedRequest", "ResendModel", "signed_webhook"]

_HOMES = {
    "AcceptedEmail": "._model",
    "FakeResend": "._fake_resend",
    "RecordedRequest": "._model",
    "ResendModel": "._model",
    "signed_webhook": "._webhooks",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(_HOMES[name], __name__), name)
