"""One function per CLI verb, usable from Python: open the database, act, return a record."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import rocksdict

from pebble_migrate import plan as planner
from pebble_migrate import store, transitions
from pebble_migrate.cursor import RunRecord, record_key, run_records
from pebble_migrate.errors import (
    MigrateError,
    MigrationFailed,
    NotCleanError,
    PlanError,
    UsageError,
    release_frames,
    reports_filesystem_errors,
)
from pebble_migrate.events import Event, Reporter, null_reporter
from pebble_migrate.migration import Migration
from pebble_migrate.paths import resolve_database, restore_leftovers
from pebble_migrate.registry import Registry
from pebble_migrate.state import HistoryRecord, State, StateStore, Status
from pebble_migrate.units import utc_now

# What only running migrations needs (the executor, the migration context, the views, the
# space check) is imported by the functions that run them: `status` and `history` are
# read on every start of an application or a shell prompt, and pay only for what they read.
if TYPE_CHECKING:
    from pebble_migrate.context import ChunkPolicy
    from pebble_migrate.executor import RunReport

log = logging.getLogger("pebble_migrate")

Confirm = Callable[[str], bool]
BeforeWrite = Callable[[rocksdict.Rdict, State, planner.Plan], None]


def always(question: str) -> bool:
    """Answer yes to every question (the library default: callers decide about prompts)."""
    return True


class Aborted(MigrateError):
    """Raised when the operator answered no at a confirmation prompt."""

    expected = True  # an answer, not a fault: no traceback, even with -v

    def __init__(self) -> None:
        super().__init__("aborted; nothing was changed.")


class Session:
    """A database these verbs opened themselves, so they may close and reopen it.

    `path` is the resolved database path: every path derived from it (views, backups,
    journals) is the same whatever the working directory or spelling the caller used.
    """

    def __init__(self, db_path: str | Path, *, read_only: bool, create: bool = False) -> None:
        self.path = resolve_database(db_path)
        self.read_only = read_only
        if restore_leftovers(self.path):  # else there is nothing to recover
            from pebble_migrate import restore

            finished = restore.recover(self.path)
            if finished:
                log.warning("%s", finished)
        self.db = store.open_database(self.path, read_only=read_only, create=create)
        self.states = StateStore(self.db, str(self.path))

    def close(self, *, quiet: bool = False) -> None:
        """Release every handle and close the database (a failing close is only logged,
        and not even that when `quiet`: see `store.close_database`)."""
        self.states.release()
        store.close_database(self.db, quiet=quiet)

    def reopen(self) -> None:
        """Close (ignoring errors: the handle may be dead after a failed write) and reopen."""
        self.close(quiet=True)
        self.db = store.open_database(self.path, read_only=self.read_only)
        self.states = StateStore(self.db, str(self.path))


@contextlib.contextmanager
def opened(db_path: str | Path, *, read_only: bool, create: bool = False) -> Iterator[Session]:
    """Open the database and its state store; release and close both on exit."""
    session = Session(db_path, read_only=read_only, create=create)
    try:
        yield session
    except BaseException as exc:
        release_frames(exc)
        session.close(quiet=True)
        raise
    session.close()


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
    reading: transitions.Reading = field(
        default_factory=lambda: transitions.Reading(transitions.Situation.CLEAN)
    )

    @property
    def out_of_order(self) -> list[Migration]:
        """The pending migrations below the current version (`up` refuses them unless
        allowed)."""
        current = planner.version_of(self.state.applied)
        return [m for m in self.pending if m.version < current]

    @property
    def check_code(self) -> int:
        """The exit code of `status --check`: 4 not clean (a run left halfway counts),
        3 pending (a partly applied migration counts), 0 up to date."""
        return self.reading.check_code(bool(self.pending) and not self.fresh_empty)


@reports_filesystem_errors("status")
def status(db_path: str | Path, registry: Registry | None, *, history: int = 5) -> StatusReport:
    """Return the state, pending migrations and recent history (read-only)."""
    migrations = registry.ordered() if registry is not None else []
    with opened(db_path, read_only=True) as session:
        db, states = session.db, session.states
        state = states.read()
        records = run_records(states)
        fresh_empty = not state.initialized and store.is_empty(db, str(session.path))
        recent = states.history(limit=max(history, 1))
    pending = [] if fresh_empty else planner.pending(migrations, state.applied)
    known = {m.id for m in migrations}
    reading = transitions.read(state, records, {m.id: m for m in migrations})
    interrupted = reading.record if state.in_progress is not None else None
    partial = [r for r in records.values() if r is not interrupted]
    return StatusReport(
        database=str(session.path),
        state=state,
        migrations=migrations,
        pending=pending,
        missing=sorted(mid for mid in state.applied if mid not in known) if registry else [],
        history=recent[-history:] if history else [],
        last=recent[-1] if recent else None,
        interrupted=interrupted,
        partial=partial,
        fresh_empty=fresh_empty,
        reading=reading,
    )


@reports_filesystem_errors("history")
def history(db_path: str | Path, *, limit: int | None = None) -> list[HistoryRecord]:
    """Return the history records, oldest first (read-only)."""
    with opened(db_path, read_only=True) as session:
        return session.states.history(limit=limit)


# --- up / down / rerun --------------------------------------------------------------


def _chunk_policy() -> ChunkPolicy:
    from pebble_migrate.context import ChunkPolicy

    return ChunkPolicy()


@dataclass
class RunOptions:
    """How up/down/rerun run: confirmation, reporting, chunking, signals, validation."""

    confirm: Confirm = always
    reporter: Reporter = null_reporter
    policy: ChunkPolicy = field(default_factory=_chunk_policy)
    handle_signals: bool = True
    cli_name: str = "pebble-migrate"
    before_write: BeforeWrite | None = None
    check_space: bool = True
    space_multiplier: float = 2.0
    validate: bool = True
    """Run each applied migration's `validate` before recording it applied."""
    backup_dir: str | Path | None = None
    """Where backups are (for naming the one to restore when a run cannot resume)."""
    guard_process_exit: bool = False
    """Turn a migration's `os._exit` into a failure (the CLI sets it; it owns its process)."""
    allow_out_of_order: bool = False
    """Let `up` apply pending migrations whose version is below the current version."""


@dataclass
class Outcome:
    """The result of up/down/rerun: the plan, and the run report unless it was a dry run."""

    plan: planner.Plan
    report: RunReport | None
    initialized: bool = False
    stamp: bool = False
    cleared: str | None = None
    later: tuple[str, ...] = ()
    """For a rerun: the applied migrations after the one rerun (allowed explicitly)."""
    out_of_order: tuple[str, ...] = ()
    """For up: the migrations of the plan that run below the current version (allowed)."""
    created: str | None = None
    """For `up --create --dry-run` at a path with no database: where it would create one."""


@reports_filesystem_errors("up")
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
    from pebble_migrate.executor import initialize
    from pebble_migrate.space import check_space

    opts = options or RunOptions()
    migrations = registry.ordered()
    version = planner.resolve_version(migrations, target, allow_zero=False) if target else None
    if create and dry_run:
        store.refuse_file_in_the_way(resolve_database(db_path))
    if create and dry_run and store.is_creatable(resolve_database(db_path)):
        # What `up --create` would do there: create an empty database and stamp it.
        stamp = planner.Plan("up", (), 0, registry.latest_version)
        where = str(resolve_database(db_path))
        return Outcome(stamp, None, True, stamp=bool(migrations), created=where)
    with opened(db_path, read_only=dry_run, create=create and not dry_run) as session:
        db, states = session.db, session.states
        state = states.read()
        fresh = not state.initialized
        if fresh and store.is_empty(db, str(session.path)):
            if not dry_run:
                initialize(states, migrations, opts.reporter)
            stamp = planner.Plan("up", (), 0, registry.latest_version)
            return Outcome(stamp, None, fresh, stamp=bool(migrations))
        records = run_records(states)
        by_id = {m.id: m for m in migrations}
        reading = transitions.read(state, records, by_id)
        transitions.decide(reading, "up", opts.cli_name)
        rerun = transitions.rerun_to_finish(reading, state)
        first = transitions.to_continue(reading)
        plan = planner.plan_up(migrations, state.applied, version, rerun, first)
        _check_half_done_in_plan(reading, plan, by_id, opts.cli_name)
        late = tuple(
            planner.check_order(
                plan,
                migrations,
                state.applied,
                allowed=opts.allow_out_of_order,
                halfway=first,
                cli=opts.cli_name,
            )
        )
        discard = [r for r in records.values() if r.migration_id in plan.ids] if from_start else []
        if not discard:
            _check_views(session, plan, opts)
        if dry_run:
            return Outcome(plan, None, out_of_order=late)
        if not plan:
            initialize(states, migrations, opts.reporter)
            return Outcome(plan, None, fresh)
        if discard:
            _confirm_discard(discard, opts)
        elif not opts.confirm(f"Apply {len(plan.steps)} migration(s): {', '.join(plan.ids)}?"):
            raise Aborted()
        if opts.check_space:
            check_space(session.path, opts.space_multiplier)
        state = initialize(states, migrations, opts.reporter)
        _backup_first(db, state, plan, opts)
        _discard(session, discard, opts)
        return Outcome(plan, _execute(session, plan, opts), fresh, out_of_order=late)


@reports_filesystem_errors("down")
def down(
    db_path: str | Path,
    registry: Registry,
    target: str | None = None,
    *,
    steps: int | None = None,
    dry_run: bool = False,
    options: RunOptions | None = None,
) -> Outcome:
    """Roll back every applied migration above `target` (0 rolls back all), or, with
    `steps`, the `steps` applied migrations with the highest versions."""
    from pebble_migrate.space import check_space

    opts = options or RunOptions()
    migrations = registry.ordered()
    if (target is None) == (steps is None):
        raise UsageError(
            "say how far to roll back: a VERSION or --steps N"
            + (", not both." if target is not None else "."),
            hint=f"`{opts.cli_name} down VERSION` keeps VERSION applied and rolls back what "
            f"is above it (0 = everything); `{opts.cli_name} down --steps 1` rolls back the "
            "newest applied migration.",
        )
    if target is not None:
        version = planner.resolve_version(migrations, target, allow_zero=True)
    with opened(db_path, read_only=dry_run) as session:
        db, states = session.db, session.states
        state = _require_initialized(states, opts.cli_name)
        records = run_records(states)
        reading = transitions.read(state, records, {m.id: m for m in migrations})
        transitions.decide(reading, "down", opts.cli_name)
        partial = _partly_applied(state, records)
        if steps is not None and steps > 1 and reading.rollback_to is not None:
            # Steps count from where things stand: after an interrupted `down --steps N`,
            # the same command again would roll back more than N in all.
            raise NotCleanError(
                f"the rollback of {reading.migration_id} was left halfway, and --steps "
                "counts from where things stand: run again after an interruption, "
                f"`down --steps {steps}` would roll back {steps} more, that one included.",
                hint=f"Nothing was changed. Finish that rollback first with "
                f"`{opts.cli_name} down {reading.rollback_to}` (the same as `down --steps 1`); "
                "then ask for more steps if you want them.",
            )
        if steps is not None:
            # A migration left failed or partly applied is the newest step: `--steps 1`
            # undoes it (or clears its failure), not also the good one below it.
            progress = state.in_progress
            failed = {progress.id} if progress and state.status is Status.DIRTY else set()
            undone = set(state.applied) | partial | (failed - set(state.applied))
            version = planner.steps_back(undone, steps, opts.cli_name)
        plan = planner.plan_down(migrations, state.applied, version, partial)
        _check_leftovers_in_plan(reading, state, records, plan, version, opts.cli_name)
        _check_views(session, plan, opts)
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
            check_space(session.path, opts.space_multiplier)
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
    record = records.get((progress.id, action))
    return _has_work(record) or not progress.resumable


def _has_work(record: RunRecord | None) -> bool:
    """Whether a run record stands for writes in the database: a rollback record always
    does (it carries how far the `up` it undoes got); an apply record once it committed
    something (not when it failed on its first key)."""
    return record is not None and (record.action != "apply" or record.committed_work())


def _check_leftovers_in_plan(
    reading: transitions.Reading,
    state: State,
    records: dict[tuple[str, str], RunRecord],
    plan: planner.Plan,
    version: int,
    cli: str,
) -> None:
    """Refuse a `down` that would leave a migration half done (failed, stopped or left
    halfway by an earlier run) outside the steps it runs."""
    mid = transitions.half_done(reading)
    if mid is None or mid in plan.ids:
        return
    if not _has_work(reading.record) and not left_work(state, records):
        return
    half = "rolled back" if reading.situation in _ROLLING else "applied"
    raise PlanError(
        f"{mid} is half {half} (status {state.status.value}) and is not above "
        f"version {version}, so `down {version}` would leave its work as it is.",
        hint=f"Roll back below it (`{cli} down` to an earlier version)"
        + (
            f", or accept it: `{cli} force-clean`, then `{cli} up` or `{cli} rerun {mid}`."
            if half == "applied"
            else "."
        ),
    )


_ROLLING = (
    transitions.Situation.HALF_ROLLED_BACK,
    transitions.Situation.ROLLING_BACK,
    transitions.Situation.ROLLING_BACK_STUCK,
    transitions.Situation.DIRTY_ROLLBACK,
)


def _partly_applied(state: State, records: dict[tuple[str, str], RunRecord]) -> set[str]:
    """Return migrations not applied whose writes may be in the database: those with
    committed scan chunks (of `up`, or of the `down` that followed), and a failed one that
    wrote outside ctx."""
    # A rollback record carries how far the `up` it undoes got; an apply record with no
    # chunk committed (it failed on its first key) left nothing for `down` to undo.
    partial = {mid for (mid, _), r in records.items() if _has_work(r)}
    progress = state.in_progress
    if progress is not None and progress.kind != "rollback" and not progress.resumable:
        partial.add(progress.id)
    return {mid for mid in partial if mid not in state.applied}


@reports_filesystem_errors("rerun")
def rerun(
    db_path: str | Path,
    registry: Registry,
    migration_id: str,
    *,
    dry_run: bool = False,
    allow_later: bool = False,
    options: RunOptions | None = None,
) -> Outcome:
    """Roll a migration back and apply it again.

    Refused when migrations applied after it may have consumed its output (rebuilding it
    would read what they have since changed), unless `allow_later`.
    """
    from pebble_migrate.space import check_space

    opts = options or RunOptions()
    migrations = registry.ordered()
    with opened(db_path, read_only=dry_run) as session:
        db, states = session.db, session.states
        state = _require_initialized(states, opts.cli_name)
        records = run_records(states)
        reading = transitions.read(state, records, {m.id: m for m in migrations})
        target = planner.find(migrations, migration_id)
        transitions.decide(reading, "rerun", opts.cli_name, target_id=target.id)
        plan = _rerun_plan(reading, state, migrations, target)
        later = planner.applied_after(migrations, state.applied, target.id)
        if later and not allow_later:
            raise PlanError(
                f"{target.id} has later migrations applied: {', '.join(later)}. They may have "
                f"read or changed what {target.id} wrote, and rerunning it now would rebuild "
                "it from the data as they left it.",
                hint=f"Nothing was changed. Roll back to it first (`{opts.cli_name} down "
                f"{target.version}`, then `{opts.cli_name} rerun {target.id}`, then "
                f"`{opts.cli_name} up`), or, if they cannot be affected, add --allow-later.",
            )
        _check_views(session, plan, opts)
        if dry_run:
            return Outcome(plan, None, later=tuple(later))
        question = f"Roll back and re-apply {target.id}?"
        if later:
            question += f" Later migrations stay applied: {', '.join(later)}."
        if not opts.confirm(question):
            raise Aborted()
        if opts.check_space:
            check_space(session.path, opts.space_multiplier)
        _backup_first(db, state, plan, opts)
        return Outcome(plan, _execute(session, plan, opts), later=tuple(later))


def _rerun_plan(
    reading: transitions.Reading, state: State, migrations: list[Migration], target: Migration
) -> planner.Plan:
    """Return the rerun's steps; a rerun stopped halfway goes on from where it stopped."""
    current = planner.version_of(state.applied)
    after = planner.version_of([*state.applied, target.id])
    apply = planner.Step("apply", target, "rerun")
    halfway = reading.migration_id == target.id
    if halfway and reading.situation in (
        transitions.Situation.MIGRATING,
        transitions.Situation.PARTLY_APPLIED,
    ):
        return planner.Plan("rerun", (apply,), current, after)
    if (
        halfway
        and reading.situation in _ROLLING
        and target.id not in state.applied
        and target.down is not None
    ):
        # The rollback of a partly applied migration stopped: finish it, then apply.
        back = planner.Step("rollback", target, "rollback")
        return planner.Plan("rerun", (back, apply), current, after)
    return planner.plan_rerun(migrations, state.applied, target.id)


def _backup_first(db: rocksdict.Rdict, state: State, plan: planner.Plan, opts: RunOptions) -> None:
    if opts.before_write is not None:
        opts.before_write(db, state, plan)


def _execute(session: Session, plan: planner.Plan, opts: RunOptions) -> RunReport:
    from pebble_migrate.executor import Executor, guard_process_exit
    from pebble_migrate.space import Ballast

    executor = Executor(
        session.db,
        session.path,
        reporter=opts.reporter,
        policy=opts.policy,
        handle_signals=opts.handle_signals,
        cli_name=opts.cli_name,
        validate=opts.validate,
        backup_dir=opts.backup_dir,
    )
    ballast = Ballast(session.path)
    ballast.ensure()
    exits = guard_process_exit() if opts.guard_process_exit else contextlib.nullcontext()
    try:
        with exits:
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


def _check_half_done_in_plan(
    reading: transitions.Reading, plan: planner.Plan, by_id: dict[str, Migration], cli: str
) -> None:
    """Refuse an `up` that would run other migrations while one is left halfway, or that
    cannot continue it because its code is gone."""
    mid = transitions.half_done(reading)
    if mid is None:
        return
    if mid not in by_id:
        raise NotCleanError(
            f"{mid} is {reading.situation.value} and its code is missing from the "
            "migrations directory, so it cannot be continued.",
            hint=f"Restore the migration file, or restore a backup (`{cli} backup list`).",
        )
    if mid not in plan.ids:
        raise UsageError(
            f"{mid} was left halfway ({reading.situation.value}) and must finish before "
            "the others.",
            hint=f"Run `{cli} up` without a version (or up to {mid}).",
        )


def _check_views(session: Session, plan: planner.Plan, opts: RunOptions) -> None:
    """Refuse, before any write, a run whose resume would need a frozen view that is gone
    or is not its own; name the safe ways out."""
    from pebble_migrate.executor import Executor

    executor = Executor(
        session.db,
        session.path,
        handle_signals=False,
        cli_name=opts.cli_name,
        backup_dir=opts.backup_dir,
    )
    try:
        executor.check_views(plan)
    finally:
        executor.release()


def _confirm_discard(records: list[RunRecord], opts: RunOptions) -> None:
    names = ", ".join(f"{r.migration_id} ({r.describe()})" for r in records)
    question = (
        f"Discard the committed progress of {names} and start over? Writes already committed "
        "stay in the database; a transform that is not idempotent will be applied to them again."
    )
    if not opts.confirm(question):
        raise Aborted()


def _discard(session: Session, records: list[RunRecord], opts: RunOptions) -> None:
    from pebble_migrate import views
    from pebble_migrate.faults import kill_point

    if not records:
        return
    states = session.states
    batch = states.batch()
    try:
        for r in records:
            states.stage_delete(batch, record_key(r.migration_id, r.action))
            for key in states.keys(views.VIEW_PREFIX + f"{r.migration_id}/".encode()):
                states.stage_delete(batch, key)
        kill_point("discard-before-commit")
        states.commit(batch)
    finally:
        del batch
    for r in records:
        views.drop_views(session.path, r.migration_id)
        opts.reporter(
            Event(
                "notice",
                f"discarded the progress of {r.migration_id}; writes it committed stay and "
                "will be processed again",
                r.migration_id,
            )
        )
