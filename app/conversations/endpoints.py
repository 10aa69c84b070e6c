"""HTTP for conversations: open, read the exchange, close."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request, Response, status

from app import idempotency
from app.conversations import service as conversation_service
from app.conversations.schemas import (
    ConversationExchange,
    ConversationIn,
    ConversationOut,
    MessageOut,
    MessagePage,
    StaffMessageIn,
)
from app.db.session import DbSession
from app.idempotency import IdempotencyKey
from app.pagination import Cursor, Limit

router = APIRouter(prefix="/conversations", tags=["conversations"])
# A patient's message history lives with the conversations it is made of.
patient_router = APIRouter(prefix="/patients", tags=["conversations"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, wrong or revoked API key"}
}
_UNKNOWN: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    404: {"description": "No such conversation"},
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Open a conversation with a patient",
    responses={**_ERRORS, 422: {"description": "Bad body, or an unknown patient"}},
)
async def open_conversation(body: ConversationIn, session: DbSession) -> ConversationOut:
    conversation = await conversation_service.open_conversation(
        session, body.patient_id, body.subject, body.reference
    )
    return ConversationOut.from_model(conversation)


@router.get(
    "/{conversation_id}",
    summary="A conversation and its messages both ways, oldest first",
    responses={**_UNKNOWN, 422: {"description": "A cursor this list did not hand out"}},
)
async def get_conversation(
    conversation_id: uuid.UUID, session: DbSession, cursor: Cursor = None, limit: Limit = 50
) -> ConversationExchange:
    page = await conversation_service.exchange(session, conversation_id, cursor, limit)
    return ConversationExchange(
        conversation=ConversationOut.from_model(page.conversation),
        messages=[MessageOut.from_model(m, state) for m, state in page.messages],
        next_cursor=page.next_cursor,
    )


@router.post(
    "/{conversation_id}/messages",
    status_code=status.HTTP_201_CREATED,
    summary="Staff write on a conversation: a note, or a message to the patient",
    responses={
        **_UNKNOWN,
        409: {"description": "The conversation is closed"},
        422: {
            "description": "Bad body, the patient's email address is blocked, or an "
            "Idempotency-Key reused with another text"
        },
    },
)
async def write_message(
    conversation_id: uuid.UUID,
    body: StaffMessageIn,
    request: Request,
    response: Response,
    session: DbSession,
    idempotency_key: IdempotencyKey = None,
) -> MessageOut:
    """An `Idempotency-Key` (at most 200 characters here) applies to a message to the
    patient, per conversation; a note for staff is not deduplicated."""
    message, state, written = await conversation_service.write(
        session,
        request.app.state.settings,
        conversation_id,
        body.text,
        body.broadcast_to,
        api_key_id=request.state.api_key_id,
        idempotency_key=idempotency.checked(idempotency_key, longest=200),
    )
    if not written:
        response.headers["Idempotent-Replayed"] = "true"
    return MessageOut.from_model(message, state)


@patient_router.get(
    "/{patient_id}/messages",
    summary="A patient's messages both ways, newest first",
    responses={
        **_ERRORS,
        404: {"description": "No such patient"},
        422: {"description": "A cursor this list did not hand out"},
    },
)
async def list_patient_messages(
    patient_id: str, session: DbSession, cursor: Cursor = None, limit: Limit = 50
) -> MessagePage:
    rows, next_cursor = await conversation_service.patient_messages(
        session, patient_id, cursor, limit
    )
    return MessagePage(
        items=[MessageOut.from_model(m, state) for m, state in rows], next_cursor=next_cursor
    )


@router.post(
    "/{conversation_id}/close",
    summary="Close a conversation (closing a closed one changes nothing)",
    responses=_UNKNOWN,
)
async def close_conversation(conversation_id: uuid.UUID, session: DbSession) -> ConversationOut:
    return ConversationOut.from_model(await conversation_service.close(session, conversation_id))
