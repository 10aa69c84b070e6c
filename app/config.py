"""Settings: environment variables (and a `.env` file), one `Settings` class, one `settings`.

Every variable is listed with its default in `.env.example`.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import time
from functools import lru_cache
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.states import ChannelName


def load_ec_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """An ECDSA public key from PEM or base64 DER (SendGrid's verification key).
    Raises ValueError."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, TypeError, binascii.Error, UnsupportedAlgorithm) as exc:
        raise ValueError("not a PEM or base64 DER public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("not an elliptic-curve (ECDSA) public key")
    return key


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


# The fake providers' identifiers (app/fakes/credentials.py): production refuses them.
FAKE_IDENTIFIERS = frozenset({"fake-imo", "ACfake00000000000000000000000000", "100000000000001"})
# A SECRET_KEY with fewer distinct characters than this is not random (32 x "a").
MIN_SECRET_KEY_DISTINCT_CHARACTERS = 10


def _is_https_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme == "https" and bool(parts.hostname) and not parts.query


# A purpose, as the API accepts it (app/notifications/schemas.py).
PURPOSE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,49}")
# A CHANNEL_CHAINS key: a country (ISO 3166 alpha-2) or `*`, then optionally `/purpose`.
_CHAIN_KEY = re.compile(r"(?P<country>[A-Z]{2}|\*)(?:/(?P<purpose>[a-z][a-z0-9_]{0,49}))?")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    app_env: AppEnv = "development"
    database_url: str = ""
    # False behind PgBouncer in transaction mode older than 1.21 (Debian 12 ships 1.18):
    # statements are then prepared unnamed, inside their transaction, never cached.
    database_statement_cache: bool = True
    # Months the partitioned logs keep (docs/retention.md): older months are dropped
    # whole by the daily job. 0: kept for ever.
    retention_months: int = Field(default=0, ge=0, le=1200)
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
    # Days an invitation's accept callback URL stays valid: generous, Imo may be slow.
    imo_callback_token_days: int = Field(default=30, ge=1, le=3650)
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

    # Email over SMTP: EMAIL_FROM is the From (a bare address or `Name <address>`);
    # SMTP_SECURITY `starttls` (port 587), `tls` (implicit, port 465) or `none` (only to
    # a local relay or the embedded server `notify dev` runs). A pool of SMTP_POOL_SIZE
    # connections per worker is kept open and reused. Unset SMTP_HOST: no email channel.
    email_from: str = ""
    smtp_host: str = ""
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_timeout_seconds: float = Field(default=30.0, gt=0)
    smtp_pool_size: int = Field(default=4, ge=1, le=100)
    # Messages sent over one connection before it is closed and opened afresh (servers
    # limit them; 0: no limit).
    smtp_messages_per_connection: int = Field(default=100, ge=0)
    email_rate_limit_per_second: float = Field(default=50.0, gt=0)
    # Purposes whose messages go by email first when the patient has an address (then
    # the rest of their chain): staff messages on a conversation, by default.
    email_preferred_purposes: Annotated[list[str], NoDecode] = ["conversation"]

    # Channels to try in order, by patient country ("*": everywhere else) and, where a
    # key `COUNTRY/purpose` (or `*/purpose`) is set, by purpose: see `chain_for`. Imo is
    # used only for patients whose Imo authorisation is `subscribed`; channels without
    # credentials are reported at start-up (log, /readyz) and skipped.
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

    # Webhooks to the clinic system: whether their URLs may point at private, loopback
    # or link-local addresses (development only); the retry schedule (exponential from
    # the base, with jitter, capped); when an event is given up and an endpoint failing
    # without a break disabled; and the sender's batch and time-out.
    webhook_allow_private: bool = False
    webhook_retry_base_seconds: float = Field(default=5.0, gt=0)
    webhook_retry_max_seconds: float = Field(default=3600.0, gt=0)
    webhook_give_up_hours: float = Field(default=72.0, gt=0)
    webhook_disable_after_hours: float = Field(default=24.0, gt=0)
    webhook_batch_size: int = Field(default=500, ge=1, le=10_000)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    # A worker's claim on the deliveries it is sending: one that dies mid-send leaves
    # them due again after this long (longer than WEBHOOK_TIMEOUT_SECONDS).
    webhook_lease_seconds: float = Field(default=60.0, gt=0)

    # Email replies and deliverability (app/email). Replies come back to
    # reply+<token>@EMAIL_INBOUND_DOMAIN and bounces to bounce+<mac>@ it: its MX leads to
    # `notify smtp-inbound`, or to SendGrid's Inbound Parse, which posts each message to
    # /callbacks/email/inbound-parse. Larger inbound messages are refused (SMTP 552,
    # HTTP 413); attachments are kept by reference only, whatever their size.
    email_inbound_domain: str = "reply.localhost"
    email_inbound_max_bytes: int = Field(default=30 * 1024 * 1024, ge=64 * 1024)
    # Languages whose reply headers ("On ... wrote:") and signatures are recognised
    # (mail-parser-reply's: en, de, fr, es, ...).
    email_reply_languages: Annotated[list[str], NoDecode] = ["en"]
    # HTTP Basic credentials that SendGrid's Inbound Parse URL carries
    # (https://USER:PASSWORD@host/callbacks/email/inbound-parse). No password: refused.
    sendgrid_inbound_parse_username: str = "sendgrid"
    sendgrid_inbound_parse_password: SecretStr = SecretStr("")
    # SendGrid's Event Webhook verification key (Signed Event Webhook; base64 DER, as
    # SendGrid shows it, or PEM). None set: every event post is refused.
    sendgrid_event_public_key: str = ""
    # A signed event post whose timestamp is further than this from now is a replay.
    sendgrid_event_max_age_seconds: int = Field(default=600, ge=10)
    # A SendGrid `open` event makes its email's attempt (and notification) `read`. Off by
    # default: opens are unreliable (mail scanners and Apple Mail's privacy protection
    # fetch the tracking pixel unread; images blocked hide real reads).
    email_opens_are_reads: bool = False

    sentry_dsn: str = ""
    # Outside production, only these numbers are messaged, whatever the provider's URL
    # (a local proxy or tunnel may lead to a real one)...
    allowed_recipients: Annotated[list[str], NoDecode] = []
    # Deny rules (CHT's): a recipient matching one ends `denied` on every channel, as do
    # the registered gateway phones' own numbers. Prefixes are compared case-insensitively.
    outgoing_deny_list: Annotated[list[str], NoDecode] = []
    # Numbers with fewer digits than this (short codes); 0: no such rule.
    outgoing_deny_shorter_than: int = Field(default=0, ge=0, le=20)
    outgoing_deny_with_alphas: bool = False
    # Gateway phones (cht-gateway): how many SMS a phone sends a minute (about one a
    # second), which paces what each poll offers; a phone silent this long is offline,
    # and what it was offered goes to the next channel. A message left this long in its
    # country's pool while no phone that serves the country polls goes to the next
    # channel too (or fails, when none is left), instead of waiting until it expires.
    gateway_rate_per_minute: int = Field(default=60, ge=1, le=6000)
    gateway_offline_after_minutes: float = Field(default=10.0, gt=0)
    gateway_unpolled_after_minutes: float = Field(default=15.0, gt=0)
    # Loop guard: more than this many messages with the same recipient and text, each
    # within 30 minutes of the previous, end `duplicate` and are not sent.
    duplicate_limit: int = Field(default=5, ge=1, le=20)
    # ...unless every provider is one of the project's fakes, which reach nobody: then
    # anyone (`notify dev` and the tests set it). Refused in production.
    fake_providers: bool = False

    # Local hours in which patients may be messaged, in their own time zone.
    messaging_window_start: time = time(8, 0)
    messaging_window_end: time = time(20, 0)
    # Staff have no time zone of their own: a staff member's message goes inside the
    # window of the patient whose event made it, else (a broadcast, a message of their
    # own) of this IANA time zone.
    staff_time_zone: str = "UTC"
    # A reminder not sent this many days after it fell due ends `expired`; per purpose
    # (JSON, e.g. {"missed_visit": 7}) where a purpose stays useful longer or shorter.
    # A reminder due before its appointment also expires when the appointment's day ends.
    notification_expiry_days: int = Field(default=4, ge=1)
    notification_expiry_days_by_purpose: dict[str, Annotated[int, Field(ge=1)]] = {}
    # A reminder delivered on Imo or WhatsApp and not read this many hours after it was
    # sent goes once more, on the next channel of its chain. Per purpose (JSON, e.g.
    # {"missed_visit": 6}; "*": every other purpose). Empty: off.
    unread_fallback_hours: dict[str, Annotated[float, Field(gt=0)]] = {}
    # An attempt still `sent` (no final status: its callback may be lost) this many
    # minutes after sending is looked up at the provider, on channels that can be.
    reconcile_after_minutes: int = Field(default=30, ge=1)

    dispatch_batch_size: int = Field(default=500, ge=1, le=10_000)
    dispatch_concurrency: int = Field(default=200, ge=1, le=5_000)
    dispatch_idle_seconds: float = Field(default=0.5, gt=0)
    # Dispatch loops per worker process: while one waits on PostgreSQL, another sends.
    dispatch_loops: int = Field(default=2, ge=1, le=16)
    # Transient failures of one channel are retried with capped, jittered backoff.
    retry_base_seconds: float = Field(default=30.0, gt=0)
    retry_max_seconds: float = Field(default=900.0, gt=0)
    retry_max_attempts: int = Field(default=8, ge=0)
    # Each worker holds what it claimed under a lease it renews every third of this;
    # a claim whose worker stopped renewing for this long is taken over at once by any
    # live worker (sent if it had no attempt, else `unconfirmed`).
    dispatch_lease_seconds: float = Field(default=15.0, ge=1)
    # A notification `sending` for longer than this, claimed without a lease, was left
    # by a dead worker.
    sending_stale_after_seconds: int = Field(default=300, ge=10)
    # How often every worker looks for what dead workers left in `sending` (seconds;
    # a divisor of 60, as the sweeper is a cron job on the seconds of each minute).
    sweep_interval_seconds: int = Field(default=60, ge=1, le=60)

    # A broadcast's fan-out: members per INSERT ... SELECT (one transaction each), how
    # long a fan-out may stand still before a worker's cron resumes it from its cursors,
    # and into how many lanes (ranges of patient ids, fanned out at once on a connection
    # each; fixed per broadcast when its fan-out starts) it is split.
    broadcast_chunk_size: int = Field(default=5_000, ge=1, le=100_000)
    broadcast_resume_after_seconds: int = Field(default=30, ge=1)
    broadcast_fan_out_lanes: int = Field(default=2, ge=1, le=16)

    # Request bodies larger than this are refused with a 413 (a full batch of 1,000
    # patients is well under 2 MiB).
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # A request's line and headers: larger is a 400 (app/http_server.py).
    max_header_bytes: int = Field(default=64 * 1024, ge=4096)
    # A client must send a whole request head this soon after connecting (or after the
    # previous answer); one that trickles it (slow loris) is disconnected.
    request_head_timeout_seconds: float = Field(default=10.0, gt=0)
    # How long `notify api` and `notify worker` wait for Redis at start before giving up
    # with "Redis unreachable at ..." (exit 1).
    redis_start_timeout_seconds: float = Field(default=30.0, gt=0)
    # Interactive API docs at /docs and /redoc (and /openapi.json); off hides them.
    api_docs: bool = True

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
        "outgoing_deny_list",
        "email_reply_languages",
        "email_preferred_purposes",
        mode="before",
    )(_split_csv)

    @field_validator("channel_chains")
    @classmethod
    def _known_chains(cls, chains: dict[str, list[str]]) -> dict[str, list[str]]:
        known = {name.value for name in ChannelName}
        problems = []
        for key, chain in chains.items():
            if not _CHAIN_KEY.fullmatch(key):
                problems.append(
                    f"key {key!r} is not COUNTRY, COUNTRY/purpose, * or */purpose "
                    "(COUNTRY: two capital letters, purpose: lower case)"
                )
            unknown = [name for name in chain if name not in known]
            if unknown:
                problems.append(
                    f"{key!r} names unknown channels {unknown} (known: {sorted(known)})"
                )
            elif len(set(chain)) != len(chain):
                problems.append(f"{key!r} names a channel twice: {chain}")
        if problems:
            raise ValueError("CHANNEL_CHAINS: " + "; ".join(problems))
        return chains

    @field_validator("staff_time_zone")
    @classmethod
    def _iana_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ValueError, OSError, ZoneInfoNotFoundError) as exc:
            raise ValueError(f"{name!r} is not an IANA time zone") from exc
        return name

    @field_validator("allowed_recipients")
    @classmethod
    def _address_domains_lower(cls, recipients: list[str]) -> list[str]:
        # Addresses in their stored form (app/email_address.py): the domain in lower case.
        return [
            f"{r.rpartition('@')[0]}@{r.rpartition('@')[2].lower()}" if "@" in r else r
            for r in recipients
        ]

    @field_validator("email_from")
    @classmethod
    def _one_line_from(cls, value: str) -> str:
        if any(c in value for c in "\r\n\0"):
            raise ValueError("EMAIL_FROM must be one line")
        if value and "@" not in value:
            raise ValueError("EMAIL_FROM must be an address, or `Name <address>`")
        return value.strip()

    @field_validator("email_preferred_purposes")
    @classmethod
    def _preferred_purposes(cls, purposes: list[str]) -> list[str]:
        wrong = [p for p in purposes if not PURPOSE_PATTERN.fullmatch(p)]
        if wrong:
            raise ValueError(f"must be purposes (lower case): {wrong}")
        return purposes

    @field_validator("unread_fallback_hours")
    @classmethod
    def _purposes(cls, hours: dict[str, float]) -> dict[str, float]:
        wrong = [key for key in hours if key != "*" and not PURPOSE_PATTERN.fullmatch(key)]
        if wrong:
            raise ValueError(f"keys must be purposes (lower case) or *: {wrong}")
        return hours

    @field_validator("email_inbound_domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        value = value.strip().lower()
        if not re.fullmatch(r"([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}", value):
            raise ValueError("must be a domain name (reply.clinic.example)")
        return value

    @field_validator("sendgrid_event_public_key")
    @classmethod
    def _public_key(cls, value: str) -> str:
        if value.strip():
            load_ec_public_key(value)
        return value.strip()

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
        secret_key = self.secret_key.get_secret_value()
        if len(secret_key) < 32:
            problems.append("SECRET_KEY must be at least 32 characters")
        elif len(set(secret_key)) < MIN_SECRET_KEY_DISTINCT_CHARACTERS:
            problems.append("SECRET_KEY is not random (too few distinct characters)")
        if self.public_base_url and not _is_https_url(self.public_base_url):
            problems.append("PUBLIC_BASE_URL must be an https:// URL")
        if self.fake_providers:
            problems.append("FAKE_PROVIDERS must not be set")
        for name, value in {
            "IMO_USERNAME": self.imo_username,
            "TWILIO_ACCOUNT_SID": self.twilio_account_sid,
            "WHATSAPP_PHONE_NUMBER_ID": self.whatsapp_phone_number_id,
        }.items():
            if value.strip() in FAKE_IDENTIFIERS:
                problems.append(f"{name} is the fake provider's")
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
        if self.chains_use("email"):
            problems += self._email_problems()
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

    def _email_problems(self) -> list[str]:
        problems = []
        if not self.smtp_host:
            problems.append("SMTP_HOST must be set (a channel chain uses email)")
        if not self.email_from:
            problems.append("EMAIL_FROM must be set")
        if self.smtp_security == "none" and self.smtp_host not in ("127.0.0.1", "::1", "localhost"):
            problems.append("SMTP_SECURITY=none is only for a relay on this machine")
        if self.email_inbound_domain.endswith(".localhost"):
            problems.append("EMAIL_INBOUND_DOMAIN must be a domain whose MX leads back to us")
        return problems

    @property
    def email_configured(self) -> bool:
        return bool(self.smtp_host and self.email_from)

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

    def chain_for(self, country: str, purpose: str) -> list[str]:
        """The configured channel chain of a patient's country and a message's purpose:
        `COUNTRY/purpose`, else `COUNTRY`, else `*/purpose`, else `*`, else SMS alone."""
        chains = self.channel_chains
        country = country.upper()
        for key in (f"{country}/{purpose}", country, f"*/{purpose}", "*"):
            chain = chains.get(key)
            if chain is not None:
                return chain
        return [ChannelName.SMS.value]

    def unread_fallback_after(self, purpose: str) -> float | None:
        """Hours after which an unread reminder of `purpose` falls back; None: never."""
        hours = self.unread_fallback_hours
        return hours.get(purpose, hours.get("*"))

    def expiry_days(self, purpose: str) -> int:
        """How long after falling due a notification of `purpose` is still worth sending."""
        return self.notification_expiry_days_by_purpose.get(purpose, self.notification_expiry_days)

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    @property
    def messages_everyone(self) -> bool:
        """Production, or only the fakes: no allow-list applies."""
        return self.is_production or self.fake_providers

    def recipient_allowed(self, recipient: str) -> bool:
        """Outside production only ALLOWED_RECIPIENTS (numbers in E.164, email addresses)
        are messaged, by every provider whatever its host, unless FAKE_PROVIDERS says
        every provider is a fake. Addresses compare in their normal form (the domain in
        lower case), as both sides are stored so."""
        return self.messages_everyone or recipient in self.allowed_recipients


@lru_cache
def get_settings() -> Settings:
    return Settings()
