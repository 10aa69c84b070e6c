"""The Imo partner API adapter: notifications and invitations.

Only the answers of docs/providers/imo.md are known (`_INVITE_ANSWERS`,
`_NOTIFICATION_ANSWERS`); every other answer raises `PermanentChannelError(unexpected=
True)` with the request and response in `detail`, so the caller reports it and falls
back. A newly seen answer is one line in one of those tables. Time-outs, connection
errors, 429 and 5xx raise `TransientChannelError`.

Evidence in `detail` never holds a full phone number, message text, recipient name or
callback token: see `_Call.evidence`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import aiohttp
import orjson
from yarl import URL

from app.channels.base import (
    ChannelName,
    Invitation,
    InvitationResult,
    OutgoingMessage,
    PermanentChannelError,
    SendResult,
    TransientChannelError,
    basic_auth,
)
from app.logs import mask_phone

_MAX_EVIDENCE_CHARS: Final = 2_000
# Any envelope `status`: the documentation shows `not_subscribed` with an unknown one.
_ANY: Final = "*"


@dataclass(frozen=True, slots=True)
class _Known:
    """A documented answer. `outcome` is an invitation status, or "sent"/an error code."""

    outcome: str
    provider_status: str


# (HTTP status, envelope "status", response "error_code" or "type") -> meaning.
_INVITE_ANSWERS: Final[dict[tuple[int, str, str], _Known]] = {
    (200, "success", ""): _Known("invited", ""),
    (200, "success", "invited"): _Known("invited", "invited"),
    (200, "success", "subscribed"): _Known("subscribed", "subscribed"),
    (200, _ANY, "not_subscribed"): _Known("not_subscribed", "not_subscribed"),
    (400, "error", "nonexistent_user"): _Known("no_imo_account", "nonexistent_user"),
}
# For notifications "sent" needs `response.result.post_id`; anything else is an error code.
_NOTIFICATION_ANSWERS: Final[dict[tuple[int, str, str], _Known]] = {
    (200, "success", ""): _Known("sent", "success"),
    (200, _ANY, "not_subscribed"): _Known("not_subscribed", "not_subscribed"),
    (400, "error", "nonexistent_user"): _Known("nonexistent_user", "nonexistent_user"),
}


def _redact_url(url: str) -> str:
    """Drops the query and every long path segment: a callback URL carries a token."""
    parts = urlsplit(url)
    path = "/".join("***" if len(segment) > 20 else segment for segment in parts.path.split("/"))
    return f"{parts.scheme}://{parts.netloc}{path}"


def _answer_key(status: int, body: object) -> tuple[int, str, str] | None:
    if not isinstance(body, dict):
        return None
    response = body.get("response")
    envelope = body.get("status")
    if not isinstance(response, dict) or not isinstance(envelope, str):
        return None
    code = response.get("error_code", response.get("type", ""))
    if not isinstance(code, str):
        return None
    return (status, envelope, code)


def _look_up(table: dict[tuple[int, str, str], _Known], status: int, body: object) -> _Known | None:
    key = _answer_key(status, body)
    if key is None:
        return None
    return table.get(key) or table.get((key[0], _ANY, key[2]))


def _post_id(body: object) -> str | None:
    assert isinstance(body, dict)  # a known answer is a JSON object
    result = body["response"].get("result")
    post_id = result.get("post_id") if isinstance(result, dict) else None
    return post_id if isinstance(post_id, str) and post_id else None


class ImoChannel:
    """Imo's partner API over one shared aiohttp session, Basic auth, JSON both ways."""

    name = ChannelName.IMO

    def __init__(
        self,
        *,
        base_url: str,
        username: str,
        password: str,
        session: aiohttp.ClientSession,
        timeout: float,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._headers = {
            "Authorization": basic_auth(username, password),
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self._notification_url = URL(f"{self.base_url}/send_notification")
        self._invite_url = URL(f"{self.base_url}/send_invite")

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Send one notification. Raises TransientChannelError or PermanentChannelError.

        `not_subscribed` and `nonexistent_user` are permanent errors with that `code`:
        the caller downgrades the patient's authorisation.
        """
        call = _Call(
            url=self._notification_url,
            phone=message.phone_e164,
            text=message.text,
            recipient_name=message.recipient_name,
            callback_url=message.callback_url,
            extra={"title": message.title, "action": message.action, "url": message.action_url},
        )
        status, raw, body = await self._post(call)
        known = _look_up(_NOTIFICATION_ANSWERS, status, body)
        if known is not None and known.outcome == "sent":
            post_id = _post_id(body)
            if post_id is not None:
                return SendResult(
                    provider_message_id=post_id, provider_status=known.provider_status
                )
            known = None
        if known is None:
            raise _unexpected(call, status, raw)
        raise PermanentChannelError(
            f"Imo refused the notification: {known.outcome}",
            code=known.outcome,
            provider_status=known.provider_status,
            detail=call.evidence(status, raw),
        )

    async def invite(self, invitation: Invitation) -> InvitationResult:
        """Invite a patient to subscribe; `no_imo_account` is a result, not an error.

        Raises TransientChannelError (retry in a later round) or PermanentChannelError
        (an unexpected answer).
        """
        call = _Call(
            url=self._invite_url,
            phone=invitation.phone_e164,
            text=invitation.text,
            recipient_name=invitation.recipient_name,
            callback_url=invitation.callback_url,
            extra={"title": invitation.title, "action": invitation.action},
        )
        status, raw, body = await self._post(call)
        known = _look_up(_INVITE_ANSWERS, status, body)
        if known is None:
            raise _unexpected(call, status, raw)
        return InvitationResult(known.outcome, provider_status=known.provider_status)

    async def _post(self, call: _Call) -> tuple[int, bytes, object]:
        """POST and read the answer; 429, 5xx and transport failures raise transient."""
        endpoint = call.url.name
        try:
            async with self._session.post(
                call.url,
                data=call.body(),
                headers=self._headers,
                timeout=self._timeout,
                raise_for_status=False,
            ) as response:
                status = response.status
                raw = await response.read()
                retry_after = response.headers.get("Retry-After", "")
        except TimeoutError as error:
            raise TransientChannelError(
                f"Imo did not answer {endpoint} in time",
                code="timeout",
                detail=call.evidence(None, b""),
            ) from error
        except aiohttp.ClientError as error:
            raise TransientChannelError(
                f"Imo could not be reached for {endpoint}: {type(error).__name__}",
                code="connection_error",
                detail=call.evidence(None, b""),
            ) from error
        if status == 429:
            raise TransientChannelError(
                f"Imo rate-limited {endpoint}",
                code="429",
                provider_status="429",
                retry_after=_seconds(retry_after),
                detail=call.evidence(status, raw),
            )
        if 500 <= status <= 599:
            raise TransientChannelError(
                f"Imo answered HTTP {status} to {endpoint}",
                code="http_5xx",
                provider_status=str(status),
                detail=call.evidence(status, raw),
            )
        try:
            body: object = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        return status, raw, body


@dataclass(slots=True)
class _Call:
    """One request to Imo, kept apart from its wire form so evidence can be redacted.

    Not frozen: one is built for every request, and a frozen dataclass costs four times
    as much to build (`notify bench invitations`)."""

    url: URL
    phone: str
    text: str
    recipient_name: str
    callback_url: str
    extra: dict[str, str]

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "phone": self.phone,
                "msg": self.text,
                "contents": [
                    {"key": "Name", "value": self.recipient_name},
                    {"key": "Message", "value": self.text},
                ],
                **self.extra,
                "callback_url": self.callback_url,
            }
        )

    def evidence(self, status: int | None, raw: bytes) -> dict[str, object]:
        """The request and response for Sentry, without the patient's number, name or text.

        The callback URL loses its query and long path segments (its token).
        """
        phone = mask_phone(self.phone)
        text = f"<{len(self.text)} characters>"
        request = {
            "phone": phone,
            "msg_length": len(self.text),
            **self.extra,
            "callback_url": _redact_url(self.callback_url),
        }
        answer = raw.decode("utf-8", errors="replace")
        # The answer may quote the request back, escaped or not.
        for secret, stand_in in (
            (self.text, text),
            (orjson.dumps(self.text).decode()[1:-1], text),
            (self.phone, phone),
            (self.phone.lstrip("+"), phone),
            (self.recipient_name, "<name>"),
        ):
            if len(secret) > 1:
                answer = answer.replace(secret, stand_in)
        return {
            "request": {"method": "POST", "url": str(self.url), "body": request},
            "response": {"status": status, "body": answer[:_MAX_EVIDENCE_CHARS]},
        }


def _unexpected(call: _Call, status: int, raw: bytes) -> PermanentChannelError:
    return PermanentChannelError(
        f"Imo gave an unexpected answer (HTTP {status}) to {call.url.name}",
        unexpected=True,
        code="unexpected",
        provider_status=str(status),
        detail=call.evidence(status, raw),
    )


def _seconds(value: str) -> float | None:
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds < float("inf") else None
