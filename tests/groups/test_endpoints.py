"""Groups through the API: static lists in batches, filters over patient attributes."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.groups.schemas import MAX_MEMBERS_PER_REQUEST
from tests.factories import make_patient, make_staff, unique_id

pytestmark = pytest.mark.asyncio(loop_scope="session")


class TestStaticGroup:
    async def test_members_are_added_and_removed_in_batches(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patients = [(await make_patient(db_session)).id for _ in range(4)]
        name = unique_id("g")
        answer = await api.put(f"/v1/groups/{name}", json={"members": patients[:2]})
        assert answer.status_code == 200, answer.text
        assert (answer.json()["kind"], answer.json()["members"]) == ("static", 2)
        added = await api.post(f"/v1/groups/{name}/members", json={"patient_ids": patients[1:]})
        assert added.json()["members"] == 4
        removed = await api.request(
            "DELETE", f"/v1/groups/{name}/members", json={"patient_ids": patients[:3]}
        )
        assert removed.json()["members"] == 1
        assert (await api.get(f"/v1/groups/{name}")).json()["members"] == 1

    async def test_unknown_patients_are_a_422_and_change_nothing(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        name = unique_id("g")
        await api.put(f"/v1/groups/{name}", json={"members": [patient.id]})
        answer = await api.post(
            f"/v1/groups/{name}/members", json={"patient_ids": [patient.id, "nobody"]}
        )
        assert answer.status_code == 422
        assert answer.json()["error"]["details"][0]["message"] == "no patient 'nobody'"
        assert (await api.get(f"/v1/groups/{name}")).json()["members"] == 1

    async def test_an_oversize_batch_is_a_clear_422(self, api: httpx.AsyncClient) -> None:
        ids = [f"p{n}" for n in range(MAX_MEMBERS_PER_REQUEST + 1)]
        answer = await api.post(f"/v1/groups/{unique_id('g')}/members", json={"patient_ids": ids})
        assert answer.status_code == 422
        assert answer.json()["error"]["details"][0]["field"] == "patient_ids"

    @pytest.mark.parametrize(
        "body",
        [{}, {"members": [], "filter": {"country": ["BD"]}}, {"filter": {}},
         {"filter": {"age": {"min": 40, "max": 20}}}, {"filter": {"colour": ["red"]}}],
    )  # fmt: skip
    async def test_a_bad_group_is_a_422(
        self, api: httpx.AsyncClient, body: dict[str, object]
    ) -> None:
        assert (await api.put(f"/v1/groups/{unique_id('g')}", json=body)).status_code == 422

    async def test_a_filter_group_takes_no_members(self, api: httpx.AsyncClient) -> None:
        name = unique_id("g")
        await api.put(f"/v1/groups/{name}", json={"filter": {"country": ["BD"]}})
        answer = await api.post(f"/v1/groups/{name}/members", json={"patient_ids": ["x"]})
        assert answer.status_code == 422


class TestFilterGroup:
    async def test_every_field_narrows(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        facility = unique_id("f")
        year = datetime.now(UTC).year
        await make_patient(
            db_session,
            facility_id=facility,
            tags=["anc", "tb"],
            attributes={"area": "Mirpur", "birth_date": f"{year - 30}-01-01"},
        )
        for other in [
            {"tags": ["anc"]},
            {"attributes": {"area": "Uttara", "birth_date": f"{year - 30}-01-01"}},
            {"attributes": {"area": "Mirpur", "birth_date": f"{year - 60}-01-01"}},
            {"locale": "en"},
        ]:
            values = {
                "facility_id": facility,
                "tags": ["anc", "tb"],
                "attributes": {"area": "Mirpur", "birth_date": f"{year - 30}-01-01"},
                **other,
            }
            await make_patient(db_session, **values)
        name = unique_id("g")
        group_filter = {
            "facility_id": [facility],
            "country": ["BD"],
            "locale": ["bn-BD"],
            "tags": ["anc", "tb"],
            "attributes": {"area": "Mirpur"},
            "age": {"min": 18, "max": 45},
        }
        answer = await api.put(f"/v1/groups/{name}", json={"filter": group_filter})
        assert answer.status_code == 200, answer.text
        assert (answer.json()["kind"], answer.json()["members"]) == ("filter", 1)


class TestStaffMembers:
    async def test_staff_are_added_and_removed_beside_patients(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        nurses = [(await make_staff(db_session)).id for _ in range(3)]
        name = unique_id("g")
        answer = await api.put(
            f"/v1/groups/{name}", json={"members": [patient.id], "staff": nurses[:1]}
        )
        assert answer.status_code == 200, answer.text
        assert (answer.json()["members"], answer.json()["staff"]) == (1, 1)
        added = await api.post(f"/v1/groups/{name}/members", json={"staff_ids": nurses[1:]})
        assert added.status_code == 200, added.text
        assert (added.json()["members"], added.json()["staff"]) == (1, 3)
        removed = await api.request(
            "DELETE", f"/v1/groups/{name}/members", json={"staff_ids": nurses[:2]}
        )
        assert (removed.json()["members"], removed.json()["staff"]) == (1, 1)
        # Replacing the group replaces its staff too; a staff-only group is static.
        only_staff = await api.put(f"/v1/groups/{name}", json={"staff": nurses[:2]})
        assert (only_staff.json()["kind"], only_staff.json()["members"]) == ("static", 0)
        assert only_staff.json()["staff"] == 2

    @pytest.mark.parametrize(
        "body",
        [{"staff": ["nobody"]}, {"staff": [], "filter": {"country": ["BD"]}}],
    )
    async def test_unknown_staff_or_staff_in_a_filter_group_is_a_422(
        self, api: httpx.AsyncClient, body: dict[str, object]
    ) -> None:
        answer = await api.put(f"/v1/groups/{unique_id('g')}", json=body)
        assert answer.status_code == 422, answer.text

    async def test_an_oversize_batch_counts_patients_and_staff_together(
        self, api: httpx.AsyncClient
    ) -> None:
        half = MAX_MEMBERS_PER_REQUEST // 2 + 1
        body = {"patient_ids": [f"p{n}" for n in range(half)],
                "staff_ids": [f"s{n}" for n in range(half)]}  # fmt: skip
        answer = await api.post(f"/v1/groups/{unique_id('g')}/members", json=body)
        assert answer.status_code == 422
        empty = await api.post(f"/v1/groups/{unique_id('g')}/members", json={})
        assert empty.status_code == 422
