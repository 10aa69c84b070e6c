from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, Index, String, Text, func, literal_column, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, TimestampMixin

CONSENT_VALUES = ("granted", "denied")
# In `opted_out_channels`: the patient withdrew consent on every channel.
EVERY_CHANNEL = "*"


class Patient(TimestampMixin, Base):
    """The service's copy of a patient's contact record; the clinic system owns it."""

    __tablename__ = "patients"
    __table_args__ = (
        CheckConstraint(
            f"reminder_consent IN {CONSENT_VALUES}",
            name="reminder_consent",
        ),
        # Invitation rounds stream consenting patients with a mobile, zone by zone, in id
        # order (keyset): each zone's scan reads that zone's entries only.
        Index(
            "ix_patients_invitable",
            "time_zone",
            "id",
            postgresql_where=text("reminder_consent = 'granted' AND mobile_e164 IS NOT NULL"),
        ),
        # GET /v1/patients: by any number, by facility, by the start of the name.
        Index(
            "ix_patients_phone_numbers",
            "phone_numbers",
            postgresql_using="gin",
            postgresql_ops={"phone_numbers": "jsonb_path_ops"},
        ),
        Index("ix_patients_facility", "facility_id", "id"),
        Index(
            "ix_patients_name_prefix",
            func.lower(literal_column("full_name")).label("name_lower"),
            "id",
            postgresql_ops={"name_lower": "text_pattern_ops"},
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    full_name: Mapped[str] = mapped_column(String(200))
    # [{"number": "+8801711000001", "type": "mobile"}, ...], numbers in E.164.
    phone_numbers: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    # The first mobile number: the one messages go to.
    mobile_e164: Mapped[str | None] = mapped_column(String(20))
    # Normalised (app/email_address.py): the domain in lower case. Optional.
    email: Mapped[str | None] = mapped_column(String(254))
    country: Mapped[str] = mapped_column(String(2))
    locale: Mapped[str] = mapped_column(String(20))
    time_zone: Mapped[str] = mapped_column(String(64))
    facility_id: Mapped[str | None] = mapped_column(String(64))
    facility_name: Mapped[str | None] = mapped_column(String(200))
    reminder_consent: Mapped[str] = mapped_column(String(10))
    # The clinic system's own fields (e.g. {"area": "Mirpur", "birth_date": "1990-04-01"})
    # and labels, for group filters and broadcast parameters (`@area`).
    attributes: Mapped[dict[str, Any]] = mapped_column(
        JSONB, default=dict, server_default=text("'{}'::jsonb")
    )
    tags: Mapped[list[str]] = mapped_column(
        ARRAY(Text), default=list, server_default=text("'{}'::text[]")
    )
    # Channels on which the patient withdrew consent themselves (STOP, or a provider's
    # opt-out error), EVERY_CHANNEL for all. The clinic's `reminder_consent` cannot
    # override it; only the patient's START can.
    opted_out_channels: Mapped[list[str]] = mapped_column(
        ARRAY(String(20)), server_default=text("'{}'")
    )
    # When WhatsApp last said this number has no account (131026): the number is not tried
    # there for WHATSAPP_RETRY_NO_ACCOUNT_DAYS after. Cleared when the number changes.
    whatsapp_no_account_at: Mapped[datetime | None]
