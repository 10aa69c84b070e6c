"""Sentry and Prometheus: what operators on call see.

Sentry hears only about the unexpected (a provider's unknown answer, a crash), always
with context and never with a full phone number or message text.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import sentry_sdk
from fastapi import FastAPI
from prometheus_client import Counter, Histogram
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings
from app.logs import hides_message, redact

log = logging.getLogger(__name__)

HTTP_REQUESTS = Counter(
    "notify_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "notify_http_request_seconds",
    "HTTP request latency",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
NOTIFICATIONS_SCHEDULED = Counter("notify_notifications_scheduled_total", "Notifications created")
TRIGGER_RULE_ERRORS = Counter(
    "notify_trigger_rule_errors_total",
    "Trigger rules that failed to evaluate on an event (recorded on the event)",
    ["rule"],
)
BROADCAST_NOTIFICATIONS = Counter(
    "notify_broadcast_notifications_total", "Notifications a broadcast fan-out created"
)
ATTEMPTS = Counter(
    "notify_delivery_attempts_total",
    "Delivery attempts by channel and outcome",
    ["channel", "outcome"],
)
CALLBACKS = Counter(
    "notify_provider_callbacks_total",
    "Provider callbacks by provider and result",
    ["provider", "result"],
)
GATEWAY_TAKEN_BACK = Counter(
    "notify_gateway_messages_taken_back_total",
    "Messages taken back from gateway phones that stopped polling, by gateway",
    ["gateway"],
)
GATEWAY_UNPOLLED = Counter(
    "notify_gateway_messages_unpolled_total",
    "Messages that waited in a country's gateway pool with no phone polling, by country",
    ["country"],
)
INBOUND_MESSAGES = Counter(
    "notify_inbound_messages_total",
    "Messages from patients by channel and match (matched, unmatched, duplicate)",
    ["channel", "match"],
)
WEBHOOK_ATTEMPTS = Counter(
    "notify_webhook_attempts_total", "Webhook delivery attempts by outcome", ["outcome"]
)
WEBHOOKS_DISABLED = Counter(
    "notify_webhook_disabled_total",
    "Webhook endpoints disabled after WEBHOOK_DISABLE_AFTER_HOURS of unbroken failures",
)
UNEXPECTED_PROVIDER_ANSWERS = Counter(
    "notify_unexpected_provider_answers_total",
    "Answers outside a provider's known vocabulary",
    ["provider"],
)


def init_sentry(settings: Settings, *, component: str, transport: Any = None) -> None:
    """Sentry when SENTRY_DSN is set. `transport`: where events go instead (tests)."""
    if not settings.sentry_dsn:
        return
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        transport=transport,
        environment=settings.app_env,
        # No user, body, query data or frame variables: they would hold patients' data.
        data_collection={
            "user_info": False,
            "http_bodies": [],
            "database_query_data": False,
            "stack_frame_variables": False,
        },
        before_send=scrub_event,
        traces_sample_rate=0.0,
    )
    sentry_sdk.set_tag("component", component)


def scrub_event(event: Any, _hint: Any) -> Any:
    """Sentry's `before_send`: the same rules as the logs (`app/logs.py`) for whatever
    an event carries, so no integration can ship a name or a message text.

    A database or validation error's message (SQL parameters, the failing row, the
    refused input) is dropped, every
    other string has its phone numbers masked, request bodies and frame variables go.
    """
    for exception in (event.get("exception") or {}).get("values") or []:
        if hides_message(str(exception.get("module") or "")):
            exception["value"] = "message hidden"
        for frame in (exception.get("stacktrace") or {}).get("frames") or []:
            frame.pop("vars", None)
    (event.get("request") or {}).pop("data", None)
    return _redacted(event)


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_redacted(item) for item in value]
    return value


def report_unexpected(provider: str, message: str, context: dict[str, Any]) -> None:
    """A provider answered outside its known vocabulary: count, log, tell Sentry.

    `context` must already be masked (adapters mask numbers and drop texts).
    """
    UNEXPECTED_PROVIDER_ANSWERS.labels(provider).inc()
    log.warning("unexpected provider answer", extra={"provider": provider, "detail": message})
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("provider", provider)
        scope.set_context("provider_exchange", context)
        sentry_sdk.capture_message(f"{provider}: {message}", level="error")


# Templates a provider refused, as "channel: template": each is reported once per process.
_REJECTED_TEMPLATES: set[str] = set()


def report_template_rejected(provider: str, template: str, message: str) -> None:
    """A provider has no such template, or not with our parameters: every message of it
    fails until an operator fixes it, so Sentry hears once per template, not per message.
    `message` must be redacted (adapters drop numbers and texts)."""
    key = f"{provider}: {template}"
    if key in _REJECTED_TEMPLATES:
        return
    _REJECTED_TEMPLATES.add(key)
    log.error("provider refused a template", extra={"provider": provider, "template": template})
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("provider", provider)
        scope.set_tag("template", template)
        sentry_sdk.capture_message(f"{key}: template refused: {message}", level="error")


class HttpMetricsMiddleware:
    """Counts requests by route template (not raw path: tokens stay out of labels)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        # Routing writes into the scope; a mount even replaces its `app` and `root_path`.
        arrived = dict(scope)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = route_template(scope, arrived)
            HTTP_REQUESTS.labels(scope["method"], route, str(status)).inc()
            HTTP_LATENCY.labels(route).observe(time.perf_counter() - started)


def route_template(scope: Scope, arrived: Scope | None = None) -> str:
    """The template of the route that answered (`/v1/patients/{patient_id}`), read from
    the scope after routing (`arrived`: a copy of it from before), or "unmatched" when no
    route did.

    The router records the route it chose in `scope["route"]`. Depending on FastAPI's
    version that route's `path_format` holds the prefixes of the routers it was included
    through, or only its own router's part (`/patients/{patient_id}` for
    `/v1/patients/p-1`): the missing prefix is the literal part of the path before the
    piece that the route's pattern matches in full. Plain Starlette routes
    (`/openapi.json`, `/docs`) and mounts (the static files of `/docs/assets/{path}` and
    `/dashboard/static/{path}`) are not recorded in the scope; they are top-level and
    few, and matched again here, on the scope as it arrived: a mount hands the request
    to an app of its own, which replaces the scope's `app` and `root_path`.
    """
    before = scope if arrived is None else arrived
    route = scope.get("route")
    template = getattr(route, "path_format", None)
    pattern = getattr(route, "path_regex", None)
    if isinstance(template, str) and isinstance(pattern, re.Pattern):
        path: str = before["path"].removeprefix(before.get("root_path", ""))
        for start, char in enumerate(path):
            if char == "/" and pattern.match(path[start:]):
                return path[:start] + template
        return template
    app = before.get("app")
    for candidate in getattr(getattr(app, "router", None), "routes", ()):
        path_format = getattr(candidate, "path_format", None)
        if isinstance(path_format, str) and candidate.matches(before)[0] is Match.FULL:
            return path_format
    return "unmatched"


def install_http_metrics(app: FastAPI) -> None:
    app.add_middleware(HttpMetricsMiddleware)
