"""The callback URLs handed to providers, built from PUBLIC_BASE_URL."""

from __future__ import annotations

from datetime import UTC, datetime

from app.config import Settings
from app.security import TokenSigner

IMO_READ = "imo-read"
IMO_INVITATION = "imo-invitation"


def imo_read_receipt_url(settings: Settings, signer: TokenSigner, attempt_id: int) -> str:
    token = signer.sign(IMO_READ, str(attempt_id))
    return f"{settings.callback_base_url}/callbacks/imo/notifications/{token}"


def imo_invitation_url(
    settings: Settings, signer: TokenSigner, patient_id: str, issued_at: datetime | None = None
) -> str:
    """The accept callback of an invitation sent now (or at `issued_at`): the token
    signs the patient and the issue time, so that it expires and an accept can be
    told apart from the patient's later changes."""
    issued = int((issued_at or datetime.now(UTC)).timestamp())
    token = signer.sign(IMO_INVITATION, f"{patient_id} {issued}")
    return f"{settings.callback_base_url}/callbacks/imo/invitations/{token}"


def read_invitation_token(signer: TokenSigner, token: str) -> tuple[str, datetime | None] | None:
    """(patient id, issue time) of a genuine invitation token, or None. Tokens signed
    before issue times were added carry none (patient ids hold no spaces)."""
    value = signer.verify(IMO_INVITATION, token)
    if value is None:
        return None
    patient_id, _, issued = value.rpartition(" ")
    if not patient_id or not issued.isdigit() or len(issued) > 12:
        return value, None
    return patient_id, datetime.fromtimestamp(int(issued), UTC)


def twilio_status_url(settings: Settings, attempt_id: int) -> str:
    # Twilio signs its callbacks; the attempt id in the path finds the attempt even
    # before its MessageSid is written down.
    return f"{settings.callback_base_url}/callbacks/twilio/status/{attempt_id}"
