"""Operators of the dashboard: created by `notify operators create`, passwords hashed
with Argon2, sessions held server-side so that they can be revoked.

A session's cookie carries 256 random bits; the table keeps only their SHA-256 (as API
keys do), so reading the table opens no session. Login attempts are counted in Redis
per address and per account; past the limit, logins are refused without checking the
password until 15 minutes pass without a failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.session import standalone_session
from app.errors import AppError, Conflict, NotFound, field_error
from app.models import Operator, OperatorSession
from app.models.operator import OPERATOR_ROLES
from app.operators import repository as operator_repository

SESSION_LIFETIME = timedelta(hours=12)
# Failed logins allowed per window, per client address and per account.
LOGIN_WINDOW_SECONDS = 15 * 60
LOGIN_FAILURES_PER_ADDRESS = 20
LOGIN_FAILURES_PER_ACCOUNT = 5

_hasher = PasswordHasher()
# Verified against when the email is unknown, so that a login takes as long either way.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class LoginRefused(AppError):
    status_code = 401
    code = "login_refused"


class TooManyLogins(AppError):
    status_code = 429
    code = "too_many_logins"


@dataclass(frozen=True)
class SignedIn:
    operator: Operator
    session: OperatorSession


def role_allows(role: str, needed: str) -> bool:
    """Roles are ranked: an admin may do what support may, support what a viewer may."""
    return OPERATOR_ROLES.index(role) >= OPERATOR_ROLES.index(needed)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def normalise_email(email: str) -> str:
    email = email.strip().lower()
    if "@" not in email or len(email) > 254 or any(c.isspace() for c in email):
        raise field_error("email", "not an email address")
    return email


async def create_operator(session: AsyncSession, email: str, role: str) -> tuple[Operator, str]:
    """A new operator with a generated password, returned once and never stored. Flushes.
    Raises InvalidInput for a bad email or role, Conflict for an email already taken."""
    email = normalise_email(email)
    if role not in OPERATOR_ROLES:
        raise field_error("role", f"one of {', '.join(OPERATOR_ROLES)}")
    if await operator_repository.by_email(session, email) is not None:
        raise Conflict(f"an operator {email} exists already")
    password = secrets.token_urlsafe(15)
    operator = Operator(
        email=email, role=role, password_hash=await asyncio.to_thread(_hasher.hash, password)
    )
    session.add(operator)
    await session.flush()
    return operator, password


async def disable_operator(session: AsyncSession, email: str) -> int:
    """Disable the operator and revoke every session of theirs; returns how many sessions
    were live. Raises NotFound. Idempotent."""
    operator = await operator_repository.by_email(session, normalise_email(email))
    if operator is None:
        raise NotFound(f"no operator {email}")
    now = datetime.now(UTC)
    if operator.disabled_at is None:
        operator.disabled_at = now
    revoked = await operator_repository.revoke_sessions(session, operator.id, now)
    await session.flush()
    return revoked


async def password_matches(password_hash: str, password: str) -> bool:
    try:
        return await asyncio.to_thread(_hasher.verify, password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


async def _count_failure(redis: Redis, key: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        # Each failure restarts the window (EXPIRE NX needs Redis 7; this works on 6).
        pipe.expire(key, LOGIN_WINDOW_SECONDS)
        await pipe.execute()


async def log_in(
    session: AsyncSession, redis: Redis, email: str, password: str, address: str
) -> tuple[SignedIn, str]:
    """A new session and its token (for the cookie). Flushes.
    Raises TooManyLogins past either limit, LoginRefused for a wrong email or password or
    a disabled operator (one message for all: it tells an attacker nothing)."""
    email = email.strip().lower()
    address_key = f"dashboard:login-failures:address:{address}"
    account_key = f"dashboard:login-failures:account:{hash_token(email)}"
    address_failures, account_failures = await redis.mget(address_key, account_key)
    if int(address_failures or 0) >= LOGIN_FAILURES_PER_ADDRESS or (
        int(account_failures or 0) >= LOGIN_FAILURES_PER_ACCOUNT
    ):
        raise TooManyLogins("too many failed logins: try again in 15 minutes")
    operator = await operator_repository.by_email(session, email) if len(email) <= 254 else None
    valid = await password_matches(operator.password_hash if operator else _DUMMY_HASH, password)
    if operator is None or not valid or operator.disabled_at is not None:
        await _count_failure(redis, address_key)
        await _count_failure(redis, account_key)
        raise LoginRefused("wrong email or password")
    await redis.delete(account_key)
    token = secrets.token_urlsafe(32)
    operator_session = OperatorSession(
        operator_id=operator.id,
        token_hash=hash_token(token),
        expires_at=datetime.now(UTC) + SESSION_LIFETIME,
    )
    session.add(operator_session)
    await session.flush()
    return SignedIn(operator, operator_session), token


async def signed_in(session: AsyncSession, token: str) -> SignedIn | None:
    """The live session of this token and its operator, or None (unknown, expired,
    revoked, or the operator was disabled)."""
    found = await operator_repository.live_session(session, hash_token(token), datetime.now(UTC))
    return None if found is None else SignedIn(operator=found[1], session=found[0])


async def log_out(session: AsyncSession, session_id: int) -> None:
    await operator_repository.revoke_session(session, session_id, datetime.now(UTC))


async def issue_operator(database_url: str, email: str, role: str) -> str:
    """`notify operators create`: commit a new operator; returns the password."""
    async with standalone_session(database_url) as session:
        _, password = await create_operator(session, email, role)
        await session.commit()
        return password


async def login_works(database_url: str, email: str, password: str) -> bool:
    """Whether this enabled operator has this password (`notify dev`'s kept login)."""
    async with standalone_session(database_url) as session:
        operator = await operator_repository.by_email(session, email)
        return (
            operator is not None
            and operator.disabled_at is None
            and await password_matches(operator.password_hash, password)
        )


async def revoke_operator(database_url: str, email: str) -> int:
    """`notify operators revoke`: disable the operator and end their sessions."""
    async with standalone_session(database_url) as session:
        revoked = await disable_operator(session, email)
        await session.commit()
        return revoked
