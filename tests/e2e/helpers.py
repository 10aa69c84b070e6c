"""Small helpers for end-to-end tests on the real stack."""

from __future__ import annotations

import random
from typing import Any

import httpx

from app import callback_urls
from app.config import Settings
from app.security import TokenSigner
from tests.clock import daytime_zone
from tests.factories import unique_id
from tests.stack import TEST_SECRET_KEY, Stack
from tests.waiting import wait_until


def phone(last_digit: int) -> str:
    """A fresh Bangladeshi mobile whose last digit steers the fakes."""
    return f"+8801711{random.randrange(10_000, 99_999)}{last_digit}"


async def put_patient(api: httpx.AsyncClient, number: str, **overrides: Any) -> dict[str, Any]:
    patient_id = unique_id()
    body: dict[str, Any] = {
        "full_name": "Rahim Uddin",
        "phone_numbers": [{"number": number, "type": "mobile"}],
        "country": "BD",
        "locale": "bn-BD",
        "time_zone": daytime_zone(),
        "facility": {"id": "f-12", "name": "Dhaka Medical"},
        "reminder_consent": "granted",
    }
    body.update(overrides)
    answer = await api.put(f"/v1/patients/{patient_id}", json=body)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


async def accept_imo_invitation(stack: Stack, patient_id: str) -> None:
    """What Imo does when the patient accepts: POST to the invitation's callback URL."""
    settings = Settings(public_base_url=stack.api_url)
    url = callback_urls.imo_invitation_url(settings, TokenSigner(TEST_SECRET_KEY), patient_id)
    async with httpx.AsyncClient() as client:
        answer = await client.post(url, json={"event": "accept_invite"})
    assert answer.status_code == 200, answer.text


async def schedule(
    api: httpx.AsyncClient, patient_id: str, headers: dict[str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    body = {
        "patient_id": patient_id,
        "purpose": "appointment_reminder",
        "template": "appointment_reminder.basic",
        "variables": {"appointment_date": "2026-12-01"},
        **extra,
    }
    answer = await api.post("/v1/notifications", json=body, headers=headers or {})
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


async def in_state(
    api: httpx.AsyncClient, path: str, *states: str, timeout: float, interval: float = 0.1
) -> dict[str, Any]:
    """GET `path` until its `state` is one of `states`; its last answer on failure."""

    async def check() -> dict[str, Any] | None:
        data = dict((await api.get(path)).json())
        return data if data["state"] in states else None

    try:
        result: dict[str, Any] = await wait_until(check, timeout=timeout, interval=interval)
    except AssertionError:
        final = (await api.get(path)).json()
        raise AssertionError(f"never {states}: {final}") from None
    return result


async def notification_in(
    api: httpx.AsyncClient, notification_id: str, *states: str, timeout: float = 20.0
) -> dict[str, Any]:
    return await in_state(api, f"/v1/notifications/{notification_id}", *states, timeout=timeout)
