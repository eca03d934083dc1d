"""Keep addresses and secrets out of logs, errors and API output."""

from __future__ import annotations

import re

_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s/@:]*):[^\s/@]*@")
_RESEND_KEY = re.compile(r"\bre_[A-Za-z0-9_]{6,}")
_EMAIL_RE = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def redact_text(text: str, *secrets: str) -> str:
    """Mask what must not be shown in free text: email addresses (Resend's messages may quote
    one), Resend API keys, URL credentials, and any of ``secrets`` given literally."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _URL_CREDENTIALS.sub(r"\1\2:***@", text)
    text = _RESEND_KEY.sub("re_***", text)
    return _EMAIL_RE.sub(lambda m: mask_email(m.group(0)), text)


def redact_url(url: str) -> str:
    """``rediss://default:secret@host:6379`` -> ``rediss://default:***@host:6379``.

    Works on the text, so it never raises, even on a malformed URL (a bad port, say).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    credentials, at, host = netloc.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}{slash}{tail}"


def split_address(value: str) -> tuple[str, str]:
    """Split ``"Name <addr@example.com>"`` or ``addr@example.com`` into (name, address).

    Plain string operations, no regex: linear time on any input (a backtracking pattern took
    minutes on a few thousand spaces).
    """
    text = value.strip()
    if text.endswith(">") and "<" in text:
        name, _, addr = text[:-1].rpartition("<")
        return name.strip().strip('"').strip(), addr.strip()
    return "", text


def mask_email(value: str) -> str:
    """``john@example.com`` -> ``j***@example.com``; what logs and the admin API show."""
    _, addr = split_address(value)
    local, at, domain = addr.partition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"
