"""Gateways and webhooks pages, the webhook replay action, and every dashboard form and
address held to the API's input rules: a clear 4xx page, never a 500."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from tests.dashboard.conftest import MakeOperator, form_token, log_in


def refused_page(answer: httpx.Response, status: int, *words: str) -> None:
    """A page (not the API's JSON) with the status and the words that say why."""
    assert answer.status_code == status, (answer.status_code, answer.text[:500])
    assert answer.headers["content-type"].startswith("text/html"), answer.headers
    for word in words:
        assert word in answer.text, (word, answer.text[:2000])


async def seed_webhooks(sessionmaker: async_sessionmaker[AsyncSession]) -> datetime:
    """`crm` (active; one delivery given up after 5 tries, one delivered) and `old`
    (disabled); returns when the events occurred."""
    occurred = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    async with sessionmaker() as session:
        for name, disabled in (("crm", None), ("old", occurred)):
            session.add(
                WebhookEndpoint(
                    name=name,
                    url=f"https://{name}.clinic.test/hook",
                    events=["message.received", "consent.changed"],
                    secret="whsec_test",
                    active=disabled is None,
                    failing_since=disabled,
                    disabled_at=disabled,
                )
            )
        events = [
            WebhookEvent(id=uuid.uuid4(), type=kind, patient_id=None, data={}, occurred_at=occurred)
            for kind in ("message.received", "consent.changed")
        ]
        session.add_all(events)
        await session.flush()
        for event, state in zip(events, ("failed", "delivered"), strict=True):
            session.add(
                WebhookDelivery(
                    event_id=event.id,
                    endpoint_name="crm",
                    occurred_at=occurred,
                    state=state,
                    attempts=5 if state == "failed" else 1,
                    next_attempt_at=occurred,
                    last_status=503 if state == "failed" else 204,
                    last_error="HTTP 503" if state == "failed" else None,
                )
            )
        await session.commit()
    return occurred


@pytest.mark.asyncio(loop_scope="session")
class TestGateways:
    async def test_shows_what_the_api_lists(
        self, api: httpx.AsyncClient, dashboard: httpx.AsyncClient, make_operator: MakeOperator
    ) -> None:
        created = await api.post("/v1/gateways", json={"name": "dhaka-phone-1", "country": "BD"})
        assert created.status_code == 201, created.text
        listed = (await api.get("/v1/gateways")).json()["data"]
        await log_in(dashboard, *await make_operator("viewer"))
        page = await dashboard.get("/dashboard/gateways")
        assert page.status_code == 200
        for gateway in listed:
            assert f'<th scope="row">{gateway["name"]}</th>' in page.text
        assert "never polled" in page.text
        assert 'aria-label="Queue depth per gateway"' in page.text


@pytest.mark.asyncio(loop_scope="session")
class TestWebhooks:
    async def test_subscriptions_failing_deliveries_and_disabled_endpoints(
        self,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        dashboard: httpx.AsyncClient,
        make_operator: MakeOperator,
    ) -> None:
        await seed_webhooks(db_sessionmaker)
        await log_in(dashboard, *await make_operator("viewer"))
        page = (await dashboard.get("/dashboard/webhooks")).text
        assert "https://crm.clinic.test/hook" in page
        assert "<strong>DISABLED</strong>" in page
        assert "GIVEN UP" in page and "HTTP 503" in page
        # A viewer sees no replay form.
        assert "/replay" not in page

    async def test_an_admin_replays_with_a_reason_and_it_is_logged(
        self,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        dashboard: httpx.AsyncClient,
        make_operator: MakeOperator,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        occurred = await seed_webhooks(db_sessionmaker)
        email, password = await make_operator("admin")
        await log_in(dashboard, email, password)
        token = form_token((await dashboard.get("/dashboard/webhooks")).text)
        since = (occurred - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M")
        until = (occurred + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M")
        form = {"csrf_token": token, "since": since, "until": until, "reason": "CRM was down"}
        with caplog.at_level("WARNING", logger="app.dashboard.endpoints"):
            answer = await dashboard.post("/dashboard/webhooks/crm/replay", data=form)
        assert answer.status_code == 303, answer.text
        [record] = [r for r in caplog.records if getattr(r, "by", None) == email]
        assert (record.endpoint, record.reason, record.queued) == ("crm", "CRM was down", 2)
        async with db_sessionmaker() as session:
            pending = await session.scalar(
                select(func.count())
                .select_from(WebhookDelivery)
                .where(WebhookDelivery.endpoint_name == "crm", WebhookDelivery.state == "pending")
            )
        assert pending == 2
        page = await dashboard.get(answer.headers["location"])
        assert "2 deliveries to crm queued again" in page.text
        # One type only.
        only = await dashboard.post(
            "/dashboard/webhooks/crm/replay", data={**form, "events": ["consent.changed"]}
        )
        assert only.status_code == 303
        assert "1 deliveries" in (await dashboard.get(only.headers["location"])).text

    async def test_a_replay_refused_for_each_bad_part_loses_nothing(
        self,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        dashboard: httpx.AsyncClient,
        make_operator: MakeOperator,
    ) -> None:
        await seed_webhooks(db_sessionmaker)
        await log_in(dashboard, *await make_operator("admin"))
        token = form_token((await dashboard.get("/dashboard/webhooks")).text)
        good = {
            "csrf_token": token,
            "since": "2026-12-01T00:00",
            "until": "2026-12-02T00:00",
            "reason": "r",
        }
        url = "/dashboard/webhooks/crm/replay"
        cases: list[tuple[dict[str, str | list[str]], int, str]] = [
            ({"since": "2026-13-45T99:00"}, 422, "since"),
            ({"since": "yesterday"}, 422, "since"),
            ({"until": "0001-01-01T00:00"}, 422, "until"),
            ({"until": "2026-11-30T00:00"}, 422, "until must be after since"),
            ({"events": ["message.sent"]}, 422, "events"),
            ({"reason": "   "}, 422, "a reason is required"),
            ({"reason": "x" * 1001}, 422, "reason"),
            ({"reason": "why\x00"}, 422, "null character"),
            ({"since": "2026-12-01T00:00\u202e"}, 422, "bidirectional"),
        ]
        for change, status, words in cases:
            refused_page(await dashboard.post(url, data={**good, **change}), status, words)
        refused_page(
            await dashboard.post("/dashboard/webhooks/nobody/replay", data=good),
            404,
            "no webhook endpoint",
        )
        refused_page(await dashboard.post("/dashboard/webhooks/NO%20PE/replay", data=good), 422)
        missing = {key: value for key, value in good.items() if key != "csrf_token"}
        refused_page(await dashboard.post(url, data=missing), 403, "reload the page")
        async with db_sessionmaker() as session:
            pending = await session.scalar(
                select(func.count())
                .select_from(WebhookDelivery)
                .where(WebhookDelivery.state == "pending")
            )
        assert pending == 0

    async def test_only_an_admin_may_replay(
        self,
        db_sessionmaker: async_sessionmaker[AsyncSession],
        dashboard: httpx.AsyncClient,
        make_operator: MakeOperator,
    ) -> None:
        await seed_webhooks(db_sessionmaker)
        for role in ("viewer", "support"):
            dashboard.cookies.clear()
            await log_in(dashboard, *await make_operator(role))
            token = form_token((await dashboard.get("/dashboard/webhooks")).text)
            answer = await dashboard.post(
                "/dashboard/webhooks/crm/replay",
                data={
                    "csrf_token": token,
                    "since": "2026-12-01T00:00",
                    "until": "2026-12-02T00:00",
                    "reason": "r",
                },
            )
            refused_page(answer, 403, "admin role")


@pytest.mark.asyncio(loop_scope="session")
class TestEveryFormAndAddress:
    """Null bytes, overlong values, bad choices, missing CSRF and wrong roles: pages
    that say why, with a 4xx."""

    async def test_the_login_form(
        self, dashboard: httpx.AsyncClient, make_operator: MakeOperator
    ) -> None:
        email, password = await make_operator("viewer")
        token = form_token((await dashboard.get("/dashboard/login")).text)
        for fields, status, words in [
            ({"email": "a\x00@clinic.test", "password": "p"}, 422, "null character"),
            ({"email": email, "password": "p\x00"}, 422, "null character"),
            ({"email": "a" * 300 + "@clinic.test", "password": "p"}, 422, "email"),
            ({"email": email, "password": "p" * 1001}, 422, "password"),
            ({"email": email}, 422, "password"),
        ]:
            answer = await dashboard.post("/dashboard/login", data={"csrf_token": token, **fields})
            refused_page(answer, status, words)
        no_token = await dashboard.post(
            "/dashboard/login", data={"email": email, "password": password}
        )
        refused_page(no_token, 403, "reload it")

    async def test_the_switches_form(
        self, dashboard: httpx.AsyncClient, make_operator: MakeOperator
    ) -> None:
        await log_in(dashboard, *await make_operator("admin"))
        token = form_token((await dashboard.get("/dashboard/switches")).text)
        good = {"csrf_token": token, "action": "pause", "country": "IN", "reason": "r"}
        for change, status, words in [
            ({"reason": "r\x00"}, 422, "null character"),
            ({"purpose": "p\x00"}, 422, "null character"),
            ({"country": "IND"}, 422, "country"),
            ({"purpose": "p" * 51}, 422, "purpose"),
            ({"reason": "r" * 1001}, 422, "reason"),
            ({"action": "explode"}, 422, "action"),
            ({"channel": "pigeon"}, 422, "pigeon"),
        ]:
            refused_page(
                await dashboard.post("/dashboard/switches", data={**good, **change}),
                status,
                words,
            )
        missing = {key: value for key, value in good.items() if key != "csrf_token"}
        refused_page(await dashboard.post("/dashboard/switches", data=missing), 403)
        forged = {**good, "csrf_token": token[:-2] + "xx"}
        refused_page(await dashboard.post("/dashboard/switches", data=forged), 403)
        cross_site = await dashboard.post(
            "/dashboard/switches", data=good, headers={"Sec-Fetch-Site": "cross-site"}
        )
        refused_page(cross_site, 403, "cross-site")
        a_file = await dashboard.post(
            "/dashboard/switches", data=good, files={"reason": ("r.txt", b"r")}
        )
        refused_page(a_file, 422, "files")

    async def test_addresses_and_queries(
        self, dashboard: httpx.AsyncClient, make_operator: MakeOperator
    ) -> None:
        await log_in(dashboard, *await make_operator("viewer"))
        for path, status, words in [
            ("/dashboard/?days=9999", 422, "days"),
            ("/dashboard/?country=IND", 422, "country"),
            ("/dashboard/?purpose=%00", 422, "null character"),
            ("/dashboard/patients?q=" + "9" * 65, 422, "q"),
            ("/dashboard/patients?q=%00", 422, "null character"),
            ("/dashboard/patients/%00", 422, "null character"),
            ("/dashboard/patients/%E2%80%AE", 422, "bidirectional"),
            ("/dashboard/experiments/not-a-uuid", 422, "experiment_id"),
            ("/dashboard/imo?by=month", 422, "by"),
            ("/dashboard/webhooks?done=" + "d" * 301, 422, "done"),
            ("/dashboard/no-such-page", 404, "Not Found"),
            ("/dashboard/switches", 403, "admin role"),
            ("/dashboard/experiments/" + str(uuid.uuid4()), 404, "experiment"),
        ]:
            refused_page(await dashboard.get(path), status, *([words] if words else []))
        # The API keeps its JSON answers.
        api_answer = await dashboard.get("/v1/patients?limit=0")
        assert api_answer.headers["content-type"].startswith("application/json")
