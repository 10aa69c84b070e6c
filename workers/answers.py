"""Worker side of the service's own answers to patients (app/messages/replies.py): the
job that sends one, and a cron that hands on those left `pending`."""

from __future__ import annotations

import logging
from typing import Any

from arq import Retry

from app.delivery.dispatcher import Dispatcher
from app.messages import replies

log = logging.getLogger(__name__)
Context = dict[str, Any]

# An answer still `pending` this long after it was stored was never queued.
STUCK_AFTER_SECONDS = 30.0


async def send_patient_answer(ctx: Context, answer_id: int) -> str:
    """Job: send one answer on the channel the patient wrote by."""
    dispatcher: Dispatcher = ctx["dispatcher"]
    tries = int(ctx.get("job_try", 1))
    sent = await replies.send(
        ctx["sessionmaker"],
        ctx["settings"],
        dispatcher.channels,
        answer_id,
        last_try=tries >= replies.SEND_TRIES,
    )
    if sent.state == "pending":
        raise Retry(defer=5 * tries)
    return sent.state


async def hand_on_stuck_answers(ctx: Context) -> int:
    """Cron: queue the answers left `pending`. Safe on every worker (one job per id)."""
    async with ctx["sessionmaker"]() as session:
        stuck = await replies.stuck(session, STUCK_AFTER_SECONDS)
    if stuck:
        log.warning("answers to patients left pending: queued again", extra={"count": len(stuck)})
        await replies.hand_on(ctx["redis"], stuck)
    return len(stuck)
