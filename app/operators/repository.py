"""SQL for operators and their sessions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Operator, OperatorSession


async def by_email(session: AsyncSession, email: str) -> Operator | None:
    return await session.scalar(select(Operator).where(Operator.email == email))


async def live_session(
    session: AsyncSession, token_hash: str, now: datetime
) -> tuple[OperatorSession, Operator] | None:
    """The unrevoked, unexpired session with this token and its enabled operator."""
    row = (
        await session.execute(
            select(OperatorSession, Operator)
            .join(Operator, Operator.id == OperatorSession.operator_id)
            .where(
                OperatorSession.token_hash == token_hash,
                OperatorSession.revoked_at.is_(None),
                OperatorSession.expires_at > now,
                Operator.disabled_at.is_(None),
            )
        )
    ).one_or_none()
    return None if row is None else (row[0], row[1])


async def revoke_sessions(session: AsyncSession, operator_id: int, now: datetime) -> int:
    result = await session.execute(
        update(OperatorSession)
        .where(OperatorSession.operator_id == operator_id, OperatorSession.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def revoke_session(session: AsyncSession, session_id: int, now: datetime) -> None:
    await session.execute(
        update(OperatorSession)
        .where(OperatorSession.id == session_id, OperatorSession.revoked_at.is_(None))
        .values(revoked_at=now)
    )
