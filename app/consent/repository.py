"""The opt-outs' SQL: set-based, patients locked in id order."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Patient

# Every patient messaged at the sender's number, and the one it matched: a STOP from a
# family phone stops what goes to that phone, whoever the reminder is for. No phone (an
# email, whose reply token names one patient): that patient alone.
_PATIENTS_OF_SENDER = """
    SELECT id FROM patients
    WHERE id = CAST(:patient_id AS text) OR mobile_e164 = CAST(:phone AS text)
    ORDER BY id FOR UPDATE
"""

_OPT_OUT = text(
    f"""
    WITH locked AS ({_PATIENTS_OF_SENDER})
    UPDATE patients AS p
    SET opted_out_channels = ARRAY(
            SELECT DISTINCT c FROM unnest(p.opted_out_channels || CAST(:channels AS text[])) AS c
            ORDER BY c),
        updated_at = now()
    FROM locked WHERE p.id = locked.id
    RETURNING p.id
    """  # noqa: S608 - constants only
)

_OPT_IN = text(
    f"""
    WITH locked AS ({_PATIENTS_OF_SENDER})
    UPDATE patients AS p
    SET opted_out_channels = array_remove(array_remove(p.opted_out_channels, '*'), :channel),
        updated_at = now()
    FROM locked WHERE p.id = locked.id
    RETURNING p.id
    """  # noqa: S608 - constants only
)

# Reminders not handed to a channel yet end `denied`; what is `sending` is on its way.
_DENY_UNSENT = text(
    """
    UPDATE notifications
    SET state = 'denied', failure_reason = :reason, claimed_at = NULL, updated_at = now()
    WHERE patient_id = ANY(CAST(:patient_ids AS text[])) AND state IN ('scheduled', 'muted')
    RETURNING id
    """
)

_OPT_OUT_MANY = text(
    """
    WITH v AS (
        SELECT * FROM unnest(CAST(:patient_ids AS text[]), CAST(:channels AS text[]))
            AS v(patient_id, channel)
    ), locked AS (
        SELECT id FROM patients WHERE id IN (SELECT patient_id FROM v) ORDER BY id FOR UPDATE
    )
    UPDATE patients AS p
    SET opted_out_channels = ARRAY(
            SELECT DISTINCT c FROM unnest(p.opted_out_channels || ARRAY[v.channel]) AS c
            ORDER BY c),
        updated_at = now()
    FROM v JOIN locked ON locked.id = v.patient_id
    WHERE p.id = v.patient_id AND NOT v.channel = ANY(p.opted_out_channels)
    """
)


async def opt_out_sender(
    session: AsyncSession, patient_id: str, phone: str | None, channels: Collection[str]
) -> list[str]:
    """Add `channels` to the opt-outs of the patients of this sender -> their ids."""
    rows = await session.execute(
        _OPT_OUT, {"patient_id": patient_id, "phone": phone, "channels": list(channels)}
    )
    return [row.id for row in rows]


async def opt_in_sender(
    session: AsyncSession, patient_id: str, phone: str | None, channel: str
) -> list[str]:
    """Lift the every-channel opt-out and `channel`'s -> the patients' ids."""
    rows = await session.execute(
        _OPT_IN, {"patient_id": patient_id, "phone": phone, "channel": channel}
    )
    return [row.id for row in rows]


async def deny_unsent(
    session: AsyncSession, patient_ids: Collection[str], reason: str
) -> list[uuid.UUID]:
    """End every not yet sent notification of these patients `denied` -> their ids."""
    if not patient_ids:
        return []
    rows = await session.execute(
        _DENY_UNSENT, {"patient_ids": sorted(patient_ids), "reason": reason}
    )
    return [row.id for row in rows]


async def opt_out_many(session: AsyncSession, opt_outs: Mapping[str, str]) -> None:
    """patient id -> the channel a provider said they opted out of (one statement)."""
    if opt_outs:
        await session.execute(
            _OPT_OUT_MANY,
            {"patient_ids": list(opt_outs), "channels": list(opt_outs.values())},
        )


async def opted_out_channels(session: AsyncSession, patient_id: str) -> list[str]:
    """The patient's opt-outs as they now stand (read again, not the session's copy)."""
    opted_out = await session.scalar(
        select(Patient.opted_out_channels)
        .where(Patient.id == patient_id)
        .execution_options(populate_existing=True)
    )
    return list(opted_out or ())
