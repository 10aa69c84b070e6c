"""Redis connection settings for arq and for the rate limiter."""

from __future__ import annotations

from arq.connections import RedisSettings
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
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
