"""Keep addresses and secrets out of logs, errors and API output."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from ._message import mask_email

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
