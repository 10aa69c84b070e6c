"""What the fake Twilio and the fake WhatsApp share: fault injection, run-time
configuration, and callbacks posted with retries."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections import Counter
from typing import Any, TypeVar

import aiohttp
import orjson
from aiohttp import web

# Drawn in this order from one random number per request.
FAULTS = ("error", "timeout", "rate_limited", "garbage")
RATE_FIELDS = tuple(f"{fault}_rate" for fault in FAULTS)
CALLBACK_ATTEMPTS = 3

Config = TypeVar("Config")


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def check_config(config: Any) -> None:
    """The fields every fake's config has: fault rates (each 0-1, summing to at most 1),
    `callback_delay`, `callbacks_enabled`, `seed`, `callback_concurrency`. Raises
    ValueError naming the field."""
    for name in RATE_FIELDS:
        rate = getattr(config, name)
        if isinstance(rate, bool) or not isinstance(rate, int | float):
            raise ValueError(f"{name} must be a number")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1")
    if sum(getattr(config, name) for name in RATE_FIELDS) > 1.0 + 1e-9:
        raise ValueError("the fault rates must add up to at most 1")
    delay = config.callback_delay
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not delay >= 0:
        raise ValueError("callback_delay must be a number of seconds >= 0")
    if not isinstance(config.callbacks_enabled, bool):
        raise ValueError("callbacks_enabled must be true or false")
    if isinstance(config.seed, bool) or not isinstance(config.seed, int):
        raise ValueError("seed must be an integer")
    if config.callback_concurrency < 1:
        raise ValueError("callback_concurrency must be at least 1")


def draw_fault(rng: random.Random, config: Any, counts: Counter[str]) -> str | None:
    """The fault this request suffers (counted in `counts`), or None."""
    rates = [getattr(config, name) for name in RATE_FIELDS]
    if not any(rates):
        return None
    draw = rng.random()
    for fault, rate in zip(FAULTS, rates, strict=True):
        if draw < rate:
            counts[fault] += 1
            return fault
        draw -= rate
    return None


async def changed_config(
    request: web.Request, config: Config, runtime_fields: frozenset[str]
) -> tuple[Config, bool] | web.Response:
    """`POST /_fake/config`: (the new config, whether `seed` changed), or the 400 to answer."""
    try:
        changes: Any = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return json_response({"error": "the body must be a JSON object"}, status=400)
    if not isinstance(changes, dict):
        return json_response({"error": "the body must be a JSON object"}, status=400)
    unknown = sorted(set(changes) - runtime_fields)
    if unknown:
        return json_response({"error": f"cannot change: {', '.join(unknown)}"}, status=400)
    try:
        return dataclasses.replace(config, **changes), "seed" in changes  # type: ignore[type-var]
    except (TypeError, ValueError) as exc:
        return json_response({"error": str(exc)}, status=400)


async def post_with_retries(
    session: aiohttp.ClientSession,
    semaphore: asyncio.Semaphore | None,
    url: str,
    data: bytes,
    headers: dict[str, str],
) -> int | None:
    """POST a callback (each try holding a slot of `semaphore`, if given), again on
    connection errors and 5xx -> the last status, or None when it never got an answer."""
    status: int | None = None
    for attempt in range(CALLBACK_ATTEMPTS):
        try:
            async with (
                semaphore or contextlib.nullcontext(),
                session.post(url, data=data, headers=headers, allow_redirects=False) as answer,
            ):
                status = answer.status
                await answer.read()
        except (aiohttp.ClientError, TimeoutError):
            status = None
        if status is not None and status < 500:
            break
        if attempt + 1 < CALLBACK_ATTEMPTS:
            await asyncio.sleep(0.1 * 2**attempt)
    return status
