"""An experiment's results in the terminal, and its per-patient rows as CSV for the
researcher's own analysis (`notify experiments report ID-OR-NAME [--csv PATH]`)."""

from __future__ import annotations

import csv
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.experiments.schemas import ExperimentResults

# Not on a terminal (a pipe, a file, a CI log), a table is as wide as its content: rich
# would fit it into 80 columns and cut every cell to "co...".
_UNBOUNDED = None if sys.stdout.isatty() else 10_000
console = Console(highlight=False, width=_UNBOUNDED)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

CSV_COLUMNS = (
    "patient_id",
    "group",
    "enrolled_at",
    "appointment_id",
    "appointment_date",
    "reached",
    "returned",
    "days_to_return",
    "evicted_reason",
)


async def run_report(database_url: str, experiment: str | uuid.UUID, csv_path: Path | None) -> int:
    """Print the report (and write the CSV); returns the exit code."""
    from app.db.session import create_engine_and_sessionmaker

    engine, sessionmaker = create_engine_and_sessionmaker(database_url, pool_size=1)
    try:
        async with sessionmaker() as session:
            # One snapshot for the table and every batch of the CSV: they agree, however
            # many visits and callbacks arrive meanwhile.
            await session.connection(
                execution_options={
                    "isolation_level": "REPEATABLE READ",
                    "postgresql_readonly": True,
                }
            )
            return await report_from(session, experiment, csv_path)
    finally:
        await engine.dispose()


async def report_from(
    session: AsyncSession, experiment: str | uuid.UUID, csv_path: Path | None
) -> int:
    """The report of `experiment` (its id, or its name) from this session's view of the
    database; returns the exit code."""
    from app.errors import NotFound
    from app.experiments import repository as experiment_repository
    from app.experiments import service as experiment_service

    experiment_id = await _experiment_id(session, experiment)
    if experiment_id is None:
        err_console.print(f"[red]error:[/red] no experiment named '{experiment}'")
        return 1
    try:
        results = await experiment_service.results(session, experiment_id)
    except NotFound as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        return 1
    console.print(results_table(results))
    console.print(channels_table(results))
    console.print(f"[dim]{results.methods.population}; {results.methods.test}.[/dim]")
    if csv_path is None:
        return 0
    written = 0
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        rows = experiment_repository.patient_rows(
            session, experiment_id, results.experiment.return_window_days
        )
        async for row in rows:
            writer.writerow(
                [
                    row.patient_id,
                    row.group,
                    row.enrolled_at.isoformat(),
                    row.appointment_id,
                    row.appointment_date.isoformat(),
                    str(row.reached).lower(),
                    str(row.returned).lower(),
                    "" if row.days_to_return is None else row.days_to_return,
                    row.evicted_reason or "",
                ]
            )
            written += 1
    console.print(f"Wrote {written:,} patients to {csv_path}")
    return 0


async def _experiment_id(session: AsyncSession, experiment: str | uuid.UUID) -> uuid.UUID | None:
    """An id as given, or the id of the experiment of that name (names are unique)."""
    from app.experiments import repository as experiment_repository

    if isinstance(experiment, uuid.UUID):
        return experiment
    try:
        return uuid.UUID(experiment)
    except ValueError:
        found = await experiment_repository.get_by_name(session, experiment)
        return found.id if found is not None else None


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def p_value_text(p_value: float) -> str:
    """Three significant digits; a p-value too small for a double (it underflows to 0)
    is shown as the bound it is below, never as 0."""
    return f"{p_value:.3g}" if p_value > 0 else "<1e-300"


def _interval(interval: tuple[float, float] | None) -> str:
    if interval is None:
        return "-"
    return f"{interval[0] * 100:.1f} to {interval[1] * 100:.1f}"


def results_table(results: ExperimentResults) -> Table:
    experiment = results.experiment
    table = Table(
        title=f"{experiment.name} ({experiment.status}, {experiment.start_date} to "
        f"{experiment.end_date}, return window {experiment.return_window_days} days)",
        title_justify="left",
    )
    for name in ("group", "plan", "enrolled", "evicted", "reminders", "reached"):
        table.add_column(name, justify="left" if name in ("group", "plan") else "right")
    for name in ("returned", "awaiting", "rate", "95% CI", "vs control", "95% CI", "p"):
        table.add_column(name, justify="right")
    for group in results.groups:
        versus = group.versus_control
        table.add_row(
            group.name,
            group.reminder_plan or "(none)",
            f"{group.enrolled:,}",
            f"{group.evicted:,}",
            f"{group.reminders:,}",
            f"{group.patients_reached:,}",
            f"{group.returned:,}",
            f"{group.awaiting_outcome:,}",
            _percent(group.return_rate),
            _interval(group.return_rate_ci95),
            "-" if versus is None else f"{versus.difference * 100:+.1f} pts",
            "-" if versus is None else _interval(versus.ci95),
            "-" if versus is None else p_value_text(versus.p_value),
        )
    return table


def channels_table(results: ExperimentResults) -> Table:
    table = Table(title="Delivery attempts by channel", title_justify="left")
    for name in ("group", "channel", "attempts", "reached", "by status"):
        table.add_column(name, justify="right" if name in ("attempts", "reached") else "left")
    for group in results.groups:
        for channel, counts in group.attempts_by_channel.items():
            statuses = ", ".join(f"{s} {n:,}" for s, n in sorted(counts.by_status.items()))
            table.add_row(
                group.name, channel, f"{counts.attempts:,}", f"{counts.reached:,}", statuses
            )
    return table
