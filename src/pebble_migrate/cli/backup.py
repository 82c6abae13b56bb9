"""The `backup` command group: create, list, verify, restore, cleanup."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from pebble_migrate.cli import cli
from pebble_migrate.cli.inspect import renderer
from pebble_migrate.cli.options import (
    ENV_DATABASE,
    Settings,
    confirmer,
    dry_run_option,
    global_options,
    settings,
    yes_option,
)
from pebble_migrate.errors import UsageError
from pebble_migrate.units import format_bytes, parse_age, printable

if TYPE_CHECKING:
    from datetime import timedelta

    import rocksdict

    from pebble_migrate.cli.render import Renderer
    from pebble_migrate.plan import Plan
    from pebble_migrate.state import State


@cli.group()
@global_options
def backup() -> None:
    """Take, list, verify, restore and clean up backups (RocksDB checkpoints)."""


@backup.command("create")
@global_options
@dry_run_option
@click.argument("description", required=False, default="manual backup")
@click.option("--compress", is_flag=True, help="Write one portable .tar.gz archive instead.")
@click.option(
    "--copy",
    "copy",
    is_flag=True,
    help="Copy the files (reflinks where the filesystem can) instead of hard-linking them: "
    "survives damage to the live database's files.",
)
def create_cmd(description: str, compress: bool, copy: bool) -> None:
    """Back up the database now (it must not be open in another process).

    By default the backup hard-links the table files (free to take, but it shares them
    with the live database); --copy makes independent files; --compress one archive.
    """
    from pebble_migrate import backup as backups
    from pebble_migrate import store
    from pebble_migrate.paths import resolve_database

    s = settings()
    out = renderer(s)
    mode = "copy" if copy else s.backup_mode()
    if s.dry_run:
        backups.check_description(description)
        database = resolve_database(s.database_path())
        store.check_database_dir(database)
        where = backups.backup_dir_for(database, s.backups())
        if out.json:
            out.emit(
                {
                    "would_back_up": str(database),
                    "backup_dir": str(where),
                    "compress": compress,
                    "mode": mode,
                    "dry_run": True,
                }
            )
        else:
            how = " as one archive" if compress else (" as a copy" if mode == "copy" else "")
            out.say(
                f"Would back up {database!s} into {where!s}{how}. Dry run: nothing was changed."
            )
        return
    _recover(s, out)
    info = backups.create_backup(
        s.database_path(),
        backup_dir=s.backups(),
        description=description,
        compress=compress,
        mode=mode,
    )
    if out.json:
        out.emit({"backup": info.summary()})
    else:
        out.say(f"Backup {info.id} ({format_bytes(info.size_bytes)}) at {info.path!s}")


@backup.command("list")
@global_options
def list_cmd() -> None:
    """List the backups, oldest first."""
    from pebble_migrate import backup as backups
    from pebble_migrate import catalog

    s = settings()
    found = catalog.list_backups(s.database_path(), backup_dir=s.backups())
    kept = catalog.kept_databases(s.database_path())
    where = backups.backup_dir_for(s.database_path(), s.backups())
    others = catalog.others_in(s.database_path(), s.backups())
    out = renderer(s, result=True)
    out.backups(found, kept, where, others)
    for name, why in catalog.unreadable(s.database_path(), s.backups()):
        out.note(printable(f"warning: {name} is not a usable backup: {why}."))


@backup.command("verify")
@global_options
@click.argument("source", metavar="PATH_OR_ID")
def verify_cmd(source: str) -> None:
    """Check that a backup's files match their recorded sizes and checksums."""
    from pathlib import Path

    from pebble_migrate import backup as backups
    from pebble_migrate import restore as restoring

    s = settings()
    db_path = s.database or os.environ.get(ENV_DATABASE) or s.project.database
    if db_path is None and s.backups() is None and not Path(source).exists():
        s.database_path()  # raises the usual "no database given" error
    info = restoring.resolve(source, db_path or "", s.backups())
    backups.verify_backup(info)
    out = renderer(s, result=True)
    if out.json:
        out.emit({"verified": info.summary()})
    else:
        out.say(f"Backup {info.id}: {len(info.files)} files match their checksums.")


@backup.command("restore")
@global_options
@dry_run_option
@click.argument("source", metavar="PATH_OR_ID")
@click.argument("target", required=False)
@click.option(
    "-f",
    "--force",
    is_flag=True,
    help="Go past the safeguard: replace the current database without asking.",
)
@yes_option
@click.option(
    "--other-database", is_flag=True, help="Allow a backup taken of a different database."
)
@click.option(
    "--discard-current",
    is_flag=True,
    help="Delete the replaced database instead of keeping <db>.pre-restore-<time>.",
)
def restore_cmd(
    source: str,
    target: str | None,
    force: bool,
    yes: bool,
    other_database: bool,
    discard_current: bool,
) -> None:
    """Replace the database with a backup, atomically (TARGET or -d names the database)."""
    from pebble_migrate import backup as backups
    from pebble_migrate import restore as restoring

    s = settings()
    dest = _target(s, target)
    out = renderer(s)
    if s.dry_run:
        info = restoring.resolve(source, dest, s.backups())
        backups.verify_backup(info)
        if out.json:
            out.emit({"would_restore": info.summary(), "target": dest, "dry_run": True})
        else:
            out.say(
                f"Would restore backup {info.id} (version {info.version}, verified) into "
                f"{dest}. Dry run: nothing was changed."
            )
        return
    result = restoring.restore_backup(
        source,
        dest,
        backup_dir=s.backups(),
        other_database=other_database,
        discard_current=discard_current,
        confirm=confirmer(force or yes, destructive=True, flag="--yes"),
    )
    if out.json:
        out.emit(
            {
                "restored": result.backup.summary(),
                "target": str(result.target),
                "kept_as": None if result.kept_as is None else str(result.kept_as),
            }
        )
        return
    out.say(
        f"Restored backup {result.backup.id} into {result.target!s} "
        f"(version {result.state.current_version}, {result.state.status.value})."
    )
    if result.kept_as is not None:
        out.say(f"The replaced database is kept at {result.kept_as!s}.")
    if result.recovered is not None:
        out.note(f"First {result.recovered}.")


def _target(s: Settings, target: str | None) -> str:
    from pebble_migrate.paths import resolve_database

    flag = s.database
    if target and flag and resolve_database(target) != resolve_database(flag):
        raise UsageError(
            f"two targets given: {target} and --database {flag}.",
            hint="Give the database once, as TARGET or with -d.",
        )
    return target or s.database_path()


@backup.command("cleanup")
@global_options
@dry_run_option
@click.option("--older-than", metavar="AGE", help="Remove backups older than AGE (30d, 24h, 2w).")
@click.option("--keep", type=click.IntRange(min=1), help="Keep the newest N backups.")
@click.option(
    "-f",
    "--force",
    is_flag=True,
    help="Also remove the newest backup, the one before the last migration, and the newest "
    "database a restore kept.",
)
def cleanup_cmd(older_than: str | None, keep: int | None, force: bool) -> None:
    """Remove old backups, and old databases restores kept (<db>.pre-restore-<time>), by
    the same rules (no questions asked: meant for cron). --dry-run lists them."""
    from pebble_migrate import catalog

    s = settings()
    if older_than is None and keep is None:
        raise UsageError("say what to remove: --older-than AGE, --keep N, or both.")
    try:
        age = parse_age(older_than) if older_than is not None else None
    except ValueError as exc:
        raise UsageError(f"--older-than: {exc}.") from None
    out = renderer(s)
    if not s.dry_run:
        _recover(s, out)
    result = catalog.cleanup_backups(
        s.database_path(),
        backup_dir=s.backups(),
        older_than=age,
        keep=keep,
        force=force,
        dry_run=s.dry_run,
    )
    if out.json:
        out.emit(
            {
                "removed": [b.summary() for b in result.removed]
                + [k.summary() for k in result.kept_removed],
                "protected": [b.summary() for b in result.protected]
                + [k.summary() for k in result.kept_protected],
                "dry_run": s.dry_run,
            }
        )
        return
    verb = "would remove" if s.dry_run else "removed"
    for b in result.removed:
        out.say(f"{verb} {b.id}  {b.description}")
    for b in result.protected:
        out.say(f"kept {b.id} (newest, or undoes the last migration; --force removes it)")
    for k in result.kept_removed:
        out.say(f"{verb} {k.id}  (the database a restore replaced)")
    for k in result.kept_protected:
        out.say(f"kept {k.id} (the newest database a restore replaced, or in use)")
    gone = len(result.removed) + len(result.kept_removed)
    out.say(f"{gone} {verb}, {len(result.kept) + len(result.protected)} kept.")


def take_automatic_backup(
    s: Settings, out: Renderer, db: rocksdict.Rdict, state: State, plan: Plan
) -> None:
    """Take the backup that precedes the first write of up/down/rerun; apply retention."""
    from pebble_migrate import backup as backups
    from pebble_migrate import catalog
    from pebble_migrate.events import Event

    db_path = s.database_path()
    retention = retention_setting(s)  # a bad setting stops the run before the backup, too
    info = backups.create_backup_of_open(
        db,
        db_path,
        backup_dir=s.backups(),
        description=backups.describe_trigger(plan),
        trigger=plan.ids[0],
        mode=s.backup_mode(),
    )
    out.event(
        Event(
            "backup",
            f"backup {info.id} taken at {info.path}",
            None,
            {"id": info.id, "path": str(info.path)},
        )
    )
    if retention is not None:
        keep, age = retention
        removed = catalog.apply_retention(
            db_path,
            backup_dir=s.backups(),
            keep=keep,
            older_than=age,
            last_migration_at=state.last_migration_at,
        )
        for b in removed:
            out.event(Event("backup", f"retention removed backup {b.id}", None, {"id": b.id}))


def _recover(s: Settings, out: Renderer) -> None:
    """Finish or undo a restore into the database that was killed midway."""
    from pebble_migrate import restore as restoring

    message = restoring.recover(s.database_path())
    if message is not None:
        out.note(message[0].upper() + message[1:] + ".")


def retention_setting(s: Settings) -> tuple[int | None, timedelta | None] | None:
    """Return the configured (keep, older-than) retention, or None; raise if it is bad."""
    keep, older = s.project.backup_keep, s.project.backup_older_than
    if keep is None and older is None:
        return None
    try:
        return keep, parse_age(older) if older else None
    except ValueError as exc:
        raise UsageError(f"[tool.pebble-migrate] backup-older-than: {exc}.") from None
