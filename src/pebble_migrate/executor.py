"""Runs a plan: state transitions, atomic commits, failure, interruption and resume."""

from __future__ import annotations

import logging
import signal
import time
import traceback
from dataclasses import dataclass, field, replace
from datetime import datetime

import rocksdict

from pebble_migrate import store, views
from pebble_migrate.context import ChunkPolicy, MigrationContext
from pebble_migrate.cursor import RunRecord, decode_record, record_key
from pebble_migrate.errors import (
    MigrateError,
    MigrationFailed,
    MigrationInterrupted,
    NotCleanError,
    release_frames,
)
from pebble_migrate.events import Event, Reporter, null_reporter
from pebble_migrate.faults import kill_point
from pebble_migrate.migration import Migration
from pebble_migrate.plan import Plan, Step, version_of
from pebble_migrate.signals import HardStop, SignalGuard
from pebble_migrate.state import (
    CURSOR_PREFIX,
    HistoryRecord,
    InProgress,
    State,
    StateStore,
    Status,
    new_state,
)
from pebble_migrate.units import utc_now

log = logging.getLogger("pebble_migrate")


@dataclass(frozen=True)
class StepResult:
    """What one step did."""

    id: str
    action: str
    kind: str
    duration_s: float
    resumed: str | None = None


@dataclass
class RunReport:
    """What a run did: the steps completed and the version before and after."""

    plan: Plan
    steps: list[StepResult] = field(default_factory=list)
    from_version: int = 0
    to_version: int = 0


def initialize(states: StateStore, migrations: list[Migration], reporter: Reporter) -> State:
    """Give a database its first state record, unless it has one; return the state.

    An empty database is stamped at the latest version with every known migration marked
    applied (the app creates data in the newest shape); a database that already holds data
    starts at version 0, so every migration runs.
    """
    state = states.read()
    if state.initialized:
        return state
    fresh = new_state()
    if not store.is_empty(states.db, states.where) or not migrations:
        reporter(Event("notice", "initialized migration state at version 0"))
        return states.write_state(fresh)
    now = utc_now()
    stamped = fresh.evolve(
        applied=frozenset(m.id for m in migrations),
        applied_at={m.id: now for m in migrations},
        current_version=version_of(m.id for m in migrations),
        last_migration=migrations[-1].id,
        last_migration_at=now,
    )
    records = [
        HistoryRecord(
            0, m.id, m.description, "apply", now, 0.0, True, note="skipped: fresh database"
        )
        for m in migrations
    ]
    reporter(
        Event(
            "notice",
            f"fresh database: stamped at version {stamped.current_version} "
            f"with {len(migrations)} migration(s) marked applied",
        )
    )
    return states.write_state(stamped, *records)


def run_records(states: StateStore) -> dict[tuple[str, str], RunRecord]:
    """Return the committed run records (scan cursors) keyed by (migration id, action)."""
    records = {}
    for _, data in states.items(CURSOR_PREFIX):
        record = decode_record(data)
        records[(record.migration_id, record.action)] = record
    return records


@dataclass
class _Clock:
    """When a step started: wall time for the record, monotonic time for its duration."""

    started_at: datetime = field(default_factory=utc_now)
    started: float = field(default_factory=time.monotonic)

    def took(self) -> float:
        """Return the seconds since the start."""
        return time.monotonic() - self.started


class Executor:
    """Applies and rolls back migrations against one open database."""

    def __init__(
        self,
        db: rocksdict.Rdict,
        *,
        reporter: Reporter = null_reporter,
        logger: logging.Logger | None = None,
        policy: ChunkPolicy | None = None,
        handle_signals: bool = True,
        cli_name: str = "pebble-migrate",
    ) -> None:
        self.db = db
        self.db_path = str(db.path())
        self.states = StateStore(db, self.db_path)
        self.reporter = reporter
        self.logger = logger or log
        self.policy = policy or ChunkPolicy()
        self.cli_name = cli_name
        self.guard = SignalGuard(handle_signals)
        self.state: State = self.states.read()
        self._step: Step | None = None
        self._plan: Plan | None = None
        self.unrecorded: tuple[State, HistoryRecord] | None = None

    def release(self) -> None:
        """Drop every rocksdict handle held, so the caller can close the database."""
        self.states.release()

    # --- the Run protocol, used by MigrationContext -------------------------------

    def interrupted(self) -> int:
        """Return the first signal received during the run, or 0."""
        return self.guard.interrupted()

    def report(self, event: Event) -> None:
        """Pass an event to the reporter."""
        self.reporter(event)

    def direct_write(self) -> None:
        """Record durably that the running migration wrote around ctx (not resumable)."""
        progress = self.state.in_progress
        if progress is not None and progress.resumable:
            self.state = self.states.write_state(
                self.state.evolve(in_progress=replace(progress, resumable=False))
            )

    def stop(self, record: RunRecord, at: str) -> MigrateError:
        """Return the error that ends a run stopped by a signal at a committed point."""
        signum = self.interrupted() or signal.SIGINT
        step = self._step
        assert step is not None
        scans = [c for c in record.scans.values() if c.name]
        current = next((c for c in reversed(scans) if not c.done), None)
        count = ""
        if current is not None:
            total = f" of ~{current.total}" if current.total is not None else ""
            count = f" ({current.count}{total})"
        error = MigrationInterrupted(
            f"interrupted {step.id} {at}{count}",
            signum=signum,
            hint=self._continue_hint(step),
        )
        error.note = f"interrupted {at}{count}"
        return error

    # --- running ------------------------------------------------------------------

    def run(self, plan: Plan) -> RunReport:
        """Run every step of `plan` in order; raise on the first failure or a signal."""
        report = RunReport(plan, from_version=self.state.current_version)
        views.sweep(self.db_path, {mid for mid, _ in run_records(self.states)})
        self._plan = plan
        with self.guard:
            try:
                for index, step in enumerate(plan.steps):
                    if self.interrupted():
                        raise self._stopped_between(plan, index)
                    report.steps.append(self._run_step(step))
            except HardStop as exc:
                # A second signal can land anywhere, also outside the migration's code
                # (while recording an interruption, say): it always ends the run the same way.
                raise self._hard_stop(self._step or plan.steps[0], exc.signum) from None
        report.to_version = self.state.current_version
        return report

    def _run_step(self, step: Step) -> StepResult:
        self._step = step
        action = "apply" if step.action == "apply" else "rollback"
        records = run_records(self.states)
        record = records.get((step.id, action))
        resumed = record.describe() if record is not None else None
        clock = _Clock()
        self._begin(step, resumed)
        ctx = MigrationContext(
            self.db,
            step.migration,
            run=self,
            record=record or RunRecord(step.id, action),
            logger=self.logger,
        )
        if step.action == "rollback" and (step.id, "apply") in records:
            ctx.partial = records[(step.id, "apply")].reached()
        fn = step.migration.up if step.action == "apply" else step.migration.down
        assert fn is not None
        try:
            try:
                fn(ctx)
            except MigrationInterrupted as exc:
                self._interrupted(step, clock, exc.note or exc.message)
                raise
            except HardStop:
                raise
            except (KeyboardInterrupt, SystemExit) as exc:
                self._interrupted(step, clock, f"stopped by {type(exc).__name__}")
                raise
            except Exception as exc:  # noqa: BLE001 - a migration may raise anything
                details = traceback.format_exc()
                release_frames(exc)  # the migration's frames may hold iterators of the db
                ctx.release()  # close its scans before recording the failure
                raise self._failed(step, clock, exc, details) from None
            self._finish(step, ctx, clock)
        finally:
            ctx.release()
        views.drop_views(self.db_path, step.id)
        verb = "applied" if step.action == "apply" else "rolled back"
        took = clock.took()
        self.reporter(
            Event("step_done", f"{verb} {step.id} in {took:.2f}s", step.id, {"kind": step.kind})
        )
        return StepResult(step.id, step.action, step.kind, took, resumed)

    def _history(
        self,
        step: Step,
        clock: _Clock,
        *,
        success: bool,
        error: str | None = None,
        note: str | None = None,
    ) -> HistoryRecord:
        """Return the history record of this step (numbered when it is staged)."""
        return HistoryRecord(
            0,
            step.id,
            step.migration.description,
            step.kind,
            clock.started_at,
            clock.took(),
            success,
            error=error,
            note=note,
        )

    def _begin(self, step: Step, resumed: str | None) -> None:
        status = Status.MIGRATING if step.action == "apply" else Status.ROLLBACK
        progress = self.state.in_progress
        if resumed is not None:
            self.reporter(Event("resume", f"resuming {step.id} {resumed}", step.id))
        elif progress is not None and progress.id == step.id and self.state.status == status:
            self.reporter(
                Event("resume", f"restarting interrupted {step.id} from its start", step.id)
            )
        verb = "applying" if step.action == "apply" else "rolling back"
        self.reporter(
            Event("step_start", f"{verb} {step.id}: {step.migration.description}", step.id)
        )
        self.state = self.states.write_state(
            self.state.evolve(
                status=status,
                in_progress=InProgress(step.id, step.kind, utc_now(), resumable=True),
                last_error=None,
            )
        )

    def _finish(self, step: Step, ctx: MigrationContext, clock: _Clock) -> None:
        """Commit the migration's last writes with the state that records it, atomically."""
        now = utc_now()
        applied = set(self.state.applied)
        applied_at = dict(self.state.applied_at)
        if step.action == "apply":
            applied.add(step.id)
            applied_at[step.id] = now
        else:
            applied.discard(step.id)
            applied_at.pop(step.id, None)
        state = self.state.evolve(
            status=Status.CLEAN,
            in_progress=None,
            applied=frozenset(applied),
            applied_at=applied_at,
            current_version=version_of(applied),
            last_migration=step.id,
            last_migration_at=now,
            last_error=None,
        )
        note = "wrote outside ctx" if ctx.wrote_directly else None
        batch = ctx.take_batch()
        try:
            state = self.states.stage_history(
                batch, state, self._history(step, clock, success=True, note=note)
            )
            self.states.stage_state(batch, state)
            for action in ("apply", "rollback"):
                self.states.stage_delete(batch, record_key(step.id, action))
            kill_point("final-before-commit")
            self.states.commit(batch, needed=2 * batch.size_in_bytes())
            kill_point("final-after-commit")
        finally:
            del batch
        self.state = state

    def _failed(self, step: Step, clock: _Clock, exc: Exception, details: str) -> MigrateError:
        error = exc.message if isinstance(exc, MigrateError) else f"{type(exc).__name__}: {exc}"
        record = self._history(step, clock, success=False, error=error)
        dirty = self.state.evolve(status=Status.DIRTY, last_error=error)
        try:
            self.state = self.states.write_state(dirty, record)
        except MigrateError as write_error:
            # Typically a full disk: this handle takes no more writes. Whoever owns the
            # database may reopen it and write `unrecorded`; until then the status stays
            # `migrating`, which is safe, and the committed cursor is intact.
            self.logger.warning("could not record the failure of %s: %s", step.id, write_error)
            self.unrecorded = (dirty, record)
            hint = (
                f"The failure could not be recorded ({write_error.message}); the status stays "
                f"`migrating` and committed work is kept. Free space, then run "
                f"`{self.cli_name} up` to continue."
            )
        else:
            self.reporter(Event("step_failed", f"{step.id} failed: {error}", step.id))
            hint = self._failure_hint(step)
            if isinstance(exc, MigrateError) and exc.hint:
                hint = f"{exc.hint}\n{hint}"
        failed = MigrationFailed(step.id, error, hint=hint, details=details)
        failed.cause = exc
        return failed

    def _interrupted(self, step: Step, clock: _Clock, note: str) -> None:
        progress = self.state.in_progress
        if progress is not None:
            self.state = self.state.evolve(in_progress=replace(progress, note=note))
        self.state = self.states.write_state(
            self.state, self._history(step, clock, success=False, note=note)
        )
        self.reporter(Event("interrupted", note, step.id))

    def _hard_stop(self, step: Step, signum: int) -> MigrateError:
        return MigrationInterrupted(
            f"stopped {step.id} at once on a second {signal.Signals(signum).name}; "
            "the open chunk was not committed",
            signum=signum,
            hint=self._continue_hint(step),
        )

    def _stopped_between(self, plan: Plan, index: int) -> MigrateError:
        left = plan.ids[index:]
        done = f"after {plan.ids[index - 1]}" if index else "before the first step"
        return MigrationInterrupted(
            f"stopped {done}; {len(left)} step(s) not run: {', '.join(left)}",
            signum=self.interrupted(),
            hint=f"The database is clean. Run `{self.cli_name} {plan.command}` again to continue.",
        )

    def _continue_hint(self, step: Step) -> str:
        cli = self.cli_name
        if self._plan is not None and self._plan.command == "rerun":
            return f"Run `{cli} rerun {step.id}` to continue where it stopped."
        if step.action == "rollback":
            return f"The status stays `rollback`. Run `{cli} down` with the same version to finish."
        if step.migration.rerunnable or (
            self.state.in_progress is not None and self.state.in_progress.resumable
        ):
            return f"The status stays `migrating`. Run `{cli} up` to continue where it stopped."
        return (
            f"The status stays `migrating`, and {step.id} wrote outside ctx, so it cannot "
            f"resume by itself. See `{cli} status --verbose`, then `{cli} force-clean` and "
            f"`{cli} up` if it is safe to run again, or restore a backup "
            f"(`{cli} backup list`)."
        )

    def failure_hint_for(self, states: StateStore) -> str:
        """Return the failure hint for the current step, read through `states`."""
        assert self._step is not None
        return self._failure_hint(self._step, states)

    def _failure_hint(self, step: Step, states: StateStore | None = None) -> str:
        cli = self.cli_name
        records = run_records(states or self.states)
        record = records.get((step.id, "apply" if step.action == "apply" else "rollback"))
        kept = ""
        if record is not None and record.scans:
            kept = (
                f" Work committed so far is kept: after `{cli} force-clean`, `{cli} up` "
                f"continues {record.describe()}."
            )
        return (
            f"The status is now `dirty`; the failed chunk was discarded.{kept} "
            f"Fix the cause, then run `{cli} force-clean` and `{cli} up`; or roll back with "
            f"`{cli} down VERSION`; or restore a backup (`{cli} backup list`)."
        )


def interrupted_rerun(state: State) -> str | None:
    """Return the id of an applied migration whose rerun stopped in its apply phase."""
    progress = state.in_progress
    if state.status is Status.MIGRATING and progress and progress.id in state.applied:
        return progress.id
    return None


def require_clean(state: State, migrations: dict[str, Migration], command: str, cli: str) -> None:
    """Raise NotCleanError unless `command` may run in this state.

    A `migrating` status is accepted by up when the interrupted migration can continue by
    itself: it is rerunnable, or it wrote only through ctx (resumable). `down` is accepted
    from `dirty` (rolling back to the previous version is one of the ways out of a failure)
    and from an interrupted `rollback` it can resume. Otherwise the operator decides.
    """
    if state.status is Status.CLEAN:
        return
    progress = state.in_progress
    mid = progress.id if progress else "an unknown migration"
    migration = migrations.get(progress.id) if progress else None
    resumable = migration is not None and progress is not None and progress.resumable
    if state.status in (Status.MIGRATING, Status.ROLLBACK) and command == "rerun" and resumable:
        return  # the rerun of this very migration goes on (checked against the plan)
    if state.status is Status.MIGRATING and command in ("up", "startup"):
        if (
            migration is not None
            and progress is not None
            and (progress.resumable or migration.rerunnable)
        ):
            return
        raise NotCleanError(
            f"migration {mid} was interrupted and cannot safely continue by itself "
            + ("(its code is missing)." if migration is None else "(it wrote outside ctx)."),
            hint=_recovery_options(cli),
        )
    if state.status is Status.ROLLBACK and command == "down" and resumable:
        return
    if state.status is Status.DIRTY and command == "down":
        return
    if state.status is Status.DIRTY:
        raise NotCleanError(
            f"the database is dirty: migration {mid} failed: {state.last_error}",
            hint=_recovery_options(cli),
        )
    raise NotCleanError(
        f"the database status is {state.status.value} (migration {mid}); "
        f"`{command}` needs it clean.",
        hint=_recovery_options(cli),
    )


def _recovery_options(cli: str) -> str:
    return (
        f"Check with `{cli} status --verbose` and `{cli} validate`. If the migration is safe "
        f"to run again: `{cli} force-clean`, then `{cli} up`. Or restore a backup: "
        f"`{cli} backup list`, then `{cli} backup restore ID --force`."
    )
