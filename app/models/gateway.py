from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, String, func
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base


class Gateway(Base):
    """An Android phone running cht-gateway: it polls /gateway/api/sms with HTTP Basic
    auth (its name and secret) and sends the SMS it is handed from its own SIM.

    Only the SHA-256 of the secret is stored, as for API keys.
    """

    __tablename__ = "gateways"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # The patients' country whose queue it serves; None: every country's.
    country: Mapped[str | None] = mapped_column(String(2))
    # The phone's own number: never a recipient (a message to it would loop).
    number: Mapped[str | None] = mapped_column(String(20))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    last_polled_at: Mapped[datetime | None]
