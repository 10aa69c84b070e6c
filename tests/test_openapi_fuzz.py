"""schemathesis over /openapi.json of the real API, with a valid key: whatever it sends,
no 5xx, and every rejection a 4xx with a JSON error that says what is wrong.

Examples are few per operation and derandomized, so CI stays fast and repeatable; what
a run turned up lives on as a regular test next to the feature it broke.
"""

from __future__ import annotations

import pytest
import pytest_asyncio
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case

from app.config import Settings
from app.main import create_app
from tests.stack import Stack

pytestmark = pytest.mark.e2e

EXAMPLES_PER_OPERATION = 10


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def api_key(stack: Stack) -> str:
    return await stack.create_api_key("schemathesis")


# The document the API serves at /openapi.json, built the same way; the requests go to
# the real API process of the shared stack.
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_5xx_and_every_rejection_is_a_clear_json_4xx(
    case: Case, stack: Stack, api_key: str
) -> None:
    response = case.call(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    )
    where = f"{case.method} {case.formatted_path}"
    assert response.status_code < 500, (where, case.body, response.text)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["code"] and error["message"], (where, response.text)
