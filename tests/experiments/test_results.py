"""The results on simulated experiments with a known truth, against scipy.

Patients and memberships are seeded with one set-based statement each (`unnest` of
arrays), so 40,000 patients take well under a second; visits are drawn in Python with
a fixed seed, so the expected counts are known exactly.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
from scipy import stats as scipy_stats
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tests.appointments.helpers import create_experiment, put_plan
from tests.factories import unique_id

pytestmark = pytest.mark.asyncio(loop_scope="session")

WINDOW = 15

_SEED_PATIENTS = text(
    """
    INSERT INTO patients (id, full_name, phone_numbers, mobile_e164, country, locale,
                          time_zone, facility_id, facility_name, reminder_consent)
    SELECT id, 'Simulated', '[]'::jsonb, '+8801711000001', 'BD', 'bn-BD', 'Asia/Dhaka',
           'f-12', 'Dhaka Medical', 'granted'
    FROM unnest(CAST(:ids AS text[])) AS id
    """
)
_SEED_MEMBERSHIPS = text(
    """
    INSERT INTO experiment_memberships (experiment_id, group_id, patient_id, appointment_id,
                                        appointment_date, enrolled_at, active, visited_at,
                                        visited_on, evicted_at, evicted_reason)
    SELECT :experiment_id, v.group_id, v.patient_id, 'a-' || v.patient_id, :appointment_date,
           now(), true, v.visited_on::timestamptz, v.visited_on,
           CASE WHEN v.evicted THEN now() END, CASE WHEN v.evicted THEN 'undeliverable' END
    FROM unnest(CAST(:patient_ids AS text[]), CAST(:group_ids AS bigint[]),
                CAST(:visited_ons AS date[]), CAST(:evicted AS boolean[]))
         AS v(patient_id, group_id, visited_on, evicted)
    """
)


async def seed(
    session: AsyncSession,
    experiment: dict[str, Any],
    rates: list[float],
    per_group: int,
    rng: random.Random,
) -> list[int]:
    """Members of each group, returning with the group's rate; -> returned per group.

    Non-returners are half never seen again, half back only after the window (which
    must not count); some of every group are evicted (which must still count).
    """
    appointment_date = datetime.now(UTC).date() - timedelta(days=40)
    group_ids = await session.execute(
        text("SELECT id FROM experiment_groups WHERE experiment_id = :e ORDER BY position"),
        {"e": uuid.UUID(experiment["id"])},
    )
    prefix = unique_id("sim")
    patient_ids: list[str] = []
    groups: list[int] = []
    visited_ons: list[date | None] = []
    evicted: list[bool] = []
    returned = []
    for (group_id,), rate in zip(group_ids.all(), rates, strict=True):
        count = 0
        for i in range(per_group):
            patient_ids.append(f"{prefix}-{group_id}-{i}")
            groups.append(group_id)
            evicted.append(rng.random() < 0.03)
            if rng.random() < rate:
                count += 1
                visited_ons.append(appointment_date + timedelta(days=rng.randint(-3, WINDOW)))
            elif rng.random() < 0.5:
                visited_ons.append(appointment_date + timedelta(days=WINDOW + rng.randint(1, 20)))
            else:
                visited_ons.append(None)
        returned.append(count)
    await session.execute(_SEED_PATIENTS, {"ids": patient_ids})
    await session.execute(
        _SEED_MEMBERSHIPS,
        {
            "experiment_id": uuid.UUID(experiment["id"]),
            "appointment_date": appointment_date,
            "patient_ids": patient_ids,
            "group_ids": groups,
            "visited_ons": visited_ons,
            "evicted": evicted,
        },
    )
    return returned


def scipy_wilson(x: int, n: int) -> tuple[float, float]:
    ci = scipy_stats.binomtest(x, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def independent_comparison(x1: int, n1: int, x2: int, n2: int) -> dict[str, Any]:
    """Newcombe's method 10 from scipy's Wilson intervals; the pooled z-test's p-value
    as Pearson's chi-squared test (scipy), which it equals."""
    p1, p2 = x1 / n1, x2 / n2
    (l1, u1), (l2, u2) = scipy_wilson(x1, n1), scipy_wilson(x2, n2)
    d = p1 - p2
    low = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    table = np.array([[x1, n1 - x1], [x2, n2 - x2]])
    _, p_value, _, _ = scipy_stats.chi2_contingency(table, correction=False)
    return {"difference": d, "ci95": (low, high), "p_value": float(p_value)}


class TestKnownEffect:
    async def test_fifty_versus_fifty_five_percent_on_20000_a_group(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        n = 20_000
        experiment = await create_experiment(
            api, await put_plan(api), return_window_days=WINDOW, start_date="2026-01-01"
        )
        returned = await seed(db_session, experiment, [0.50, 0.55], n, random.Random(20261123))

        answer = await api.get(f"/v1/experiments/{experiment['id']}/results")
        assert answer.status_code == 200, answer.text
        control, treated = answer.json()["groups"]
        for group, x in zip((control, treated), returned, strict=True):
            assert group["enrolled"] == n
            assert group["returned"] == x
            assert group["awaiting_outcome"] == 0
            assert group["evicted"] == group["evicted_by_reason"]["undeliverable"] > 0
            assert group["return_rate"] == pytest.approx(x / n, abs=1e-12)
            assert group["return_rate_ci95"] == pytest.approx(scipy_wilson(x, n), abs=1e-9)
        assert control["return_rate"] == pytest.approx(0.50, abs=0.01)
        assert treated["return_rate"] == pytest.approx(0.55, abs=0.01)

        expected = independent_comparison(returned[1], n, returned[0], n)
        versus = treated["versus_control"]
        assert versus["difference"] == pytest.approx(expected["difference"], abs=1e-12)
        assert versus["ci95"] == pytest.approx(expected["ci95"], abs=1e-9)
        assert versus["p_value"] == pytest.approx(expected["p_value"], rel=1e-6)
        # The effect is found, and the interval holds the true difference.
        assert versus["p_value"] < 0.05
        assert versus["ci95"][0] < 0.05 < versus["ci95"][1]
        assert versus["ci95"][0] > 0

    async def test_an_aa_experiment_finds_no_effect_in_the_database_either(
        self, api: httpx.AsyncClient, db_session: AsyncSession
    ) -> None:
        n = 5_000
        experiment = await create_experiment(api, return_window_days=WINDOW)
        returned = await seed(db_session, experiment, [0.5, 0.5], n, random.Random(3))
        results = (await api.get(f"/v1/experiments/{experiment['id']}/results")).json()
        versus = results["groups"][1]["versus_control"]
        expected = independent_comparison(returned[1], n, returned[0], n)
        assert versus["p_value"] == pytest.approx(expected["p_value"], rel=1e-6)
        assert versus["ci95"][0] < 0 < versus["ci95"][1]
