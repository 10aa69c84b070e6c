"""Worker side of broadcasts: the fan-out job (every lane at once, on connections of the
worker's pool), and a cron that resumes a fan-out whose worker died (each lane's cursor
says where). Both are safe to run twice and on every worker."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from app.broadcasts import service as broadcast_service

log = logging.getLogger(__name__)
Context = dict[str, Any]


async def fan_out_broadcast(ctx: Context, broadcast_id: str) -> dict[str, Any]:
    """Job: schedule the broadcast's members, every lane from its cursor on."""
    result = await broadcast_service.fan_out(
        ctx["sessionmaker"], uuid.UUID(broadcast_id), ctx["settings"]
    )
    return {"broadcast_id": broadcast_id, "state": result.state, "members": result.members}


async def resume_stalled_broadcasts(ctx: Context) -> int:
    """Cron: hand every fan-out that has stood still too long to a worker again."""
    now = datetime.now(UTC)
    async with ctx["sessionmaker"]() as session:
        stalled = await broadcast_service.stale_broadcasts(session, ctx["settings"], now)
    for broadcast_id in stalled:
        log.warning("resuming a stalled broadcast", extra={"broadcast_id": str(broadcast_id)})
        await ctx["redis"].enqueue_job(
            broadcast_service.FAN_OUT_JOB,
            str(broadcast_id),
            _job_id=broadcast_service.fan_out_job_id(broadcast_id, now.strftime("%Y%m%d%H%M%S")),
        )
    return len(stalled)
