"""API keys: created once, shown once, stored as a SHA-256 hash.

Keys are 256 random bits, so a fast hash is safe: nobody can brute-force the preimage.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import repository as api_key_repository
from app.auth.repository import PresentedKey
from app.db.session import standalone_session
from app.errors import Conflict, NotFound
from app.models import ApiKey

KEY_PREFIX = "cn_"
# `last_used_at` is written at most this often per key: one cheap write a minute, not
# one per request.
LAST_USED_RESOLUTION_SECONDS = 60


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_api_key(session: AsyncSession, name: str) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the plaintext, which is never stored. Flushes."""
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = ApiKey(name=name, prefix=plaintext[:10], key_hash=hash_key(plaintext))
    session.add(api_key)
    await session.flush()
    return api_key, plaintext


async def issue_api_key(database_url: str, name: str) -> tuple[str, str]:
    """Create and commit a key in a unit of work of its own (`notify api-keys create`,
    `notify dev`); returns (its id, the plaintext)."""
    async with standalone_session(database_url) as session:
        api_key, plaintext = await create_api_key(session, name)
        await session.commit()
        return str(api_key.id), plaintext


async def api_key_is_live(database_url: str, plaintext: str) -> bool:
    """Whether `plaintext` authenticates, checked in a unit of work of its own."""
    async with standalone_session(database_url) as session:
        return await authenticate(session, plaintext) is not None


async def authenticate(session: AsyncSession, presented: str) -> PresentedKey | None:
    """The live key matching `presented`, or None (unknown, revoked or malformed)."""
    if not presented.startswith(KEY_PREFIX) or len(presented) > 200:
        return None
    digest = hash_key(presented)
    api_key = await api_key_repository.by_hash(session, digest)
    # The index lookup already matched; compare again in constant time regardless.
    if api_key is None or not hmac.compare_digest(api_key.key_hash, digest):
        return None
    if api_key.revoked_at is not None:
        return None
    await _touch(session, api_key)
    return api_key


async def _touch(session: AsyncSession, api_key: PresentedKey) -> None:
    """Write `last_used_at` when it is a minute old or more: one cheap write a minute."""
    used = api_key.last_used_at
    if used is None or (datetime.now(UTC) - used).total_seconds() >= LAST_USED_RESOLUTION_SECONDS:
        await api_key_repository.touch(session, api_key.id, LAST_USED_RESOLUTION_SECONDS)


async def list_api_keys(session: AsyncSession) -> list[ApiKey]:
    """Every key, live and revoked, oldest first."""
    return await api_key_repository.every_key(session)


async def revoke_by_name_or_prefix(session: AsyncSession, name_or_prefix: str) -> ApiKey:
    """Revoke the one live key with this prefix, or else with this name. Raises NotFound
    when none matches and Conflict when several live keys share the name (revoke those
    by prefix). Revoking takes effect on the key's next request. Flushes."""
    matches = await api_key_repository.live_by_prefix_or_name(session, name_or_prefix)
    if not matches:
        raise NotFound(f"no live API key named or prefixed '{name_or_prefix}'")
    if len(matches) > 1:
        prefixes = ", ".join(key.prefix for key in matches)
        raise Conflict(
            f"{len(matches)} live keys are named '{name_or_prefix}' ({prefixes}): "
            "revoke one by its prefix"
        )
    matches[0].revoked_at = datetime.now(UTC)
    await session.flush()
    return matches[0]


async def revoke_api_key(session: AsyncSession, api_key_id: int) -> bool:
    api_key = await session.get(ApiKey, api_key_id)
    if api_key is None:
        return False
    if api_key.revoked_at is None:
        api_key.revoked_at = datetime.now(UTC)
    await session.flush()
    return True
