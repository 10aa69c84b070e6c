"""S1 by machine (issue 11): thousands of generated requests against the real API
process of the shared stack; every 500 is a failure. Marked `fuzz` (and `e2e`); the
default suite and CI run it, with a fixed seed, in a few minutes on two cores.

1. schemathesis, stateless: `EXAMPLES_PER_OPERATION` generated requests for every
   operation of the OpenAPI document, valid and invalid, with a valid API key.
2. schemathesis, stateful: sequences of calls that feed one answer's ids into the next
   request (a patient created, then read, its notifications listed, ...).
3. Hostile values: a valid body for every write operation with one value, anywhere in
   it, replaced by what broke the service before: null bytes, lone surrogates, control
   and bidi characters, dates at both ends of the calendar, integers beyond 64 bits,
   NaN, Infinity, 1e400. schemathesis draws strings from the schemas' own patterns and
   never sends most of these. A write with a body that is not in the list fails the
   module (`test_every_write_with_a_body_is_in_the_hostile_list`).
4. Hostile queries: each list's query parameters, one at a time, given those values.
5. Hostile callbacks: signed Twilio status and inbound callbacks, WhatsApp webhooks
   and gateway polls with one value replaced by those, and by ids at and beyond 2**63.
   (SendGrid's two webhooks need settings the shared stack has not: their hostile
   input is tests/email's.)

The figures of the last run are in docs/reliability.md.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
import pytest_asyncio
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, seed, settings
from hypothesis import strategies as st
from schemathesis import Case

from app.channels import twilio_signature, whatsapp
from app.channels.base import basic_auth
from app.config import Settings
from app.fakes.credentials import (
    FAKE_TWILIO_ACCOUNT_SID,
    FAKE_TWILIO_AUTH_TOKEN,
    FAKE_WHATSAPP_APP_SECRET,
)
from app.main import create_app
from tests.factories import patient_body
from tests.stack import Stack

pytestmark = [pytest.mark.fuzz, pytest.mark.e2e]

SEED = 20261204
EXAMPLES_PER_OPERATION = 40
STATEFUL_EXAMPLES = 60
STATEFUL_MAX_SECONDS = 45
HOSTILE_EXAMPLES = 1500
HOSTILE_QUERY_EXAMPLES = 400
HOSTILE_CALLBACK_EXAMPLES = 500
# A public address by its literal (a name would need DNS, a private one is refused), for
# consent changes only, which the hostile callbacks do not make.
WEBHOOK_URL = "https://1.1.1.1/fuzz"

OPENAPI = create_app(Settings()).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)

# Requests sent and their statuses, printed at the end of the module (`pytest -s`).
SENT: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def figures() -> Iterator[None]:
    began = time.monotonic()
    yield
    print(f"\nfuzz: {dict(SENT)} in {time.monotonic() - began:.0f}s (seed {SEED})")


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def api_key(stack: Stack) -> str:
    return await stack.create_api_key("fuzz")


@pytest.fixture(scope="module")
def http(stack: Stack, api_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    ) as client:
        yield client


def assert_no_server_error(response: Any, where: str, sent: object) -> None:
    SENT[f"{response.status_code // 100}xx"] += 1
    assert response.status_code < 500, (where, sent, response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["code"] and error["message"], (where, response.text[:500])


@schema.parametrize()
@seed(SEED)
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)
def test_stateless(case: Case, stack: Stack, api_key: str) -> None:
    response = case.call(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    )
    assert_no_server_error(response, f"{case.method} {case.formatted_path}", case.body)


def test_coverage_and_stateful(stack: Stack, api_key: str, tmp_path: Path) -> None:
    """schemathesis's own engine (its CLI) for the phases that drive the server's state:
    `coverage` (every boundary and just-past-boundary value of every schema) and
    `stateful` (chains of calls through the links it infers). Its engine, unlike a
    hypothesis state machine in pytest, expects a server whose state moves on."""
    report = tmp_path / "junit.xml"
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{stack.api_url}/openapi.json",
            "--header",
            f"Authorization: Bearer {api_key}",
            "--phases=coverage,stateful",
            "--checks=not_a_server_error",
            f"--max-examples={STATEFUL_EXAMPLES}",
            f"--seed={SEED}",
            f"--max-time={STATEFUL_MAX_SECONDS}",
            "--workers=1",
            "--no-color",
            "--report=junit",
            f"--report-junit-path={report}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=STATEFUL_MAX_SECONDS * 3,
        check=False,
    )
    print(done.stdout[-3000:])  # its summary, for `pytest -s`
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


# ---------------------------------------------------------------------------- hostile values

HOSTILE_STRINGS = [
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    "\u202eevil",
    "\u2066x\u2069",
    "\x1b[2J",
    "\x7f",
    "\x85",
    "line\nbreak",
    "\t",
    "",
    " ",
    "x" * 70_000,
    "🙂" * 300,
    "০১৭১১০০০০০১",
    "'; DROP TABLE patients; --",
    "{patient_name}",
    "{{",
    "%s%n",
    "../../etc/passwd",
]
HOSTILE_DATES = [
    "0001-01-01",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31",
    "9999-12-31T23:59:59-12:00",
    "1899-12-31",
    "2026-02-30",
    "2026-13-01",
    "1970-01-01T00:00:00Z",
]
HOSTILE_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", str(2**64), str(-(2**63) - 1)]
HOSTILE_NUMBERS += ["-0", "0", "1e-400", str(2**63 - 1), "4.9e-324"]


# A staff user the seeding makes, whose (empty) history the list checks read.
FUZZ_STAFF = "fz-staff"


@dataclass(frozen=True)
class Seeded:
    """What the hostile requests refer to, made once through the API."""

    patient_id: str
    plan: str
    group: str  # static, no members: a broadcast to it sends nothing
    members_group: str  # static, the patient its only member
    conversation_id: str
    webhook: str
    event_type: str  # with a trigger rule whose parameter comes from the event's data
    gateway: str
    gateway_secret: str


def write_operations(seeded: Seeded) -> list[tuple[str, str, dict[str, Any]]]:
    """A valid request for each write operation of the API that takes a body (ids unique
    per call): the test fails when the OpenAPI document has one that is not here."""
    suffix = uuid.uuid4().hex[:10]
    patient_id, plan = seeded.patient_id, seeded.plan
    patient = patient_body(phone_numbers=[{"number": "01711000003", "type": "mobile"}])
    return [
        ("PUT", f"/v1/patients/fz-{suffix}", patient),
        ("POST", "/v1/patients/batch", {"patients": [{"id": f"fz-b-{suffix}", **patient}]}),
        (
            "POST",
            "/v1/notifications",
            {
                "patient_id": patient_id,
                "purpose": "appointment_reminder",
                "template": "appointment_reminder.basic",
                "variables": {"appointment_date": "2027-01-15", "count": 3, "ratio": 0.5},
                "send_at": "2027-01-14T09:00:00+06:00",
            },
        ),
        ("PUT", f"/v1/templates/fuzz.t{suffix}/en", {"title": "Hi", "body": "Dear {patient_name}"}),
        (
            "PUT",
            f"/v1/appointments/fz-a-{suffix}",
            {
                "patient_id": patient_id,
                "scheduled_date": "2027-01-15",
                "facility": {"id": "f-1", "name": "Clinic"},
            },
        ),
        ("POST", "/v1/appointments/fz-visited/visit", {"visited_at": "2026-12-01T10:00:00+06:00"}),
        (
            "PUT",
            f"/v1/reminder-plans/fz-{suffix}",
            {"reminders": [{"offset_days": -1, "template": "appointment_reminder.basic"}]},
        ),
        (
            "POST",
            "/v1/experiments",
            {
                "name": f"fz-{suffix}",
                "start_date": "2027-01-01",
                "end_date": "2027-02-01",
                "max_patients_per_day": 100,
                "eligibility": {"countries": ["BD"], "facility_ids": ["f-1"]},
                "return_window_days": 15,
                "groups": [
                    {"name": "control", "weight": 1, "reminder_plan": None},
                    {"name": "plan", "weight": 2.5, "reminder_plan": plan},
                ],
            },
        ),
        ("POST", "/v1/imo/invitations/run", {"limit": 1}),
        # Added after issue 11.
        (
            "POST",
            "/v1/events",
            {
                "id": f"fz-e-{suffix}",
                "type": seeded.event_type,
                "patient_id": patient_id,
                "staff_id": "staff-1",
                "occurred_at": "2026-12-01T10:00:00+06:00",
                "data": {"who": "Rahim", "week": 30, "nested": {"list": [1, "a"]}},
            },
        ),
        (
            "PUT",
            f"/v1/trigger-rules/fz-{suffix}",
            {
                "event_type": seeded.event_type,
                "condition": "event.data.week >= 28",
                "send_at": {"days": 1, "hours": 2, "at": "10:00"},
                "template": "fuzz.rule",
                "parameters": {"who": "string(event.data.who)"},
                "purpose": "fuzz",
                "active": False,
            },
        ),
        (
            "PUT",
            f"/v1/groups/fz-g-{suffix}",
            {
                "filter": {
                    "facility_id": ["f-1"],
                    "country": ["BD"],
                    "locale": ["bn-BD"],
                    "tags": ["anc"],
                    "attributes": {"area": "Mirpur", "floor": 2, "ratio": 0.5, "on": True},
                    "age": {"min": 18, "max": 49},
                }
            },
        ),
        ("PUT", f"/v1/groups/fz-s-{suffix}", {"members": [patient_id]}),
        ("POST", f"/v1/groups/{seeded.members_group}/members", {"patient_ids": [patient_id]}),
        ("DELETE", f"/v1/groups/{seeded.members_group}/members", {"patient_ids": [patient_id]}),
        (
            "POST",
            "/v1/broadcasts",
            {
                "group": seeded.group,
                "template": "fuzz.rule",
                "parameters": {"who": "@name", "area": "@area"},
                "purpose": "fuzz",
                "send_at": "2027-01-14T09:00:00+06:00",
                "channel_chain": ["sms"],
            },
        ),
        ("POST", "/v1/gateways", {"name": f"fz-{suffix}", "country": "BD", "number": None}),
        (
            "POST",
            "/v1/conversations",
            {"patient_id": patient_id, "subject": "Visit", "reference": "r-1"},
        ),
        (
            "POST",
            f"/v1/conversations/{seeded.conversation_id}/messages",
            {"text": "Please bring your card.", "broadcast_to": []},
        ),
        ("PUT", "/v1/switches/purpose=fuzz", {"paused": False, "reason": "fuzz", "by": "fuzz"}),
        (
            "PUT",
            f"/v1/staff/fz-{suffix}",
            {"name": "Dr. Nasrin", "email": "nasrin@clinic.example.org", "locale": "bn-BD"},
        ),
        (
            "PUT",
            f"/v1/webhooks/fz-{suffix}",
            {"url": WEBHOOK_URL, "events": ["consent.changed"], "active": False},
        ),
        (
            "POST",
            f"/v1/webhooks/{seeded.webhook}/replay",
            {
                "since": "2026-12-01T00:00:00Z",
                "until": "2026-12-02T00:00:00Z",
                "events": ["consent.changed"],
            },
        ),
    ]


def query_operations(seeded: Seeded) -> list[tuple[str, dict[str, str]]]:
    """Each list of the API with every query parameter it takes (cursors aside: crafted
    ones are tests/test_pagination.py's)."""
    since = {"created_from": "2026-01-01T00:00:00Z", "created_until": "2027-01-01T00:00:00Z"}
    history = {"state": "sent", "purpose": "fuzz", **since, "limit": "5"}
    return [
        (
            "/v1/patients",
            {
                "phone": "01711000003",
                "country": "BD",
                "facility_id": "f-1",
                "name_prefix": "rah",
                "limit": "5",
            },
        ),
        (f"/v1/patients/{seeded.patient_id}/notifications", history),
        (
            "/v1/notifications",
            {
                **history,
                "channel": "sms",
                "patient_id": seeded.patient_id,
                "due_from": "2026-01-01T00:00:00+06:00",
                "due_until": "2027-01-01T00:00:00-05:00",
            },
        ),
        (f"/v1/groups/{seeded.group}/messages", history),
        (f"/v1/events/fz-seed-{seeded.event_type}/messages", history),
        (f"/v1/patients/{seeded.patient_id}/messages", {"limit": "5"}),
        (f"/v1/conversations/{seeded.conversation_id}", {"limit": "5"}),
        ("/v1/email-status/someone@example.org", {"limit": "5"}),
        ("/v1/inbound-emails", {"limit": "5"}),
        ("/v1/experiments", {"limit": "5"}),
        ("/v1/reminder-plans", {"limit": "5"}),
        (f"/v1/staff/{FUZZ_STAFF}/messages", history),
    ]


def paths_in(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a JSON value: object values, list items, and object keys."""
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*path, ("key", key))
            yield from paths_in(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths_in(item, (*path, index))


class Raw:
    """A JSON token written as it is (NaN, 1e400, 2**64): json.dumps cannot."""

    def __init__(self, token: str) -> None:
        self.token = token


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, *rest = path
    if isinstance(head, tuple):  # a key
        key = head[1]
        return {(new if k == key else k): v for k, v in value.items()} if not rest else value
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[head] = replaced(value[head], tuple(rest), new)
    return copy


def encode(value: Any) -> str:
    tokens: dict[str, str] = {}

    def default(obj: Any) -> str:
        if isinstance(obj, Raw):
            marker = f"@@raw{len(tokens)}@@"
            tokens[marker] = obj.token
            return marker
        raise TypeError(type(obj))

    # ensure_ascii: lone surrogates travel as \\udXXX escapes, as JSON allows.
    text = json.dumps(value, default=default)
    for marker, token in tokens.items():
        text = text.replace(f'"{marker}"', token)
    return text


hostile_values = st.one_of(
    st.sampled_from(HOSTILE_STRINGS),
    st.sampled_from(HOSTILE_DATES),
    st.sampled_from(HOSTILE_NUMBERS).map(Raw),
    st.text(
        alphabet=st.characters(codec=None, categories=["Cc", "Cf", "Cs", "Co", "Zl", "Zp"]),
        min_size=1,
        max_size=5,
    ),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.just(None),
    st.just(True),
    st.lists(st.just("x"), max_size=3),
    st.just({}),
)


# Ids as providers echo them back, as text: 2**63 and up cannot be a bigint.
big_ids = st.sampled_from([str(2**63 - 1), str(2**63), str(2**64), "9" * 40, "-1", "0"])


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def seeded(stack: Stack, api_key: str) -> Seeded:
    """A patient, a plan, a visited-to-be appointment, groups, a conversation, a webhook,
    an event type with its rule and a gateway, which the hostile requests refer to."""
    tag = uuid.uuid4().hex[:8]
    async with stack.client(api_key) as client:

        async def made(method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
            answer = await client.request(method, path, json=body)
            assert answer.status_code in (200, 201), (path, answer.text)
            result: dict[str, Any] = answer.json()
            return result

        patient_id = f"fz-p-{tag}"
        patient = patient_body(phone_numbers=[{"number": "01711000003", "type": "mobile"}])
        await made("PUT", f"/v1/patients/{patient_id}", patient)
        plan = f"fz-plan-{tag}"
        reminders = [{"offset_days": -1, "template": "appointment_reminder.basic"}]
        await made("PUT", f"/v1/reminder-plans/{plan}", {"reminders": reminders})
        appointment = {"patient_id": patient_id, "scheduled_date": "2026-12-01"}
        await made("PUT", "/v1/appointments/fz-visited", appointment)
        await made("PUT", "/v1/templates/fuzz.rule/en", {"title": "Hi", "body": "Hi {who}"})
        group = f"fz-empty-{tag}"
        await made("PUT", f"/v1/groups/{group}", {"members": []})
        members_group = f"fz-members-{tag}"
        await made("PUT", f"/v1/groups/{members_group}", {"members": [patient_id]})
        conversation = await made(
            "POST", "/v1/conversations", {"patient_id": patient_id, "subject": "Visit"}
        )
        webhook = f"fz-{tag}"
        hook = {"url": WEBHOOK_URL, "events": ["consent.changed"]}
        await made("PUT", f"/v1/webhooks/{webhook}", {**hook, "active": False})
        event_type = f"fz_{tag}"
        rule = {
            "event_type": event_type,
            "template": "fuzz.rule",
            "parameters": {"who": "string(event.data.who)"},
            "purpose": "fuzz",
        }
        await made("PUT", f"/v1/trigger-rules/fz-{tag}", rule)
        event = {
            "id": f"fz-seed-{event_type}",
            "type": event_type,
            "patient_id": patient_id,
            "occurred_at": "2026-12-01T10:00:00+06:00",
            "data": {"who": "Rahim"},
        }
        await made("POST", "/v1/events", event)
        gateway = await made("POST", "/v1/gateways", {"name": f"fz-{tag}", "country": "BD"})
        await made(
            "PUT",
            f"/v1/staff/{FUZZ_STAFF}",
            {"name": "Dr. Nasrin", "email": "nasrin@clinic.example.org", "locale": "bn-BD"},
        )
    return Seeded(
        patient_id=patient_id,
        plan=plan,
        group=group,
        members_group=members_group,
        conversation_id=conversation["id"],
        webhook=webhook,
        event_type=event_type,
        gateway=gateway["name"],
        gateway_secret=gateway["secret"],
    )


def operation_of(method: str, path: str) -> tuple[str, str] | None:
    """The OpenAPI operation (method, path template) a concrete request is one of."""
    for template in OPENAPI["paths"]:
        parts = template.split("/")
        pattern = "/".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
        if re.fullmatch(pattern, path):
            return method.lower(), template
    return None


def test_every_write_with_a_body_is_in_the_hostile_list(http: httpx.Client, seeded: Seeded) -> None:
    """An operation added later joins the hostile part, or this fails; and each request
    of the list is accepted as it is, so that the hostile part changes one value of a
    request that would otherwise go through."""
    for method, path, body in write_operations(seeded):
        answer = http.request(method, path, json=body)
        # One round at a time: a round an earlier request of the suite started may still
        # run, and then a valid request to start one is a 409 saying so.
        running = path == "/v1/imo/invitations/run" and "round_running" in answer.text
        assert answer.status_code < 300 or running, (method, path, answer.text[:500])
    for path, params in query_operations(seeded):
        answer = http.get(path, params=params)
        assert answer.status_code == 200, (path, answer.text[:500])
    covered = {operation_of(method, path) for method, path, _ in write_operations(seeded)}
    with_body = {
        (method, path)
        for path, operations in OPENAPI["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation and path.startswith("/v1/")
    }
    assert with_body - covered == set()
    listed = {operation_of("get", path) for path, _ in query_operations(seeded)}
    with_query = {
        ("get", path)
        for path, operations in OPENAPI["paths"].items()
        if any(p["in"] == "query" for p in operations.get("get", {}).get("parameters", []))
        and path.startswith("/v1/")
    }
    assert with_query - listed == set()


def test_hostile_values(http: httpx.Client, seeded: Seeded) -> None:
    # One draw of (operation, place): hypothesis wants as many draws for every one.
    each = [
        (index, where)
        for index, (_, _, body) in enumerate(write_operations(seeded))
        for where in paths_in(body)
    ]

    @seed(SEED)
    @settings(
        max_examples=HOSTILE_EXAMPLES,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(place=st.sampled_from(each), value=hostile_values)
    def one_request(place: tuple[int, tuple[Any, ...]], value: Any) -> None:
        index, where = place
        method, path, body = write_operations(seeded)[index]  # fresh ids each time
        if where and isinstance(where[-1], tuple) and not isinstance(value, str):
            value = value.token if isinstance(value, Raw) else str(value)  # keys are strings
        sent = encode(replaced(body, where, value))
        response = http.request(
            method, path, content=sent, headers={"Content-Type": "application/json"}
        )
        assert_no_server_error(response, f"{method} {path} at {where}", sent[:300])

    one_request()


def as_text(value: Any) -> str:
    """A hostile value as a query string or form would carry it."""
    if isinstance(value, Raw):
        return value.token
    if isinstance(value, str):
        return value
    return json.dumps(value)


def query_string(params: dict[str, str]) -> str:
    # Lone surrogates go as the bytes UTF-8 would give them, which no decoder takes.
    return "&".join(
        f"{quote(k, safe='')}={quote(v, safe='', errors='surrogatepass')}"
        for k, v in params.items()
    )


def test_hostile_queries(http: httpx.Client, seeded: Seeded) -> None:
    """Each list's query parameters, one at a time, given a hostile value (a time at
    either end of the calendar was a 500 on every history: found by this test)."""

    # One draw of (list, parameter): hypothesis wants as many draws for every list.
    lists = dict(query_operations(seeded))
    each = [(path, name) for path, params in lists.items() for name in sorted(params)]

    @seed(SEED)
    @settings(
        max_examples=HOSTILE_QUERY_EXAMPLES,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(where=st.sampled_from(each), value=hostile_values)
    def one_request(where: tuple[str, str], value: Any) -> None:
        path, name = where
        params = lists[path]
        url = f"{path}?{query_string({**params, name: as_text(value)})}"
        assume(len(url) < 60_000)  # httpx refuses longer ones (the server, 64 KiB heads)
        response = http.get(url)
        assert_no_server_error(response, f"GET {path} with {name}", url[:300])

    one_request()


# ---------------------------------------------------------------------------- callbacks


def callback_operations(seeded: Seeded) -> list[tuple[str, dict[str, Any]]]:
    """A well-formed, signed callback of each provider (Twilio's status and inbound
    message, WhatsApp's statuses and messages, a gateway phone's poll)."""
    return [
        (
            "twilio-status",
            {
                "attempt_id": 1,
                "MessageSid": "SM0123456789abcdef0123456789abcdef",
                "MessageStatus": "undelivered",
                "ErrorCode": "30008",
                "ErrorMessage": "Unknown error",
                "AccountSid": FAKE_TWILIO_ACCOUNT_SID,
            },
        ),
        (
            "twilio-inbound",
            {
                "MessageSid": f"SM{uuid.uuid4().hex}",
                "From": "+8801711000003",
                "To": "+15005550006",
                "Body": "hello",
                "NumMedia": "1",
                "MediaUrl0": "https://api.twilio.com/media/ME1",
                "MediaContentType0": "image/jpeg",
            },
        ),
        (
            "whatsapp",
            {
                "object": "whatsapp_business_account",
                "entry": [
                    {
                        "id": "WABA",
                        "changes": [
                            {
                                "field": "messages",
                                "value": {
                                    "messaging_product": "whatsapp",
                                    "statuses": [
                                        {
                                            "id": f"wamid.{uuid.uuid4().hex}",
                                            "status": "failed",
                                            "timestamp": "1764870000",
                                            "recipient_id": "8801711000003",
                                            "biz_opaque_callback_data": "1",
                                            "errors": [{"code": 131026, "title": "Undeliverable"}],
                                        }
                                    ],
                                    "messages": [
                                        {
                                            "from": "8801711000003",
                                            "id": f"wamid.{uuid.uuid4().hex}",
                                            "timestamp": "1764870000",
                                            "type": "image",
                                            "image": {
                                                "id": "MEDIA1",
                                                "mime_type": "image/jpeg",
                                                "caption": "my card",
                                            },
                                        }
                                    ],
                                },
                            }
                        ],
                    }
                ],
            },
        ),
        (
            "gateway",
            {
                "messages": [
                    {
                        "id": str(uuid.uuid4()),
                        "from": "01711000003",
                        "content": "HELP",
                        "sms_sent": 1764800000000,
                        "sms_received": 1764800001000,
                    }
                ],
                "updates": [
                    {"id": str(uuid.uuid4()), "status": "FAILED", "reason": "no credit"},
                    {"id": str(uuid.uuid4()), "status": "DELIVERED"},
                ],
            },
        ),
    ]


def send_callback(
    http: httpx.Client, stack: Stack, seeded: Seeded, kind: str, body: dict[str, Any]
) -> httpx.Response:
    if kind in ("twilio-status", "twilio-inbound"):
        # Twilio's forms are UTF-8: a lone surrogate cannot be in one.
        fields = {
            k.encode("utf-8", "replace").decode(): as_text(v).encode("utf-8", "replace").decode()
            for k, v in body.items()
            if v is not None
        }
        path = "/callbacks/twilio/inbound"
        if kind == "twilio-status":
            path = f"/callbacks/twilio/status/{quote(fields.pop('attempt_id', ''), safe='')}"
        signature = twilio_signature.sign(FAKE_TWILIO_AUTH_TOKEN, stack.api_url + path, fields)
        return http.post(
            path,
            content=urlencode(fields),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": signature,
            },
        )
    raw = encode(body).encode()
    if kind == "whatsapp":
        return http.post(
            "/callbacks/whatsapp",
            content=raw,
            headers={
                "Content-Type": "application/json",
                whatsapp.SIGNATURE_HEADER: whatsapp.signature(FAKE_WHATSAPP_APP_SECRET, raw),
            },
        )
    return http.post(
        "/gateway/api/sms",
        content=raw,
        headers={
            "Content-Type": "application/json",
            "Authorization": basic_auth(seeded.gateway, seeded.gateway_secret),
        },
    )


def test_hostile_callbacks(http: httpx.Client, stack: Stack, seeded: Seeded) -> None:
    """Signed callbacks with one value replaced: what a provider never sends but a
    patient's message may hold (a null character), ids beyond 64 bits, fields longer than
    their columns. A provider never sees a 500 for a callback that cannot succeed."""

    # One draw of (callback, place): hypothesis wants as many draws for every callback.
    # A form (Twilio's) has fields only, not a body to replace as a whole.
    each = [
        (index, where)
        for index, (kind, body) in enumerate(callback_operations(seeded))
        for where in paths_in(body)
        if where or not kind.startswith("twilio")
    ]

    @seed(SEED)
    @settings(
        max_examples=HOSTILE_CALLBACK_EXAMPLES,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(place=st.sampled_from(each), value=hostile_values | st.just("x" * 70) | big_ids)
    def one_callback(place: tuple[int, tuple[Any, ...]], value: Any) -> None:
        index, where = place
        kind, body = callback_operations(seeded)[index]  # fresh ids each time
        if where and isinstance(where[-1], tuple) and not isinstance(value, str):
            value = value.token if isinstance(value, Raw) else str(value)
        changed = replaced(body, where, value)
        response = send_callback(http, stack, seeded, kind, changed)
        SENT[f"{response.status_code // 100}xx"] += 1
        assert response.status_code < 500, (kind, where, encode(changed)[:300], response.text)

    one_callback()
