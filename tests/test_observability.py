"""HTTP metrics: each request is counted under its route template, never its raw path."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest
from prometheus_client import REGISTRY

from tests.factories import patient_body, unique_id

pytestmark = pytest.mark.asyncio(loop_scope="session")


def requests_counted(method: str, route: str, status: int) -> float:
    labels = {"method": method, "route": route, "status": str(status)}
    return REGISTRY.get_sample_value("notify_http_requests_total", labels) or 0.0


async def counted_under(
    request: Callable[[], Awaitable[httpx.Response]], method: str, route: str, status: int
) -> bool:
    before = requests_counted(method, route, status)
    answer = await request()
    assert answer.status_code == status, answer.text
    return requests_counted(method, route, status) == before + 1


class TestRouteLabel:
    async def test_a_v1_route_is_labelled_with_its_template(self, api: httpx.AsyncClient) -> None:
        patient_id = unique_id()
        assert await counted_under(
            lambda: api.put(f"/v1/patients/{patient_id}", json=patient_body()),
            "PUT",
            "/v1/patients/{patient_id}",
            201,
        )
        assert await counted_under(
            lambda: api.get(f"/v1/patients/{patient_id}"), "GET", "/v1/patients/{patient_id}", 200
        )

    async def test_a_refused_v1_request_keeps_its_route(self, api: httpx.AsyncClient) -> None:
        assert await counted_under(
            lambda: api.get("/v1/patients/p-1", headers={"Authorization": "Bearer wrong"}),
            "GET",
            "/v1/patients/{patient_id}",
            401,
        )

    async def test_a_callback_route_is_labelled_without_its_token(
        self, api: httpx.AsyncClient
    ) -> None:
        # A bad token is a 404 of a route that matched: it keeps the route's template.
        assert await counted_under(
            lambda: api.post("/callbacks/imo/notifications/not-a-token", json={}),
            "POST",
            "/callbacks/imo/notifications/{token}",
            404,
        )

    async def test_probes_and_documents(self, api: httpx.AsyncClient) -> None:
        assert await counted_under(lambda: api.get("/healthz"), "GET", "/healthz", 200)
        assert await counted_under(lambda: api.get("/openapi.json"), "GET", "/openapi.json", 200)

    async def test_static_files_are_labelled_with_their_mount(self, api: httpx.AsyncClient) -> None:
        # Swagger UI's own assets were counted as "unmatched" requests answered 200.
        assert await counted_under(
            lambda: api.get("/docs/assets/swagger-ui.css"), "GET", "/docs/assets/{path}", 200
        )
        assert await counted_under(
            lambda: api.get("/docs/assets/no-such-file.js"), "GET", "/docs/assets/{path}", 404
        )

    async def test_an_unknown_path_is_unmatched(self, api: httpx.AsyncClient) -> None:
        assert await counted_under(lambda: api.get("/no/such/page"), "GET", "unmatched", 404)
