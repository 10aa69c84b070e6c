"""One requests-per-second limit shared by every worker process, held in Redis.

GCRA (virtual scheduling): the key holds the theoretical arrival time (TAT) of the next
free slot. A reservation of n slots starts at max(TAT, now), moves TAT on by n/rate and
tells the caller how long to wait for its first slot. The clock is Redis's own (`TIME`),
so workers on machines with skewed clocks share one schedule. There is no burst
allowance: slots are exactly 1/rate apart, so requests sent at their slots never exceed
the rate in any one-second window, sliding or not. What reaches the wire also carries the
callers' wake-up jitter (asyncio timers fire up to ~1 ms late): about rate x jitter extra
in the worst window, so configure a rate a little under a hard provider limit.

The key expires once its schedule has passed, so an idle limiter leaves nothing behind;
a flushed or restarted Redis simply starts a fresh schedule (and the script reloads).
Callers already waiting for slots of the lost schedule still send, so for as long as that
schedule ran ahead of now (at most ~1 s for low-priority traffic) both overlap.
"""

from __future__ import annotations

import asyncio
import math
from typing import Literal

from redis.asyncio import Redis

Priority = Literal["high", "low"]

# KEYS[1]: TAT in microseconds since EPOCH (a recent epoch keeps doubles precise to
# ~0.02 us). ARGV: n, microseconds per slot, horizon in microseconds (< 0: high priority).
# Returns {1, us until the first slot} or, for a refused low-priority call,
# {0, us until the schedule is back within the horizon}.
_RESERVE = """
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1700000000) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local horizon = tonumber(ARGV[3])
if horizon >= 0 and tat - now > horizon then
  return {0, math.ceil(tat - now - horizon)}
end
local new_tat = tat + tonumber(ARGV[1]) * tonumber(ARGV[2])
redis.call('SET', KEYS[1], string.format('%.17g', new_tat),
           'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, math.ceil(tat - now)}
"""

# KEYS[1] as above; ARGV[1]: pause in microseconds. No slot starts before now + pause.
_PAUSE = """
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1700000000) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
local resume = now + tonumber(ARGV[1])
if tat < resume then
  redis.call('SET', KEYS[1], string.format('%.17g', resume),
             'PX', math.ceil(tonumber(ARGV[1]) / 1000) + 1000)
end
return 1
"""

# A refused low-priority caller never polls Redis faster than this.
_MIN_RETRY_SECONDS = 0.001


class RateLimiter:
    """`rate_per_second` requests per second on `key`, across every process using it.

    Priority: high-priority reservations always join the schedule. Low-priority ones are
    deferred while the schedule already runs more than `low_priority_horizon` seconds
    ahead of now, so a due high-priority request (a reminder) waits for low-priority
    traffic (invitation rounds) at most about `low_priority_horizon` plus one low chunk
    (`max_chunk / rate`), plus its own place among other high-priority requests.
    Low-priority callers can starve while high-priority traffic fills the rate; that is
    the point.
    """

    def __init__(
        self,
        redis: Redis,
        key: str,
        rate_per_second: float,
        *,
        max_chunk: int | None = None,
        low_priority_horizon: float = 1.0,
    ) -> None:
        """Raises ValueError for a rate <= 0, a max_chunk < 1 or a negative horizon."""
        if not rate_per_second > 0 or math.isinf(rate_per_second):
            raise ValueError(f"rate_per_second must be a positive number: {rate_per_second}")
        if max_chunk is None:
            # A chunk is at most ~20 ms of the budget.
            max_chunk = max(1, int(rate_per_second / 50))
        if max_chunk < 1:
            raise ValueError(f"max_chunk must be at least 1: {max_chunk}")
        if low_priority_horizon < 0:
            raise ValueError(f"low_priority_horizon must be >= 0: {low_priority_horizon}")
        self.key = key
        self.rate_per_second = rate_per_second
        self.max_chunk = max_chunk
        self.low_priority_horizon = low_priority_horizon
        # Script calls made (one Redis round-trip each, barring a reload): for metrics.
        self.round_trips = 0
        self._script = redis.register_script(_RESERVE)
        self._pause = redis.register_script(_PAUSE)
        self._slot_us = 1_000_000 / rate_per_second

    async def acquire(self, n: int = 1, *, priority: Priority = "high") -> None:
        """Wait until `n` requests may be sent, then return; send them straight away.

        n is taken in chunks of at most `max_chunk`, waiting for each in turn, so a caller
        that sends its n requests on return is never ahead of its budget by more than one
        chunk (~20 ms of the rate by default): no bursts, whatever n. A chunk sent at once
        is still a small burst: the worst sliding second sees up to rate + max_chunk.
        """
        if n < 1:
            raise ValueError(f"n must be at least 1: {n}")
        while n > 0:
            chunk = min(n, self.max_chunk)
            delay = await self.reserve(chunk, priority=priority)
            if delay > 0:
                await asyncio.sleep(delay)
            n -= chunk

    async def reserve(self, n: int, *, priority: Priority = "high") -> float:
        """Reserve `n` consecutive slots in one go; return seconds until the first one.

        Slot i (0-based) is due at `delay + i / rate_per_second`; the caller paces its
        sends by that. Nothing is chunked here, so a low-priority reservation of n pushes
        high-priority traffic back by up to n / rate: keep low-priority n small. A
        low-priority call may await (without holding any slot) until it is admitted.
        """
        if n < 1:
            raise ValueError(f"n must be at least 1: {n}")
        horizon_us = -1.0 if priority == "high" else self.low_priority_horizon * 1_000_000
        while True:
            self.round_trips += 1
            admitted, wait_us = await self._script(
                keys=[self.key], args=[n, repr(self._slot_us), repr(horizon_us)]
            )
            if admitted:
                return float(wait_us) / 1_000_000
            await asyncio.sleep(max(float(wait_us) / 1_000_000, _MIN_RETRY_SECONDS))

    async def pause(self, seconds: float) -> None:
        """Send nothing more for `seconds`, in every process: the provider said 429.

        Later reservations queue behind the pause; calls already waiting for an earlier
        slot still send (at most one chunk each). A pause never shortens a schedule.
        """
        if seconds > 0:
            await self._pause(keys=[self.key], args=[repr(seconds * 1_000_000)])
