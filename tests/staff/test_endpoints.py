from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import StaffMember
from tests.factories import unique_id

pytestmark = pytest.mark.asyncio(loop_scope="session")


def staff_body(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "name": "Dr. Nasrin Akter",
        "email": "Nasrin.Akter@Clinic.EXAMPLE.org",
        "locale": "bn_bd",
    }
    body.update(overrides)
    return body


class TestPutStaff:
    async def test_creates_then_replaces_with_a_normalised_address(
        self, api: httpx.AsyncClient
    ) -> None:
        staff_id = unique_id("s")
        created = await api.put(f"/v1/staff/{staff_id}", json=staff_body())
        assert created.status_code == 201, created.text
        answer = created.json()
        # The domain is lower-cased, the local part keeps its case; the locale is canonical.
        assert answer["email"] == "Nasrin.Akter@clinic.example.org"
        assert answer["locale"] == "bn-BD"
        assert answer["name"] == "Dr. Nasrin Akter"

        replaced = await api.put(
            f"/v1/staff/{staff_id}", json=staff_body(name="N. Akter", email="n@x.example")
        )
        assert replaced.status_code == 200, replaced.text
        assert replaced.json()["email"] == "n@x.example"
        assert replaced.json()["created_at"] == answer["created_at"]

        read = await api.get(f"/v1/staff/{staff_id}")
        assert read.status_code == 200
        assert read.json()["name"] == "N. Akter"

    async def test_internationalised_domain_is_stored_in_idna(self, api: httpx.AsyncClient) -> None:
        answer = await api.put(
            f"/v1/staff/{unique_id('s')}", json=staff_body(email="ana@Bücher.example")
        )
        assert answer.status_code == 201, answer.text
        assert answer.json()["email"] == "ana@xn--bcher-kva.example"

    @pytest.mark.parametrize(
        "email",
        [
            "no-at-sign",
            "a@b",  # no dot in the domain
            "Nasrin <n@clinic.example.org>",  # a display name is not an address
            "n@clinic.example.org\r\nBcc: all@example.org",  # header injection
            "a b@clinic.example.org",
            "ñ@clinic.example.org",  # needs SMTPUTF8
            "x" * 250 + "@e.org",
        ],
    )
    async def test_bad_address_is_a_422_naming_email_and_stores_nothing(
        self, api: httpx.AsyncClient, db_session: AsyncSession, email: str
    ) -> None:
        staff_id = unique_id("s")
        answer = await api.put(f"/v1/staff/{staff_id}", json=staff_body(email=email))
        assert answer.status_code == 422, answer.text
        fields = [d["field"] for d in answer.json()["error"]["details"]]
        assert fields == ["email"]
        stored = await db_session.scalar(select(StaffMember).where(StaffMember.id == staff_id))
        assert stored is None

    async def test_name_with_line_break_is_refused(self, api: httpx.AsyncClient) -> None:
        answer = await api.put(
            f"/v1/staff/{unique_id('s')}", json=staff_body(name="Nasrin\r\nBcc: x@y.org")
        )
        assert answer.status_code == 422
        assert [d["field"] for d in answer.json()["error"]["details"]] == ["name"]

    async def test_missing_fields_and_unknown_ones_are_refused(
        self, api: httpx.AsyncClient
    ) -> None:
        answer = await api.put(f"/v1/staff/{unique_id('s')}", json={"name": "X", "phone": "1"})
        assert answer.status_code == 422
        fields = {d["field"] for d in answer.json()["error"]["details"]}
        assert {"email", "locale", "phone"} <= fields


class TestGetStaff:
    async def test_unknown_is_404(self, api: httpx.AsyncClient) -> None:
        answer = await api.get(f"/v1/staff/{unique_id('s')}")
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "not_found"

    async def test_bad_id_is_422(self, api: httpx.AsyncClient) -> None:
        answer = await api.get("/v1/staff/-bad")
        assert answer.status_code == 422
