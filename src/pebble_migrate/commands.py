"""One function per CLI verb, usable from Python: open the database, act, return a record."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import rocksdict

from pebble_migrate import plan as planner
from pebble_migrate import restore, store, views
from pebble_migrate.context import ChunkPolicy
from pebble_migrate.cursor import RunRecord, record_key
from pebble_migrate.errors import (
    MigrateError,
    MigrationFailed,
    NotCleanError,
    PlanError,
    UsageError,
    release_frames,
)
from pebble_migrate.events import Event, Reporter, null_reporter
from pebble_migrate.executor import (
    Executor,
    RunReport,
    initialize,
    interrupted_rerun,
    require_clean,
    run_records,
)
from pebble_migrate.migration import Migration
from pebble_migrate.registry import Registry
from pebble_migrate.space import Ballast, check_space
from pebble_migrate.state import HistoryRecord, State, StateStore, Status
from pebble_migrate.units import utc_now

log = logging.getLogger("pebble_migrate")

Confirm = Callable[[str], bool]
BeforeWrite = Callable[[rocksdict.Rdict, State, planner.Plan], None]


def always(question: str) -> bool:
    """Answer yes to every question (the library default: callers decide about prompts)."""
    return True


class Aborted(MigrateError):
    """Raised when the operator answered no at a confirmation prompt."""

    def __init__(self) -> None:
        super().__init__("aborted; nothing was changed.")


class Session:
    """A database these verbs opened themselves, so they may close and reopen it."""

    def __init__(self, db_path: str | Path, *, read_only: bool, create: bool = False) -> None:
        self.path = Path(db_path)
        self.read_only = read_only
        finished = restore.recover(self.path)
        if finished:
            log.warning("%s", finished)
        self.db = store.open_database(db_path, read_only=read_only, create=create)
        self.states = StateStore(self.db, str(db_path))

    def close(self, *, quiet: bool = False) -> None:
        """Release every handle and close the database (errors ignored when `quiet`)."""
        self.states.release()
        try:
            self.db.close()
        except Exception as exc:  # noqa: BLE001 - rocksdict raises plain Exception
            if not quiet:
                raise store.translate(exc, self.path) from None
        finally:
            gc.collect()  # a failed close still lets go of the LOCK once the object is gone

    def reopen(self) -> None:
        """Close (ignoring errors: the handle may be dead after a failed write) and reopen."""
        self.close(quiet=True)
        self.db = store.open_database(self.path, read_only=self.read_only)
        self.states = StateStore(self.db, str(self.path))


@contextlib.contextmanager
def opened(db_path: str | Path, *, read_only: bool, create: bool = False) -> Iterator[Session]:
    """Open the database and its state store; release and close both on exit."""
    session = Session(db_path, read_only=read_only, create=create)
    failed = False
    try:
        yield session
    except BaseException as exc:
        failed = True
        release_frames(exc)
        raise
    finally:
        session.close(quiet=failed)


# --- status -------------------------------------------------------------------------


@dataclass
class StatusReport:
    """Everything `status` shows."""

    database: str
    state: State
    migrations: list[Migration]
    pending: list[Migration]
    missing: list[str]
    history: list[HistoryRecord]
    last: HistoryRecord | None = None
    interrupted: RunRecord | None = None
    partial: list[RunRecord] = field(default_factory=list)
    fresh_empty: bool = False

    @property
    def check_code(self) -> int:
        """The exit code of `status --check`: 4 not clean, 3 pending, 0 up to date."""
        from pebble_migrate.errors import EXIT_NOT_CLEAN, EXIT_PENDING

        if self.state.status is not Status.CLEAN:
            return EXIT_NOT_CLEAN
        if self.pending and not self.fresh_empty:
            return EXIT_PENDING
        return 0


def status(db_path: str | Path, registry: Registry | None, *, history: int = 5) -> StatusReport:
    """Return the state, pending migrations and recent history (read-only)."""
    migrations = registry.ordered() if registry is not None else []
    with opened(db_path, read_only=True) as session:
        db, states = session.db, session.states
        state = states.read()
        records = run_records(states)
        fresh_empty = not state.initialized and store.is_empty(db, str(db_path))
        recent = states.history(limit=max(history, 1))
    pending = [] if fresh_empty else planner.pending(migrations, state.applied)
    known = {m.id for m in migrations}
    progress = state.in_progress
    interrupted = None
    if progress is not None:
        action = "rollback" if progress.kind == "rollback" else "apply"
        interrupted = records.get((progress.id, action))
    partial = [
        r for (mid, action), r in records.items() if action == "apply" and r is not interrupted
    ]
    return StatusReport(
        database=str(db_path),
        state=state,
        migrations=migrations,
        pending=pending,
        missing=sorted(mid for mid in state.applied if mid not in known) if registry else [],
        history=recent[-history:] if history else [],
        last=recent[-1] if recent else None,
        interrupted=interrupted,
        partial=[r for r in partial if r.migration_id not in state.applied],
        fresh_empty=fresh_empty,
    )


def history(db_path: str | Path, *, limit: int | None = None) -> list[HistoryRecord]:
    """Return the history records, oldest first (read-only)."""
    with opened(db_path, read_only=True) as session:
        return session.states.history(limit=limit)


# --- up / down / rerun --------------------------------------------------------------


@dataclass
class RunOptions:
    """How up/down/rerun run: confirmation, reporting, chunking, signals."""

    confirm: Confirm = always
    reporter: Reporter = null_reporter
    policy: ChunkPolicy = field(default_factory=ChunkPolicy)
    handle_signals: bool = True
    cli_name: str = "pebble-migrate"
    before_write: BeforeWrite | None = None
    check_space: bool = True
    space_multiplier: float = 2.0


@dataclass
class Outcome:
    """The result of up/down/rerun: the plan, and the run report unless it was a dry run."""

    plan: planner.Plan
    report: RunReport | None
    initialized: bool = False
    stamp: bool = False
    cleared: str | None = None


def up(
    db_path: str | Path,
    registry: Registry,
    *,
    target: str | None = None,
    dry_run: bool = False,
    create: bool = False,
    from_start: bool = False,
    options: RunOptions | None = None,
) -> Outcome:
    """Apply pending migrations (up to `target`, a version or id)."""
    opts = options or RunOptions()
    migrations = registry.ordered()
    version = planner.resolve_version(migrations, target, allow_zero=False) if target else None
    with opened(db_path, read_only=dry_run, create=create and not dry_run) as session:
        db, states = session.db, session.states
        state = states.read()
        fresh = not state.initialized
        if fresh and store.is_empty(db, str(db_path)):
            if not dry_run:
                initialize(states, migrations, opts.reporter)
            stamp = planner.Plan("up", (), 0, registry.latest_version)
            return Outcome(stamp, None, fresh, stamp=bool(migrations))
        require_clean(state, {m.id: m for m in migrations}, "up", opts.cli_name)
        plan = planner.plan_up(migrations, state.applied, version, interrupted_rerun(state))
        _check_interrupted_in_plan(state, plan, opts.cli_name)
        if dry_run:
            return Outcome(plan, None)
        if not plan:
            initialize(states, migrations, opts.reporter)
            return Outcome(plan, None, fresh)
        records = _progress_of(states, plan) if from_start else []
        if records:
            _confirm_discard(records, opts)
        elif not opts.confirm(f"Apply {len(plan.steps)} migration(s): {', '.join(plan.ids)}?"):
            raise Aborted()
        if opts.check_space:
            check_space(Path(db_path), opts.space_multiplier)
        state = initialize(states, migrations, opts.reporter)
        _backup_first(db, state, plan, opts)
        _discard(states, records, opts)
        return Outcome(plan, _execute(session, plan, opts), fresh)


def down(
    db_path: str | Path,
    registry: Registry,
    target: str,
    *,
    dry_run: bool = False,
    options: RunOptions | None = None,
) -> Outcome:
    """Roll back every applied migration above `target` (0 rolls back all)."""
    opts = options or RunOptions()
    migrations = registry.ordered()
    version = planner.resolve_version(migrations, target, allow_zero=True)
    with opened(db_path, read_only=dry_run) as session:
        db, states = session.db, session.states
        state = _require_initialized(states, opts.cli_name)
        require_clean(state, {m.id: m for m in migrations}, "down", opts.cli_name)
        records = run_records(states)
        partial = _partly_applied(state, records)
        plan = planner.plan_down(migrations, state.applied, version, partial)
        _check_leftovers_in_plan(state, records, plan, version, opts.cli_name)
        if not plan and state.status is Status.DIRTY:
            return _clear_failed(states, state, plan, opts, dry_run)
        if dry_run or not plan:
            return Outcome(plan, None)
        question = f"Roll back {len(plan.steps)} migration(s): {', '.join(plan.ids)}?"
        partly = [mid for mid in plan.ids if mid in partial]
        if partly:
            question += (
                f" ({', '.join(partly)} only partly applied: its down runs over all the data "
                "its scans cover unless it checks ctx.partial.)"
            )
        if not opts.confirm(question):
            raise Aborted()
        if opts.check_space:
            check_space(Path(db_path), opts.space_multiplier)
        _backup_first(db, state, plan, opts)
        return Outcome(plan, _execute(session, plan, opts))


def _clear_failed(
    states: StateStore, state: State, plan: planner.Plan, opts: RunOptions, dry_run: bool
) -> Outcome:
    """`down` after a failure that left nothing to undo: just record the way back to clean."""
    progress = state.in_progress
    mid = progress.id if progress else "-"
    note = f"{mid} failed and left no writes to undo; status dirty -> clean"
    if dry_run:
        return Outcome(plan, None, cleared=note)
    if not opts.confirm(f"{mid} failed and left no writes; mark the database clean?"):
        raise Aborted()
    record = HistoryRecord(
        0, mid, "rolled back a failed migration", "rollback", utc_now(), 0.0, True, note=note
    )
    states.write_state(state.evolve(status=Status.CLEAN, in_progress=None, last_error=None), record)
    return Outcome(plan, None, cleared=note)


def left_work(state: State, records: dict[tuple[str, str], RunRecord]) -> bool:
    """Return whether the migration the state is stuck on left writes in the database:
    committed scan chunks, or writes made around ctx."""
    progress = state.in_progress
    if state.status is Status.CLEAN or progress is None:
        return False
    action = "rollback" if progress.kind == "rollback" else "apply"
    return (progress.id, action) in records or not progress.resumable


def _check_leftovers_in_plan(
    state: State,
    records: dict[tuple[str, str], RunRecord],
    plan: planner.Plan,
    version: int,
    cli: str,
) -> None:
    """Refuse a `down` that would mark the database clean around a migration that failed
    or stopped halfway and is not among the steps that undo it."""
    progress = state.in_progress
    if progress is None or progress.id in plan.ids or not left_work(state, records):
        return
    half = "rolled back" if progress.kind == "rollback" else "applied"
    raise PlanError(
        f"{progress.id} is half {half} (status {state.status.value}) and is not above "
        f"version {version}, so `down {version}` would leave its work as it is.",
        hint=f"Roll back below it (`{cli} down` to an earlier version), or accept it: "
        f"`{cli} force-clean`, then `{cli} up` or `{cli} rerun {progress.id}`.",
    )


def _partly_applied(state: State, records: dict[tuple[str, str], RunRecord]) -> set[str]:
    """Return migrations not applied whose writes may be in the database: those with
    committed scan chunks, and a failed one that wrote outside ctx."""
    partial = {mid for (mid, action) in records if action == "apply"}
    progress = state.in_progress
    if progress is not None and progress.kind != "rollback" and not progress.resumable:
        partial.add(progress.id)
    return {mid for mid in partial if mid not in state.applied}


def rerun(
    db_path: str | Path,
    registry: Registry,
    migration_id: str,
    *,
    dry_run: bool = False,
    options: RunOptions | None = None,
) -> Outcome:
    """Roll a migration back and apply it again."""
    opts = options or RunOptions()
    migrations = registry.ordered()
    with opened(db_path, read_only=dry_run) as session:
        db, states = session.db, session.states
        state = _require_initialized(states, opts.cli_name)
        require_clean(state, {m.id: m for m in migrations}, "rerun", opts.cli_name)
        plan = _continue_rerun(state, planner.plan_rerun(migrations, state.applied, migration_id))
        if dry_run:
            return Outcome(plan, None)
        if not opts.confirm(f"Roll back and re-apply {plan.steps[-1].id}?"):
            raise Aborted()
        if opts.check_space:
            check_space(Path(db_path), opts.space_multiplier)
        _backup_first(db, state, plan, opts)
        return Outcome(plan, _execute(session, plan, opts))


def _continue_rerun(state: State, plan: planner.Plan) -> planner.Plan:
    """A rerun stopped in its apply phase goes on from there, not from the rollback."""
    target = plan.steps[-1].id
    progress = state.in_progress
    if state.status is not Status.CLEAN and (progress is None or progress.id != target):
        raise NotCleanError(
            f"the database status is {state.status.value}"
            + (f" ({progress.id})" if progress else "")
            + f"; `rerun {target}` needs it clean.",
            hint="Finish or undo that migration first (`pebble-migrate status --verbose`).",
        )
    if interrupted_rerun(state) == target:
        return planner.Plan("rerun", plan.steps[-1:], plan.from_version, plan.to_version)
    return plan


def _backup_first(db: rocksdict.Rdict, state: State, plan: planner.Plan, opts: RunOptions) -> None:
    if opts.before_write is not None:
        opts.before_write(db, state, plan)


def _execute(session: Session, plan: planner.Plan, opts: RunOptions) -> RunReport:
    executor = Executor(
        session.db,
        reporter=opts.reporter,
        policy=opts.policy,
        handle_signals=opts.handle_signals,
        cli_name=opts.cli_name,
    )
    ballast = Ballast(session.path)
    ballast.ensure()
    try:
        return executor.run(plan)
    except MigrationFailed as exc:
        if executor.unrecorded is None:
            raise
        # The disk filled and RocksDB refuses writes on this handle: free the ballast,
        # reopen, and record the failure so the status reads `dirty` with the cursor kept.
        executor.release()
        ballast.release()
        session.reopen()
        try:
            session.states.write_state(*executor.unrecorded)
        except MigrateError:
            raise exc from None
        exc.hint = executor.failure_hint_for(session.states)
        raise
    finally:
        executor.release()
        ballast.release()


def _require_initialized(states: StateStore, cli: str) -> State:
    state = states.read()
    if not state.initialized:
        raise UsageError(
            f"{states.where} has no migration state yet, so nothing has been applied.",
            hint=f"Run `{cli} up` first.",
        )
    return state


def _check_interrupted_in_plan(state: State, plan: planner.Plan, cli: str) -> None:
    progress = state.in_progress
    if state.status is Status.MIGRATING and progress and progress.id not in plan.ids:
        raise UsageError(
            f"{progress.id} was interrupted and must finish before the others.",
            hint=f"Run `{cli} up` without a version (or up to {progress.id}).",
        )


def _progress_of(states: StateStore, plan: planner.Plan) -> list[RunRecord]:
    return [r for (mid, _), r in run_records(states).items() if mid in plan.ids]


def _confirm_discard(records: list[RunRecord], opts: RunOptions) -> None:
    names = ", ".join(f"{r.migration_id} ({r.describe()})" for r in records)
    question = (
        f"Discard the committed progress of {names} and start over? Writes already committed "
        "stay in the database; a transform that is not idempotent will be applied to them again."
    )
    if not opts.confirm(question):
        raise Aborted()


def _discard(states: StateStore, records: list[RunRecord], opts: RunOptions) -> None:
    if not records:
        return
    batch = states.batch()
    try:
        for r in records:
            states.stage_delete(batch, record_key(r.migration_id, r.action))
        states.commit(batch)
    finally:
        del batch
    for r in records:
        views.drop_views(states.where, r.migration_id)
        opts.reporter(
            Event("notice", f"discarded the progress of {r.migration_id}", r.migration_id)
        )
