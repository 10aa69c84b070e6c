"""Starting and serving a fake provider: the same for every fake."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Any

from aiohttp import web

from app.event_loop import new_event_loop


def add_test_hooks(app: web.Application, fake: Any) -> None:
    """`GET /_fake/stats`, `POST /_fake/reset`, `POST /_fake/config`, and the fake's
    callback session and shutdown, as the fake Twilio and the fake WhatsApp have them."""
    app.router.add_get("/_fake/stats", fake.stats)
    app.router.add_post("/_fake/reset", fake.reset)
    app.router.add_post("/_fake/config", fake.change_config)
    app.cleanup_ctx.append(fake.client_session)
    app.on_shutdown.append(fake.on_shutdown)


async def start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Listen on `host:port` (0: any free port); (runner, bound port). Stop it with
    `runner.cleanup()`. A failed start (the port is taken) cleans up before it raises."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    # A benchmark's thousands of connections arrive at once.
    site = web.TCPSite(runner, host, port, backlog=2048)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port: int = runner.addresses[0][1]
    return runner, bound_port


def serve(
    app: Callable[[], web.Application], host: str, port: int, name: str, path: str = ""
) -> None:
    """Serve until SIGINT or SIGTERM (the `notify fake-*` commands); prints
    "NAME listening on http://HOST:PORT/PATH" once listening."""

    async def main() -> None:
        runner, bound_port = await start(app(), host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stop.set)
        display_host = f"[{host}]" if ":" in host else host
        print(f"{name} listening on http://{display_host}:{bound_port}{path}", flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=new_event_loop) as r:
        r.run(main())
