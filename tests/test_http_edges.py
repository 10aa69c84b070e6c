"""HTTP edges (issue 11, item 10), against the real `notify api` of the shared stack:
a huge header and a slow client cost the server nothing; every answer carries a request
id and the security headers. Production's HSTS and `API_DOCS=false`, in process."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.dependencies.models import Dependant
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.config import Settings
from app.main import create_app
from tests.stack import Stack
from tests.test_config import PRODUCTION

pytestmark = pytest.mark.asyncio(loop_scope="session")


def api_address(stack: Stack) -> tuple[str, int]:
    parts = urlsplit(stack.api_url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def exchange(address: tuple[str, int], head: bytes, read_for: float) -> tuple[bytes, float]:
    """Send `head` (as much as the server takes), then read until it closes or
    `read_for` seconds pass; returns what came back and how long that took."""
    began = time.monotonic()
    with socket.create_connection(address, timeout=read_for) as sock:
        # The server may close on us mid-send: what it answered is still readable.
        with contextlib.suppress(OSError):
            sock.sendall(head)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, OSError):
            pass
    return received, time.monotonic() - began


@pytest.mark.e2e
class TestAgainstTheRealServer:
    async def test_a_huge_header_is_refused_at_once_and_the_server_carries_on(
        self, stack: Stack
    ) -> None:
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (4 * 1024 * 1024)
        answer, took = await asyncio.to_thread(
            exchange, api_address(stack), head + b"\r\n\r\n", 10.0
        )
        assert not answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:200]
        assert took < 5
        async with stack.client() as client:
            assert (await client.get("/healthz")).status_code == 200

    async def test_a_head_under_the_limit_and_a_large_body_in_one_read_are_served(
        self, stack: Stack
    ) -> None:
        # The head's bytes are counted by the server (httptools has no limit): a body
        # arriving in the same read as its head must not be counted as head.
        near_limit = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (60 * 1024)
        body = b"x" * (512 * 1024)
        large_body = (
            b"POST /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        answer, _ = await asyncio.to_thread(
            exchange, api_address(stack), near_limit + b"\r\nConnection: close\r\n\r\n", 10.0
        )
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        answer, _ = await asyncio.to_thread(exchange, api_address(stack), large_body, 10.0)
        assert answer.startswith(b"HTTP/1.1 405"), answer[:200]  # read whole, then refused

    @pytest.mark.parametrize(
        "head",
        [
            b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",  # no Host
            b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",  # smuggling's two framings
            b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",  # obsolete folding
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A : a\r\n\r\n",  # space before the colon
        ],
    )
    async def test_a_malformed_head_is_a_400_and_a_close(self, stack: Stack, head: bytes) -> None:
        answer, took = await asyncio.to_thread(exchange, api_address(stack), head, 10.0)
        assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"400"], answer[:300]
        assert took < 5  # closed by the server, not by the client's timeout

    async def test_whole_requests_in_one_read_are_never_counted_as_a_head(
        self, stack: Stack
    ) -> None:
        # A read may hold whole requests, bodies and all, and the start of the next one:
        # only a head still incomplete after a read is counted against MAX_HEADER_BYTES.
        body = b"x" * (100 * 1024)
        post = b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
        pipelined = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 900 + b"\r\n\r\n"
        last = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        burst = post + body + pipelined * 100 + last
        answer, _ = await asyncio.to_thread(exchange, api_address(stack), burst, 10.0)
        statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
        assert statuses == [b"405"] + [b"200"] * 101, (statuses[:5], answer[:300])

    async def test_a_head_finished_with_a_body_and_the_next_head_begun_is_not_counted(
        self, stack: Stack
    ) -> None:
        # Three writes: a head begun; its end, 100 KiB of body and the next head begun;
        # that head's end. The middle read is not all head.
        body = b"x" * (100 * 1024)
        writes = [
            b"POST /healthz HTTP/1.1\r\nHost: x\r\n",
            b"Content-Length: %d\r\n\r\n" % len(body) + body + b"GET /healthz HTTP/1.1\r\n",
            b"Host: x\r\nConnection: close\r\n\r\n",
        ]

        def in_three_writes() -> bytes:
            with socket.create_connection(api_address(stack), timeout=10) as sock:
                for data in writes:
                    sock.sendall(data)
                    time.sleep(0.2)  # each its own read on the server
                received = b""
                while chunk := sock.recv(65536):
                    received += chunk
            return received

        answer = await asyncio.to_thread(in_three_writes)
        assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"405", b"200"], answer[:300]

    async def test_a_client_trickling_its_headers_is_disconnected(self, stack: Stack) -> None:
        def slow_loris(first: bytes) -> float:
            """Send `first` (a whole request, or nothing), then trickle a head."""
            began = time.monotonic()
            with socket.create_connection(api_address(stack), timeout=30) as sock:
                if first:
                    sock.sendall(first)
                    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
                    began = time.monotonic()
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                while time.monotonic() - began < 25:
                    try:
                        sock.sendall(b"X")
                        sock.settimeout(1)
                        if sock.recv(1024) == b"":
                            break
                    except TimeoutError:
                        continue
                    except OSError:
                        break
            return time.monotonic() - began

        # On a new connection, and on one kept alive after an answered request.
        held = await asyncio.gather(
            asyncio.to_thread(slow_loris, b""),
            asyncio.to_thread(slow_loris, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
        )
        # REQUEST_HEAD_TIMEOUT_SECONDS is 10 by default; before, the client held on.
        assert all(seconds < 15 for seconds in held), held

    async def test_every_answer_carries_a_request_id_and_security_headers(
        self, stack: Stack
    ) -> None:
        api_key = await stack.create_api_key("headers")
        async with stack.client(api_key) as client:
            data = await client.get("/v1/templates")
            health = await client.get("/healthz", headers={"X-Request-ID": "lb-1234"})
            refused = await client.get("/v1/patients/nobody")
        for answer in (data, health, refused):
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
            assert answer.headers["X-Request-ID"]
        assert health.headers["X-Request-ID"] == "lb-1234"
        assert data.headers["Cache-Control"] == "no-store"
        assert refused.headers["Cache-Control"] == "no-store"
        assert "Strict-Transport-Security" not in data.headers  # not production

    async def test_a_500_is_one_line_with_its_request_id_and_no_traceback(
        self, stack: Stack
    ) -> None:
        # Found auditing issue 11: the app's handler logged one line, and uvicorn then
        # logged "Exception in ASGI application" with the whole traceback (~12 KB) too.
        api_key = await stack.create_api_key("one-line")
        engine = create_async_engine(stack.database_url)
        # A database error that is the server's (a broken CHECK would be a 422).
        refuse = (
            "CREATE FUNCTION edges_refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
            "CREATE TRIGGER edges_refuse BEFORE INSERT OR UPDATE ON staff "
            "FOR EACH ROW EXECUTE FUNCTION edges_refuse()",
        )
        try:
            async with engine.begin() as conn:
                for statement in refuse:
                    await conn.execute(text(statement))
            offsets = stack.log_offsets()
            async with stack.client(api_key) as client:
                answer = await client.put(
                    "/v1/staff/edges-500",
                    json={"name": "Dr X", "email": "x@clinic.example.org", "locale": "en"},
                    headers={"X-Request-ID": "edges-five-hundred"},
                )
        finally:
            async with engine.begin() as conn:
                await conn.execute(text("DROP TRIGGER IF EXISTS edges_refuse ON staff"))
                await conn.execute(text("DROP FUNCTION IF EXISTS edges_refuse()"))
            await engine.dispose()
        assert answer.status_code == 500 and answer.headers["Connection"] == "close"
        await asyncio.sleep(0.5)  # the log is written by another process
        logged = stack.logs(offsets).split("----- api")[1].split("\n-----")[0]
        lines = [line for line in logged.splitlines()[1:] if "edges-five-hundred" in line]
        assert len(lines) == 1 and "unhandled error" in lines[0], logged[-3000:]
        assert "Traceback" not in logged and "Exception in ASGI" not in logged, logged[-3000:]


class TestProduction:
    async def test_hsts_and_docs_behind_a_setting(self) -> None:
        on = create_app(Settings(_env_file=None, **PRODUCTION))  # type: ignore[call-arg]
        off = create_app(
            Settings(_env_file=None, **{**PRODUCTION, "api_docs": False})  # type: ignore[call-arg]
        )
        for app, docs in ((on, 200), (off, 404)):
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://test"
            ) as client:
                answer = await client.get("/docs")
                assert answer.status_code == docs
                assert answer.headers["Strict-Transport-Security"].startswith("max-age=")
                assert (await client.get("/openapi.json")).status_code == docs


class TestNoThreadHops:
    async def test_every_dependency_and_endpoint_runs_on_the_event_loop(self) -> None:
        # FastAPI runs a plain `def` dependency or endpoint in a worker thread: a hop
        # through a queue and a lock per request (3% of a callback's CPU for one
        # dependency returning an attribute). Nothing here blocks, so nothing needs one.
        app = create_app(Settings(_env_file=None, **PRODUCTION))  # type: ignore[call-arg]
        threaded = set()

        def visit(dependant: Dependant) -> None:
            call = dependant.call
            if call is not None and not (
                inspect.iscoroutinefunction(call)
                or inspect.isasyncgenfunction(call)
                or inspect.iscoroutinefunction(type(call).__call__)
            ):
                threaded.add(getattr(call, "__qualname__", repr(call)))
            for sub in dependant.dependencies:
                visit(sub)

        def routes(candidates: list[Any]) -> Iterator[Any]:
            for route in candidates:
                if hasattr(route, "effective_candidates"):  # an included router (FastAPI)
                    yield from routes(route.effective_candidates())
                elif hasattr(route, "dependant"):
                    yield route

        visited = list(routes(app.routes))
        for route in visited:
            visit(route.dependant)
        assert len(visited) > 50 and not threaded, (len(visited), sorted(threaded))
