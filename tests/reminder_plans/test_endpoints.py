"""Reminder plans through the API."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.appointments.helpers import CASCADE, create_experiment, put_plan
from tests.factories import unique_id

pytestmark = pytest.mark.asyncio(loop_scope="session")


def reminder(offset_days: int, template: str) -> dict[str, Any]:
    return {"offset_days": offset_days, "template": template}


class TestPutPlan:
    async def test_creates_then_replaces_and_reads_back_in_offset_order(
        self, api: httpx.AsyncClient
    ) -> None:
        name = unique_id("plan")
        reminders = list(reversed(CASCADE))
        created = await api.put(f"/v1/reminder-plans/{name}", json={"reminders": reminders})
        assert created.status_code == 201, created.text
        assert [r["offset_days"] for r in created.json()["reminders"]] == [-1, 0, 3]
        assert created.json()["default"] is False
        replaced = await api.put(
            f"/v1/reminder-plans/{name}", json={"reminders": CASCADE[:1], "default": True}
        )
        assert replaced.status_code == 200
        got = (await api.get(f"/v1/reminder-plans/{name}")).json()
        assert got["reminders"] == CASCADE[:1] and got["default"] is True

    async def test_one_default_moves_from_plan_to_plan(self, api: httpx.AsyncClient) -> None:
        first = await put_plan(api, default=True)
        second = await put_plan(api, default=True)
        assert (await api.get(f"/v1/reminder-plans/{first}")).json()["default"] is False
        assert (await api.get(f"/v1/reminder-plans/{second}")).json()["default"] is True
        listed = (await api.get("/v1/reminder-plans", params={"limit": 500})).json()["items"]
        assert [p["name"] for p in listed if p["default"]] == [second]

    async def test_the_default_cannot_be_unset_only_moved(self, api: httpx.AsyncClient) -> None:
        name = await put_plan(api, default=True)
        answer = await api.put(f"/v1/reminder-plans/{name}", json={"reminders": CASCADE})
        assert answer.status_code == 422
        assert answer.json()["error"]["details"][0]["field"] == "default"

    async def test_a_plan_in_a_running_experiment_keeps_its_reminders(
        self, api: httpx.AsyncClient
    ) -> None:
        name = await put_plan(api)
        await create_experiment(api, name)
        changed = await api.put(f"/v1/reminder-plans/{name}", json={"reminders": CASCADE[:1]})
        assert changed.status_code == 409
        same = await api.put(
            f"/v1/reminder-plans/{name}", json={"reminders": CASCADE, "default": True}
        )
        assert same.status_code == 200

    async def test_pages_by_name(self, api: httpx.AsyncClient) -> None:
        for _ in range(3):
            await put_plan(api)
        first = (await api.get("/v1/reminder-plans", params={"limit": 2})).json()
        assert len(first["items"]) == 2 and first["next_cursor"]
        second = (
            await api.get("/v1/reminder-plans", params={"limit": 2, "cursor": first["next_cursor"]})
        ).json()
        assert second["items"][0]["name"] > first["items"][-1]["name"]

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"reminders": [reminder(-1, "nope.basic")]}, "reminders[0].template"),
            (
                {"reminders": [reminder(-1, "imo_invitation.basic"), reminder(1, "nope.x")]},
                "reminders[1].template",
            ),
            ({"reminders": [reminder(400, "missed_visit.basic")]}, "reminders[0].offset_days"),
            ({"reminders": [CASCADE[0], CASCADE[0]]}, "reminders"),
            ({"reminders": CASCADE, "surprise": 1}, "surprise"),
            ({}, "reminders"),
        ],
    )
    async def test_bad_plans_are_422_naming_the_field(
        self, api: httpx.AsyncClient, body: dict[str, Any], field: str
    ) -> None:
        answer = await api.put(f"/v1/reminder-plans/{unique_id('plan')}", json=body)
        assert answer.status_code == 422, answer.text
        assert field in {d["field"] for d in answer.json()["error"]["details"]}

    async def test_a_template_needing_other_variables_is_refused(
        self, api: httpx.AsyncClient
    ) -> None:
        key = f"custom.{unique_id('t').replace('-', '_')}"
        put = await api.put(
            f"/v1/templates/{key}/en", json={"title": "Hi", "body": "Bring {lab_result}"}
        )
        assert put.status_code in (200, 201), put.text
        answer = await api.put(
            f"/v1/reminder-plans/{unique_id('plan')}",
            json={"reminders": [{"offset_days": -1, "template": key}]},
        )
        assert answer.status_code == 422
        assert "lab_result" in answer.json()["error"]["message"]

    async def test_unknown_plan_is_404(self, api: httpx.AsyncClient) -> None:
        assert (await api.get("/v1/reminder-plans/nothing-here")).status_code == 404
