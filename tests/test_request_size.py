"""Request bodies over MAX_REQUEST_BYTES are a 413 with a JSON error, read or not."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

pytestmark = pytest.mark.asyncio(loop_scope="session")

MIB = 1024 * 1024
TOO_LARGE = 5 * MIB  # the default cap is 4 MiB


def assert_413(answer: httpx.Response) -> None:
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "payload_too_large"


class TestRequestSize:
    async def test_a_declared_length_over_the_cap_is_refused_unread(
        self, api: httpx.AsyncClient
    ) -> None:
        assert_413(await api.post("/v1/patients/batch", content=b"{" + b" " * TOO_LARGE))

    async def test_a_streamed_body_is_cut_off_at_the_cap(self, api: httpx.AsyncClient) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"patients": ['
            for _ in range(TOO_LARGE // MIB):
                yield b" " * MIB

        answer = await api.post(
            "/v1/patients/batch", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert "content-length" not in answer.request.headers
        assert_413(answer)

    async def test_callbacks_are_capped_too(self, api: httpx.AsyncClient) -> None:
        assert_413(await api.post("/callbacks/twilio/status/1", content=b"x" * TOO_LARGE))

    async def test_under_the_cap_is_read_as_usual(self, api: httpx.AsyncClient) -> None:
        answer = await api.post("/v1/patients/batch", json={"patients": []})
        assert answer.status_code != 413
