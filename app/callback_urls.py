"""The callback URLs handed to providers, built from PUBLIC_BASE_URL."""

from __future__ import annotations

from app.config import Settings
from app.security import TokenSigner

IMO_READ = "imo-read"
IMO_INVITATION = "imo-invitation"


def imo_read_receipt_url(settings: Settings, signer: TokenSigner, attempt_id: int) -> str:
    token = signer.sign(IMO_READ, str(attempt_id))
    return f"{settings.callback_base_url}/callbacks/imo/notifications/{token}"


def imo_invitation_url(settings: Settings, signer: TokenSigner, patient_id: str) -> str:
    token = signer.sign(IMO_INVITATION, patient_id)
    return f"{settings.callback_base_url}/callbacks/imo/invitations/{token}"


def twilio_status_url(settings: Settings, attempt_id: int) -> str:
    # Twilio signs its callbacks; the attempt id in the path finds the attempt even
    # before its MessageSid is written down.
    return f"{settings.callback_base_url}/callbacks/twilio/status/{attempt_id}"
