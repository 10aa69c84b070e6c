"""The loop guard: more than DUPLICATE_LIMIT messages with the same recipient and the
same text, each within 30 minutes of the previous, are never sent (they end `duplicate`).

CHT kept this count in one process's memory; here it lives in Redis, shared by every
worker: per (recipient, text) a sorted set of the notifications that asked, each with
its position in the sequence, which expires 30 minutes after the last one. One script
adds a notification and answers its position atomically, so two workers racing cannot
both take the last free place; asking again for the same notification (a retry, a claim
the sweeper released) answers the same position. Redis lost, the count starts afresh:
no message is lost, at worst a loop runs a little longer.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence

from redis.asyncio import Redis

WINDOW_MS = 30 * 60 * 1000
KEY_PREFIX = "loopguard:"

# KEYS[1]: the (recipient, text) set; ARGV[1]: the notification; ARGV[2]: the window (ms).
_POSITION = """
local position = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not position then
  position = redis.call('ZCARD', KEYS[1])
  redis.call('ZADD', KEYS[1], position, ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return tonumber(position)
"""


def key(phone: str, text: str) -> str:
    digest = hashlib.sha256(f"{phone}\x00{text}".encode()).hexdigest()
    return KEY_PREFIX + digest


class LoopGuard:
    def __init__(self, redis: Redis, limit: int) -> None:
        self.limit = limit
        self._position = redis.register_script(_POSITION)
        self._redis = redis

    async def duplicates(self, messages: Sequence[tuple[uuid.UUID, str, str]]) -> set[uuid.UUID]:
        """Of `messages` (notification id, recipient, text), those past the limit."""
        if not messages:
            return set()
        async with self._redis.pipeline(transaction=False) as pipe:
            for notification_id, phone, text in messages:
                await self._position(
                    keys=[key(phone, text)], args=[str(notification_id), WINDOW_MS], client=pipe
                )
            positions = await pipe.execute()
        return {
            notification_id
            for (notification_id, _, _), position in zip(messages, positions, strict=True)
            if int(position) >= self.limit
        }
