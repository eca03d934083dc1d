"""Settings: the one place every setting is resolved, for the library and every command.

Each setting comes from, in order: arguments passed to :class:`Settings`, the environment, the
``.env`` file of the current directory, and last a running ``emailqueue dev`` of this project
(its Redis URL and a default sender, see :mod:`emailqueue._devstate`). The dev state only
applies when no Redis URL is configured, or when the configured one is the one dev uses, and
never when ``VERCEL_ENV=production``.

Nothing here runs at import time: call :func:`load_settings` (the library does, lazily) or
build :class:`Settings` yourself and pass it in.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any

from dotenv import dotenv_values
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ._constants import DEFAULT_QUEUE_NAME
from ._devstate import DevState, env_file, find_state
from ._exceptions import ConfigurationError

#: Where the Redis URL may come from, in order. Vercel's Upstash integration injects the last two.
REDIS_URL_VARIABLES = ("QUEUE_REDIS_URL", "REDIS_URL", "KV_URL")

_DAY = 24 * 3600

Seconds = Annotated[float, Field(gt=0)]


def _url_in(values: dict[str, Any]) -> str | None:
    for key in ("queue_redis_url", *REDIS_URL_VARIABLES):
        for name in (key, key.lower(), key.upper()):
            value = values.get(name)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


class DevStateSource(PydanticBaseSettingsSource):
    """The last source: a running ``emailqueue dev`` of this project (found from any subdirectory).

    It supplies the Redis URL and a default sender when nothing else configures a URL, or when
    the configured URL is the one dev runs on (dev read it from the same ``.env``).
    """

    def __init__(self, settings_cls: type[BaseSettings], *higher: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self.higher = higher

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ answers for every field at once

    def __call__(self) -> dict[str, Any]:
        configured: dict[str, Any] = {}
        for source in reversed(self.higher):
            configured.update(source())
        vercel_env = next((v for k, v in configured.items() if k.lower() == "vercel_env"), None)
        if vercel_env == "production":
            return {}
        state = find_state()
        if state is None or _url_in(configured) not in (None, state.redis_url):
            return {}
        return {"QUEUE_REDIS_URL": state.redis_url, "email_from": state.email_from}


class Settings(BaseSettings):
    """Every setting of emailqueue. Each field is read from the upper-cased variable of its name."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
        # An empty QUEUE_REDIS_URL= must not hide REDIS_URL or KV_URL.
        env_ignore_empty=True,
    )

    queue_redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices(*REDIS_URL_VARIABLES),
        description="Redis URL (redis:// or rediss://). Fallbacks: REDIS_URL, KV_URL.",
    )
    queue_redis_ca_cert: str | None = Field(
        default=None,
        description="CA file to verify a rediss:// server's certificate (self-signed, private CA).",
    )
    resend_api_key: SecretStr | None = Field(default=None, description="Resend API key (re_...).")
    resend_api_url: str = Field(default="https://api.resend.com", description="Resend API base URL.")
    email_from: str | None = Field(default=None, description="Default sender when a message has none.")
    email_queue_name: str = Field(default=DEFAULT_QUEUE_NAME, min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")

    email_max_attempts: int = Field(default=6, ge=1, le=50, description="Send attempts before failing.")
    email_backoff_base_s: Seconds = Field(default=10.0, description="First retry delay (doubles each time).")
    email_backoff_cap_s: Seconds = Field(default=3600.0, description="Longest retry delay.")
    email_quota_retry_s: Seconds = Field(
        default=3600.0, description="Wait after a daily/monthly quota error (attempts are not spent)."
    )
    email_failure_ttl_s: int = Field(default=30 * _DAY, ge=60, description="How long failed jobs are kept.")
    email_dedup_ttl_s: int = Field(
        default=7 * _DAY, ge=_DAY, description="How long an event/recipient pair is remembered (>= 24 h)."
    )
    email_job_timeout_s: int = Field(default=60, ge=5, description="RQ job timeout of one send.")

    resend_connect_timeout_s: Seconds = Field(default=5.0)
    resend_timeout_s: Seconds = Field(default=15.0, description="Read timeout of one Resend request.")

    email_batch: bool = Field(
        default=True, description="send_event_email sends chunks of 100 through POST /emails/batch."
    )
    email_pack: bool = Field(
        default=True,
        description=(
            "Drains and `emailqueue worker` pack queued single emails into POST /emails/batch "
            "requests of up to 100."
        ),
    )
    resend_rate_limit: float = Field(
        default=2.0, ge=0, description="Sends per second across all workers (Resend's team limit); 0: off."
    )

    # --- immediate sends (send_email(now=True), deliver_now) ---
    email_now_timeout_s: Seconds = Field(
        default=5.0,
        le=60,
        description="Read timeout of an immediate send (connect: at most RESEND_CONNECT_TIMEOUT_S).",
    )
    email_now_max_wait_s: float = Field(
        default=1.0,
        ge=0,
        le=10,
        description="Longest wait of an immediate send for a RESEND_RATE_LIMIT slot; else queued.",
    )

    # --- durable enqueue (send_email(durable=True)) ---
    email_durable: bool = Field(
        default=False,
        description="Each enqueue returns once Redis has it on disk (AOF, fsync always) or on a replica.",
    )
    email_durable_timeout_s: float = Field(
        default=1.5,
        gt=0,
        le=30,
        description="Longest wait for a durable enqueue's confirmation (under the socket timeout).",
    )

    # --- serverless drain and the HTTP API ---
    cron_secret: SecretStr | None = Field(default=None, description="Bearer token Vercel Cron sends.")
    queue_admin_token: SecretStr | None = Field(default=None, description="Bearer token of /api/admin/*.")
    resend_webhook_secret: SecretStr | None = Field(
        default=None, description="Signing secret (whsec_...) of the Resend webhook; unset: route closed."
    )
    email_events_ttl_s: int = Field(
        default=30 * 86400, ge=3600, le=400 * 86400, description="How long an email's lifecycle is kept."
    )
    drain_max_jobs: int = Field(default=100, ge=1, le=10_000, description="Most jobs one drain run takes.")
    drain_concurrency: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Sends in flight in one drain; default: sized to the rate limit.",
    )
    drain_max_duration_s: Seconds = Field(
        default=60.0, description="The function's maxDuration (vercel.json); the time budget fits under it."
    )
    drain_time_budget_s: Seconds | None = Field(
        default=None, description="Stop taking jobs past this; default: maxDuration minus a safety margin."
    )
    emailqueue_dev: bool = Field(
        default=False, description="Local development mode: the API routes work without their secrets."
    )
    vercel_env: str | None = Field(
        default=None, description="Set by Vercel: production, preview, development."
    )
    emailqueue_outbox_dir: str = Field(
        default=".emailqueue/outbox", description="Where dev mode writes emails when RESEND_API_KEY is unset."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if isinstance(dotenv_settings, DotEnvSettingsSource) and dotenv_settings.env_file == ".env":
            # The default `.env`: the current directory's, else the project root's, so that a
            # subdirectory sees the settings its project (and its `emailqueue dev`) sees.
            dotenv_settings = DotEnvSettingsSource(settings_cls, env_file=env_file())
        dev_state = DevStateSource(settings_cls, init_settings, env_settings, dotenv_settings)
        return init_settings, env_settings, dotenv_settings, dev_state, file_secret_settings

    @field_validator("queue_redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis:// or rediss:// (Upstash needs rediss://)")
        return value

    @field_validator("resend_api_url")
    @classmethod
    def _check_api_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL such as https://api.resend.com")
        return value.rstrip("/")

    @property
    def send_timeout_s(self) -> float:
        """The longest one Resend request can take: connect plus read timeout."""
        return self.resend_connect_timeout_s + self.resend_timeout_s

    @property
    def concurrency(self) -> int:
        """Sends in flight at once in a drain: ``DRAIN_CONCURRENCY``, or enough to keep the rate
        limit busy through Resend's latency (2 at 2/s), or 8 when there is no limit."""
        if self.drain_concurrency is not None:
            return self.drain_concurrency
        return max(2, math.ceil(self.resend_rate_limit)) if self.resend_rate_limit else 8

    @property
    def time_budget_s(self) -> float:
        """How long one drain run may work: ``DRAIN_TIME_BUDGET_S``, or ``maxDuration`` less a
        margin of 10 s (for start-up and the reply), but never less than half of it."""
        if self.drain_time_budget_s is not None:
            return self.drain_time_budget_s
        return max(self.drain_max_duration_s - 10.0, self.drain_max_duration_s / 2)

    @property
    def dev_mode(self) -> bool:
        """Development mode is explicit (``EMAILQUEUE_DEV=1``) and never on in Vercel production."""
        return self.emailqueue_dev and self.vercel_env != "production"

    def require_redis_url(self) -> str:
        """The Redis URL, or a :class:`ConfigurationError` that says how to set one."""
        if not self.queue_redis_url:
            raise ConfigurationError(
                "QUEUE_REDIS_URL is not set (nor REDIS_URL or KV_URL); set it to redis://localhost:6379, "
                "run `emailqueue dev`, or, on Vercel, connect Upstash Redis, which injects REDIS_URL"
            )
        return self.queue_redis_url

    def require_api_key(self) -> str:
        """The Resend API key, or a :class:`ConfigurationError` that says how to set one."""
        key = self.resend_api_key.get_secret_value().strip() if self.resend_api_key else ""
        if not key:
            raise ConfigurationError(
                "RESEND_API_KEY is not set; create one at resend.com/api-keys and set it in the "
                "worker's environment"
            )
        return key


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment and ``.env``, applying ``overrides`` on top.

    Raises:
        ConfigurationError: a variable is invalid; the message names it.
    """
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_input=False):
            field = str(err["loc"][0]) if err["loc"] else "?"
            if field in REDIS_URL_VARIABLES or field == "queue_redis_url":
                # Name the variable that actually supplied the bad URL.
                field = next((v for v in REDIS_URL_VARIABLES if os.environ.get(v)), "QUEUE_REDIS_URL")
            problems.append(f"{field.upper()}: {err['msg']}")
        raise ConfigurationError("invalid configuration: " + "; ".join(problems)) from None
    return settings


def dev_state_for(settings: Settings) -> DevState | None:
    """The running ``emailqueue dev`` these settings talk to (same Redis URL), if any."""
    state = find_state()
    if state is None or settings.vercel_env == "production" or settings.queue_redis_url != state.redis_url:
        return None
    return state


def redis_url_source(settings: Settings, *, dotenv_path: Path | None = None) -> str:
    """Where ``settings.queue_redis_url`` came from, for messages: ``REDIS_URL``, ``QUEUE_REDIS_URL
    in .env``, ``emailqueue dev (<project>)``; or, when there is none, why.

    It only names the source; the value is the one :class:`Settings` resolved.
    """
    url = settings.queue_redis_url
    if url is None:
        return "QUEUE_REDIS_URL is not set (nor REDIS_URL or KV_URL), and no `emailqueue dev` runs here"
    environ = {k.upper(): v for k, v in os.environ.items()}
    path = dotenv_path or env_file()
    dotenv = {k.upper(): v or "" for k, v in dotenv_values(path).items()} if path.is_file() else {}
    for where, values in (("", environ), (" in .env", dotenv)):
        for name in REDIS_URL_VARIABLES:
            if (values.get(name) or "").strip() == url:
                return name + where
    state = dev_state_for(settings)
    if state is not None:
        return f"emailqueue dev ({state.project})"
    return "the settings"
