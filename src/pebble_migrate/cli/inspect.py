"""Read-only commands: status, history, validate. They never create or change a database."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from pebble_migrate.cli import cli
from pebble_migrate.cli.options import Settings, global_options, settings
from pebble_migrate.errors import ValidationFailed

if TYPE_CHECKING:
    from pebble_migrate.cli.render import Renderer
    from pebble_migrate.registry import Registry


def renderer(s: Settings, *, result: bool = False) -> Renderer:
    """Return the renderer for the current options; `result`: what the command prints is
    its result (status, history, validate, backup list and verify), so output that could
    not be written fails the command."""
    from pebble_migrate.cli.render import Renderer

    return Renderer(json_mode=s.json, verbose=s.verbose, cli_name=s.cli_name, result=result)


def _registry_if_present(s: Settings, *, required: bool) -> Registry | None:
    """Return the migrations; None only when none were named, the default ./migrations
    is absent, and the command can do without them."""
    if not required and not s.migrations_configured() and not os.path.isdir(s.migrations_dir()):
        return None
    return s.registry()


@cli.command()
@global_options
@click.option(
    "--check", is_flag=True, help="Exit 4 if not clean, else 3 if migrations are pending."
)
@click.option(
    "--history",
    "history_n",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="How many recent history records to show.",
)
def status(check: bool, history_n: int) -> None:
    """Show the version, status, pending migrations and recent history."""
    from pebble_migrate import commands

    s = settings()
    # --check answers "is anything pending?", which needs the migrations.
    registry = _registry_if_present(s, required=check)
    report = commands.status(s.database_path(), registry, history=history_n)
    out = renderer(s, result=True)
    out.status(report)
    if registry is None and not s.json:
        out.note(f"(no migrations directory at {s.migrations_dir()}; pending migrations unknown)")
    if check and report.check_code:
        click.get_current_context().exit(report.check_code)


@cli.command()
@global_options
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show only the newest N.")
def history(limit: int | None) -> None:
    """Show the history of applies, rollbacks, reruns and repairs, oldest first."""
    from pebble_migrate import commands

    s = settings()
    renderer(s, result=True).history(commands.history(s.database_path(), limit=limit))


@cli.command()
@global_options
@click.option(
    "--deep",
    is_flag=True,
    help="Also read everything back as RocksDB stored it: every table file's blocks "
    "(checksums), the write-ahead log, every state record, the scans' views.",
)
@click.argument("ids", metavar="[ID]...", nargs=-1)
def validate(deep: bool, ids: tuple[str, ...]) -> None:
    """Check the migrations, the recorded state, and each applied migration's data.

    Given IDs (ids or versions), run only those migrations' own checks.
    """
    from pebble_migrate import validation

    s = settings()
    report = validation.validate(
        s.database_path(), s.registry(), deep=deep, only=ids, cli=s.cli_name
    )
    renderer(s, result=True).validation(report)
    if report.problems:
        raise ValidationFailed(
            report.problems, way_out=report.way_out, cli=s.cli_name, verbose=s.verbose
        )
