"""Requests that appointment, plan and experiment tests make again and again."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx

from tests.factories import unique_id

CASCADE = [
    {"offset_days": -1, "template": "appointment_reminder.basic"},
    {"offset_days": 0, "template": "appointment_reminder.basic"},
    {"offset_days": 3, "template": "missed_visit.basic"},
]


def today() -> date:
    return datetime.now(UTC).date()


def days(n: int) -> str:
    return (today() + timedelta(days=n)).isoformat()


async def put_plan(
    api: httpx.AsyncClient,
    reminders: list[dict[str, Any]] | None = None,
    *,
    name: str | None = None,
    default: bool = False,
) -> str:
    name = name or unique_id("plan")
    answer = await api.put(
        f"/v1/reminder-plans/{name}",
        json={"reminders": CASCADE if reminders is None else reminders, "default": default},
    )
    assert answer.status_code in (200, 201), answer.text
    return name


async def put_appointment(
    api: httpx.AsyncClient,
    patient_id: str,
    scheduled_date: str,
    *,
    appointment_id: str | None = None,
    expect: int | tuple[int, ...] = (200, 201),
    **extra: Any,
) -> dict[str, Any]:
    appointment_id = appointment_id or unique_id("a")
    answer = await api.put(
        f"/v1/appointments/{appointment_id}",
        json={"patient_id": patient_id, "scheduled_date": scheduled_date, **extra},
    )
    expected = expect if isinstance(expect, tuple) else (expect,)
    assert answer.status_code in expected, answer.text
    return dict(answer.json())


def experiment_body(*plans: str | None, **overrides: Any) -> dict[str, Any]:
    """An experiment running today: a control, then a group per plan given (no plan
    given: a second group without reminders, an A/A test)."""
    plans = plans or (None,)
    body: dict[str, Any] = {
        "name": unique_id("exp"),
        "start_date": days(-1),
        "end_date": days(30),
        "eligibility": {"countries": ["BD"], "facility_ids": None},
        "return_window_days": 15,
        "groups": [{"name": "control", "weight": 1, "reminder_plan": None}]
        + [
            {"name": f"g{i}", "weight": 1, "reminder_plan": plan}
            for i, plan in enumerate(plans, start=1)
        ],
    }
    body.update(overrides)
    return body


async def create_experiment(
    api: httpx.AsyncClient, *plans: str | None, **overrides: Any
) -> dict[str, Any]:
    answer = await api.post("/v1/experiments", json=experiment_body(*plans, **overrides))
    assert answer.status_code == 201, answer.text
    return dict(answer.json())
