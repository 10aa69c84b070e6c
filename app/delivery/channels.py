"""Build the configured channels and their shared rate limits for a worker process."""

from __future__ import annotations

import logging

import aiohttp
from redis.asyncio import Redis

from app.channels.base import Channel, ChannelName
from app.channels.imo import ImoChannel
from app.channels.twilio_sms import TwilioSmsChannel
from app.channels.whatsapp import WhatsAppCloudChannel, WhatsAppTwilioChannel
from app.config import Settings
from app.ratelimit import RateLimiter

log = logging.getLogger(__name__)


def build_channels(settings: Settings, http: aiohttp.ClientSession) -> dict[str, Channel]:
    """Every channel whose credentials are set; missing ones are skipped with a warning."""
    channels: dict[str, Channel] = {}
    if settings.imo_base_url and settings.imo_username:
        channels[ChannelName.IMO] = ImoChannel(
            base_url=settings.imo_base_url,
            username=settings.imo_username,
            password=settings.imo_password.get_secret_value(),
            session=http,
            timeout=settings.imo_timeout_seconds,
        )
    if settings.twilio_account_sid and settings.twilio_sms_from:
        channels[ChannelName.SMS] = TwilioSmsChannel(
            base_url=settings.twilio_base_url,
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token.get_secret_value(),
            senders=settings.twilio_sms_from,
            session=http,
            timeout=settings.twilio_timeout_seconds,
        )
    whatsapp = _whatsapp_channel(settings, http)
    if whatsapp is not None:
        channels[ChannelName.WHATSAPP] = whatsapp
    missing = set(ChannelName) - channels.keys()
    if missing:
        log.warning("channels not configured", extra={"channels": sorted(missing)})
    return channels


def _whatsapp_channel(settings: Settings, http: aiohttp.ClientSession) -> Channel | None:
    """WhatsApp through the provider WHATSAPP_PROVIDER names, if it is configured."""
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


# A provider counts requests as they arrive: ones sent exactly 1/rate apart arrive with a
# few milliseconds of jitter, which puts a handful more into some of its seconds (+3 at
# 500/s with four workers, measured). Scheduling 1% under the account's limit keeps every
# one of the provider's seconds at or under it.
LIMIT_HEADROOM = 0.01


def build_limiters(settings: Settings, redis: Redis) -> dict[str, RateLimiter]:
    """One limiter per provider account, held in Redis and shared by every worker."""
    under = 1 - LIMIT_HEADROOM
    return {
        ChannelName.IMO: RateLimiter(
            redis, "ratelimit:imo", settings.imo_rate_limit_per_second * under
        ),
        ChannelName.SMS: RateLimiter(
            redis, "ratelimit:twilio", settings.twilio_rate_limit_per_second * under
        ),
        # The WhatsApp number's own throughput, whichever provider carries it.
        ChannelName.WHATSAPP: RateLimiter(
            redis, "ratelimit:whatsapp", settings.whatsapp_rate_limit_per_second * under
        ),
    }


def http_session(concurrency: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=concurrency, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector)
