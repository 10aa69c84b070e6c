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
   never sends most of these.

The figures of the last run are in docs/reliability.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import Case

from app.config import Settings
from app.main import create_app
from tests.factories import patient_body
from tests.stack import Stack

pytestmark = [pytest.mark.fuzz, pytest.mark.e2e]

SEED = 20261204
EXAMPLES_PER_OPERATION = 40
STATEFUL_EXAMPLES = 60
STATEFUL_MAX_SECONDS = 45
HOSTILE_EXAMPLES = 600

schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())

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


def write_operations(patient_id: str, plan: str) -> list[tuple[str, str, dict[str, Any]]]:
    """A valid request for each write operation (ids unique per call)."""
    suffix = uuid.uuid4().hex[:10]
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


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def seeded(stack: Stack, api_key: str) -> tuple[str, str]:
    """A patient, a plan and a visited-to-be appointment the hostile requests refer to."""
    async with stack.client(api_key) as client:
        patient_id = f"fz-p-{uuid.uuid4().hex[:8]}"
        body = write_operations(patient_id, "unused")[0][2]
        assert (await client.put(f"/v1/patients/{patient_id}", json=body)).status_code in (
            200,
            201,
        )
        plan = f"fz-plan-{uuid.uuid4().hex[:8]}"
        made = await client.put(
            f"/v1/reminder-plans/{plan}",
            json={"reminders": [{"offset_days": -1, "template": "appointment_reminder.basic"}]},
        )
        assert made.status_code in (200, 201), made.text
        made = await client.put(
            "/v1/appointments/fz-visited",
            json={"patient_id": patient_id, "scheduled_date": "2026-12-01"},
        )
        assert made.status_code in (200, 201), made.text
    return patient_id, plan


def test_hostile_values(http: httpx.Client, seeded: tuple[str, str]) -> None:
    patient_id, plan = seeded
    operations = write_operations(patient_id, plan)

    @seed(SEED)
    @settings(
        max_examples=HOSTILE_EXAMPLES,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data(), value=hostile_values)
    def one_request(data: st.DataObject, value: Any) -> None:
        method, path, body = data.draw(st.sampled_from(write_operations(patient_id, plan)))
        where = data.draw(st.sampled_from(list(paths_in(body))))
        if where and isinstance(where[-1], tuple) and not isinstance(value, str):
            value = value.token if isinstance(value, Raw) else str(value)  # keys are strings
        sent = encode(replaced(body, where, value))
        response = http.request(
            method, path, content=sent, headers={"Content-Type": "application/json"}
        )
        assert_no_server_error(response, f"{method} {path} at {where}", sent[:300])

    assert len(operations) == 9
    one_request()
