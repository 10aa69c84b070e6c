"""The OpenAPI document as integrators use it: short stable operation ids, every error
declared with the error JSON the API really answers, and a client generated from it
(openapi-python-client, as an integrator would) that drives the main flow."""

from __future__ import annotations

import importlib
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import pytest_asyncio

from app.errors import ErrorResponse
from app.main import create_app
from tests.stack import Stack

# A renamed endpoint function renames an operation, and breaks every generated client:
# change this list only on purpose.
OPERATION_IDS = {
    "POST /callbacks/imo/invitations/{token}": "imo_invitation",
    "POST /callbacks/imo/notifications/{token}": "imo_read_receipt",
    "POST /callbacks/twilio/status/{attempt_id}": "twilio_status",
    "POST /callbacks/twilio/inbound": "twilio_inbound",
    "GET /callbacks/whatsapp": "whatsapp_verify",
    "POST /callbacks/whatsapp": "whatsapp_statuses",
    "POST /callbacks/email/inbound-parse": "sendgrid_inbound_parse",
    "POST /callbacks/email/events": "sendgrid_events",
    "GET /healthz": "healthz",
    "GET /readyz": "readyz",
    "GET /metrics": "metrics",
    "POST /v1/patients/batch": "upsert_patients",
    "GET /v1/patients": "list_patients",
    "PUT /v1/patients/{patient_id}": "upsert_patient",
    "GET /v1/patients/{patient_id}": "get_patient",
    "GET /v1/patients/{patient_id}/notifications": "list_patient_notifications",
    "POST /v1/notifications": "schedule_notification",
    "GET /v1/notifications": "list_notifications",
    "GET /v1/notifications/{notification_id}": "get_notification",
    "POST /v1/notifications/{notification_id}/cancel": "cancel_notification",
    "POST /v1/notifications/{notification_id}/mute": "mute_notification",
    "POST /v1/notifications/{notification_id}/unmute": "unmute_notification",
    "GET /v1/templates": "list_templates",
    "GET /v1/templates/{key}/{locale}": "get_template",
    "PUT /v1/templates/{key}/{locale}": "upsert_template",
    "PUT /v1/appointments/{appointment_id}": "upsert_appointment",
    "GET /v1/appointments/{appointment_id}": "get_appointment",
    "POST /v1/appointments/{appointment_id}/cancel": "cancel_appointment",
    "POST /v1/appointments/{appointment_id}/visit": "record_visit",
    "PUT /v1/reminder-plans/{name}": "upsert_reminder_plan",
    "GET /v1/reminder-plans/{name}": "get_reminder_plan",
    "GET /v1/reminder-plans": "list_reminder_plans",
    "POST /v1/experiments": "create_experiment",
    "GET /v1/experiments": "list_experiments",
    "GET /v1/experiments/{experiment_id}": "get_experiment",
    "POST /v1/experiments/{experiment_id}/stop": "stop_experiment",
    "GET /v1/experiments/{experiment_id}/results": "get_experiment_results",
    "POST /v1/imo/invitations/run": "start_imo_invitation_round",
    "GET /v1/imo/invitations/runs/{run_id}": "get_imo_invitation_round",
    "GET /v1/imo/authorizations/summary": "get_imo_authorization_summary",
    "POST /v1/events": "record_event",
    "GET /v1/events/{event_id}": "get_event",
    "DELETE /v1/events/{event_id}": "void_event",
    "GET /v1/events/{event_id}/messages": "list_event_messages",
    "PUT /v1/trigger-rules/{name}": "upsert_trigger_rule",
    "GET /v1/trigger-rules/{name}": "get_trigger_rule",
    "PUT /v1/groups/{name}": "upsert_group",
    "GET /v1/groups/{name}": "get_group",
    "POST /v1/groups/{name}/members": "add_group_members",
    "DELETE /v1/groups/{name}/members": "remove_group_members",
    "GET /v1/groups/{name}/messages": "list_group_messages",
    "POST /v1/broadcasts": "start_broadcast",
    "GET /v1/broadcasts/{broadcast_id}": "get_broadcast",
    "POST /v1/broadcasts/{broadcast_id}/cancel": "cancel_broadcast",
    "POST /v1/gateways": "create_gateway",
    "GET /v1/gateways": "list_gateways",
    "POST /v1/conversations": "open_conversation",
    "GET /v1/conversations/{conversation_id}": "get_conversation",
    "POST /v1/conversations/{conversation_id}/close": "close_conversation",
    "POST /v1/conversations/{conversation_id}/messages": "write_message",
    "GET /v1/patients/{patient_id}/messages": "list_patient_messages",
    "PUT /v1/switches/{scope}": "put_switch",
    "GET /v1/switches": "list_switches",
    "PUT /v1/staff/{staff_id}": "upsert_staff",
    "GET /v1/staff/{staff_id}": "get_staff",
    "GET /v1/staff/{staff_id}/messages": "list_staff_messages",
    "PUT /v1/webhooks/{name}": "put_webhook",
    "GET /v1/email-status/{address}": "get_email_status",
    "DELETE /v1/email-status/{address}": "unblock_email_address",
    "GET /v1/inbound-emails": "list_unmatched_emails",
    "POST /v1/webhooks/{name}/replay": "replay_webhook",
}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return create_app().openapi()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, by_method in document["paths"].items():
        for method, operation in by_method.items():
            yield method.upper(), path, operation


class TestDocument:
    def test_every_operation_has_its_short_stable_id(self, document: dict[str, Any]) -> None:
        found = {f"{m} {p}": op["operationId"] for m, p, op in operations(document)}
        assert found == OPERATION_IDS

    def test_every_error_answer_is_declared_with_the_error_json(
        self, document: dict[str, Any]
    ) -> None:
        for method, path, operation in operations(document):
            responses = operation["responses"]
            errors = {status for status in responses if status[0] in "45"}
            if path.startswith("/v1/"):
                assert "401" in errors, (method, path)
            if "requestBody" in operation:
                assert {"413", "422"} <= errors, (method, path)
            if operation.get("parameters"):
                assert "422" in errors, (method, path)
            for status in errors:
                content = responses[status]["content"]["application/json"]
                assert content["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
        schemas = document["components"]["schemas"]
        assert "HTTPValidationError" not in schemas
        assert schemas["ErrorResponse"]["properties"]["error"] == {
            "$ref": "#/components/schemas/ErrorInfo"
        }

    @pytest.mark.parametrize(
        ("status", "field", "operation"),
        [
            ("404", None, ("GET", "/v1/patients/{patient_id}")),
            ("409", None, ("POST", "/v1/notifications/{notification_id}/cancel")),
            ("404", None, ("GET", "/v1/appointments/{appointment_id}")),
        ],
    )
    def test_route_specific_errors_keep_their_description(
        self, document: dict[str, Any], status: str, field: None, operation: tuple[str, str]
    ) -> None:
        method, path = operation
        described = document["paths"][path][method.lower()]["responses"][status]
        assert described["description"] and "Error" not in described["description"]


@pytest.mark.asyncio(loop_scope="session")
class TestErrorsAnswerTheDeclaredShape:
    async def test_401_404_413_422(self, api: httpx.AsyncClient) -> None:
        answers = [
            await api.get("/v1/patients/p-1", headers={"Authorization": "Bearer wrong"}),
            await api.get(f"/v1/patients/{uuid.uuid4().hex}"),
            await api.put("/v1/patients/p-1", content=b"x" * (5 * 1024 * 1024)),
            await api.get("/v1/notifications", params={"limit": 0}),
        ]
        assert [a.status_code for a in answers] == [401, 404, 413, 422]
        for answer in answers:
            ErrorResponse.model_validate(answer.json())


# ------------------------------------------------------------------- a generated client


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def generated_client(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The package openapi-python-client generates from the running API's /openapi.json."""
    folder = tmp_path_factory.mktemp("generated")
    async with httpx.AsyncClient(base_url=stack.api_url) as plain:
        answer = await plain.get("/openapi.json")
    assert answer.status_code == 200
    (folder / "openapi.json").write_bytes(answer.content)
    tools = Path(sys.executable).parent  # its post-hooks run the venv's ruff
    generated = subprocess.run(
        [
            str(tools / "openapi-python-client"),
            "generate",
            "--path",
            "openapi.json",
            "--meta",
            "none",
            "--output-path",
            "clinic_notify_client",
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": str(tools), "HOME": str(folder)},
    )
    output = generated.stdout + generated.stderr
    assert generated.returncode == 0, output
    assert "Warning" not in output and "Error" not in output, output
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module("clinic_notify_client")
    finally:
        sys.path.remove(str(folder))


@pytest_asyncio.fixture(loop_scope="session")
async def authenticated(generated_client: ModuleType, stack: Stack) -> AsyncIterator[Any]:
    key = await stack.create_api_key()
    client = generated_client.AuthenticatedClient(base_url=stack.api_url, token=key)
    async with client:
        yield client


def endpoint(package: ModuleType, tag: str, operation: str) -> Any:
    return importlib.import_module(f"{package.__name__}.api.{tag}.{operation}")


@pytest.mark.e2e
@pytest.mark.asyncio(loop_scope="session")
class TestGeneratedClient:
    async def test_calls_are_named_by_operation(self, generated_client: ModuleType) -> None:
        api_folder = Path(generated_client.__file__).parent / "api"
        names = {p.stem for p in api_folder.glob("*/*.py") if p.stem != "__init__"}
        assert names == set(OPERATION_IDS.values())

    async def test_patient_notification_and_its_state(
        self, generated_client: ModuleType, authenticated: Any
    ) -> None:
        models = importlib.import_module(f"{generated_client.__name__}.models")
        patient_id = f"p-{uuid.uuid4().hex[:12]}"
        upsert_patient = endpoint(generated_client, "patients", "upsert_patient")
        created = await upsert_patient.asyncio_detailed(
            patient_id,
            client=authenticated,
            body=models.PatientIn.from_dict(
                {
                    "full_name": "Rahim Uddin",
                    "phone_numbers": [{"number": "01711000005", "type": "mobile"}],
                    "country": "BD",
                    "locale": "bn-BD",
                    "reminder_consent": "granted",
                }
            ),
        )
        assert created.status_code == 201
        assert isinstance(created.parsed, models.PatientOut)
        assert created.parsed.mobile_e164 == "+8801711000005"

        schedule = endpoint(generated_client, "notifications", "schedule_notification")
        notification = await schedule.asyncio(
            client=authenticated,
            body=models.NotificationIn.from_dict(
                {
                    "patient_id": patient_id,
                    "purpose": "appointment_reminder",
                    "template": "appointment_reminder.basic",
                    "variables": {"appointment_date": "2027-01-15", "facility_name": "Dhaka"},
                }
            ),
        )
        assert isinstance(notification, models.NotificationOut), notification
        assert notification.patient_id == patient_id

        get_notification = endpoint(generated_client, "notifications", "get_notification")
        read = await get_notification.asyncio(notification.id, client=authenticated)
        assert isinstance(read, models.NotificationOut)
        assert read.id == notification.id
        assert isinstance(read.state, models.NotificationState)

        listed = await endpoint(generated_client, "notifications", "list_notifications").asyncio(
            client=authenticated, patient_id=patient_id
        )
        assert [n.id for n in listed.items] == [notification.id]

        # An error comes back as the declared model, not as an untyped body.
        missing = await endpoint(generated_client, "patients", "get_patient").asyncio(
            f"{patient_id}-missing", client=authenticated
        )
        assert isinstance(missing, models.ErrorResponse)
        assert missing.error.code == "not_found"
