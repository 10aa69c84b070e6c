"""Operators: creation rules, hashed passwords, ranked roles."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Conflict, InvalidInput, NotFound
from app.operators import service as operator_service


@pytest.mark.asyncio(loop_scope="session")
async def test_passwords_are_stored_as_argon2_hashes(db_session: AsyncSession) -> None:
    operator, password = await operator_service.create_operator(
        db_session, " Ana@Clinic.test ", "support"
    )
    assert operator.email == "ana@clinic.test"
    assert (
        operator.password_hash.startswith("$argon2id$") and password not in operator.password_hash
    )
    assert len(password) >= 20


@pytest.mark.asyncio(loop_scope="session")
async def test_bad_emails_roles_and_duplicates_are_refused(db_session: AsyncSession) -> None:
    with pytest.raises(InvalidInput):
        await operator_service.create_operator(db_session, "not-an-email", "viewer")
    with pytest.raises(InvalidInput):
        await operator_service.create_operator(db_session, "a@clinic.test", "owner")
    await operator_service.create_operator(db_session, "a@clinic.test", "viewer")
    with pytest.raises(Conflict):
        await operator_service.create_operator(db_session, "A@clinic.test", "admin")
    with pytest.raises(NotFound):
        await operator_service.disable_operator(db_session, "nobody@clinic.test")


def test_roles_are_ranked() -> None:
    assert operator_service.role_allows("admin", "support")
    assert operator_service.role_allows("support", "viewer")
    assert not operator_service.role_allows("viewer", "support")
    assert not operator_service.role_allows("support", "admin")
