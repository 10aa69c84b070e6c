"""`notify operators create` and `notify operators revoke`."""

from __future__ import annotations

import asyncio

from sqlalchemy import delete, select
from typer.testing import CliRunner

from app.cli import cli
from app.db.session import create_engine_and_sessionmaker
from app.models import Operator
from app.operators import service as operator_service
from tests.stack import Services

runner = CliRunner()
EMAIL = "cli-operator@clinic.test"


def test_create_prints_a_password_once_and_revoke_disables(services: Services) -> None:
    created = runner.invoke(cli, ["operators", "create", EMAIL, "--role", "support"])
    assert created.exit_code == 0, created.output
    password = created.output.strip().splitlines()[-1]
    again = runner.invoke(cli, ["operators", "create", EMAIL, "--role", "admin"])
    assert again.exit_code == 1 and "exists already" in again.output
    bad_role = runner.invoke(cli, ["operators", "create", "x@clinic.test", "--role", "owner"])
    assert bad_role.exit_code == 1 and "viewer, support, admin" in bad_role.output
    revoked = runner.invoke(cli, ["operators", "revoke", EMAIL])
    assert revoked.exit_code == 0 and "disabled" in revoked.output
    unknown = runner.invoke(cli, ["operators", "revoke", "nobody@clinic.test"])
    assert unknown.exit_code == 1

    async def check_and_remove() -> Operator:
        engine, sessionmaker = create_engine_and_sessionmaker(services.database_url)
        try:
            async with sessionmaker() as session:
                operator = (
                    await session.scalars(select(Operator).where(Operator.email == EMAIL))
                ).one()
                await session.execute(delete(Operator).where(Operator.email == EMAIL))
                await session.commit()
                return operator
        finally:
            await engine.dispose()

    operator = asyncio.run(check_and_remove())
    assert operator.role == "support" and operator.disabled_at is not None
    assert asyncio.run(operator_service.password_matches(operator.password_hash, password))
