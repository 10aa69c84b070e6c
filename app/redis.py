"""Redis connection settings for arq and for the rate limiter."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

from arq.connections import RedisSettings
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

# A command that meets a closed connection is retried for about a minute: long enough
# to ride out a Redis restart, short enough that a Redis gone for good still fails.
COMMAND_RETRIES = 30


def redis_settings(redis_url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(redis_url)
    # Ride out a Redis restart instead of failing the first command after it.
    settings.conn_retries = 30
    settings.conn_retry_delay = 1
    settings.retry_on_timeout = True
    # Without these, the first command after a restart raises, and arq's poll loop
    # ends the worker process: every worker of the service dies with one Redis restart.
    # (OSError: a refused connect, which redis-py does not wrap before retrying.)
    settings.retry_on_error = [RedisConnectionError, RedisTimeoutError, OSError]
    settings.retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), COMMAND_RETRIES)
    return settings


class RedisUnreachable(RuntimeError):
    """Redis did not answer a PING within the start-up wait."""


def redis_location(redis_url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(redis_url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


async def wait_for_redis(redis_url: str, wait_seconds: float) -> None:
    """PING Redis until it answers, for at most `wait_seconds`; raises RedisUnreachable.

    A start-up check with a deadline of its own: arq's pool and the command retries
    above would otherwise wait for a Redis that is gone for good for over ten minutes,
    with no port open and no word said.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        remaining = deadline - time.monotonic()
        client = Redis.from_url(
            redis_url, socket_connect_timeout=max(0.1, min(2.0, remaining)), socket_timeout=2.0
        )
        try:
            await client.ping()
            return
        except (RedisError, OSError) as exc:
            if time.monotonic() + 0.5 >= deadline:
                raise RedisUnreachable(
                    f"Redis unreachable at {redis_location(redis_url)} "
                    f"(waited {wait_seconds:g}s): {exc}"
                ) from exc
        finally:
            await client.aclose()
        await asyncio.sleep(0.5)
