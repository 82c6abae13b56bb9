"""Commands that fix the recorded state or add files: force-clean, repair, stamp, create."""

from __future__ import annotations

import click

from pebble_migrate.cli import cli
from pebble_migrate.cli.inspect import renderer
from pebble_migrate.cli.options import (
    confirmer,
    dry_run_option,
    global_options,
    settings,
    yes_option,
)


@cli.command("force-clean")
@global_options
@dry_run_option
@yes_option
def force_clean(yes: bool) -> None:
    """Set the status to clean without marking the interrupted migration applied."""
    from pebble_migrate import maintenance

    s = settings()
    result = maintenance.force_clean(
        s.database_path(), confirm=confirmer(yes, destructive=True), dry_run=s.dry_run
    )
    renderer(s).state_change(result, dry_run=s.dry_run)


@cli.command()
@global_options
@dry_run_option
@yes_option
def repair(yes: bool) -> None:
    """Add missing history records for applied migrations; fix a wrong version."""
    from pebble_migrate import maintenance

    s = settings()
    report = maintenance.repair(
        s.database_path(), confirm=confirmer(yes, destructive=True), dry_run=s.dry_run
    )
    renderer(s).repair(report, dry_run=s.dry_run)


@cli.command()
@global_options
@dry_run_option
@click.argument("version")
@yes_option
def stamp(version: str, yes: bool) -> None:
    """Record every migration up to VERSION as applied without running it (0 = none).

    For a database brought into shape by other means (golang-migrate `force`, Alembic
    `stamp`, Flyway `baseline`). Migrations above VERSION are recorded as not applied,
    without running their `down`.
    """
    from pebble_migrate import maintenance

    s = settings()
    result = maintenance.stamp(
        s.database_path(),
        s.registry(),
        version,
        confirm=confirmer(yes, destructive=True),
        dry_run=s.dry_run,
        cli=s.cli_name,
    )
    renderer(s).stamped(result, dry_run=s.dry_run)


@cli.command()
@global_options
@dry_run_option
@click.argument("name")
def create(name: str) -> None:
    """Write a new migration file NAME with a fresh timestamp into the migrations directory."""
    from pebble_migrate import maintenance

    s = settings()
    renderer(s).created(maintenance.create(s.migrations_dir(), name, dry_run=s.dry_run), s.dry_run)
