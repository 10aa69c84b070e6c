"""Patients' own opt-outs (STOP, Twilio's 21610), kept apart from the clinic's consent,
and the replies to STOP, START and HELP in English, Bengali and Hindi

Revision ID: 20261204_patient_opt_outs
Revises: 20261204_inbound_messages
Create Date: 2026-12-04 20:10:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "20261204_patient_opt_outs"
down_revision: str | None = "20261204_inbound_messages"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Editable through PUT /v1/templates like every other text.
CONSENT_TEMPLATES = [
    {
        "key": "consent.opted_out",
        "locale": "en",
        "title": "Unsubscribed",
        "body": "You will get no more reminders from your clinic. Reply START to get them again.",
    },
    {
        "key": "consent.opted_out",
        "locale": "bn-BD",
        "title": "বন্ধ করা হয়েছে",
        "body": "আপনি আর ক্লিনিক থেকে কোনো অনুস্মারক পাবেন না। আবার পেতে শুরু লিখে পাঠান।",
    },
    {
        "key": "consent.opted_out",
        "locale": "hi-IN",
        "title": "बंद किया गया",
        "body": "अब आपको क्लिनिक से कोई अनुस्मारक नहीं मिलेगा। फिर से पाने के लिए शुरू लिखकर भेजें।",
    },
    {
        "key": "consent.opted_in",
        "locale": "en",
        "title": "Subscribed",
        "body": "You will get reminders from your clinic again. Reply STOP to stop them.",
    },
    {
        "key": "consent.opted_in",
        "locale": "bn-BD",
        "title": "চালু করা হয়েছে",
        "body": "আপনি আবার ক্লিনিক থেকে অনুস্মারক পাবেন। বন্ধ করতে বন্ধ লিখে পাঠান।",
    },
    {
        "key": "consent.opted_in",
        "locale": "hi-IN",
        "title": "शुरू किया गया",
        "body": "आपको फिर से क्लिनिक से अनुस्मारक मिलेंगे। बंद करने के लिए बंद लिखकर भेजें।",
    },
    {
        "key": "consent.help",
        "locale": "en",
        "title": "Help",
        "body": "Visit reminders from your clinic. Reply STOP to stop them, START to get "
        "them again. For anything else, call your clinic.",
    },
    {
        "key": "consent.help",
        "locale": "bn-BD",
        "title": "সাহায্য",
        "body": "আপনার ক্লিনিকের সাক্ষাতের অনুস্মারক। বন্ধ করতে বন্ধ, আবার পেতে শুরু লিখে "
        "পাঠান। অন্য কিছুর জন্য আপনার ক্লিনিকে ফোন করুন।",
    },
    {
        "key": "consent.help",
        "locale": "hi-IN",
        "title": "सहायता",
        "body": "आपके क्लिनिक के अनुस्मारक। रोकने के लिए बंद, फिर से पाने के लिए शुरू लिखकर "
        "भेजें। किसी और बात के लिए अपने क्लिनिक को फ़ोन करें।",
    },
]


def upgrade() -> None:
    op.add_column(
        "patients",
        sa.Column(
            "opted_out_channels",
            postgresql.ARRAY(sa.String(length=20)),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
    )
    for template in CONSENT_TEMPLATES:
        op.execute(
            sa.text(
                "INSERT INTO templates (key, locale, title, body) "
                "VALUES (:key, :locale, :title, :body) ON CONFLICT (key, locale) DO NOTHING"
            ).bindparams(**template)
        )


def downgrade() -> None:
    op.execute(
        sa.text(
            "DELETE FROM templates WHERE key IN ('consent.opted_out', 'consent.opted_in', "
            "'consent.help')"
        )
    )
    op.drop_column("patients", "opted_out_channels")
