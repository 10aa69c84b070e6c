"""Twilio's message look-up, `GET /2010-04-01/Accounts/{sid}/Messages/{MessageSid}.json`:
a message's current status, for the reconciler when a status callback never came.

One class for every channel Twilio carries: the SMS channel (and WhatsApp through
Twilio) answer `StatusLookup.fetch_status` with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import aiohttp

from app.channels.base import (
    MessageNotFound,
    PermanentChannelError,
    ProviderStatus,
    TransientChannelError,
    basic_auth,
    json_object,
)

# Twilio's message sids: SM (SMS) or MM (MMS/WhatsApp media) and 32 hex digits. Anything
# else is not looked up (it would be a path of our own making).
_SID = re.compile(r"[A-Z]{2}[0-9a-fA-F]{32}")


class TwilioStatusLookup:
    """Looks messages up under `messages_url` (`.../Accounts/{sid}/Messages`), with the
    account's credentials; `normalise` maps Twilio's status words to the service's."""

    def __init__(
        self,
        *,
        messages_url: str,
        account_sid: str,
        auth_token: str,
        session: aiohttp.ClientSession,
        timeout: float,
        normalise: Callable[[str], str],
    ) -> None:
        self._messages_url = messages_url
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._normalise = normalise
        self._headers = {
            "Authorization": basic_auth(account_sid, auth_token),
            "Accept": "application/json",
        }

    async def fetch(self, sid: str) -> ProviderStatus:
        """The message's status. Raises MessageNotFound (Twilio does not know it: 404, or
        not a sid at all), TransientChannelError (time-out, 429, 5xx) or
        PermanentChannelError (anything else, `unexpected`)."""
        if not _SID.fullmatch(sid):
            raise MessageNotFound(f"{sid[:40]!r} is not a Twilio message sid", code="not_a_sid")
        url = f"{self._messages_url}/{sid}.json"
        try:
            async with self._session.get(
                url, headers=self._headers, timeout=self._timeout, allow_redirects=False
            ) as response:
                status = response.status
                raw = await response.read()
        except TimeoutError:
            raise TransientChannelError("Twilio did not answer in time", code="timeout") from None
        except aiohttp.ClientError as exc:
            raise TransientChannelError(
                "could not reach Twilio", code="connection_error", detail={"error": repr(exc)}
            ) from None

        answer = json_object(raw)
        if status == 200 and answer is not None:
            message_status = answer.get("status")
            if answer.get("sid") == sid and isinstance(message_status, str) and message_status:
                error_code = answer.get("error_code")
                error_message = answer.get("error_message")
                return ProviderStatus(
                    provider_message_id=sid,
                    status=self._normalise(message_status),
                    provider_status=message_status,
                    error_code=None if error_code is None else str(error_code),
                    error_message=error_message if isinstance(error_message, str) else None,
                )
        code = answer.get("code") if answer is not None else None
        reason = f"Twilio answered {status}" + (f", code {code}" if code else "")
        # Status and code only: a message resource holds the patient's number and text.
        detail: dict[str, object] = {
            "request": {"method": "GET", "url": url},
            "response": {"status": status, "code": code, "json": answer is not None},
        }
        common: dict[str, Any] = {"provider_status": str(status), "detail": detail}
        if status == 404:
            raise MessageNotFound(reason, code=str(code or 404), **common)
        if status == 429 or status >= 500:
            raise TransientChannelError(reason, code=str(code or status), **common)
        raise PermanentChannelError(
            reason + ", outside Twilio's known answers",
            code="unexpected",
            unexpected=True,
            **common,
        )
