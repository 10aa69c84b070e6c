"""Settings: environment variables (and a `.env` file), one `Settings` class, one `settings`.

Every variable is listed with its default in `.env.example`.
"""

from __future__ import annotations

import ipaddress
from datetime import time
from functools import lru_cache
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

AppEnv = Literal["development", "test", "staging", "production"]

# Values that mean "nobody set this": refused in production.
# The fake providers' well-known credentials (app/fakes/credentials.py) count as placeholders too.
PLACEHOLDER_SECRETS = frozenset(
    {"", "change-me", "changeme", "secret", "fake", "test", "xxx"}
    | {"fake-imo-password", "fake-twilio-token"}
    | {"fake-whatsapp-token", "fake-whatsapp-app-secret", "fake-whatsapp-verify-token"}
)


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def is_loopback_url(url: str) -> bool:
    """True when `url` points at this machine: only the project's fakes live there."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    app_env: AppEnv = "development"
    database_url: str = ""
    redis_url: str = ""
    public_base_url: str = ""
    # Signs callback tokens (Imo callback URLs). Derived per data folder in development.
    secret_key: SecretStr = SecretStr("")

    imo_base_url: str = ""
    imo_username: str = ""
    imo_password: SecretStr = SecretStr("")
    imo_rate_limit_per_second: float = Field(default=1000.0, gt=0)
    imo_timeout_seconds: float = Field(default=10.0, gt=0)
    imo_reinvite_after_days: int = Field(default=180, ge=1)
    # UTC hour at which the scheduled invitation round starts on the workers.
    imo_invitation_hour_utc: int = Field(default=3, ge=0, le=23)
    # Invitation rounds: patients a worker claims at a time, requests in flight per worker,
    # how long a claim outlives a worker that stopped renewing it, and how often an idle
    # worker looks for a round to join (seconds).
    imo_invitation_batch_size: int = Field(default=1000, ge=1, le=10_000)
    imo_invitation_concurrency: int = Field(default=100, ge=1, le=5_000)
    imo_invitation_lease_seconds: float = Field(default=30.0, ge=1)
    imo_invitation_poll_seconds: float = Field(default=2.0, gt=0)
    # An invitation Imo failed (time-out, 429, 5xx) is retried in the batch this many
    # seconds after the pass before, then three times as long after the second.
    imo_invitation_retry_seconds: float = Field(default=1.0, gt=0)
    # A batch Imo failed entirely (an outage) is put back and the worker waits this many
    # seconds, doubling while it lasts (up to 5 minutes).
    imo_invitation_outage_backoff_seconds: float = Field(default=5.0, gt=0)

    twilio_base_url: str = "https://api.twilio.com"
    twilio_account_sid: str = ""
    twilio_auth_token: SecretStr = SecretStr("")
    twilio_sms_from: Annotated[list[str], NoDecode] = []
    twilio_rate_limit_per_second: float = Field(default=100.0, gt=0)
    twilio_timeout_seconds: float = Field(default=10.0, gt=0)

    # WhatsApp, through Meta's Cloud API (`cloud`) or a Twilio account (`twilio`: the
    # TWILIO_* account above, sending from WHATSAPP_TWILIO_FROM).
    whatsapp_provider: Literal["cloud", "twilio"] = "cloud"
    whatsapp_base_url: str = "https://graph.facebook.com"
    whatsapp_api_version: str = "v21.0"
    whatsapp_phone_number_id: str = ""
    whatsapp_access_token: SecretStr = SecretStr("")
    # Signs the Cloud API's webhooks (X-Hub-Signature-256): the Meta app's secret.
    whatsapp_app_secret: SecretStr = SecretStr("")
    # What Meta's webhook verification (GET, hub.verify_token) must present.
    whatsapp_verify_token: SecretStr = SecretStr("")
    whatsapp_twilio_from: str = ""
    whatsapp_rate_limit_per_second: float = Field(default=80.0, gt=0)
    whatsapp_timeout_seconds: float = Field(default=10.0, gt=0)
    # A number WhatsApp says has no account is not tried there again for this long.
    whatsapp_retry_no_account_days: int = Field(default=30, ge=1)

    # Channels to try in order, by patient country ("*": everywhere else). Imo is used
    # only for patients whose Imo authorisation is `subscribed`; unconfigured channels
    # are skipped.
    channel_chains: dict[str, list[str]] = {
        "BD": ["imo", "sms"],
        "IN": ["whatsapp", "sms"],
        "*": ["sms"],
    }
    # The button under Imo notifications.
    imo_action_label: str = "Official Website"
    imo_action_url: str = ""

    # Words a patient may write, alone, to withdraw reminder consent (STOP), restore it
    # (START) or ask for help (HELP); any case, surrounding punctuation ignored.
    consent_stop_keywords: Annotated[list[str], NoDecode] = [
        *("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"),
        *("বন্ধ", "বাতিল", "থামুন"),
        *("रोकें", "रोको", "बंद", "रद्द"),
    ]
    consent_start_keywords: Annotated[list[str], NoDecode] = [
        *("START", "UNSTOP", "YES"),
        *("শুরু", "চালু", "হ্যাঁ"),
        *("शुरू", "चालू", "हाँ", "हां"),
    ]
    consent_help_keywords: Annotated[list[str], NoDecode] = ["HELP", "সাহায্য", "मदद", "सहायता"]
    # A STOP withdraws consent on every channel (`all`) or on the one it came by.
    opt_out_scope: Literal["all", "channel"] = "all"
    # A conversation with no message either way for this many days is closed.
    conversation_idle_days: int = Field(default=14, ge=1)

    sentry_dsn: str = ""
    allowed_recipients: Annotated[list[str], NoDecode] = []

    # Local hours in which patients may be messaged, in their own time zone.
    messaging_window_start: time = time(8, 0)
    messaging_window_end: time = time(20, 0)
    # A reminder not sent this many days after it fell due ends `expired`; per purpose
    # (JSON, e.g. {"missed_visit": 7}) where a purpose stays useful longer or shorter.
    # A reminder due before its appointment also expires when the appointment's day ends.
    notification_expiry_days: int = Field(default=4, ge=1)
    notification_expiry_days_by_purpose: dict[str, Annotated[int, Field(ge=1)]] = {}

    dispatch_batch_size: int = Field(default=500, ge=1, le=10_000)
    dispatch_concurrency: int = Field(default=200, ge=1, le=5_000)
    dispatch_idle_seconds: float = Field(default=0.5, gt=0)
    # Dispatch loops per worker process: while one waits on PostgreSQL, another sends.
    dispatch_loops: int = Field(default=2, ge=1, le=16)
    # Transient failures of one channel are retried with capped, jittered backoff.
    retry_base_seconds: float = Field(default=30.0, gt=0)
    retry_max_seconds: float = Field(default=900.0, gt=0)
    retry_max_attempts: int = Field(default=8, ge=0)
    # A notification `sending` for longer than this was left by a dead worker.
    sending_stale_after_seconds: int = Field(default=300, ge=10)
    # How often every worker looks for what dead workers left in `sending` (seconds;
    # a divisor of 60, as the sweeper is a cron job on the seconds of each minute).
    sweep_interval_seconds: int = Field(default=60, ge=1, le=60)

    # Request bodies larger than this are refused with a 413 (a full batch of 1,000
    # patients is well under 2 MiB).
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)

    # Embedded PostgreSQL/Redis and the development key live here. Unset, the `notify`
    # commands use the project's .data wherever they run (app/devtools/environment.py).
    data_dir: str = ".data"
    log_level: str = "INFO"
    log_json: bool = True

    _csv = field_validator(
        "twilio_sms_from",
        "allowed_recipients",
        "consent_stop_keywords",
        "consent_start_keywords",
        "consent_help_keywords",
        mode="before",
    )(_split_csv)

    @field_validator("sweep_interval_seconds")
    @classmethod
    def _divides_a_minute(cls, value: int) -> int:
        if 60 % value:
            raise ValueError("must divide 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 or 60)")
        return value

    @field_validator("imo_base_url", "twilio_base_url", "whatsapp_base_url", "public_base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _production_is_complete(self) -> Settings:
        if self.app_env != "production":
            return self
        problems = []
        if not self.database_url:
            problems.append("DATABASE_URL must be set")
        if not self.redis_url:
            problems.append("REDIS_URL must be set")
        if not self.public_base_url:
            problems.append("PUBLIC_BASE_URL must be set")
        secrets = {
            "SECRET_KEY": self.secret_key,
            "IMO_PASSWORD": self.imo_password,
            "TWILIO_AUTH_TOKEN": self.twilio_auth_token,
        }
        for name, secret in secrets.items():
            if secret.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
                problems.append(f"{name} is missing or a placeholder")
        if len(self.secret_key.get_secret_value()) < 32:
            problems.append("SECRET_KEY must be at least 32 characters")
        for name, value in {
            "IMO_BASE_URL": self.imo_base_url,
            "IMO_USERNAME": self.imo_username,
            "TWILIO_ACCOUNT_SID": self.twilio_account_sid,
        }.items():
            if not value:
                problems.append(f"{name} must be set")
        if not self.twilio_sms_from:
            problems.append("TWILIO_SMS_FROM must name at least one sender")
        if self.chains_use("whatsapp"):
            problems += self._whatsapp_problems()
        if problems:
            raise ValueError("production settings are incomplete: " + "; ".join(problems))
        return self

    def _whatsapp_problems(self) -> list[str]:
        why = " (a channel chain uses whatsapp)"
        if self.whatsapp_provider == "twilio":
            return [] if self.whatsapp_twilio_from else ["WHATSAPP_TWILIO_FROM must be set" + why]
        problems = []
        if not self.whatsapp_phone_number_id:
            problems.append("WHATSAPP_PHONE_NUMBER_ID must be set" + why)
        for name, secret in {
            "WHATSAPP_ACCESS_TOKEN": self.whatsapp_access_token,
            "WHATSAPP_APP_SECRET": self.whatsapp_app_secret,
            "WHATSAPP_VERIFY_TOKEN": self.whatsapp_verify_token,
        }.items():
            if secret.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
                problems.append(f"{name} is missing or a placeholder" + why)
        return problems

    def chains_use(self, channel: str) -> bool:
        return any(channel in chain for chain in self.channel_chains.values())

    @property
    def whatsapp_configured(self) -> bool:
        if self.whatsapp_provider == "twilio":
            return bool(self.twilio_account_sid and self.whatsapp_twilio_from)
        return bool(self.whatsapp_phone_number_id and self.whatsapp_access_token.get_secret_value())

    @property
    def callback_base_url(self) -> str:
        """Where providers call us back: PUBLIC_BASE_URL, or the local API in development."""
        return self.public_base_url or "http://127.0.0.1:8000"

    def expiry_days(self, purpose: str) -> int:
        """How long after falling due a notification of `purpose` is still worth sending."""
        return self.notification_expiry_days_by_purpose.get(purpose, self.notification_expiry_days)

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    def recipient_allowed(self, phone_e164: str, provider_base_url: str) -> bool:
        """Outside production only allow-listed numbers reach a real provider.

        A provider on loopback is one of the project's fakes, which reach nobody.
        """
        if self.is_production or is_loopback_url(provider_base_url):
            return True
        return phone_e164 in self.allowed_recipients


@lru_cache
def get_settings() -> Settings:
    return Settings()
