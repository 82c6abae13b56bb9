"""Commands that change data: up, down, rerun."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from pebble_migrate.cli import cli
from pebble_migrate.cli.inspect import renderer
from pebble_migrate.cli.options import (
    F,
    Settings,
    confirmer,
    dry_run_option,
    global_options,
    settings,
    yes_option,
)

if TYPE_CHECKING:
    import rocksdict

    from pebble_migrate import commands
    from pebble_migrate.cli.render import Renderer
    from pebble_migrate.context import ChunkPolicy
    from pebble_migrate.plan import Plan
    from pebble_migrate.state import State


def _run_options(
    s: Settings,
    out: Renderer,
    yes: bool,
    *,
    destructive: bool,
    backup: bool,
    policy: ChunkPolicy | None = None,
    validate: bool = True,
) -> commands.RunOptions:
    from pebble_migrate import commands
    from pebble_migrate.context import ChunkPolicy

    if backup:
        from pebble_migrate.cli.backup import retention_setting

        retention_setting(s)  # a bad setting must stop the run before its first write
        s.backup_mode()
    return commands.RunOptions(
        confirm=confirmer(yes, destructive=destructive),
        reporter=out.event,
        policy=policy or ChunkPolicy(),
        before_write=_backup_hook(s, out) if backup else None,
        validate=validate,
        backup_dir=s.backups(),
        guard_process_exit=True,
        cli_name=s.cli_name,
    )


def chunk_options(fn: F) -> F:
    """Add --chunk-records and --chunk-bytes (how often a scan commits)."""
    fn = click.option(
        "--chunk-bytes",
        type=click.IntRange(min=1024),
        default=4 * 1024 * 1024,
        show_default=True,
        help="...or every N bytes of writes, whichever comes first.",
    )(fn)
    return click.option(
        "--chunk-records",
        type=click.IntRange(min=1),
        default=10_000,
        show_default=True,
        help="Commit a scan every N records...",
    )(fn)


def _backup_hook(s: Settings, out: Renderer) -> commands.BeforeWrite:
    from pebble_migrate.cli.backup import take_automatic_backup

    def hook(db: rocksdict.Rdict, state: State, plan: Plan) -> None:
        take_automatic_backup(s, out, db, state, plan)

    return hook


def _show(
    out: Renderer,
    outcome: commands.Outcome,
    dry_run: bool,
    backup: bool,
    allow_flag: bool = False,
) -> None:
    out.outcome(outcome, dry_run=dry_run)
    if outcome.later and not out.json:
        out.say(f"Later migrations stay applied: {', '.join(outcome.later)}.")
    if outcome.out_of_order:
        verb = "Would apply" if dry_run else "Applied"
        out.say(f"{verb} out of order (allowed): {', '.join(outcome.out_of_order)}.")
    elif allow_flag:
        out.say("--allow-out-of-order: no pending migration is out of order; it changed nothing.")
    steps = outcome.report is None and outcome.plan.steps
    if dry_run and backup and steps and not out.json:
        out.say("A backup would be taken first (--no-backup skips it).")


@cli.command()
@global_options
@dry_run_option
@click.argument("version", required=False)
@yes_option
@click.option("--create", is_flag=True, help="Create the database if the path does not exist.")
@click.option(
    "--from-start",
    is_flag=True,
    help="Discard committed progress of an interrupted migration and start it over.",
)
@click.option("--no-backup", is_flag=True, help="Do not take the automatic backup first.")
@click.option(
    "--no-validate",
    is_flag=True,
    help="Do not run each migration's validate() before recording it applied.",
)
@click.option(
    "--allow-out-of-order",
    is_flag=True,
    help="Also apply pending migrations whose version is below the current version.",
)
@chunk_options
def up(
    version: str | None,
    yes: bool,
    create: bool,
    from_start: bool,
    no_backup: bool,
    no_validate: bool,
    allow_out_of_order: bool,
    chunk_records: int,
    chunk_bytes: int,
) -> None:
    """Apply pending migrations, up to VERSION (a version or id) when given.

    On a terminal it asks before applying (--yes skips the question); without one it just
    runs, so scripts need no --yes. An interrupted migration that can resume continues
    where it stopped.
    """
    from pebble_migrate import commands
    from pebble_migrate.context import ChunkPolicy

    s = settings()
    out = renderer(s)
    opts = _run_options(
        s,
        out,
        yes,
        destructive=from_start,
        backup=not no_backup,
        policy=ChunkPolicy(chunk_records, chunk_bytes),
        validate=not no_validate,
    )
    opts.allow_out_of_order = s.allow_out_of_order(allow_out_of_order)
    outcome = commands.up(
        s.database_path(),
        s.registry(),
        target=version,
        dry_run=s.dry_run,
        create=create,
        from_start=from_start,
        options=opts,
    )
    _show(out, outcome, s.dry_run, not no_backup, allow_out_of_order)


@cli.command()
@global_options
@dry_run_option
@click.argument("version", required=False)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    metavar="N",
    help="Roll back the N applied migrations with the highest versions (instead of VERSION).",
)
@yes_option
@click.option("--no-backup", is_flag=True, help="Do not take the automatic backup first.")
@chunk_options
def down(
    version: str | None,
    steps: int | None,
    yes: bool,
    no_backup: bool,
    chunk_records: int,
    chunk_bytes: int,
) -> None:
    """Roll back every applied migration above VERSION (which stays applied); 0 = all.

    `down --steps N` rolls back the N newest instead. One of the two is required: a bare
    `down` is refused rather than guessing how far to go.
    """
    from pebble_migrate import commands
    from pebble_migrate.context import ChunkPolicy

    s = settings()
    out = renderer(s)
    opts = _run_options(
        s,
        out,
        yes,
        destructive=True,
        backup=not no_backup,
        policy=ChunkPolicy(chunk_records, chunk_bytes),
    )
    outcome = commands.down(
        s.database_path(), s.registry(), version, steps=steps, dry_run=s.dry_run, options=opts
    )
    _show(out, outcome, s.dry_run, not no_backup)


@cli.command()
@global_options
@dry_run_option
@click.argument("migration_id", metavar="ID")
@yes_option
@click.option("--no-backup", is_flag=True, help="Do not take the automatic backup first.")
@click.option(
    "--no-validate", is_flag=True, help="Do not run its validate() before recording it applied."
)
@click.option(
    "--allow-later",
    is_flag=True,
    help="Rerun even though later migrations are applied (they may have used its output).",
)
@chunk_options
def rerun(
    migration_id: str,
    yes: bool,
    no_backup: bool,
    no_validate: bool,
    allow_later: bool,
    chunk_records: int,
    chunk_bytes: int,
) -> None:
    """Roll back migration ID and apply it again.

    Refused while later migrations are applied, unless --allow-later: they may have read
    or changed what ID wrote, and the rerun would rebuild it from the data as they left it.
    """
    from pebble_migrate import commands
    from pebble_migrate.context import ChunkPolicy

    s = settings()
    out = renderer(s)
    opts = _run_options(
        s,
        out,
        yes,
        destructive=True,
        backup=not no_backup,
        validate=not no_validate,
        policy=ChunkPolicy(chunk_records, chunk_bytes),
    )
    outcome = commands.rerun(
        s.database_path(),
        s.registry(),
        migration_id,
        dry_run=s.dry_run,
        allow_later=allow_later,
        options=opts,
    )
    _show(out, outcome, s.dry_run, not no_backup)
