"""The pages: the overview's figures from the counts, the patient lookup and its masking."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.dashboard.endpoints import masked
from app.imo import repository as imo_repository
from app.models import (
    DeliveryAttempt,
    ImoAuthorization,
    ImoInvitationRound,
    Message,
    Notification,
)
from tests.appointments.helpers import create_experiment, put_plan
from tests.dashboard.conftest import MakeOperator, form_token, log_in
from tests.experiments.test_results import WINDOW
from tests.experiments.test_results import seed as seed_members
from tests.factories import make_notification, make_patient


async def seed(sessionmaker: async_sessionmaker[AsyncSession]) -> str:
    """A Bangladeshi patient with two notifications: one read on SMS after falling back
    from Imo, one failed on SMS with a reason."""
    async with sessionmaker() as session:
        patient = await make_patient(
            session,
            mobile_e164="+8801711234567",
            phone_numbers=[{"number": "+8801711234567", "type": "mobile"}],
        )
        read = await make_notification(session, patient, purpose="dashboard_test")
        failed = await make_notification(session, patient, purpose="dashboard_test")
        await session.execute(
            update(Notification)
            .where(Notification.id == read.id)
            .values(state="read", channel_chain=["imo", "sms"], channel_index=1)
        )
        await session.execute(
            update(Notification)
            .where(Notification.id == failed.id)
            .values(
                state="failed",
                channel_chain=["sms"],
                channel_index=0,
                failure_reason="sms: 30006 unreachable carrier",
            )
        )
        session.add(
            DeliveryAttempt(
                notification_id=failed.id,
                channel="sms",
                status="failed",
                provider_message_id="SMfake1",
                provider_status="failed",
                error_code="30006",
                error_message="landline or unreachable carrier",
            )
        )
        await session.commit()
        return patient.id


def cell(page: str, row: str, column: int) -> str:
    found = re.search(rf"<th scope=\"row\">{row}</th>((?:<td[^>]*>[^<]*</td>)+)", page)
    assert found, page
    return re.findall(r">([^<]*)</td>", found.group(1))[column]


@pytest.mark.asyncio(loop_scope="session")
class TestOverview:
    async def test_shows_the_funnel_reasons_and_fallbacks_of_the_filtered_purpose(
        self,
        dashboard: httpx.AsyncClient,
        make_operator: MakeOperator,
        db_sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        await seed(db_sessionmaker)
        await log_in(dashboard, *await make_operator("viewer"))
        page = await dashboard.get("/dashboard/", params={"days": "1", "purpose": "dashboard_test"})
        assert page.status_code == 200
        text = page.text
        assert "<svg" in text and "sms: 30006 unreachable carrier" in text
        # Per channel: the read one is on sms (index 1), and so is the failed one.
        assert cell(text, "sms", 0) == "2" and cell(text, "sms", 3) == "1"
        assert cell(text, "sms", 4) == "1"  # failed
        assert "50.0%</strong> (1 of 2 dispatched" in text
        assert "<option selected>dashboard_test</option>" in text

    async def test_email_is_a_channel_like_the_others(
        self,
        dashboard: httpx.AsyncClient,
        make_operator: MakeOperator,
        db_sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        async with db_sessionmaker() as session:
            patient = await make_patient(session)
            emailed = await make_notification(session, patient, purpose="dashboard_email")
            await session.execute(
                update(Notification)
                .where(Notification.id == emailed.id)
                .values(state="delivered", channel_chain=["email"], channel_index=0)
            )
            await session.commit()
        await log_in(dashboard, *await make_operator("viewer"))
        page = await dashboard.get(
            "/dashboard/", params={"days": "1", "purpose": "dashboard_email"}
        )
        assert cell(page.text, "email", 0) == "1" and cell(page.text, "email", 2) == "1"

    async def test_a_bad_filter_is_a_clear_4xx(
        self, dashboard: httpx.AsyncClient, make_operator: MakeOperator
    ) -> None:
        await log_in(dashboard, *await make_operator("viewer"))
        assert (await dashboard.get("/dashboard/", params={"days": "9999"})).status_code == 422


@pytest.mark.asyncio(loop_scope="session")
class TestPatients:
    async def test_a_viewer_sees_the_phone_masked_and_support_sees_it_whole(
        self,
        api_app: object,
        dashboard: httpx.AsyncClient,
        make_operator: MakeOperator,
        db_sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        patient_id = await seed(db_sessionmaker)
        await log_in(dashboard, *await make_operator("viewer"))
        page = await dashboard.get(f"/dashboard/patients/{patient_id}")
        assert page.status_code == 200
        assert "+8801711234567" not in page.text and masked("+8801711234567") in page.text
        assert "30006" in page.text and "SMfake1" in page.text
        dashboard.cookies.clear()
        await log_in(dashboard, *await make_operator("support"))
        assert "+8801711234567" in (await dashboard.get(f"/dashboard/patients/{patient_id}")).text

    async def test_lookup_by_id_or_phone_leads_to_the_patient(
        self,
        dashboard: httpx.AsyncClient,
        make_operator: MakeOperator,
        db_sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        patient_id = await seed(db_sessionmaker)
        await log_in(dashboard, *await make_operator("viewer"))
        for query in (patient_id, "+8801711234567"):
            found = await dashboard.get("/dashboard/patients", params={"q": query})
            assert found.status_code == 303 and found.headers["location"].endswith(patient_id)
        missing = await dashboard.get("/dashboard/patients", params={"q": "nobody"})
        assert missing.status_code == 200 and "no patient has this id" in missing.text
        unknown = await dashboard.get("/dashboard/patients/nobody")
        assert unknown.status_code == 404

    async def test_both_histories_page_back_to_the_first_message(
        self,
        dashboard: httpx.AsyncClient,
        make_operator: MakeOperator,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr("app.dashboard.endpoints.PATIENT_PAGE", 1)
        patient_id = await seed(db_sessionmaker)  # a read and a failed notification
        async with db_sessionmaker() as session:
            for n, direction in enumerate(["in", "out"]):
                session.add(
                    Message(
                        direction=direction,
                        channel="sms",
                        patient_id=patient_id,
                        text=f"exchange {n}",
                        received_at=datetime.now(UTC) - timedelta(minutes=10 - n),
                    )
                )
            await session.commit()
        await log_in(dashboard, *await make_operator("viewer"))
        first = await dashboard.get(f"/dashboard/patients/{patient_id}")
        assert first.status_code == 200
        assert "exchange 1" in first.text and "exchange 0" not in first.text  # the newest
        assert first.text.count('<article class="message">') == 1
        older = re.findall(r'href="(\?[^"#]*)#(sent|exchange)"', first.text)
        links = {anchor: link.replace("&amp;", "&") for link, anchor in older}
        assert set(links) == {"sent", "exchange"}

        sent = await dashboard.get(f"/dashboard/patients/{patient_id}{links['sent']}")
        assert sent.status_code == 200
        assert (
            sent.text.count('<article class="message">') == 1
            and "Newest messages sent" in sent.text
        )
        # The two notifications (the failed one has the 30006), one on each page.
        assert ("30006" in first.text) != ("30006" in sent.text)
        assert "exchange 1" in sent.text  # the other list stays where it was
        assert "Older messages sent" not in sent.text  # the first message reached

        exchange = await dashboard.get(f"/dashboard/patients/{patient_id}{links['exchange']}")
        assert "exchange 0" in exchange.text and "exchange 1" not in exchange.text

        broken = await dashboard.get(f"/dashboard/patients/{patient_id}", params={"sent": "x"})
        assert broken.status_code == 400 and "broken" in broken.text


def test_masking_keeps_the_country_code_and_two_digits() -> None:
    assert masked("+8801711234567") == "+880••••••••67"
    assert masked(None) == ""


@pytest.mark.asyncio(loop_scope="session")
class TestExperiments:
    async def test_shows_the_apis_numbers_with_interval_bars(
        self,
        api: httpx.AsyncClient,
        dashboard: httpx.AsyncClient,
        make_operator: MakeOperator,
        db_sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        experiment = await create_experiment(
            api, await put_plan(api), return_window_days=WINDOW, start_date="2026-01-01"
        )
        async with db_sessionmaker() as session:
            await seed_members(session, experiment, [0.3, 0.45], 200, random.Random(7))
            await session.commit()
        results = (await api.get(f"/v1/experiments/{experiment['id']}/results")).json()
        await log_in(dashboard, *await make_operator("viewer"))
        listed = await dashboard.get("/dashboard/experiments")
        assert f"/dashboard/experiments/{experiment['id']}" in listed.text
        page = (await dashboard.get(f"/dashboard/experiments/{experiment['id']}")).text
        control, treatment = results["groups"]
        assert f"{100 * control['return_rate']:.1f}%" in page
        assert f"{treatment['versus_control']['p_value']:.3g}" in page
        assert f"{100 * treatment['versus_control']['difference']:+.1f} pts" in page
        assert page.count('class="mark"') == 2


@pytest.mark.asyncio(loop_scope="session")
class TestImo:
    async def test_shows_the_apis_authorisation_counts(
        self, api: httpx.AsyncClient, dashboard: httpx.AsyncClient, make_operator: MakeOperator
    ) -> None:
        summary = (await api.get("/v1/imo/authorizations/summary")).json()
        await log_in(dashboard, *await make_operator("viewer"))
        page = await dashboard.get("/dashboard/imo")
        assert page.status_code == 200
        assert f"({summary['patients']:,} patients)" in page.text

    async def test_acceptance_per_day_and_week_pauses_and_a_live_running_round(
        self,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        dashboard: httpx.AsyncClient,
        make_operator: MakeOperator,
    ) -> None:
        now = datetime.now(UTC)
        today = now.replace(hour=0, minute=0, second=0, microsecond=0)
        async with db_sessionmaker() as session:
            # Latest invitation: 3 patients today (2 subscribed since), 2 two days ago
            # (1 subscribed), 1 sixty days ago (outside the 30 days per day).
            invited = [(0, "subscribed"), (0, "subscribed"), (0, "invited"), (2, "invited")]
            invited += [(2, "subscribed"), (60, "not_subscribed")]
            for days_ago, status in invited:
                patient = await make_patient(session)
                session.add(
                    ImoAuthorization(
                        patient_id=patient.id,
                        status=status,
                        last_invited_at=today + timedelta(hours=1) - timedelta(days=days_ago),
                        subscribed_at=now if status == "subscribed" else None,
                    )
                )
            round_ = ImoInvitationRound(
                state="running", trigger="api", reinvite_before=now, candidates=100
            )
            session.add(round_)
            await session.flush()
            for _ in range(2):  # one spell, seen twice
                await imo_repository.record_pause(
                    session, round_.id, "switch", "switch channel=imo is paused", now, None
                )
            await imo_repository.record_pause(
                session, round_.id, "rate_limit", "Imo asked to wait", now, now
            )
            await session.commit()
        await log_in(dashboard, *await make_operator("viewer"))

        page = (await dashboard.get("/dashboard/imo")).text
        assert cell(page, today.strftime("%Y-%m-%d"), 0) == "3"
        assert cell(page, today.strftime("%Y-%m-%d"), 1) == "2"
        assert cell(page, today.strftime("%Y-%m-%d"), 2) == "66.7%"
        assert cell(page, (today - timedelta(days=2)).strftime("%Y-%m-%d"), 2) == "50.0%"
        assert (today - timedelta(days=60)).strftime("%Y-%m-%d") not in page
        assert page.count("<strong>switch</strong>") == 1
        assert "<strong>rate limit</strong>: Imo asked to wait" in page
        assert '<meta http-equiv="refresh" content="5">' in page

        weekly = (await dashboard.get("/dashboard/imo?by=week")).text
        week = (today - timedelta(days=60)).date()
        week -= timedelta(days=week.weekday())
        assert cell(weekly, f"week of {week:%Y-%m-%d}", 0) == "1"
        assert (await dashboard.get("/dashboard/imo?by=month")).status_code == 422

        async with db_sessionmaker() as session:
            await session.execute(
                update(ImoInvitationRound)
                .where(ImoInvitationRound.id == round_.id)
                .values(state="completed", finished_at=now)
            )
            await session.commit()
        assert 'http-equiv="refresh"' not in (await dashboard.get("/dashboard/imo")).text


@pytest.mark.asyncio(loop_scope="session")
class TestSwitches:
    async def test_only_an_admin_may_see_or_set_switches(
        self, dashboard: httpx.AsyncClient, make_operator: MakeOperator
    ) -> None:
        for role in ("viewer", "support"):
            dashboard.cookies.clear()
            await log_in(dashboard, *await make_operator(role))
            assert (await dashboard.get("/dashboard/switches")).status_code == 403
            token = form_token((await dashboard.get("/dashboard/")).text)
            answer = await dashboard.post(
                "/dashboard/switches",
                data={"csrf_token": token, "action": "pause", "country": "IN", "reason": "x"},
            )
            assert answer.status_code == 403, role

    async def test_an_admin_pauses_and_resumes_a_country_with_a_reason(
        self,
        api: httpx.AsyncClient,
        dashboard: httpx.AsyncClient,
        make_operator: MakeOperator,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        email, password = await make_operator("admin")
        await log_in(dashboard, email, password)
        token = form_token((await dashboard.get("/dashboard/switches")).text)
        form = {"csrf_token": token, "country": "IN", "reason": "  "}
        refused = await dashboard.post("/dashboard/switches", data={**form, "action": "pause"})
        assert refused.status_code == 422 and "a reason is required" in refused.text
        bad = await dashboard.post(
            "/dashboard/switches", data={**form, "country": "I1", "reason": "r", "action": "pause"}
        )
        assert bad.status_code == 422
        with caplog.at_level("WARNING", logger="app.switches.service"):
            paused = await dashboard.post(
                "/dashboard/switches", data={**form, "reason": "Twilio incident", "action": "pause"}
            )
        assert paused.status_code == 303
        assert any(getattr(r, "by", None) == email for r in caplog.records)
        listed = (await api.get("/v1/switches")).json()["data"]
        [india] = [s for s in listed if s["scope"] == "country=IN"]
        assert india["paused"] and india["by"] == email and india["reason"] == "Twilio incident"
        page = await dashboard.get(paused.headers["location"])
        assert "paused country=IN" in page.text and "PAUSED" in page.text
        resumed = await dashboard.post(
            "/dashboard/switches", data={**form, "reason": "over", "action": "resume"}
        )
        assert resumed.status_code == 303
        listed = (await api.get("/v1/switches")).json()["data"]
        assert not next(s for s in listed if s["scope"] == "country=IN")["paused"]
