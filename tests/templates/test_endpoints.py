from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.templates import service as template_service

pytestmark = pytest.mark.asyncio(loop_scope="session")


def unique_key() -> str:
    return f"test_{uuid.uuid4().hex[:10]}.basic"


class TestPutTemplate:
    async def test_creates_and_replaces(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        key = unique_key()
        body = {"title": "Hello {patient_name}", "body": "Visit {facility_name} on {date}."}
        created = await api.put(f"/v1/templates/{key}/bn-BD", json=body)
        assert created.status_code == 200, created.text
        answer = created.json()
        assert (answer["key"], answer["locale"]) == (key, "bn-BD")
        assert answer["variables"] == ["date", "facility_name", "patient_name"]

        replaced = await api.put(
            f"/v1/templates/{key}/bn-BD", json={"title": "Reminder", "body": "{{literal}} {x}"}
        )
        assert replaced.status_code == 200
        assert replaced.json()["variables"] == ["x"]
        assert replaced.json()["created_at"] == answer["created_at"]

        # What the notifications render from is the new text.
        rendered = await template_service.render(db_session, key, "bn-BD", {"x": "1"})
        assert rendered.body == "{literal} 1"

    async def test_locale_is_normalised(self, api: httpx.AsyncClient) -> None:
        key = unique_key()
        answer = await api.put(f"/v1/templates/{key}/BN_bd", json={"title": "t", "body": "b"})
        assert answer.json()["locale"] == "bn-BD"
        assert (await api.get(f"/v1/templates/{key}/bn-BD")).status_code == 200

    @pytest.mark.parametrize(
        ("field", "text"),
        [
            ("body", "Hello {name!r}"),
            ("body", "Hello {0}"),
            ("body", "Hello {}"),
            ("body", "Hello {name:>10}"),
            ("body", "Hello {patient.name}"),
            ("body", "Hello {name"),
            ("body", "Hello }"),
            ("title", "{title[0]}"),
            ("body", ""),
        ],
    )
    async def test_malformed_text_is_a_422(
        self, api: httpx.AsyncClient, field: str, text: str
    ) -> None:
        body = {"title": "t", "body": "b", field: text}
        answer = await api.put(f"/v1/templates/{unique_key()}/en", json=body)
        assert answer.status_code == 422, answer.text
        assert [d["field"] for d in answer.json()["error"]["details"]] == [field]

    @pytest.mark.parametrize(
        "body", [{"title": "t"}, {"title": "t", "body": "b", "extra": 1}, {"title": 1, "body": "b"}]
    )
    async def test_malformed_body(self, api: httpx.AsyncClient, body: dict[str, Any]) -> None:
        assert (await api.put(f"/v1/templates/{unique_key()}/en", json=body)).status_code == 422

    @pytest.mark.parametrize(("key", "locale"), [("Bad Key", "en"), ("ok.key", "english!")])
    async def test_bad_key_or_locale(self, api: httpx.AsyncClient, key: str, locale: str) -> None:
        answer = await api.put(f"/v1/templates/{key}/{locale}", json={"title": "t", "body": "b"})
        assert answer.status_code == 422


class TestWhatsAppMapping:
    BODY = "Dear {patient_name}, your visit at {facility_name} is on {appointment_date}."
    WHATSAPP = {
        "name": "appointment_reminder",
        "language": "en_US",
        "parameters": ["patient_name", "facility_name", "appointment_date"],
        "content_sid": "HX" + "b" * 32,
    }

    async def test_stored_returned_and_cleared(self, api: httpx.AsyncClient) -> None:
        key = unique_key()
        body = {"title": "Reminder", "body": self.BODY, "whatsapp": self.WHATSAPP}
        created = await api.put(f"/v1/templates/{key}/en", json=body)
        assert created.status_code == 200, created.text
        assert created.json()["whatsapp"] == self.WHATSAPP
        assert (await api.get(f"/v1/templates/{key}/en")).json()["whatsapp"] == self.WHATSAPP

        # Replacing the text without a mapping removes it: the PUT is the whole template.
        replaced = await api.put(f"/v1/templates/{key}/en", json={"title": "t", "body": "b"})
        assert replaced.json()["whatsapp"] is None
        assert (await api.get(f"/v1/templates/{key}/en")).json()["whatsapp"] is None

    async def test_content_sid_is_optional(self, api: httpx.AsyncClient) -> None:
        cloud_only = {k: v for k, v in self.WHATSAPP.items() if k != "content_sid"}
        body = {"title": "Reminder", "body": self.BODY, "whatsapp": cloud_only}
        answer = await api.put(f"/v1/templates/{unique_key()}/en", json=body)
        assert answer.json()["whatsapp"] == {**cloud_only, "content_sid": None}

    async def test_a_parameter_the_template_does_not_use_is_a_422(
        self, api: httpx.AsyncClient
    ) -> None:
        whatsapp = {**self.WHATSAPP, "parameters": ["patient_name", "doctor_name"]}
        body = {"title": "Reminder", "body": self.BODY, "whatsapp": whatsapp}
        answer = await api.put(f"/v1/templates/{unique_key()}/en", json=body)
        assert answer.status_code == 422, answer.text
        assert "doctor_name" in answer.text

    @pytest.mark.parametrize(
        "change",
        [
            {"name": "Has Spaces"},
            {"language": "english"},
            {"content_sid": "MG" + "b" * 32},
            {"parameters": ["not-a-name"]},
            {"unknown": 1},
        ],
    )
    async def test_malformed_mapping_is_a_422(
        self, api: httpx.AsyncClient, change: dict[str, Any]
    ) -> None:
        body = {"title": "Reminder", "body": self.BODY, "whatsapp": {**self.WHATSAPP, **change}}
        answer = await api.put(f"/v1/templates/{unique_key()}/en", json=body)
        assert answer.status_code == 422, answer.text


class TestGetTemplates:
    async def test_lists_the_shipped_and_new_ones(self, api: httpx.AsyncClient) -> None:
        key = unique_key()
        await api.put(f"/v1/templates/{key}/en", json={"title": "T", "body": "{a} {b}"})
        answer = await api.get("/v1/templates")
        assert answer.status_code == 200
        items = answer.json()["items"]
        pairs = [(item["key"], item["locale"]) for item in items]
        assert ("appointment_reminder.basic", "bn-BD") in pairs
        assert pairs == sorted(pairs)
        [mine] = [item for item in items if item["key"] == key]
        assert mine["variables"] == ["a", "b"]
        assert answer.json()["next_cursor"] is None

    async def test_one(self, api: httpx.AsyncClient) -> None:
        answer = await api.get("/v1/templates/appointment_reminder.basic/en")
        assert answer.status_code == 200
        assert answer.json()["title"] == "Appointment Reminder"

    async def test_missing_is_a_404(self, api: httpx.AsyncClient) -> None:
        answer = await api.get(f"/v1/templates/{unique_key()}/en")
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "not_found"

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/v1/templates"),
            ("GET", "/v1/templates/a.b/en"),
            ("PUT", "/v1/templates/a.b/en"),
        ],
    )
    async def test_no_key_is_a_401(self, api: httpx.AsyncClient, method: str, path: str) -> None:
        answer = await api.request(
            method, path, headers={"Authorization": ""}, json={"title": "t", "body": "b"}
        )
        assert answer.status_code == 401
