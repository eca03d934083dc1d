"""Diagnose a queue setup step by step: ``emailqueue check`` (also ``python -m emailqueue check``
and, in the repository, ``scripts/test_queue_connection.py``).

Each step gives one line in plain words, with the fix when something is wrong. A failure that
makes later steps meaningless (no DNS, so no TCP, ...) marks those ``skip``. Secrets (the Redis
password, the Resend key) never appear in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import asdict
from urllib.parse import unquote, urlsplit

import httpx
from dotenv import dotenv_values

from ._check_redis import PROBE_PREFIX, Probe, Resolver, StepFailed, StepResult, resolve_host, run_steps
from ._check_server import REDIS_STEPS
from ._devstate import env_file
from ._exceptions import ConfigurationError, SendError
from ._redact import mask_email
from ._resend import ResendClient, build_http_client
from ._settings import REDIS_URL_VARIABLES, load_settings, redis_url_source

_KEY_RE = re.compile(r"re_[A-Za-z0-9_-]{7,200}")
_MISSING_URL = "QUEUE_REDIS_URL is not set (nor REDIS_URL or KV_URL)"


def mask_api_key(key: str) -> str:
    """``re_…(36 chars)``: enough to recognise a key, nothing to use it."""
    return f"{key[:3]}…({len(key)} chars)"


def check_api_key(key: str | None) -> StepResult:
    """Missing is a warning (an app that only enqueues needs no key); malformed is a failure."""
    key = (key or "").strip()
    if not key:
        return StepResult(
            "api_key", "warn", "RESEND_API_KEY is not set: the app can enqueue, but a worker cannot deliver",
            "set RESEND_API_KEY in the worker's environment (create a key at resend.com/api-keys)",
        )  # fmt: skip
    if not _KEY_RE.fullmatch(key):
        why = (
            "does not start with re_" if not key.startswith("re_") else "has unexpected characters or length"
        )
        return StepResult(
            "api_key", "fail", f"RESEND_API_KEY {why} ({len(key)} chars): it is not a Resend API key",
            "copy the key again from resend.com/api-keys, without quotes or spaces",
        )  # fmt: skip
    return StepResult("api_key", "ok", f"RESEND_API_KEY is set: {mask_api_key(key)}")


def check_send(
    to: str, *, sender: str | None, api_key: str, api_url: str, http: Callable[[], httpx.Client]
) -> StepResult:
    """Send one real email through Resend (or whatever ``api_url`` points at)."""
    if not sender:
        raise StepFailed(
            "no sender: set EMAIL_FROM or pass --from", "use an address on a domain verified in Resend"
        )
    email = {
        "from": sender,
        "to": [to],
        "subject": "emailqueue check",
        "text": "This test email was sent by `emailqueue check`: Resend accepts this API key and sender.",
    }
    try:
        with http() as client:
            email_id = ResendClient(client, api_key=api_key, base_url=api_url).send(
                email, idempotency_key=PROBE_PREFIX + secrets.token_hex(8)
            )
    except SendError as exc:
        if exc.status_code in (401, 403):
            fix = "check RESEND_API_KEY (resend.com/api-keys)"
        elif exc.status_code == 422:
            fix = "send from a domain verified at resend.com/domains (or onboarding@resend.dev to try)"
        elif exc.status_code is None:
            fix = f"check the network and RESEND_API_URL ({api_url})"
        else:
            fix = "see Resend's message above; retry later if it is a rate limit"
        raise StepFailed(f"Resend did not accept the test email: {exc}", fix) from None
    return StepResult("send_test", "ok", f"Resend accepted a test email to {mask_email(to)} (id {email_id})")


def run_checks(
    url: str | None,
    *,
    source: str = "--url",
    api_key: str | None = None,
    ca_cert: str | None = None,
    send_to: str | None = None,
    sender: str | None = None,
    resend_api_url: str = "https://api.resend.com",
    timeout: float = 3.0,
    resolve: Resolver = resolve_host,
    http: Callable[[], httpx.Client] | None = None,
) -> list[StepResult]:
    """Run every step and return their results, in order.

    Args:
        url: the Redis URL, or None if none is set.
        source: where ``url`` came from (``QUEUE_REDIS_URL``, ``--url``, ...), named in fixes;
            when ``url`` is None, why none was found.
        api_key: ``RESEND_API_KEY``, if set.
        ca_cert: a CA file (PEM) for ``rediss://`` servers with a private or self-signed certificate.
        send_to: send one real test email to this address.
        sender: the test email's sender (``EMAIL_FROM``).
        resend_api_url: where Resend is (tests point it at ``FakeResend``).
        timeout: seconds each network step may take.
        resolve: host, port -> addresses (``socket.getaddrinfo`` by default).
        http: makes the ``httpx.Client`` of the test send (``build_http_client`` by default).

    Returns:
        One :class:`StepResult` per step; a step after a blocking failure has status ``skip``.
    """
    results = run_steps(Probe(url, source, ca_cert=ca_cert, timeout=timeout, resolve=resolve), REDIS_STEPS)
    results.append(check_api_key(api_key))
    if send_to is not None:
        try:
            if results[-1].status != "ok":
                raise StepFailed("no usable RESEND_API_KEY, so nothing was sent", results[-1].fix or "")
            make_http = http or (lambda: build_http_client(connect_timeout=timeout))
            results.append(
                check_send(
                    send_to, sender=sender, api_key=api_key or "", api_url=resend_api_url, http=make_http
                )
            )
        except StepFailed as exc:
            results.append(StepResult("send_test", "fail", exc.detail, exc.fix))
    return _scrub(results, _password_of(url), api_key)


def _password_of(url: str | None) -> str | None:
    try:
        return urlsplit(url or "").password
    except ValueError:
        return None


def _scrub(results: list[StepResult], *secret_values: str | None) -> list[StepResult]:
    """Belt and braces: no step may echo a secret, whatever a server or library put in a message."""
    words = {s for v in secret_values if v for s in (v, unquote(v)) if len(s) >= 3}
    if not words:
        return results

    def clean(text: str) -> str:
        for word in words:
            text = text.replace(word, "***")
        return text

    return [StepResult(r.name, r.status, clean(r.detail), clean(r.fix)) for r in results]


def all_ok(results: Sequence[StepResult]) -> bool:
    """True when no step failed (warnings and skipped optional steps are fine)."""
    return all(r.status != "fail" for r in results)


def format_text(results: Sequence[StepResult]) -> str:
    """One line per step, then a summary line."""
    marks = {"ok": " ok ", "warn": "WARN", "fail": "FAIL", "skip": "skip"}
    lines = [
        f"[{marks[r.status]}] {r.name:<10} {r.detail}" + (f"  -> fix: {r.fix}" if r.fix else "")
        for r in results
    ]
    failed = [r.name for r in results if r.status == "fail"]
    warned = sum(r.status == "warn" for r in results)
    if failed:
        lines.append(f"FAILED: {len(failed)} step(s) failed ({', '.join(failed)})")
    else:
        lines.append(f"OK: every required step passed ({warned} warning{'s' if warned != 1 else ''})")
    return "\n".join(lines)


def format_json(results: Sequence[StepResult]) -> str:
    """``{"ok": bool, "steps": [{"name", "status", "detail", "fix"}, ...]}``."""
    return json.dumps({"ok": all_ok(results), "steps": [asdict(r) for r in results]}, indent=2)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emailqueue check", description="Diagnose the queue's Redis and Resend setup, step by step."
    )
    parser.add_argument("--url", help="Redis URL (default: QUEUE_REDIS_URL, else REDIS_URL, else KV_URL)")
    parser.add_argument(
        "--ca-cert", help="CA file (PEM) for a rediss:// server (default: QUEUE_REDIS_CA_CERT)"
    )
    parser.add_argument("--send-test", metavar="ADDRESS", help="really send one test email to ADDRESS")
    parser.add_argument("--from", dest="sender", help="sender of the test email (default: EMAIL_FROM)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per network step (default 3)")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: print the diagnosis; return 0 if every required step passed, else 1."""
    args = _parser().parse_args(argv)
    settings_step = StepResult("settings", "ok", "settings load from the environment, .env and dev state")
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        settings = None
        settings_step = StepResult(
            "settings", "fail", str(exc), "correct that variable (see the README's Configuration table)"
        )

    def raw(name: str) -> str | None:  # only when the settings are invalid: the raw variable
        environ = {k.upper(): v for k, v in os.environ.items()}
        dotenv = {k.upper(): v or "" for k, v in dotenv_values(env_file()).items()}
        return (environ.get(name, dotenv.get(name)) or "").strip() or None

    if args.url:
        url, source = args.url, "--url"
    elif settings is not None:
        url, source = settings.queue_redis_url, redis_url_source(settings)
    else:
        source = next((name for name in REDIS_URL_VARIABLES if raw(name)), _MISSING_URL)
        url = raw(source)
    if settings is not None:
        api_key = settings.resend_api_key.get_secret_value() if settings.resend_api_key else None
        api_url, sender = settings.resend_api_url, settings.email_from
        ca_cert = settings.queue_redis_ca_cert
    else:
        api_key, api_url = raw("RESEND_API_KEY"), raw("RESEND_API_URL") or "https://api.resend.com"
        sender, ca_cert = raw("EMAIL_FROM"), raw("QUEUE_REDIS_CA_CERT")
    results = [
        settings_step,
        *run_checks(
            url,
            source=source,
            api_key=api_key,
            ca_cert=args.ca_cert or ca_cert,
            sender=args.sender or sender,
            send_to=args.send_test,
            resend_api_url=api_url,
            timeout=args.timeout,
        ),
    ]
    print(format_json(results) if args.json else format_text(results))
    return 0 if all_ok(results) else 1
