"""A patient's STOP, START and HELP, and a provider's word that they opted out."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.consent import repository as consent_repository
from app.consent.keywords import Keyword
from app.consent.rules import OPTED_OUT
from app.errors import InvalidInput
from app.models.patient import EVERY_CHANNEL
from app.templates import service as template_service
from app.webhooks import service as webhook_service
from app.webhooks.events import EventType

log = logging.getLogger(__name__)

_REPLY_TEMPLATES = {
    Keyword.STOP: "consent.opted_out",
    Keyword.START: "consent.opted_in",
    Keyword.HELP: "consent.help",
}


@dataclass(frozen=True, slots=True)
class KeywordOutcome:
    # The patients whose consent changed (a family phone may carry several).
    changed_patient_ids: list[str]
    reply: str | None


async def apply_keyword(
    session: AsyncSession,
    settings: Settings,
    keyword: Keyword,
    *,
    patient_id: str,
    locale: str,
    phone: str | None,
    channel: str,
) -> KeywordOutcome:
    """Act on a keyword a patient wrote from `phone` on `channel`. Flushes.

    STOP opts out every patient messaged at `phone` (on `channel`, or on every channel
    by OPT_OUT_SCOPE); on every channel, their reminders not yet sent end `denied`.
    Without a phone (a reply by email, whose token names one patient's conversation),
    the patient alone.
    START lifts it; HELP changes nothing. Each answers with its template's text.
    """
    changed: list[str] = []
    if keyword is Keyword.STOP:
        everywhere = settings.opt_out_scope == "all"
        channels = [EVERY_CHANNEL] if everywhere else [channel]
        changed = await consent_repository.opt_out_sender(session, patient_id, phone, channels)
        if everywhere:
            denied = await consent_repository.deny_unsent(session, changed, OPTED_OUT)
            await webhook_service.notifications_changed(session, denied)
            log.info("patient opted out", extra={"patients": len(changed), "denied": len(denied)})
    elif keyword is Keyword.START:
        changed = await consent_repository.opt_in_sender(session, patient_id, phone, channel)
        log.info("patient opted in", extra={"patients": len(changed)})
    for changed_id in changed:
        await _changed(session, changed_id, f"keyword:{keyword.value}", channel)
    return KeywordOutcome(changed, await _reply(session, _REPLY_TEMPLATES[keyword], locale))


async def record_provider_opt_outs(session: AsyncSession, opt_outs: Mapping[str, str]) -> None:
    """patient id -> channel whose provider refused a send as opted out (Twilio 21610)."""
    await consent_repository.opt_out_many(session, opt_outs)
    for patient_id, channel in opt_outs.items():
        await _changed(session, patient_id, "provider_opt_out", channel)


async def _changed(session: AsyncSession, patient_id: str, source: str, channel: str) -> None:
    """`consent.changed`, with the patient's opt-outs as they now stand."""
    opted_out = await consent_repository.opted_out_channels(session, patient_id)
    await webhook_service.emit(
        session,
        EventType.CONSENT_CHANGED,
        patient_id,
        {
            "patient_id": patient_id,
            "source": source,
            "channel": channel,
            "opted_out_channels": opted_out,
        },
    )


async def _reply(session: AsyncSession, key: str, locale: str) -> str | None:
    try:
        return (await template_service.render(session, key, locale, {})).body
    except InvalidInput:
        # Someone deleted the shipped text: the keyword still acts, unanswered.
        log.warning("no template to answer a consent keyword", extra={"template": key})
        return None
