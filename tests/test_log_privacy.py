"""S5 at the root: a database error on any write path puts no name, phone number or
message text into a log line (JSON or text) or a Sentry event (issue 11, item 1).

Every table the API writes is given a constraint that refuses every new row
(`CHECK (false) NOT VALID`, inside the test's rolled-back transaction), so each write
fails in PostgreSQL with the whole row in its DETAIL, as an insert of `\\u0000` once did.
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import sentry_sdk
from fastapi import FastAPI
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import observability
from app.auth import service as auth_service
from app.config import Settings
from app.logs import JsonFormatter, TextFormatter
from app.main import create_app
from tests.appointments.helpers import CASCADE, days, put_plan
from tests.factories import make_patient, patient_body, unique_id

pytestmark = pytest.mark.asyncio(loop_scope="session")

NAME = "Zebulon Quixote"
FACILITY = "Xanadu Clinic"
PHONE_DIGITS = "1711999917"
TEMPLATE_TEXT = "Qwertyuiop reminder"
SECRETS = ("Zebulon", "Quixote", "Xanadu", PHONE_DIGITS, "Qwertyuiop")

TABLES = ("patients", "notifications", "templates", "appointments", "reminder_plans")
TABLES += ("experiments",)


class CapturingTransport(Transport):
    """Sentry's envelopes, kept in memory instead of sent."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def text(self) -> str:
        return "\n".join(
            item.get_bytes().decode(errors="replace")
            for envelope in self.envelopes
            for item in envelope.items
        )


@pytest.fixture
def captured_logs() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    json_lines, text_lines = io.StringIO(), io.StringIO()
    handlers = [logging.StreamHandler(json_lines), logging.StreamHandler(text_lines)]
    handlers[0].setFormatter(JsonFormatter())
    handlers[1].setFormatter(TextFormatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    previous_level = root.level
    root.setLevel(logging.DEBUG)
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield json_lines, text_lines
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        root.setLevel(previous_level)


@pytest.fixture
def sentry() -> Iterator[CapturingTransport]:
    transport = CapturingTransport()
    settings = Settings(sentry_dsn="https://public@sentry.invalid/1")
    observability.init_sentry(settings, component="api", transport=transport)
    try:
        yield transport
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.init()


@pytest_asyncio.fixture(loop_scope="session")
async def client(
    sentry: CapturingTransport, db_sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a fresh app built with Sentry on; a 500 is answered, not raised."""
    app: FastAPI = create_app(Settings(log_json=True))
    async with app.router.lifespan_context(app):
        app.state.sessionmaker = db_sessionmaker
        async with db_sessionmaker() as session:
            _, key = await auth_service.create_api_key(session, "privacy")
            await session.commit()
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
            base_url="http://test",
            headers={"Authorization": f"Bearer {key}"},
        ) as http:
            yield http


async def refuse_every_new_row(session: AsyncSession) -> None:
    """A database error on every write (an exception raised by a trigger: a broken CHECK
    is the input's fault and answered 422, this is the server's and a 500)."""
    await session.execute(
        text(
            "CREATE FUNCTION hardening_refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$"
        )
    )
    for table in TABLES:
        await session.execute(
            text(
                f"CREATE TRIGGER hardening_refuse BEFORE INSERT OR UPDATE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION hardening_refuse()"
            )
        )


def patient(**overrides: Any) -> dict[str, Any]:
    return patient_body(
        full_name=NAME,
        phone_numbers=[{"number": f"+880{PHONE_DIGITS}", "type": "mobile"}],
        facility={"id": "f-x", "name": FACILITY},
        **overrides,
    )


async def test_a_database_error_on_any_write_path_leaks_nothing(
    client: httpx.AsyncClient,
    db_session: AsyncSession,
    captured_logs: tuple[io.StringIO, io.StringIO],
    sentry: CapturingTransport,
) -> None:
    stored = await make_patient(
        db_session,
        full_name=NAME,
        facility_name=FACILITY,
        mobile_e164=f"+880{PHONE_DIGITS}",
        phone_numbers=[{"number": f"+880{PHONE_DIGITS}", "type": "mobile"}],
    )
    plan = await put_plan(client, CASCADE)
    appointment_id = unique_id("a")
    made = await client.put(
        f"/v1/appointments/{appointment_id}",
        json={"patient_id": stored.id, "scheduled_date": days(1)},
    )
    assert made.status_code == 201, made.text
    await db_session.commit()
    await refuse_every_new_row(db_session)

    writes = [
        ("PUT", f"/v1/patients/{unique_id()}", patient()),
        ("POST", "/v1/patients/batch", {"patients": [{"id": unique_id(), **patient()}]}),
        (
            "POST",
            "/v1/notifications",
            {
                "patient_id": stored.id,
                "purpose": "appointment_reminder",
                "template": "appointment_reminder.basic",
                "variables": {"appointment_date": "2026-12-01"},
            },
        ),
        ("PUT", "/v1/templates/privacy.check/en", {"title": "T", "body": TEMPLATE_TEXT}),
        (
            "PUT",
            f"/v1/appointments/{unique_id('a')}",
            {
                "patient_id": stored.id,
                "scheduled_date": days(2),
                "facility": {"id": "f-x", "name": FACILITY},
            },
        ),
        ("POST", f"/v1/appointments/{appointment_id}/visit", {"visited_at": "2026-01-01T10:00Z"}),
        ("PUT", f"/v1/reminder-plans/{unique_id('plan')}", {"reminders": CASCADE}),
        (
            "POST",
            "/v1/experiments",
            {
                "name": unique_id("exp"),
                "start_date": days(1),
                "end_date": days(30),
                "groups": [
                    {"name": "control", "weight": 1, "reminder_plan": None},
                    {"name": "plan", "weight": 1, "reminder_plan": plan},
                ],
            },
        ),
    ]
    for method, path, body in writes:
        answer = await client.request(method, path, json=body)
        # The batch reports a failed item in its answer; every other path is a 500.
        assert answer.status_code == 500 or (path.endswith("batch") and "error" in answer.text), (
            method,
            path,
            answer.status_code,
            answer.text,
        )
        assert answer.json()["error"]["code"] == "internal_error" or path.endswith("batch")
        assert answer.headers["X-Request-ID"]
        assert answer.headers["Connection"] == "close"

    json_lines, text_lines = captured_logs
    logged = json_lines.getvalue() + text_lines.getvalue()
    reported = sentry.text()
    assert "unhandled error" in logged and "SQLSTATE P0001" in logged
    assert reported, "Sentry heard of none of the errors"
    for secret in SECRETS:
        assert secret not in logged, (secret, logged[-3000:])
        assert secret not in reported, (secret, reported[-3000:])
