"""The arq worker: `notify worker` (any number, on any number of machines).

Besides arq's jobs and crons, every worker process runs one dispatch loop: a batch
claim with SKIP LOCKED is how workers share the sending without a queue per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from datetime import UTC, datetime
from typing import Any, ClassVar, cast

import aiohttp
import arq.worker
from arq import cron
from arq.connections import RedisSettings
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app import observability
from app.channels import registry as channel_registry
from app.config import get_settings
from app.conversations import service as conversation_service
from app.dashboard import repository as dashboard_repository
from app.db.session import create_engine_and_sessionmaker
from app.delivery import reconcile, unread
from app.delivery.dispatcher import Dispatcher, check_chains, sweep
from app.delivery.loop_guard import LoopGuard
from app.gateways import service as gateway_service
from app.gc_tuning import tune_gc
from app.logs import configure_logging
from app.redis import redis_settings
from app.retention import partitions
from app.security import TokenSigner
from app.webhooks import urls as webhook_urls
from app.webhooks.sender import WebhookSender
from workers import answers, broadcasts, invitations

log = logging.getLogger(__name__)
Context = dict[str, Any]


async def startup(ctx: Context) -> None:
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    observability.init_sentry(settings, component="worker")
    engine, sessionmaker = create_engine_and_sessionmaker(settings.database_url)
    check_chains(settings)
    http = channel_registry.http_session(settings.dispatch_concurrency)
    limiter_redis = Redis.from_url(settings.redis_url, retry_on_timeout=True)
    dispatcher = Dispatcher(
        settings=settings,
        sessionmaker=sessionmaker,
        channels=channel_registry.build_channels(settings, http),
        limiters=channel_registry.build_limiters(settings, limiter_redis),
        signer=TokenSigner(settings.secret_key.get_secret_value()),
        loop_guard=LoopGuard(limiter_redis, settings.duplicate_limit),
    )
    webhook_http = aiohttp.ClientSession(connector=webhook_urls.connector(settings, limit=100))
    sender = WebhookSender(settings=settings, sessionmaker=sessionmaker, http=webhook_http)
    stop = asyncio.Event()
    ctx.update(
        settings=settings,
        engine=engine,
        sessionmaker=sessionmaker,
        http=http,
        limiter_redis=limiter_redis,
        dispatcher=dispatcher,
        stop=stop,
        lease_task=asyncio.create_task(dispatcher.keep_lease(), name="dispatch-lease"),
        dispatch_tasks=[
            asyncio.create_task(dispatcher.run(stop), name=f"dispatch-{number}")
            for number in range(settings.dispatch_loops)
        ],
        webhook_http=webhook_http,
        webhook_task=asyncio.create_task(sender.run(stop), name="webhooks"),
    )
    await invitations.start(ctx)
    tune_gc()
    log.info("worker started", extra={"channels": sorted(dispatcher.channels)})


async def shutdown(ctx: Context) -> None:
    if "stop" not in ctx:
        return
    ctx["stop"].set()
    try:
        await asyncio.wait_for(asyncio.gather(*ctx["dispatch_tasks"]), timeout=30)
    except TimeoutError:
        log.error("dispatch loop did not stop in time; its batch is taken over")
    # Renewed until the loops are done; then dropped: what is left is taken over at once.
    ctx["lease_task"].cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ctx["lease_task"]
    await ctx["dispatcher"].drop_lease()
    try:
        await asyncio.wait_for(ctx["webhook_task"], timeout=30)
    except TimeoutError:
        log.error("webhook sender did not stop in time; its claims come due again")
    await invitations.stop(ctx)
    await channel_registry.close_channels(ctx["dispatcher"].channels)
    await ctx["webhook_http"].close()
    await ctx["http"].close()
    await ctx["limiter_redis"].aclose()
    await ctx["engine"].dispose()


async def sweep_stale_sending(ctx: Context) -> tuple[int, int]:
    """Cron: settle notifications a dead worker left in `sending`. Safe on every worker."""
    return await sweep(ctx["sessionmaker"], ctx["settings"], datetime.now(UTC))


async def take_back_from_offline_gateways(ctx: Context) -> int:
    """Cron: what offline gateway phones were offered, and what waits in a pool no phone
    polls, goes to the next channel. Safe on every worker (SKIP LOCKED)."""
    return await gateway_service.take_back_in_own_unit(
        ctx["sessionmaker"], ctx["settings"], datetime.now(UTC)
    )


async def close_idle_conversations(ctx: Context) -> int:
    """Cron: close conversations idle for CONVERSATION_IDLE_DAYS. Safe on every worker."""
    async with ctx["sessionmaker"]() as session:
        closed = await conversation_service.close_idle(session, ctx["settings"], datetime.now(UTC))
        await session.commit()
    if closed:
        log.info("closed idle conversations", extra={"count": len(closed)})
    return len(closed)


async def hand_on_unread(ctx: Context) -> int:
    """Cron: unread Imo/WhatsApp reminders to their next channel. Safe on every worker."""
    return await unread.hand_on_unread(ctx["sessionmaker"], ctx["settings"])


async def reconcile_sent(ctx: Context) -> dict[str, int]:
    """Cron: look up attempts whose final status never came. Safe on every worker."""
    dispatcher: Dispatcher = ctx["dispatcher"]
    return dict(
        await reconcile.reconcile(
            ctx["sessionmaker"],
            ctx["settings"],
            dispatcher.channels,
            dispatcher.limiters,
            datetime.now(UTC),
        )
    )


async def fold_notification_counts(ctx: Context) -> int:
    """Cron: fold the dashboard's count deltas into the hourly and daily counts, and the
    webhook deliveries' into theirs. Safe on every worker at once
    (app/dashboard/repository.py)."""
    async with ctx["sessionmaker"]() as session:
        moved = await dashboard_repository.fold_counts(session)
        await session.commit()
        return moved


async def maintain_partitions(ctx: Context) -> dict[str, list[str]]:
    """Cron (daily, and at start-up): the partitioned logs' months ahead are created and
    those older than RETENTION_MONTHS detached and dropped. Safe on every worker at once
    (an advisory lock per table; the second finds the work done)."""
    async with ctx["sessionmaker"]() as session:
        done = await partitions.maintain(session, ctx["settings"].retention_months)
        await session.commit()
    if done["created"] or done["dropped"]:
        log.info("partitions maintained", extra=done)
    return done


def _sweep_seconds(interval: int) -> set[int]:
    """The seconds of each minute at which the sweeper runs: every `interval`, from 17."""
    return {(17 + offset) % 60 for offset in range(0, 60, interval)}


class WorkerSettings:
    functions: ClassVar[list[Any]] = [
        sweep_stale_sending,
        take_back_from_offline_gateways,
        close_idle_conversations,
        hand_on_unread,
        reconcile_sent,
        fold_notification_counts,
        maintain_partitions,
        invitations.run_invitation_round,
        invitations.start_scheduled_invitation_round,
        broadcasts.fan_out_broadcast,
        answers.send_patient_answer,
    ]
    cron_jobs: ClassVar[list[Any]] = [
        cron(
            sweep_stale_sending,
            second=_sweep_seconds(get_settings().sweep_interval_seconds),
            unique=True,
            run_at_startup=True,
        ),
        # With the sweeper: a phone's silence is noticed within a sweep interval.
        cron(
            take_back_from_offline_gateways,
            second=_sweep_seconds(get_settings().sweep_interval_seconds),
            unique=True,
        ),
        cron(hand_on_unread, second={41}, unique=True),
        cron(reconcile_sent, second={29}, unique=True),
        invitations.scheduled_round_cron(get_settings()),
        cron(broadcasts.resume_stalled_broadcasts, second=set(range(5, 60, 10)), unique=True),
        cron(close_idle_conversations, minute={7, 37}, unique=True),
        cron(answers.hand_on_stuck_answers, second={53}, unique=True),
        cron(fold_notification_counts, second={41}, unique=True),
        cron(maintain_partitions, hour={2}, minute={13}, unique=True, run_at_startup=True),
    ]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings: ClassVar[RedisSettings] = redis_settings(get_settings().redis_url or "redis://")
    max_jobs = 20
    job_timeout = 3600
    health_check_interval = 30


# arq's health-check key expires by itself: not worth a minute of Redis retries at exit.
HEALTH_CHECK_DELETE_SECONDS = 1.0


class Worker(arq.worker.Worker):
    """arq's worker, stopping within seconds of SIGTERM even when Redis is gone.

    arq's own `close` deletes its health-check key before it runs `on_shutdown`, through
    the Redis client's retries (about a minute, `app.redis.COMMAND_RETRIES`): a worker
    whose Redis had gone sat that long before it even began to stop. This `close` is
    arq's with that delete bounded."""

    async def close(self) -> None:
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values())
        try:
            async with asyncio.timeout(HEALTH_CHECK_DELETE_SECONDS):
                await self.pool.delete(self.health_check_key)
        except (TimeoutError, RedisError, OSError):
            log.warning("Redis did not answer at shutdown; arq's health-check key expires")
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.close(close_connection_pool=True)
        self._pool = None


def run(**overrides: Any) -> None:
    """Run a worker of `WorkerSettings` (with arq's keyword `overrides`) until stopped."""
    # arq types settings as a protocol class that plain settings classes do not subclass.
    Worker(**{**arq.worker.get_kwargs(cast(Any, WorkerSettings)), **overrides}).run()
