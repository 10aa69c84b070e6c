"""Starting and running a fake provider's aiohttp application."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Any

from aiohttp import web


def add_test_hooks(app: web.Application, fake: Any) -> None:
    """`GET /_fake/stats`, `POST /_fake/reset`, `POST /_fake/config`, and the fake's
    callback session and shutdown, as the fake Twilio and the fake WhatsApp have them."""
    app.router.add_get("/_fake/stats", fake.stats)
    app.router.add_post("/_fake/reset", fake.reset)
    app.router.add_post("/_fake/config", fake.change_config)
    app.cleanup_ctx.append(fake.client_session)
    app.on_shutdown.append(fake.on_shutdown)


async def start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `app` on `host:port` (0: any free port) -> (runner, bound port). Stop it with
    `runner.cleanup()`."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port: int = runner.addresses[0][1]
    return runner, bound_port


def run(create_app: Callable[[], web.Application], host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM; prints the base URL once listening."""

    async def serve() -> None:
        runner, bound_port = await start(create_app(), host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        display_host = f"[{host}]" if ":" in host else host
        print(f"http://{display_host}:{bound_port}", flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
