"""Bearer-token checks of the cron and admin routes, usable from any web framework.

They fail closed: with no secret configured nothing is authorized (a :class:`ConfigurationError`
says what to set), except in local development mode (``EMAILQUEUE_DEV=1``).
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from emailqueue._exceptions import ConfigurationError
from emailqueue._settings import Settings, load_settings


def bearer_authorized(
    authorization: str | None, secret: SecretStr | None, variable: str, *, dev_mode: bool = False
) -> bool:
    """Whether ``authorization`` is exactly ``Bearer <secret>`` (compared in constant time).

    Raises:
        ConfigurationError: the secret is unset (or blank) outside development mode.
    """
    expected = secret.get_secret_value().strip() if secret is not None else ""
    if not expected:
        if dev_mode:
            return True
        raise ConfigurationError(
            f"{variable} is not set, so this route is closed; set {variable} in the environment "
            "(for local development only, EMAILQUEUE_DEV=1 opens it)"
        )
    # Compared as bytes, against the header exactly as Vercel Cron sends it.
    given = (authorization or "").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, f"Bearer {expected}".encode())


def cron_authorized(authorization: str | None, settings: Settings | None = None) -> bool:
    """Whether a request may run the cron drain: its ``Authorization`` header is
    ``Bearer $CRON_SECRET``, as Vercel Cron sends it.

    For a cron route in a framework other than FastAPI (Flask, Django, Starlette, ...)::

        if not cron_authorized(request.headers.get("Authorization")):
            return 401
        return drain().to_dict()

    Args:
        authorization: the request's ``Authorization`` header, or ``None`` when it has none.
        settings: default: read from the environment.

    Returns:
        True for the right token; False for a missing or wrong one (answer 401).

    Raises:
        ConfigurationError: ``CRON_SECRET`` is unset, so the route stays closed (answer 503).
    """
    if settings is None:
        settings = load_settings()
    return bearer_authorized(authorization, settings.cron_secret, "CRON_SECRET", dev_mode=settings.dev_mode)
