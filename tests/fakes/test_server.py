"""Starting a fake provider: the same helper for every fake."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web

from app.fakes import imo, twilio
from app.fakes.server import start


def cleaned_up_app() -> tuple[web.Application, list[str]]:
    """An app that records whether its cleanup ran."""
    events: list[str] = []

    async def context(app: web.Application) -> AsyncIterator[None]:
        events.append("setup")
        yield
        events.append("cleanup")

    app = web.Application()
    app.cleanup_ctx.append(context)
    return app, events


@pytest.mark.asyncio(loop_scope="session")
class TestStart:
    async def test_a_taken_port_raises_and_cleans_up_what_was_set_up(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            app, events = cleaned_up_app()
            with pytest.raises(OSError):
                await start(app, "127.0.0.1", taken.getsockname()[1])
        assert events == ["setup", "cleanup"]

    @pytest.mark.parametrize(
        "create_app", [lambda: imo.create_app(imo.FakeImoConfig()), twilio.create_app]
    )
    async def test_each_fake_answers_on_the_port_it_got(
        self, create_app: Callable[[], web.Application]
    ) -> None:
        runner, port = await start(create_app(), "127.0.0.1", 0)
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/_fake/stats") as response,
            ):
                assert response.status == 200
        finally:
            await runner.cleanup()
