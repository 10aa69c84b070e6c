from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import String
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base


class DispatchLease(Base):
    """A worker process's hold on the notifications it claimed (`notifications.lease_id`).

    The worker renews it every third of DISPATCH_LEASE_SECONDS; once `expires_at` has
    passed (or the row is gone: the worker stopped cleanly), any live worker takes its
    claims over at once (app/delivery/dispatcher.py). Not a foreign key of
    `notifications`: a claim outlives its lease by design, and the claim's UPDATE stays
    free of a key check per row.
    """

    __tablename__ = "dispatch_leases"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    # host:pid, for an operator reading the table.
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime]
