"""The startup check an application calls on its open database before serving."""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import rocksdict

from pebble_migrate import plan as planner
from pebble_migrate import restore, store, transitions
from pebble_migrate.context import ChunkPolicy
from pebble_migrate.cursor import run_records
from pebble_migrate.errors import (
    MigrateError,
    MigrationInterrupted,
    NotCleanError,
    PendingMigrations,
    UsageError,
    name_the_cli,
    release_frames,
    reports_filesystem_errors,
)
from pebble_migrate.events import log_reporter
from pebble_migrate.executor import Executor, RunReport, initialize
from pebble_migrate.faults import kill_point
from pebble_migrate.paths import resolve_database
from pebble_migrate.registry import Registry, default_registry
from pebble_migrate.space import check_space
from pebble_migrate.state import State, StateStore, Status

log = logging.getLogger("pebble_migrate")


@dataclass
class StartupOptions:
    """What `check_and_run_startup_migrations` may do. Start from `default_startup_options()`."""

    run_migrations: bool = False
    logger: logging.Logger = field(default_factory=lambda: log)
    backup_enabled: bool = False
    check_disk_space: bool = True
    database_size_multiplier: float = 2.0
    cli_name: str = "pebble-migrate"
    registry: Registry = field(default_factory=lambda: default_registry)
    backup_dir: str | None = None
    backup_keep: int | None = None
    backup_older_than: timedelta | None = None
    chunk_policy: ChunkPolicy = field(default_factory=ChunkPolicy)
    handle_signals: bool = True
    validate_after_apply: bool = True
    backup_mode: str = "link"
    allow_out_of_order: bool = False
    """Apply pending migrations whose version is below the current version (refused
    otherwise, naming them)."""


def default_startup_options() -> StartupOptions:
    """Return the default options: check only, do not run migrations, no backup."""
    return StartupOptions()


@reports_filesystem_errors("open")
def open_database(db_path: str | Path, *, create: bool = False) -> rocksdict.Rdict:
    """Open the database for the application as `rocksdict.Rdict(path)` does: its own
    options, column families and key mode. Unlike it, never creates a database unless
    `create` (then a raw-mode one, at a missing path or an empty directory), and mends a
    database whose newest OPTIONS file misses a column family (a process killed while
    RocksDB created one), which `rocksdict.Rdict(path)` refuses to open. Raises our errors
    (`DatabaseNotFound`, `DatabaseInUse`, `CorruptionError`, ...)."""
    return store.open_database(resolve_database(db_path), read_only=False, create=create)


@reports_filesystem_errors("the start-up check")
def check_and_run_startup_migrations(
    db: rocksdict.Rdict, db_path: str | Path, opts: StartupOptions | None = None
) -> RunReport | None:
    """Bring the open database up to date, or refuse with the command that fixes it.

    Initializes a database with no state; continues a `migrating` one whose migration can
    resume (rerunnable, or written only through ctx); refuses a dirty one or a non-resumable
    interruption; refuses pending migrations unless `run_migrations`; checks free space;
    then runs them. Returns the run report, or None when nothing was pending.

    Whatever it raises holds no rocksdict handle: the caller may keep the error and still
    close and reopen the database.
    """
    try:
        return _check_and_run(db, db_path, opts)
    except MigrateError as exc:
        release_frames(exc)
        from pebble_migrate.catalog import explain_damage

        chosen = opts or default_startup_options()
        explain_damage(exc, db_path, chosen.backup_dir, chosen.cli_name)
        name_the_cli(exc, chosen.cli_name)
        raise
    except BaseException as exc:
        release_frames(exc)
        raise


def _check_and_run(
    db: rocksdict.Rdict, db_path: str | Path, opts: StartupOptions | None
) -> RunReport | None:
    """Do the work of check_and_run_startup_migrations."""
    opts = opts or default_startup_options()
    reporter = log_reporter(opts.logger)
    path = _database_path(db, db_path)
    finished = restore.recover(path)  # leftovers of a restore killed midway
    if finished:
        opts.logger.warning("%s", finished)
    migrations = opts.registry.ordered()
    by_id = {m.id: m for m in migrations}
    states = StateStore(db, str(path))
    try:
        state = states.read()
        if not state.initialized and store.is_empty(db, str(path)):
            initialize(states, migrations, reporter)  # stamped: nothing to run
            return None
        reading = transitions.read(state, run_records(states), by_id)
        transitions.decide(reading, "startup", opts.cli_name)
        plan = planner.plan_up(
            migrations,
            state.applied,
            rerun=transitions.rerun_to_finish(reading, state),
            first=transitions.to_continue(reading),
        )
        if transitions.half_done(reading) is not None and reading.migration_id not in plan.ids:
            raise NotCleanError(
                f"{reading.describe()}; no migration here would finish it.",
                hint=f"See `{opts.cli_name} status --verbose`.",
            )
        if not plan and state.status is not Status.CLEAN:
            raise NotCleanError(
                f"the database status is {state.status.value}, and no migration here would "
                "finish it.",
                hint=f"See `{opts.cli_name} status --verbose`.",
            )
        if not plan:
            initialize(states, migrations, reporter)
            opts.logger.info("database is up to date at version %d", state.current_version)
            return None
        if not opts.run_migrations:
            raise PendingMigrations(plan.ids, opts.cli_name)
        planner.check_order(
            plan,
            migrations,
            state.applied,
            allowed=opts.allow_out_of_order,
            halfway=transitions.to_continue(reading),
            cli=opts.cli_name,
            allow_with="set `allow_out_of_order=True` in the StartupOptions "
            f"(or run `{opts.cli_name} up --allow-out-of-order`)",
        )
        if opts.check_disk_space:
            check_space(path, opts.database_size_multiplier)
        state = initialize(states, migrations, reporter)
    finally:
        states.release()
        del states
    return _run(db, path, plan, state, opts)


def _database_path(db: rocksdict.Rdict, db_path: str | Path) -> Path:
    """Return the resolved database path, refusing a path that is not the open database's."""
    path = resolve_database(db_path)
    opened = Path(str(db.path()))
    try:
        same = opened.exists() and path.exists() and os.path.samefile(opened, path)
    except OSError:
        same = False
    if opened.exists() and path.exists() and not same:
        raise UsageError(
            f"db_path {db_path} is not the directory of the open database ({opened}).",
            hint="Pass the path the database was opened with.",
        )
    return path


def _run(
    db: rocksdict.Rdict, path: Path, plan: planner.Plan, state: State, opts: StartupOptions
) -> RunReport:
    executor = Executor(
        db,
        path,
        reporter=log_reporter(opts.logger),
        logger=opts.logger,
        policy=opts.chunk_policy,
        handle_signals=opts.handle_signals,
        cli_name=opts.cli_name,
        validate=opts.validate_after_apply,
        backup_dir=opts.backup_dir,
    )
    try:
        executor.check_views(plan)
        if opts.backup_enabled:
            _backup(db, path, state, plan, opts)
        kill_point("startup-before-run")
        return executor.run(plan)
    except MigrationInterrupted as exc:
        executor.release()
        _redeliver(exc.signum, executor)
        raise
    finally:
        executor.release()


def _redeliver(signum: int, executor: Executor) -> None:
    """Hand the signal to the application's own handler, once, now that the data is safe.

    A Python handler is called directly rather than by raising the signal again: the
    signal already reached any wakeup fd (asyncio's `add_signal_handler` listens there)
    when it first arrived, and raising it again would deliver it there twice.
    """
    previous = executor.guard.previous_handler(signum)
    executor.guard.restore()
    if previous is None or previous is signal.SIG_IGN:
        return
    if previous is signal.SIG_DFL:
        signal.raise_signal(signum)  # the default action: SIGTERM ends the process
        return
    previous(signum, None)


def _backup(
    db: rocksdict.Rdict,
    db_path: str | Path,
    state: State,
    plan: planner.Plan,
    opts: StartupOptions,
) -> None:
    from pebble_migrate import backup, catalog

    info = backup.create_backup_of_open(
        db,
        db_path,
        backup_dir=opts.backup_dir,
        description=backup.describe_trigger(plan),
        trigger=plan.ids[0],
        mode=opts.backup_mode,
    )
    opts.logger.info("backup %s taken at %s", info.id, info.path)
    if opts.backup_keep is not None or opts.backup_older_than is not None:
        removed = catalog.apply_retention(
            db_path,
            backup_dir=opts.backup_dir,
            keep=opts.backup_keep,
            older_than=opts.backup_older_than,
            last_migration_at=state.last_migration_at,
        )
        for old in removed:
            opts.logger.info("retention removed backup %s", old.id)
