"""The dashboard in a real browser: headless Chromium from Debian's packages driven by
Selenium through Debian's chromium-driver, against the real stack (API, worker, fakes).

Log in, see the overview with messages sent through the fakes, open a patient, pause and
resume a country, read an experiment, the gateways and webhooks pages with a phone and an
endpoint on them, a replay form reached by keyboard alone with its focus visible; no console
errors on any page; a screenshot of each page is kept in test-artifacts/browser/. Skipped,
saying why, when Chromium or its driver is missing (`.ci/run` installs them when it runs as
root).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.operators import service as operator_service
from tests.appointments.helpers import create_experiment, put_plan
from tests.e2e.helpers import notification_in, phone, put_patient, schedule
from tests.stack import Stack

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    if not (CHROMIUM and DRIVER):
        pytest.skip(
            "Chromium or chromium-driver is not installed "
            "(apt-get install -y chromium chromium-driver; .ci/run does it as root)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.implicitly_wait(5)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def visit(driver: webdriver.Chrome, url: str, name: str) -> str:
    """Open `url`, keep a screenshot, refuse any console error; -> the page's text."""
    driver.get(url)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
    return str(driver.find_element(By.TAG_NAME, "main").text)


@pytest.mark.asyncio(loop_scope="session")
async def test_an_operator_reads_the_dashboard(
    stack: Stack, stack_api: httpx.AsyncClient, browser: webdriver.Chrome
) -> None:
    password = await operator_service.issue_operator(
        stack.database_url, f"browser-{id(browser)}@clinic.test", "admin"
    )
    email = f"browser-{id(browser)}@clinic.test"
    patient = await put_patient(stack_api, phone(4))
    sent = await schedule(stack_api, patient["id"])
    await notification_in(stack_api, sent["id"], "delivered")
    experiment = await create_experiment(stack_api, await put_plan(stack_api))
    phone_name = f"browser-phone-{id(browser)}"
    created = await stack_api.post("/v1/gateways", json={"name": phone_name, "country": "BD"})
    assert created.status_code == 201, created.text
    engine = create_async_engine(stack.database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(ENDPOINT_WITH_A_FAILED_DELIVERY))
        await _read_every_page(stack, browser, email, password, patient, experiment)
    finally:
        # The stack is the session's: a running experiment would enrol the BD patients
        # of every later test (tests/e2e/test_experiments.py found them in its group).
        stopped = await stack_api.post(f"/v1/experiments/{experiment['id']}/stop")
        assert stopped.status_code == 200, stopped.text
        async with engine.begin() as connection:
            await connection.execute(text("DELETE FROM webhook_endpoints WHERE name = 'browser'"))
            await connection.execute(text("DELETE FROM webhook_events WHERE type = 'browser'"))
            await connection.execute(
                text("DELETE FROM gateways WHERE name = :name"), {"name": phone_name}
            )
        await engine.dispose()


# A disabled endpoint (no worker calls it) with one delivery given up: the webhooks page
# shows both, and an admin a replay form.
ENDPOINT_WITH_A_FAILED_DELIVERY = """
WITH endpoint AS (
    INSERT INTO webhook_endpoints (name, url, events, secret, active, failing_since,
                                   disabled_at)
    VALUES ('browser', 'https://crm.clinic.test/hook', ARRAY['message.received'],
            'whsec_browser', false, now(), now())
    RETURNING name
), event AS (
    INSERT INTO webhook_events (id, type, patient_id, data, occurred_at)
    VALUES (gen_random_uuid(), 'browser', NULL, '{}'::jsonb, now())
    RETURNING id, occurred_at
)
INSERT INTO webhook_deliveries (event_id, endpoint_name, occurred_at, state, attempts,
                                next_attempt_at, last_status, last_error)
SELECT event.id, endpoint.name, event.occurred_at, 'failed', 5, now(), 503, 'HTTP 503'
FROM endpoint, event
"""


def tab_until(driver: webdriver.Chrome, wanted: list[str], most: int = 150) -> list[str]:
    """Press Tab from the top of the page until every id of `wanted` had the focus, in
    that order; each focused control must show it (an outline) -> the ids focused. (A
    date and time field takes several Tabs: one per part.)"""
    driver.get(driver.current_url)
    focused: list[str] = []
    for _ in range(most):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        element = driver.switch_to.active_element
        name = element.get_attribute("id") or element.tag_name
        focused.append(name)
        outline = driver.execute_script(
            "const s = getComputedStyle(arguments[0]); return [s.outlineStyle, s.outlineWidth];",
            element,
        )
        assert outline[0] != "none" and outline[1] != "0px", (name, outline)
        if list(dict.fromkeys(i for i in focused if i in wanted)) == wanted:
            return focused
    raise AssertionError(f"not reached by Tab in order: {wanted}; focused {focused}")


async def _read_every_page(
    stack: Stack,
    browser: webdriver.Chrome,
    email: str,
    password: str,
    patient: dict[str, Any],
    experiment: dict[str, Any],
) -> None:
    base = f"{stack.api_url}/dashboard"
    visit(browser, f"{base}/", "login")
    browser.find_element(By.ID, "email").send_keys(email)
    browser.find_element(By.ID, "password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    WebDriverWait(browser, 10).until(lambda d: "/login" not in d.current_url)

    overview = visit(browser, f"{base}/?days=1", "overview")
    assert "Funnel" in overview and "delivered" in overview
    browser.find_element(
        By.CSS_SELECTOR, "#periods ~ details summary, section[aria-labelledby=periods] summary"
    ).click()

    visit(browser, f"{base}/patients", "patient-lookup")
    browser.find_element(By.ID, "q").send_keys(patient["id"])
    browser.find_element(By.CSS_SELECTOR, "form[role=search] button").click()
    WebDriverWait(browser, 10).until(lambda d: f"/patients/{patient['id']}" in d.current_url)
    patient_page = visit(browser, browser.current_url, "patient")
    assert patient["id"] in patient_page and "delivered" in patient_page
    assert patient["phone_numbers"][0]["number"] in patient_page  # support and up see it whole

    visit(browser, f"{base}/switches", "switches")
    for action, reason in (("pause", "browser test: pause"), ("resume", "browser test: over")):
        browser.find_element(By.ID, "country").send_keys("IN")
        browser.find_element(By.ID, "reason").send_keys(reason)
        browser.find_element(By.CSS_SELECTOR, f"button[value={action}]").click()
        WebDriverWait(browser, 10).until(lambda d, a=action: f"{a}d+country" in d.current_url)
        done = visit(browser, browser.current_url, f"switches-{action}")
        assert f"{action}d country=IN" in done, done

    assert "Acceptance over time" in visit(browser, f"{base}/imo", "imo")
    gateways = visit(browser, f"{base}/gateways", "gateways")
    assert "Gateway phones" in gateways and "never polled" in gateways
    webhooks = visit(browser, f"{base}/webhooks", "webhooks")
    assert "Subscriptions" in webhooks and "DISABLED" in webhooks and "GIVEN UP" in webhooks
    # The replay form by keyboard alone: the period, an event type, the reason, the button.
    form = browser.find_element(
        By.CSS_SELECTOR, "form[action='/dashboard/webhooks/browser/replay']"
    )
    since = form.find_element(By.CSS_SELECTOR, "input[name=since]").get_attribute("id")
    until = form.find_element(By.CSS_SELECTOR, "input[name=until]").get_attribute("id")
    first_event = form.find_element(By.CSS_SELECTOR, "input[name=events]").get_attribute("id")
    reason = form.find_element(By.CSS_SELECTOR, "input[name=reason]").get_attribute("id")
    tab_until(browser, [str(since), str(until), str(first_event), str(reason)])
    browser.switch_to.active_element.send_keys("browser test: keyboard")
    ActionChains(browser).send_keys(Keys.TAB).perform()
    assert browser.switch_to.active_element.text == "Replay to browser"
    browser.save_screenshot(str(ARTIFACTS / "webhooks-keyboard.png"))
    experiment_page = visit(browser, f"{base}/experiments/{experiment['id']}", "experiment")
    assert experiment["name"] in experiment_page and "Return-to-care rate" in experiment_page
