from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import ImoAuthorization, Patient
from tests.factories import make_notification, make_patient, patient_body, unique_id

pytestmark = pytest.mark.asyncio(loop_scope="session")


def fields_of(answer: httpx.Response) -> list[str]:
    return [detail["field"] for detail in answer.json()["error"]["details"]]


class TestPutPatient:
    async def test_creates_then_replaces(self, api: httpx.AsyncClient) -> None:
        patient_id = unique_id()
        created = await api.put(f"/v1/patients/{patient_id}", json=patient_body())
        assert created.status_code == 201, created.text
        answer = created.json()
        assert answer["id"] == patient_id
        assert answer["phone_numbers"] == [{"number": "+8801711000001", "type": "mobile"}]
        assert answer["mobile_e164"] == "+8801711000001"
        assert answer["facility"] == {"id": "f-12", "name": "Dhaka Medical"}
        assert answer["imo_authorization"] is None
        assert datetime.fromisoformat(answer["created_at"]).utcoffset() is not None

        replaced = await api.put(
            f"/v1/patients/{patient_id}",
            json=patient_body(full_name="Rahim U.", facility=None, reminder_consent="denied"),
        )
        assert replaced.status_code == 200, replaced.text
        again = replaced.json()
        assert again["full_name"] == "Rahim U."
        assert again["facility"] is None
        assert again["reminder_consent"] == "denied"
        assert again["created_at"] == answer["created_at"]

    async def test_national_and_e164_numbers_are_stored_in_e164(
        self, api: httpx.AsyncClient
    ) -> None:
        numbers = [
            {"number": "01711 000-001", "type": "landline"},
            {"number": "+880 1811 000002", "type": "mobile"},
            {"number": "01911000003", "type": "mobile"},
        ]
        answer = await api.put(
            f"/v1/patients/{unique_id()}", json=patient_body(phone_numbers=numbers)
        )
        assert answer.status_code == 201, answer.text
        assert [n["number"] for n in answer.json()["phone_numbers"]] == [
            "+8801711000001",
            "+8801811000002",
            "+8801911000003",
        ]
        assert answer.json()["mobile_e164"] == "+8801811000002"

    async def test_landline_only_patient_has_no_mobile(self, api: httpx.AsyncClient) -> None:
        numbers = [{"number": "029660001", "type": "landline"}]
        answer = await api.put(
            f"/v1/patients/{unique_id()}", json=patient_body(phone_numbers=numbers)
        )
        assert answer.status_code == 201, answer.text
        assert answer.json()["mobile_e164"] is None

    async def test_invalid_number_is_a_422_naming_it(self, api: httpx.AsyncClient) -> None:
        numbers = [
            {"number": "01711000001", "type": "mobile"},
            {"number": "12345", "type": "mobile"},
            {"number": "not a number", "type": "landline"},
        ]
        patient_id = unique_id()
        answer = await api.put(
            f"/v1/patients/{patient_id}", json=patient_body(phone_numbers=numbers)
        )
        assert answer.status_code == 422
        assert answer.json()["error"]["code"] == "invalid_input"
        assert fields_of(answer) == ["phone_numbers[1].number", "phone_numbers[2].number"]
        assert (await api.get(f"/v1/patients/{patient_id}")).status_code == 404

    async def test_bad_number_type_names_the_field(self, api: httpx.AsyncClient) -> None:
        numbers = [{"number": "01711000001", "type": "fax"}]
        answer = await api.put(
            f"/v1/patients/{unique_id()}", json=patient_body(phone_numbers=numbers)
        )
        assert answer.status_code == 422
        assert fields_of(answer) == ["phone_numbers[0].type"]

    async def test_too_many_numbers(self, api: httpx.AsyncClient) -> None:
        numbers = [{"number": f"0171100{i:04d}", "type": "mobile"} for i in range(11)]
        answer = await api.put(
            f"/v1/patients/{unique_id()}", json=patient_body(phone_numbers=numbers)
        )
        assert answer.status_code == 422
        assert fields_of(answer) == ["phone_numbers"]


class TestCountryLocaleTimeZone:
    async def test_country_and_locale_are_normalised(self, api: httpx.AsyncClient) -> None:
        answer = await api.put(
            f"/v1/patients/{unique_id()}", json=patient_body(country="bd", locale="BN_bd")
        )
        assert answer.status_code == 201, answer.text
        assert (answer.json()["country"], answer.json()["locale"]) == ("BD", "bn-BD")

    @pytest.mark.parametrize("country", ["XX", "B", "BGD", "12"])
    async def test_unknown_country(self, api: httpx.AsyncClient, country: str) -> None:
        answer = await api.put(f"/v1/patients/{unique_id()}", json=patient_body(country=country))
        assert answer.status_code == 422
        assert fields_of(answer) == ["country"]

    @pytest.mark.parametrize("locale", ["", "bengali-bangladesh-x", "b", "bn BD", "1n"])
    async def test_bad_locale(self, api: httpx.AsyncClient, locale: str) -> None:
        answer = await api.put(f"/v1/patients/{unique_id()}", json=patient_body(locale=locale))
        assert answer.status_code == 422
        assert fields_of(answer) == ["locale"]

    async def test_time_zone_defaults_from_country(self, api: httpx.AsyncClient) -> None:
        body = patient_body()
        del body["time_zone"]
        answer = await api.put(f"/v1/patients/{unique_id()}", json=body)
        assert answer.status_code == 201, answer.text
        assert answer.json()["time_zone"] == "Asia/Dhaka"

    async def test_time_zone_defaults_from_a_number_in_a_wide_country(
        self, api: httpx.AsyncClient
    ) -> None:
        body = patient_body(
            country="US",
            locale="en-US",
            phone_numbers=[{"number": "(212) 555-0123", "type": "mobile"}],
        )
        del body["time_zone"]
        answer = await api.put(f"/v1/patients/{unique_id()}", json=body)
        assert answer.status_code == 201, answer.text
        assert answer.json()["time_zone"] == "America/New_York"
        assert answer.json()["mobile_e164"] == "+12125550123"

    async def test_no_time_zone_to_be_had_is_a_422(self, api: httpx.AsyncClient) -> None:
        body = patient_body(country="US", locale="en-US", phone_numbers=[])
        del body["time_zone"]
        answer = await api.put(f"/v1/patients/{unique_id()}", json=body)
        assert answer.status_code == 422
        assert fields_of(answer) == ["time_zone"]

    @pytest.mark.parametrize("zone", ["Asia/Dacca_", "asia/dhaka", "UTC+6", "../etc/passwd", ""])
    async def test_unknown_time_zone(self, api: httpx.AsyncClient, zone: str) -> None:
        answer = await api.put(f"/v1/patients/{unique_id()}", json=patient_body(time_zone=zone))
        assert answer.status_code == 422
        assert fields_of(answer) == ["time_zone"]


class TestBodyRules:
    @pytest.mark.parametrize("consent", ["granted", "denied"])
    async def test_consent_values(self, api: httpx.AsyncClient, consent: str) -> None:
        answer = await api.put(
            f"/v1/patients/{unique_id()}", json=patient_body(reminder_consent=consent)
        )
        assert answer.status_code == 201
        assert answer.json()["reminder_consent"] == consent

    @pytest.mark.parametrize("consent", ["yes", None, "GRANTED"])
    async def test_other_consent_is_a_422(self, api: httpx.AsyncClient, consent: Any) -> None:
        answer = await api.put(
            f"/v1/patients/{unique_id()}", json=patient_body(reminder_consent=consent)
        )
        assert answer.status_code == 422
        assert fields_of(answer) == ["reminder_consent"]

    async def test_missing_and_unknown_fields(self, api: httpx.AsyncClient) -> None:
        body = patient_body(timezone="Asia/Dhaka")
        del body["full_name"]
        answer = await api.put(f"/v1/patients/{unique_id()}", json=body)
        assert answer.status_code == 422
        assert sorted(fields_of(answer)) == ["full_name", "timezone"]

    @pytest.mark.parametrize("patient_id", ["x" * 65, "-leading-dash", "has space", "é"])
    async def test_bad_patient_id(self, api: httpx.AsyncClient, patient_id: str) -> None:
        answer = await api.put(f"/v1/patients/{patient_id}", json=patient_body())
        assert answer.status_code == 422
        assert fields_of(answer) == ["patient_id"]

    async def test_longest_id(self, api: httpx.AsyncClient) -> None:
        patient_id = "P" + unique_id()[: 63 - 1].ljust(63, "0")
        assert len(patient_id) == 64
        assert (await api.put(f"/v1/patients/{patient_id}", json=patient_body())).status_code == 201
        assert (await api.get(f"/v1/patients/{patient_id}")).json()["id"] == patient_id


class TestGetPatient:
    async def test_answers_with_the_imo_authorization(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        invited = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
        db_session.add(
            ImoAuthorization(patient_id=patient.id, status="invited", last_invited_at=invited)
        )
        await db_session.flush()
        answer = await api.get(f"/v1/patients/{patient.id}")
        assert answer.status_code == 200
        authorization = answer.json()["imo_authorization"]
        assert authorization["status"] == "invited"
        assert datetime.fromisoformat(authorization["last_invited_at"]) == invited

    async def test_unknown_patient_is_a_json_404(self, api: httpx.AsyncClient) -> None:
        answer = await api.get(f"/v1/patients/{unique_id()}")
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "not_found"


class TestAuthentication:
    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/v1/patients/p-1"),
            ("PUT", "/v1/patients/p-1"),
            ("POST", "/v1/patients/batch"),
            ("GET", "/v1/patients/p-1/notifications"),
        ],
    )
    async def test_no_key_is_a_401(self, api: httpx.AsyncClient, method: str, path: str) -> None:
        answer = await api.request(method, path, headers={"Authorization": ""}, json={})
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "unauthorized"

    async def test_wrong_key_is_a_401(self, api: httpx.AsyncClient) -> None:
        answer = await api.get("/v1/patients/p-1", headers={"Authorization": "Bearer cn_nope"})
        assert answer.status_code == 401


class TestBatch:
    async def test_mixed_items_keep_their_order(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        existing = await make_patient(db_session, full_name="Old Name")
        good_new, bad_number, bad_shape = unique_id(), unique_id(), unique_id()
        items: list[Any] = [
            {"id": good_new, **patient_body()},
            {"id": bad_number, **patient_body(phone_numbers=[{"number": "1", "type": "mobile"}])},
            {"id": existing.id, **patient_body(full_name="New Name")},
            {"id": bad_shape, **patient_body(country="XX")},
            "not an object",
            {**patient_body()},
        ]
        answer = await api.post("/v1/patients/batch", json={"patients": items})
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert [(r["index"], r["id"], r["status"]) for r in results] == [
            (0, good_new, "created"),
            (1, bad_number, "error"),
            (2, existing.id, "updated"),
            (3, bad_shape, "error"),
            (4, None, "error"),
            (5, None, "error"),
        ]
        assert results[0]["patient"]["mobile_e164"] == "+8801711000001"
        assert results[2]["patient"]["full_name"] == "New Name"
        assert results[1]["error"]["code"] == "invalid_input"
        assert results[1]["error"]["details"][0]["field"] == "phone_numbers[0].number"
        assert results[3]["error"]["code"] == "invalid_request"
        assert results[3]["error"]["details"][0]["field"] == "country"
        assert results[5]["error"]["details"][0]["field"] == "id"

        stored = set(
            await db_session.scalars(
                select(Patient.id).where(
                    Patient.id.in_([good_new, bad_number, bad_shape, existing.id])
                )
            )
        )
        assert stored == {good_new, existing.id}

    async def test_duplicate_ids_last_valid_item_wins(self, api: httpx.AsyncClient) -> None:
        patient_id = unique_id()
        items = [
            {"id": patient_id, **patient_body(full_name="First")},
            {"id": patient_id, **patient_body(full_name="Second")},
            {"id": patient_id, **patient_body(full_name="Third", country="XX")},
        ]
        answer = await api.post("/v1/patients/batch", json={"patients": items})
        results = answer.json()["results"]
        assert [r["status"] for r in results] == ["error", "created", "error"]
        assert results[0]["error"]["code"] == "duplicate_id"
        assert results[1]["patient"]["full_name"] == "Second"
        stored = await api.get(f"/v1/patients/{patient_id}")
        assert stored.json()["full_name"] == "Second"

    async def test_a_thousand_patients_quickly(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        prefix = unique_id("bulk")
        items = [
            {
                "id": f"{prefix}-{i}",
                **patient_body(phone_numbers=[{"number": f"01711{i:06d}", "type": "mobile"}]),
            }
            for i in range(1000)
        ]
        started = time.perf_counter()
        answer = await api.post("/v1/patients/batch", json={"patients": items})
        elapsed = time.perf_counter() - started
        assert answer.status_code == 200, answer.text[:500]
        results = answer.json()["results"]
        assert len(results) == 1000
        assert all(r["status"] == "created" for r in results)
        assert [r["id"] for r in results] == [item["id"] for item in items]
        assert results[999]["patient"]["mobile_e164"] == "+8801711000999"
        assert elapsed < 5, f"a batch of 1,000 took {elapsed:.2f}s"

        again = await api.post("/v1/patients/batch", json={"patients": items})
        assert all(r["status"] == "updated" for r in again.json()["results"])

    async def test_over_the_cap_is_a_422(self, api: httpx.AsyncClient) -> None:
        items = [{"id": f"x-{i}", **patient_body()} for i in range(1001)]
        answer = await api.post("/v1/patients/batch", json={"patients": items})
        assert answer.status_code == 422
        assert fields_of(answer) == ["patients"]
        assert "1,000" in answer.json()["error"]["details"][0]["message"]

    @pytest.mark.parametrize("body", [{"patients": []}, {}, {"patients": {"id": "p"}}, []])
    async def test_not_a_batch(self, api: httpx.AsyncClient, body: Any) -> None:
        answer = await api.post("/v1/patients/batch", json=body)
        assert answer.status_code == 422


class TestNotificationsOfPatient:
    async def test_pages_newest_first(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        other = await make_patient(db_session)
        await make_notification(db_session, other)
        start = datetime(2026, 11, 1, tzinfo=UTC)
        made = [
            # Two share a created_at: the id breaks the tie.
            await make_notification(
                db_session, patient, created_at=start + timedelta(minutes=min(i, 3))
            )
            for i in range(5)
        ]
        expected = sorted(made, key=lambda n: (n.created_at, n.id), reverse=True)

        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 2}
            if cursor:
                params["cursor"] = cursor
            answer = await api.get(f"/v1/patients/{patient.id}/notifications", params=params)
            assert answer.status_code == 200, answer.text
            page = answer.json()
            seen += [item["id"] for item in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [str(n.id) for n in expected]
        assert pages == 3

    async def test_items_are_notifications(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        notification = await make_notification(db_session, patient)
        answer = await api.get(f"/v1/patients/{patient.id}/notifications")
        assert answer.status_code == 200
        [item] = answer.json()["items"]
        assert item["id"] == str(notification.id)
        assert item["state"] == "scheduled"
        assert item["attempts"] == []
        assert answer.json()["next_cursor"] is None

    async def test_patient_without_notifications(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        patient = await make_patient(db_session)
        answer = await api.get(f"/v1/patients/{patient.id}/notifications")
        assert answer.json() == {"items": [], "next_cursor": None}

    async def test_unknown_patient(self, api: httpx.AsyncClient) -> None:
        answer = await api.get(f"/v1/patients/{unique_id()}/notifications")
        assert answer.status_code == 404

    @pytest.mark.parametrize(
        "params",
        [{"limit": 0}, {"limit": 501}, {"cursor": "garbage!"}, {"cursor": "bm9wZQ"}],
    )
    async def test_bad_paging(
        self, api: httpx.AsyncClient, db_session: AsyncSession, params: dict[str, Any]
    ) -> None:
        patient = await make_patient(db_session)
        answer = await api.get(f"/v1/patients/{patient.id}/notifications", params=params)
        assert answer.status_code == 422
        assert fields_of(answer) == [next(iter(params))]


class TestSearch:
    """GET /v1/patients: by any number in any format, facility, name prefix."""

    async def test_filters(self, api: httpx.AsyncClient) -> None:
        facility = {"id": unique_id("f"), "name": "Khulna Clinic"}
        other_facility = {"id": unique_id("f"), "name": "Sylhet Clinic"}
        tag = unique_id("n")  # keeps the names of this test apart from others'
        people = {
            "rahim": patient_body(full_name=f"{tag} Rahim", facility=facility),
            "rahima": patient_body(
                full_name=f"{tag.upper()} RAHIMA",
                facility=facility,
                phone_numbers=[
                    {"number": "029660001", "type": "landline"},
                    {"number": "01811000002", "type": "mobile"},
                ],
            ),
            "karim": patient_body(full_name=f"{tag} Karim", facility=other_facility),
            "percent": patient_body(full_name=f"{tag}%_ odd", facility=other_facility),
        }
        ids = {}
        for name, body in people.items():
            ids[name] = f"{unique_id()}-{name}"
            assert (await api.put(f"/v1/patients/{ids[name]}", json=body)).is_success

        async def found(**params: Any) -> list[str]:
            answer = await api.get("/v1/patients", params=params)
            assert answer.status_code == 200, answer.text
            return sorted(item["id"] for item in answer.json()["items"])

        def of(*names: str) -> list[str]:
            return sorted(ids[name] for name in names)

        assert await found(facility_id=facility["id"]) == of("rahim", "rahima")
        assert await found(name_prefix=f"{tag} rahim".upper()) == of("rahim", "rahima")
        assert await found(name_prefix=f"{tag} K") == of("karim")
        # LIKE's wildcards are plain characters in a prefix.
        assert await found(name_prefix=f"{tag}%") == of("percent")
        assert await found(name_prefix=f"{tag}_") == []
        # A landline, in international, national and spaced formats.
        for number, country in [
            ("+880 2-966-0001", None),
            ("029660001", "BD"),
            ("+88029660001", "bd"),
        ]:
            params = {"phone": number, "facility_id": facility["id"]}
            if country:
                params["country"] = country
            assert await found(**params) == of("rahima"), number
        assert await found(phone="+8801811000002", name_prefix=tag) == of("rahima")
        assert await found(phone="+8801811000002", facility_id=other_facility["id"]) == []

    async def test_pages_in_id_order(self, api: httpx.AsyncClient) -> None:
        facility = {"id": unique_id("f"), "name": "Khulna Clinic"}
        ids = sorted(unique_id() for _ in range(5))
        for patient_id in ids:
            await api.put(f"/v1/patients/{patient_id}", json=patient_body(facility=facility))
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"facility_id": facility["id"], "limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = (await api.get("/v1/patients", params=params)).json()
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == ids

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"phone": "01711000001"}, "phone"),  # national, and no country to read it
            ({"phone": "12345", "country": "BD"}, "phone"),
            ({"phone": "+88017", "country": "BD"}, "phone"),
            ({"country": "Bangladesh"}, "country"),
            ({"name_prefix": ""}, "name_prefix"),
        ],
    )
    async def test_bad_filters_are_422_naming_them(
        self, api: httpx.AsyncClient, params: dict[str, Any], field: str
    ) -> None:
        answer = await api.get("/v1/patients", params=params)
        assert answer.status_code == 422, answer.text
        assert [d["field"] for d in answer.json()["error"]["details"]] == [field]


class TestPatientEmail:
    async def test_optional_address_is_stored_with_its_domain_lower_case(
        self, api: httpx.AsyncClient
    ) -> None:
        patient_id = unique_id()
        without = await api.put(f"/v1/patients/{patient_id}", json=patient_body())
        assert without.status_code == 201, without.text
        assert without.json()["email"] is None

        given = await api.put(
            f"/v1/patients/{patient_id}", json=patient_body(email=" Rahim.U@Mail.EXAMPLE.com ")
        )
        assert given.status_code == 200, given.text
        assert given.json()["email"] == "Rahim.U@mail.example.com"
        assert (await api.get(f"/v1/patients/{patient_id}")).json()["email"] == (
            "Rahim.U@mail.example.com"
        )

        cleared = await api.put(f"/v1/patients/{patient_id}", json=patient_body(email=None))
        assert cleared.json()["email"] is None

    @pytest.mark.parametrize(
        "email", ["rahim", "rahim@", "r@mail.example.com\nBcc: x@y.org", "<r@mail.example.com>"]
    )
    async def test_bad_address_is_a_422_naming_email(
        self, api: httpx.AsyncClient, email: str
    ) -> None:
        patient_id = unique_id()
        answer = await api.put(f"/v1/patients/{patient_id}", json=patient_body(email=email))
        assert answer.status_code == 422, answer.text
        assert fields_of(answer) == ["email"]
        assert (await api.get(f"/v1/patients/{patient_id}")).status_code == 404

    async def test_batch_items_carry_their_address(self, api: httpx.AsyncClient) -> None:
        good, bad = unique_id(), unique_id()
        answer = await api.post(
            "/v1/patients/batch",
            json={
                "patients": [
                    patient_body(id=good, email="a@B.example.org"),
                    patient_body(id=bad, email="not an address"),
                ]
            },
        )
        assert answer.status_code == 200, answer.text
        first, second = answer.json()["results"]
        assert first["patient"]["email"] == "a@b.example.org"
        assert second["status"] == "error"
        assert [d["field"] for d in second["error"]["details"]] == ["email"]
