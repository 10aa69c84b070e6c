"""Seeding and reading for invitation-round tests, on any database connection."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.config import Settings
from app.imo import service as imo_service
from tests.clock import daytime_zone
from tests.stack import Database


def invite_phone(number: int, digit: int) -> str:
    """A Bangladeshi mobile, unique per `number`, ending in the fake Imo's `digit`."""
    return f"+88019{number:07d}{digit}"


async def seed_patients(
    connection: AsyncConnection,
    phones: Sequence[str],
    *,
    prefix: str = "p",
    time_zone: str | None = None,
    consent: str = "granted",
) -> list[str]:
    """One consenting patient per phone (ids `prefix-00000`...), set-based; their ids."""
    ids = [f"{prefix}-{n:05d}" for n in range(len(phones))]
    await connection.execute(
        text(
            """
            INSERT INTO patients (id, full_name, phone_numbers, mobile_e164, country, locale,
                                  time_zone, facility_id, facility_name, reminder_consent)
            SELECT v.id, 'Rahim Uddin',
                   jsonb_build_array(jsonb_build_object('number', v.phone, 'type', 'mobile')),
                   v.phone, 'BD', 'bn-BD', :zone, 'f-12', 'Dhaka Medical', :consent
            FROM unnest(CAST(:ids AS text[]), CAST(:phones AS text[])) AS v(id, phone)
            """
        ),
        {
            "ids": ids,
            "phones": list(phones),
            "zone": time_zone or daytime_zone(),
            "consent": consent,
        },
    )
    return ids


async def set_authorization(
    connection: AsyncConnection, patient_id: str, status: str, last_invited_at: datetime | None
) -> None:
    await connection.execute(
        text(
            "INSERT INTO imo_authorizations (patient_id, status, last_invited_at) "
            "VALUES (:id, :status, :at)"
        ),
        {"id": patient_id, "status": status, "at": last_invited_at},
    )


async def authorizations(connection: AsyncConnection) -> dict[str, tuple[str, datetime | None]]:
    """patient id -> (status, last_invited_at)."""
    rows = await connection.execute(
        text("SELECT patient_id, status, last_invited_at FROM imo_authorizations")
    )
    return {row[0]: (row[1], row[2]) for row in rows}


async def start_round(db: Database, settings: Settings, *, limit: int | None = None) -> int:
    """A round started through the API's service, committed; its id."""
    async with db.sessionmaker() as session:
        round_ = await imo_service.start_round(
            session, settings, trigger="api", now=datetime.now(UTC), limit=limit
        )
        await session.commit()
        return round_.id


async def round_state(db: Database, round_id: int) -> str:
    async with db.engine.connect() as connection:
        state = await connection.scalar(
            text("SELECT state FROM imo_invitation_rounds WHERE id = :id"), {"id": round_id}
        )
    return str(state)
