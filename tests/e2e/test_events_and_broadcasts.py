"""Events and broadcasts end to end: the real API and worker send what a rule or a
broadcast scheduled, through the fake providers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.e2e.helpers import in_state, notification_in, phone, put_patient
from tests.factories import unique_id
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]


async def put_template(api: httpx.AsyncClient, key: str, body: str) -> None:
    answer = await api.put(f"/v1/templates/{key}/en", json={"title": "Clinic", "body": body})
    assert answer.status_code == 200, answer.text


class TestEnrolment:
    async def test_two_rules_one_sent_now_one_in_a_week_cleared_by_voiding(
        self, stack_api: httpx.AsyncClient
    ) -> None:
        event_type = unique_id("enrolment").replace("-", "_")
        await put_template(stack_api, "e2e.welcome", "Welcome {patient_name}, week {week}")
        for name, days in (("now", 0), ("week", 7)):
            answer = await stack_api.put(
                f"/v1/trigger-rules/{event_type}-{name}",
                json={
                    "event_type": event_type,
                    "condition": "event.data.week >= 28",
                    "send_at": {"days": days},
                    "template": "e2e.welcome",
                    "parameters": {"week": "string(event.data.week)"},
                    "purpose": "anc",
                },
            )
            assert answer.status_code == 200, answer.text
        patient = await put_patient(stack_api, phone(1), locale="en")
        event = {
            "id": unique_id("e"),
            "type": event_type,
            "patient_id": patient["id"],
            "occurred_at": datetime.now(UTC).isoformat(),
            "data": {"week": 30},
        }
        assert (await stack_api.post("/v1/events", json=event)).status_code == 201
        assert (await stack_api.post("/v1/events", json=event)).status_code == 200
        early = {**event, "id": unique_id("e"), "data": {"week": 12}}
        assert (await stack_api.post("/v1/events", json=early)).status_code == 201

        page = (await stack_api.get(f"/v1/events/{event['id']}/messages")).json()["items"]
        assert len(page) == 2
        later, now = sorted(page, key=lambda m: m["due_at"], reverse=True)
        assert datetime.fromisoformat(later["due_at"]) > datetime.now(UTC) + timedelta(days=6)
        sent = await notification_in(stack_api, now["id"], "sent", "delivered", "read")
        assert sent["text"] == "Welcome Rahim Uddin, week 30"
        empty = (await stack_api.get(f"/v1/events/{early['id']}/messages")).json()["items"]
        assert empty == []

        assert (await stack_api.delete(f"/v1/events/{event['id']}")).status_code == 200
        await notification_in(stack_api, later["id"], "cleared")
        await notification_in(stack_api, now["id"], "sent", "delivered", "read")


class TestBroadcast:
    async def test_every_member_gets_their_text(self, stack_api: httpx.AsyncClient) -> None:
        await put_template(stack_api, "e2e.camp", "{patient_name}: camp in {area}")
        tag = unique_id("tag")
        for n in range(3):
            await put_patient(
                stack_api,
                phone(1),
                locale="en",
                full_name=f"Member {n}",
                tags=[tag],
                attributes={"area": f"area-{n}"},
            )
        group = unique_id("g")
        answer = await stack_api.put(f"/v1/groups/{group}", json={"filter": {"tags": [tag]}})
        assert answer.json()["members"] == 3
        started = await stack_api.post(
            "/v1/broadcasts",
            json={"group": group, "template": "e2e.camp", "parameters": {"area": "@area"},
                  "purpose": "health_camp"},
        )  # fmt: skip
        assert started.status_code == 202, started.text
        path = f"/v1/broadcasts/{started.json()['id']}"
        await in_state(stack_api, path, "fanned_out", timeout=20)

        async def all_sent() -> dict[str, object] | None:
            data = dict((await stack_api.get(path)).json())
            progress = data["progress"]
            assert isinstance(progress, dict)
            done = progress["sent"] + progress["delivered"] + progress["read"]
            return data if done == 3 else None

        await wait_until(all_sent, timeout=30, interval=0.2)
        items = (await stack_api.get(f"/v1/groups/{group}/messages")).json()["items"]
        assert sorted(item["text"] for item in items) == [
            f"Member {n}: camp in area-{n}" for n in range(3)
        ]
