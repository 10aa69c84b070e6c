"""API keys: created once, shown once, stored as a SHA-256 hash.

Keys are 256 random bits, so a fast hash is safe: nobody can brute-force the preimage.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import ApiKey

KEY_PREFIX = "cn_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_api_key(session: AsyncSession, name: str) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the plaintext, which is never stored. Flushes."""
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = ApiKey(name=name, prefix=plaintext[:10], key_hash=hash_key(plaintext))
    session.add(api_key)
    await session.flush()
    return api_key, plaintext


async def authenticate(session: AsyncSession, presented: str) -> ApiKey | None:
    """The live key matching `presented`, or None (unknown, revoked or malformed)."""
    if not presented.startswith(KEY_PREFIX) or len(presented) > 200:
        return None
    digest = hash_key(presented)
    api_key = await session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    # The index lookup already matched; compare again in constant time regardless.
    if api_key is None or not hmac.compare_digest(api_key.key_hash, digest):
        return None
    if api_key.revoked_at is not None:
        return None
    return api_key


async def revoke_api_key(session: AsyncSession, api_key_id: int) -> bool:
    api_key = await session.get(ApiKey, api_key_id)
    if api_key is None:
        return False
    if api_key.revoked_at is None:
        api_key.revoked_at = datetime.now(UTC)
    await session.flush()
    return True
