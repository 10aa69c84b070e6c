"""Every channel, its provider account's rate limit and its HTTP session, built from the
settings in one place: the worker's dispatcher, the invitation runner, `notify invite`
and the benchmarks all take their channels from here.

A new provider is one entry in `PROVIDERS`: whether it is configured, how its adapter is
built, the Redis key and the rate of its account's shared limit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
from redis.asyncio import Redis

from app.channels import email_headers
from app.channels.base import Channel, ChannelName, OutgoingMessage
from app.channels.email import EmailChannel, SmtpConfig
from app.channels.gateway import GatewayQueueChannel
from app.channels.imo import ImoChannel
from app.channels.twilio_sms import TwilioSmsChannel
from app.channels.whatsapp import WhatsAppCloudChannel, WhatsAppTwilioChannel
from app.config import Settings
from app.ratelimit import RateLimiter

log = logging.getLogger(__name__)

# A provider counts requests as they arrive: ones sent exactly 1/rate apart arrive with a
# few milliseconds of jitter, which puts a handful more into some of its seconds (+3 at
# 500/s with four workers, measured). Scheduling 1% under the account's limit keeps every
# one of the provider's seconds at or under it.
LIMIT_HEADROOM = 0.01


def imo_configured(settings: Settings) -> bool:
    return bool(settings.imo_base_url and settings.imo_username)


def twilio_sms_configured(settings: Settings) -> bool:
    return bool(settings.twilio_account_sid and settings.twilio_sms_from)


def imo_channel(settings: Settings, http: aiohttp.ClientSession) -> ImoChannel | None:
    """The Imo adapter (reminders and invitations); None when Imo is not configured."""
    if not imo_configured(settings):
        return None
    return ImoChannel(
        base_url=settings.imo_base_url,
        username=settings.imo_username,
        password=settings.imo_password.get_secret_value(),
        session=http,
        timeout=settings.imo_timeout_seconds,
    )


def twilio_sms_channel(settings: Settings, http: aiohttp.ClientSession) -> TwilioSmsChannel | None:
    """The SMS adapter; None when Twilio is not configured."""
    if not twilio_sms_configured(settings):
        return None
    return TwilioSmsChannel(
        base_url=settings.twilio_base_url,
        account_sid=settings.twilio_account_sid,
        auth_token=settings.twilio_auth_token.get_secret_value(),
        senders=settings.twilio_sms_from,
        session=http,
        timeout=settings.twilio_timeout_seconds,
    )


def whatsapp_channel(
    settings: Settings, http: aiohttp.ClientSession
) -> WhatsAppCloudChannel | WhatsAppTwilioChannel | None:
    """WhatsApp through the provider WHATSAPP_PROVIDER names; None when not configured."""
    if not settings.whatsapp_configured:
        return None
    if settings.whatsapp_provider == "twilio":
        return WhatsAppTwilioChannel(
            base_url=settings.twilio_base_url,
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token.get_secret_value(),
            sender=settings.whatsapp_twilio_from,
            session=http,
            timeout=settings.whatsapp_timeout_seconds,
        )
    return WhatsAppCloudChannel(
        base_url=settings.whatsapp_base_url,
        api_version=settings.whatsapp_api_version,
        phone_number_id=settings.whatsapp_phone_number_id,
        access_token=settings.whatsapp_access_token.get_secret_value(),
        session=http,
        timeout=settings.whatsapp_timeout_seconds,
    )


def gateway_channel(settings: Settings, http: aiohttp.ClientSession) -> GatewayQueueChannel:
    """Gateway phones: always available, used where CHANNEL_CHAINS names `gateway`."""
    return GatewayQueueChannel()


def email_configured(settings: Settings) -> bool:
    return settings.email_configured


def email_channel(settings: Settings, http: aiohttp.ClientSession) -> EmailChannel | None:
    """Email over SMTP (its own connection pool, not the HTTP session); None when
    SMTP_HOST or EMAIL_FROM is unset."""
    if not settings.email_configured:
        return None

    def headers(message: OutgoingMessage) -> Mapping[str, str]:
        return email_headers.conversation_headers(message, settings)

    return EmailChannel(
        SmtpConfig(
            host=settings.smtp_host,
            port=settings.smtp_port,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value(),
            sender=settings.email_from,
            timeout=settings.smtp_timeout_seconds,
            pool_size=settings.smtp_pool_size,
            messages_per_connection=settings.smtp_messages_per_connection,
        ),
        extra_headers=headers,
        envelope_sender=lambda recipient: email_headers.envelope_sender(recipient, settings),
    )


@dataclass(frozen=True, slots=True)
class Provider:
    """A channel: its adapter (None when not configured) and its account's shared limit."""

    channel: ChannelName
    configured: Callable[[Settings], bool]
    build: Callable[[Settings, aiohttp.ClientSession], Channel | None]
    limiter_key: str
    rate_per_second: Callable[[Settings], float]


PROVIDERS: tuple[Provider, ...] = (
    Provider(
        ChannelName.IMO,
        imo_configured,
        imo_channel,
        "ratelimit:imo",
        lambda s: s.imo_rate_limit_per_second,
    ),
    Provider(
        ChannelName.SMS,
        twilio_sms_configured,
        twilio_sms_channel,
        "ratelimit:twilio",
        lambda s: s.twilio_rate_limit_per_second,
    ),
    # The WhatsApp number's own throughput, whichever provider carries it.
    Provider(
        ChannelName.WHATSAPP,
        lambda s: s.whatsapp_configured,
        whatsapp_channel,
        "ratelimit:whatsapp",
        lambda s: s.whatsapp_rate_limit_per_second,
    ),
    # Queueing costs nothing: the phones' own pace (GATEWAY_RATE_PER_MINUTE) is applied
    # by their polls, per phone.
    Provider(
        ChannelName.GATEWAY,
        lambda s: True,
        gateway_channel,
        "ratelimit:gateway",
        lambda s: 10_000.0,
    ),
    Provider(
        ChannelName.EMAIL,
        email_configured,
        email_channel,
        "ratelimit:email",
        lambda s: s.email_rate_limit_per_second,
    ),
)
_BY_CHANNEL = {provider.channel: provider for provider in PROVIDERS}


def configured_channels(settings: Settings) -> set[str]:
    """The channels whose credentials are set: the ones `build_channels` builds."""
    return {provider.channel.value for provider in PROVIDERS if provider.configured(settings)}


def build_channels(settings: Settings, http: aiohttp.ClientSession) -> dict[str, Channel]:
    """Every channel whose credentials are set. (What the channel chains name and is not
    configured is logged once at start-up: `app.delivery.dispatcher.check_chains`.)"""
    channels: dict[str, Channel] = {}
    for provider in PROVIDERS:
        channel = provider.build(settings, http)
        if channel is not None:
            channels[provider.channel] = channel
    return channels


def build_limiter(channel: ChannelName, settings: Settings, redis: Redis) -> RateLimiter:
    """The limit of `channel`'s provider account, held in Redis and shared by every worker
    and every sender (reminders and invitations share Imo's)."""
    provider = _BY_CHANNEL[channel]
    rate = provider.rate_per_second(settings) * (1 - LIMIT_HEADROOM)
    return RateLimiter(redis, provider.limiter_key, rate)


def build_limiters(settings: Settings, redis: Redis) -> dict[str, RateLimiter]:
    """One limiter per provider account."""
    return {
        provider.channel: build_limiter(provider.channel, settings, redis) for provider in PROVIDERS
    }


async def close_channels(channels: Mapping[str, Channel]) -> None:
    """Close what channels hold beyond the HTTP session (the email channel's SMTP pool)."""
    for channel in channels.values():
        close = getattr(channel, "close", None)
        if close is not None:
            await close()


def http_session(concurrency: int) -> aiohttp.ClientSession:
    """The HTTP session of a sender: `concurrency` connections, DNS cached."""
    connector = aiohttp.TCPConnector(limit=concurrency, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector)
