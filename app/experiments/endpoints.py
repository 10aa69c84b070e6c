"""HTTP for experiments: create, list, read, stop, and their results."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, status

from app.db.session import DbSession
from app.experiments import service as experiment_service
from app.experiments.schemas import (
    ExperimentIn,
    ExperimentOut,
    ExperimentPage,
    ExperimentResults,
)
from app.pagination import Cursor, Limit

router = APIRouter(prefix="/experiments", tags=["experiments"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, wrong or revoked API key"}
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such experiment"}}


def _today() -> Any:
    return datetime.now(UTC).date()


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create an A/B test of reminder plans",
    description="Patients are enrolled when an appointment of theirs is registered "
    "(`PUT /v1/appointments/{id}` for a new id) while the experiment runs (UTC days "
    "`start_date` to `end_date`) and they are eligible: country and facility as given, "
    "the appointment scheduled within the experiment's dates, reminder consent granted "
    "and a mobile number. Up to `max_patients_per_day` a UTC day. The group follows "
    "from a hash of experiment and patient, weighted, and never changes. A patient is in "
    "at most one running experiment. The first group is the control (`reminder_plan: "
    "null`: no reminders).",
    responses={
        **_ERRORS,
        409: {"description": "The name is taken"},
        422: {"description": "Bad dates, weights, group names, or an unknown plan"},
    },
)
async def create_experiment(body: ExperimentIn, session: DbSession) -> ExperimentOut:
    experiment, groups = await experiment_service.create(session, body)
    return ExperimentOut.from_model(experiment, groups, _today())


@router.get("", summary="Every experiment, newest first", responses=_ERRORS)
async def list_experiments(
    session: DbSession,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> ExperimentPage:
    page = await experiment_service.list_experiments(session, limit=limit, cursor=cursor)
    today = _today()
    return ExperimentPage(
        items=[ExperimentOut.from_model(e, g, today) for e, g in page.experiments],
        next_cursor=page.next_cursor,
    )


@router.get("/{experiment_id}", summary="One experiment", responses={**_ERRORS, **_NOT_FOUND})
async def get_experiment(experiment_id: uuid.UUID, session: DbSession) -> ExperimentOut:
    experiment, groups = await experiment_service.get(session, experiment_id)
    return ExperimentOut.from_model(experiment, groups, _today())


@router.post(
    "/{experiment_id}/stop",
    summary="Stop an experiment early",
    description="No more enrolments; members are free to join other experiments and get "
    "the default plan for new appointments; every unsent reminder of the (not evicted) "
    "members' appointments becomes `cleared`. Stopping again changes nothing.",
    responses={**_ERRORS, **_NOT_FOUND},
)
async def stop_experiment(experiment_id: uuid.UUID, session: DbSession) -> ExperimentOut:
    experiment, groups = await experiment_service.stop(session, experiment_id)
    return ExperimentOut.from_model(experiment, groups, _today())


@router.get(
    "/{experiment_id}/results",
    summary="Per group: enrolment, reminders, reach, returns, and the comparison",
    description="Intention to treat: every enrolled patient counts in its group's "
    "denominator, evicted ones included (and counted by reason). Reached: an attempt "
    "`delivered` or `read`, the same for every channel. Returned: a visit since "
    "enrolment, by the appointment date plus `return_window_days`; patients whose window "
    "is still open and who have not returned are counted in `awaiting_outcome` (and as "
    "not returned). Return rate with a 95% Wilson interval; against the first group "
    "(control): the difference with a 95% Newcombe hybrid score interval, and the "
    "two-sided p-value of the pooled two-proportion z-test.",
    responses={**_ERRORS, **_NOT_FOUND},
)
async def get_experiment_results(experiment_id: uuid.UUID, session: DbSession) -> ExperimentResults:
    return await experiment_service.results(session, experiment_id)
