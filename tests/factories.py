"""Small async factories and an API client for tests. Every id is unique per call.

- `patient_body(**overrides)`: a valid `PUT /v1/patients/{id}` body (Bangladesh, mobile).
- `make_patient(session, **overrides)`: a stored Patient row (flushed, not committed).
- `make_patient_at(session, number=None, **overrides)`: one whose only number is
  `number` (a fresh `unique_mobile()` by default).
- `make_notification(session, patient, **overrides)`: a stored Notification row.
- `running_app(settings)`: the app built from `settings`, its lifespan running.
- `api_client(app, sessionmaker)`: an httpx client on the app whose units of work come
  from `sessionmaker` (the test's rolled-back one), authorised with a fresh API key.

The fixtures built on these (`api_app`, `api`) are in tests/conftest.py.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth import service as auth_service
from app.config import Settings
from app.main import create_app
from app.models import Notification, Patient, StaffMember


def unique_id(prefix: str = "p") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def patient_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "full_name": "Rahim Uddin",
        "phone_numbers": [{"number": "01711000001", "type": "mobile"}],
        "country": "BD",
        "locale": "bn-BD",
        "time_zone": "Asia/Dhaka",
        "facility": {"id": "f-12", "name": "Dhaka Medical"},
        "reminder_consent": "granted",
    }
    body.update(overrides)
    return body


async def make_patient(session: AsyncSession, **overrides: Any) -> Patient:
    values: dict[str, Any] = {
        "id": unique_id(),
        "full_name": "Rahim Uddin",
        "phone_numbers": [{"number": "+8801711000001", "type": "mobile"}],
        "mobile_e164": "+8801711000001",
        "country": "BD",
        "locale": "bn-BD",
        "time_zone": "Asia/Dhaka",
        "facility_id": "f-12",
        "facility_name": "Dhaka Medical",
        "reminder_consent": "granted",
    }
    values.update(overrides)
    patient = Patient(**values)
    session.add(patient)
    await session.flush()
    return patient


async def make_staff(session: AsyncSession, **overrides: Any) -> StaffMember:
    staff_id = overrides.pop("id", None) or unique_id("s")
    values: dict[str, Any] = {
        "id": staff_id,
        "name": "Nasrin Akter",
        "email": f"{staff_id}@clinic.example.org",
        "locale": "en",
    }
    values.update(overrides)
    staff = StaffMember(**values)
    session.add(staff)
    await session.flush()
    return staff


def unique_mobile(prefix: str = "+88017") -> str:
    """A mobile number no other test uses: `prefix` and eight random digits."""
    return f"{prefix}{uuid.uuid4().int % 10**8:08d}"


async def make_patient_at(
    session: AsyncSession, number: str | None = None, **overrides: Any
) -> Patient:
    """A stored Patient whose one (mobile) number is `number`, a fresh one by default:
    for what matches a patient by number (inbound messages, opt-outs)."""
    number = number or unique_mobile()
    return await make_patient(
        session,
        phone_numbers=[{"number": number, "type": "mobile"}],
        mobile_e164=number,
        **overrides,
    )


async def make_notification(
    session: AsyncSession, patient: Patient, **overrides: Any
) -> Notification:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "patient_id": patient.id,
        "purpose": "appointment_reminder",
        "template_key": "appointment_reminder.basic",
        "locale": patient.locale,
        "variables": {"appointment_date": "2026-12-01"},
        "title": "Appointment Reminder",
        "body": "Your visit is on 2026-12-01.",
        "state": "scheduled",
        "due_at": now + timedelta(days=1),
        "expires_at": now + timedelta(days=5),
    }
    values.update(overrides)
    notification = Notification(**values)
    session.add(notification)
    await session.flush()
    return notification


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app built from `settings`, its lifespan running (engine, pools, batcher)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@asynccontextmanager
async def api_client(
    app: FastAPI, sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app` (its lifespan already running) whose units of work come from
    `sessionmaker` (the test's `db_sessionmaker`: commits are savepoints, rolled back
    with the test). Requests must not run concurrently: one connection. The client
    carries a fresh API key.
    """
    original = app.state.sessionmaker
    app.state.sessionmaker = sessionmaker
    async with sessionmaker() as session:
        _, key = await auth_service.create_api_key(session, "test")
        await session.commit()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://test",
            headers={"Authorization": f"Bearer {key}"},
        ) as client:
            yield client
    finally:
        app.state.sessionmaker = original
