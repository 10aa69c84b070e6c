"""Build the configured channels and their shared rate limits for a worker process."""

from __future__ import annotations

import logging

import aiohttp
from redis.asyncio import Redis

from app.channels.base import Channel, ChannelName
from app.channels.imo import ImoChannel
from app.channels.twilio_sms import TwilioSmsChannel
from app.config import Settings
from app.delivery import policy
from app.ratelimit import RateLimiter

log = logging.getLogger(__name__)


def configured_channels(settings: Settings) -> set[str]:
    """The channels whose credentials are set: the ones `build_channels` builds."""
    configured = set()
    if settings.imo_base_url and settings.imo_username:
        configured.add(ChannelName.IMO.value)
    if settings.twilio_account_sid and settings.twilio_sms_from:
        configured.add(ChannelName.SMS.value)
    return configured


def check_chains(settings: Settings) -> policy.ChainReport:
    """The start-up check of CHANNEL_CHAINS against the configured channels: a step
    whose channel has no credentials is logged here, once, and skipped when sending."""
    report = policy.chain_report(settings, configured_channels(settings))
    if report.unconfigured_steps:
        log.warning(
            "channel chains name channels that are not configured; those steps are skipped",
            extra={"unconfigured": report.unconfigured, "steps": report.unconfigured_steps},
        )
    return report


def build_channels(settings: Settings, http: aiohttp.ClientSession) -> dict[str, Channel]:
    """Every channel whose credentials are set (see `configured_channels`)."""
    configured = configured_channels(settings)
    channels: dict[str, Channel] = {}
    if ChannelName.IMO in configured:
        channels[ChannelName.IMO] = ImoChannel(
            base_url=settings.imo_base_url,
            username=settings.imo_username,
            password=settings.imo_password.get_secret_value(),
            session=http,
            timeout=settings.imo_timeout_seconds,
        )
    if ChannelName.SMS in configured:
        channels[ChannelName.SMS] = TwilioSmsChannel(
            base_url=settings.twilio_base_url,
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token.get_secret_value(),
            senders=settings.twilio_sms_from,
            session=http,
            timeout=settings.twilio_timeout_seconds,
        )
    return channels


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
    }


def http_session(concurrency: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=concurrency, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector)
