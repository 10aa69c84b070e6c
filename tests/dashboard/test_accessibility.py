"""The newer pages (gateways, webhooks with their replay forms, the Imo acceptance chart)
and the overview held to the dashboard's accessibility rules, read from their HTML:
unique ids, a label for every control, checkbox groups with a legend, only native
controls in the document's order (keyboard), and charts whose numbers are written on
them (colour is never the only signal)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import Gateway, ImoAuthorization
from tests.dashboard.conftest import MakeOperator, log_in
from tests.dashboard.test_forms import seed_webhooks
from tests.factories import make_patient

CONTROLS = {"input", "select", "textarea"}
NOT_LABELLED = {"hidden", "submit", "button"}


class Page(HTMLParser):
    """What the checks need of a page, gathered in one pass."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.labels: set[str] = set()
        self.controls: list[dict[str, str | None]] = []
        self.checkboxes_outside_a_fieldset: list[str] = []
        self.focus_order_changed: list[str] = []
        self.scripted: list[str] = []
        self.charts: list[dict[str, str | None]] = []
        self.chart_texts: list[list[str]] = []
        self.headings: list[str] = []
        self._open: list[str] = []
        self._in_text = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.append(str(found["id"]))
        if tag == "label" and found.get("for"):
            self.labels.add(str(found["for"]))
        if tag in CONTROLS and found.get("type") not in NOT_LABELLED:
            self.controls.append(found)
            if found.get("type") == "checkbox" and "fieldset" not in self._open:
                self.checkboxes_outside_a_fieldset.append(str(found.get("id")))
        if int(found.get("tabindex") or 0) > 0:
            self.focus_order_changed.append(tag)
        if tag == "script" or any(name.startswith("on") for name in found):
            self.scripted.append(tag)
        if tag == "svg":
            self.charts.append(found)
            self.chart_texts.append([])
        if tag == "text":
            self._in_text = True
        if tag == "h1":
            self.headings.append(tag)
        if tag not in ("input", "meta", "link", "br", "rect", "line"):
            self._open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "text":
            self._in_text = False
        if tag in self._open:
            while self._open and self._open.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        if self._in_text and self.chart_texts:
            self.chart_texts[-1].append(data)


def check(html: str) -> Page:
    page = Page()
    page.feed(html)
    duplicated = sorted({i for i in page.ids if page.ids.count(i) > 1})
    assert not duplicated, f"ids used twice: {duplicated}"
    unlabelled = [
        c for c in page.controls if not c.get("aria-label") and c.get("id") not in page.labels
    ]
    assert not unlabelled, f"controls without a label: {unlabelled}"
    assert not page.checkboxes_outside_a_fieldset, page.checkboxes_outside_a_fieldset
    assert not page.focus_order_changed, "a positive tabindex reorders the keyboard's path"
    assert not page.scripted, "no script: every control is a native one"
    assert page.headings == ["h1"]
    assert 'class="skip"' in html and "<main" in html
    for chart, texts in zip(page.charts, page.chart_texts, strict=True):
        assert chart.get("role") == "img" and chart.get("aria-label"), chart
        # The figures are written on the chart, not only drawn in colour.
        assert not texts or any(re.search(r"\d", text) for text in texts), (chart, texts)
    return page


pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_gateways_page(
    db_sessionmaker: async_sessionmaker[AsyncSession],
    dashboard: httpx.AsyncClient,
    make_operator: MakeOperator,
) -> None:
    async with db_sessionmaker() as session:
        session.add(Gateway(name="dhaka-phone-a11y", country="BD", secret_hash="0" * 64))
        session.add(
            Gateway(
                name="khulna-upazila-phone-a11y",
                secret_hash="1" * 64,
                last_polled_at=datetime.now(UTC) - timedelta(hours=1),
            )
        )
        await session.commit()
    await log_in(dashboard, *await make_operator("viewer"))
    html = (await dashboard.get("/dashboard/gateways")).text
    page = check(html)
    assert page.charts
    # A label cut to the room before the bars (it ran over the number), whole on hover.
    assert ">khulna-upazila…<title>khulna-upazila-phone-a11y</title></text>" in html
    # A silent or never-polled phone says so in words.
    assert "<strong>never polled</strong>" in html and "<strong>silent</strong>" in html


async def test_webhooks_page_with_two_replay_forms(
    db_sessionmaker: async_sessionmaker[AsyncSession],
    dashboard: httpx.AsyncClient,
    make_operator: MakeOperator,
) -> None:
    await seed_webhooks(db_sessionmaker)
    await log_in(dashboard, *await make_operator("admin"))
    html = (await dashboard.get("/dashboard/webhooks")).text
    page = check(html)
    # Two endpoints: two forms, each with its own fields and labels.
    assert html.count('<form method="post" action="/dashboard/webhooks/') == 2
    assert len([c for c in page.controls if c.get("type") == "checkbox"]) >= 4
    assert "<legend>Events (none ticked: every type)</legend>" in html
    # States in words, not colour: given up, disabled.
    assert "GIVEN UP" in html and "<strong>DISABLED</strong>" in html


async def test_imo_acceptance_chart(
    db_sessionmaker: async_sessionmaker[AsyncSession],
    dashboard: httpx.AsyncClient,
    make_operator: MakeOperator,
) -> None:
    now = datetime.now(UTC)
    async with db_sessionmaker() as session:
        for status in ("subscribed", "invited"):
            patient = await make_patient(session)
            session.add(
                ImoAuthorization(
                    patient_id=patient.id,
                    status=status,
                    last_invited_at=now - timedelta(hours=1),
                    subscribed_at=now if status == "subscribed" else None,
                )
            )
        await session.commit()
    await log_in(dashboard, *await make_operator("viewer"))
    for by in ("day", "week"):
        html = (await dashboard.get(f"/dashboard/imo?by={by}")).text
        page = check(html)
        assert len(page.charts) == 2
        # Which bar is which is written, and each row's figures are beside it.
        assert "subscribed (dark) of invited (pale)" in html
        assert re.search(r"\d+ / \d+ \(\d+\.\d%\)", html), html


async def test_overview_page(dashboard: httpx.AsyncClient, make_operator: MakeOperator) -> None:
    await log_in(dashboard, *await make_operator("viewer"))
    check((await dashboard.get("/dashboard/?days=1")).text)
