"""`time_ordered_uuid()`: version 7 UUIDs in SQL, for the statements that insert
notifications by the set (a broadcast's chunk), as app/ids.py makes them in Python:
PostgreSQL 18's own `uuidv7()` where the server has it, otherwise the same bits written
out (the milliseconds since 1970 over the first 48 bits of a random UUID, version 7).

Revision ID: 20261206_time_ordered_ids
Revises: 20261205_staff_recipients
Create Date: 2026-12-06 01:00:00+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "20261206_time_ordered_ids"
down_revision: str | None = "20261205_staff_recipients"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WRITTEN_OUT = (
    "SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) PLACING"
    " substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)"
    " FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid"
)


def upgrade() -> None:
    body = "SELECT uuidv7()" if op.get_bind().dialect.server_version_info >= (18,) else WRITTEN_OUT
    op.execute(
        "CREATE FUNCTION time_ordered_uuid() RETURNS uuid LANGUAGE sql VOLATILE PARALLEL SAFE"
        f" AS $$ {body} $$"
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION time_ordered_uuid()")
