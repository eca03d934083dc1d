"""Keep addresses and secrets out of logs, errors and API output."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_NAMED_ADDRESS_RE = re.compile(r'^\s*"?(?P<name>[^"<>]*?)"?\s*<(?P<addr>[^<>]+)>\s*$')
_EMAIL_RE = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def redact_text(text: str) -> str:
    """Mask every email address in free text (Resend's error messages may quote one)."""
    return _EMAIL_RE.sub(lambda m: mask_email(m.group(0)), text)


def redact_url(url: str) -> str:
    """``rediss://default:secret@host:6379`` -> ``rediss://default:***@host:6379``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def split_address(value: str) -> tuple[str, str]:
    """Split ``"Name <addr@example.com>"`` or ``addr@example.com`` into (name, address)."""
    match = _NAMED_ADDRESS_RE.match(value)
    if match:
        return match.group("name").strip(), match.group("addr").strip()
    return "", value.strip()


def mask_email(value: str) -> str:
    """``john@example.com`` -> ``j***@example.com``; what logs and the admin API show."""
    _, addr = split_address(value)
    local, at, domain = addr.partition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"
