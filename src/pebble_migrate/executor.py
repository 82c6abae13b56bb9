"""Runs a plan: state transitions, atomic commits, failure, interruption and resume."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import signal
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import NoReturn

import rocksdict

from pebble_migrate import store, views
from pebble_migrate.context import ChunkPolicy, MigrationContext, validation_problems
from pebble_migrate.cursor import RunRecord, encode_record, record_key, run_records
from pebble_migrate.errors import (
    CodeChanged,
    MigrateError,
    MigrationFailed,
    MigrationInterrupted,
    StateError,
    UsageError,
    ValidationFailed,
    release_frames,
)
from pebble_migrate.events import Event, Reporter, null_reporter
from pebble_migrate.faults import kill_point
from pebble_migrate.migration import Migration
from pebble_migrate.plan import Plan, Step, version_of
from pebble_migrate.signals import HardStop, SignalGuard
from pebble_migrate.state import (
    HistoryRecord,
    InProgress,
    State,
    StateStore,
    Status,
    new_state,
)
from pebble_migrate.units import printable, utc_now

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
        db_path: Path,
        *,
        reporter: Reporter = null_reporter,
        logger: logging.Logger | None = None,
        policy: ChunkPolicy | None = None,
        handle_signals: bool = True,
        cli_name: str = "pebble-migrate",
        validate: bool = True,
        backup_dir: str | Path | None = None,
    ) -> None:
        self.db = db
        self.db_path = db_path
        self.states = StateStore(db, str(db_path))
        self.logger = logger or log
        self.reporter = _SideChannel(reporter, self.logger)
        self.policy = policy or ChunkPolicy()
        self.cli_name = cli_name
        self.validate = validate
        self.backup_dir = backup_dir
        self.guard = SignalGuard(handle_signals)
        self.state: State = self.states.read()
        self.database_id = self.state.database_id
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

    def check_views(self, plan: Plan) -> None:
        """Raise ViewMissing, before anything runs, if a scan that a step of `plan` would
        resume has lost its frozen view (or holds another run's)."""
        records = run_records(self.states)
        for step in plan.steps:
            action = "apply" if step.action == "apply" else "rollback"
            record = records.get((step.id, action))
            for cursor in (c for c in record.scans.values() if not c.done) if record else ():
                try:
                    view, _ = views.open_view(
                        self.db_path, step.id, action, cursor.name, cursor.token, self.database_id
                    )
                except views.ViewMissing as exc:
                    from pebble_migrate.catalog import resume_impossible_hint

                    exc.hint = resume_impossible_hint(
                        self.db_path, self.backup_dir, step.id, self.cli_name, self.database_id
                    )
                    raise
                store.close_database(view)

    def run(self, plan: Plan) -> RunReport:
        """Run every step of `plan` in order; raise on the first failure or a signal.

        A signal that arrives after the last step's final check still ends the run as
        interrupted (after that step is recorded): the caller must hear of it.
        """
        report = RunReport(plan, from_version=self.state.current_version)
        views.sweep(self.db_path, {mid for mid, _ in run_records(self.states)})
        self._plan = plan
        with self.guard:
            try:
                for index, step in enumerate(plan.steps):
                    if self.interrupted():
                        raise self._stopped_between(plan, index)
                    report.steps.append(self._run_step(step))
                if self.interrupted():
                    raise self._stopped_between(plan, len(plan.steps))
            except HardStop as exc:
                # A second signal can land anywhere, also outside the migration's code
                # (while recording an interruption, say): it always ends the run the same way.
                raise self._hard_stop(self._step or plan.steps[0], exc.signum) from None
        report.to_version = self.state.current_version
        return report

    def _run_step(self, step: Step) -> StepResult:
        self._step = step
        action = "apply" if step.action == "apply" else "rollback"
        record = run_records(self.states).get((step.id, action))
        resumed = record.describe() if record is not None and record.scans else None
        clock = _Clock()
        record = self._begin(step, record, resumed)
        ctx = MigrationContext(
            self.db,
            step.migration,
            run=self,
            record=record,
            logger=self.logger,
            where=str(self.db_path),
        )
        if step.action == "rollback":
            ctx.partial = record.partial
        try:
            self._call(step, ctx, clock)
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

    def _call(self, step: Step, ctx: MigrationContext, clock: _Clock) -> None:
        """Run the migration's function; record and raise anything but a finished run.

        Finished means: the function returned normally (not a coroutine or generator),
        no stop, corruption or storage error was raised inside it (caught or not), and
        every scan it opened reached its end or was left with `break`.
        """
        fn = step.migration.up if step.action == "apply" else step.migration.down
        assert fn is not None
        try:
            returned = fn(ctx)
            _refuse_unrun(step, returned)
            ctx.check_finished()
            if self.guard.second:
                raise HardStop(self.guard.second)
            self._validated(step, ctx)
        except MigrationInterrupted as exc:
            self._interrupted(step, clock, exc.note or exc.message)
            raise
        except HardStop:
            raise
        except KeyboardInterrupt:
            self._interrupted(step, clock, "stopped by KeyboardInterrupt")
            raise
        except BaseException as exc:  # noqa: BLE001 - a migration may raise anything
            details = traceback.format_exc()
            where = ctx.position()  # before the scans are closed
            release_frames(exc)  # the migration's frames may hold iterators of the db
            ctx.release()  # close its scans before recording the failure
            raise self._failed(step, clock, _as_failure(exc), details, where) from None

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

    def _begin(self, step: Step, record: RunRecord | None, resumed: str | None) -> RunRecord:
        """Record that the step runs; return the run record it continues (or a new one).

        A rollback of a migration whose `up` left committed chunks takes that apply
        record's place in the same batch, carrying how far `up` got: from then on only
        the rollback can continue, so no later `up` can resume from a stale position.
        """
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
        state = self.state.evolve(
            status=status,
            in_progress=InProgress(step.id, step.kind, utc_now(), resumable=True),
            last_error=None,
        )
        batch = self.states.batch()
        try:
            if record is None:
                record = self._take_over(step, batch)
            self.states.stage_state(batch, state)
            kill_point("step-begin")
            self.states.commit(batch)
        finally:
            del batch
        self.state = state
        return record

    def _take_over(self, step: Step, batch: rocksdict.WriteBatch) -> RunRecord:
        """Return the new run record of a step, staging the hand-over from the opposite one."""
        if step.action == "apply":
            if (step.id, "rollback") in run_records(self.states):
                raise StateError(
                    f"{step.id} is half rolled back; it cannot be applied until the rollback "
                    "is finished.",
                    hint=f"Run `{self.cli_name} down VERSION` below {step.id}.",
                )
            return RunRecord(step.id, "apply")
        applied = run_records(self.states).get((step.id, "apply"))
        record = RunRecord(step.id, "rollback")
        if applied is not None:
            record.partial = applied.reached()
            self.states.stage_put(batch, record.key, encode_record(record))
            self.states.stage_delete(batch, applied.key)
        return record

    def _validated(self, step: Step, ctx: MigrationContext) -> None:
        """Run an applied migration's `validate` on its committed work; raise if it fails.

        The last writes are committed first, with the finished cursor, so `validate` reads
        what `up` wrote; a failed check leaves the migration dirty with the data as written.
        """
        if step.action != "apply" or not self.validate or step.migration.validate is None:
            return
        ctx.commit_work()
        kill_point("final-before-validate")
        problems = validation_problems(self.db, step.migration, str(self.db_path))
        if problems:
            raise ValidationFailed(problems, migration_id=step.id, cli=self.cli_name)

    def _finish(self, step: Step, ctx: MigrationContext, clock: _Clock) -> None:
        """Commit the migration's last writes with the state that records it, atomically."""
        state = self._finished_state(step)
        note = "wrote outside ctx" if ctx.wrote_directly else None
        batch = ctx.take_batch()
        try:
            state = self.states.stage_history(
                batch, state, self._history(step, clock, success=True, note=note)
            )
            self.states.stage_state(batch, state)
            for action in ("apply", "rollback"):
                self.states.stage_delete(batch, record_key(step.id, action))
            for key in self.states.keys(views.VIEW_PREFIX + f"{step.id}/".encode()):
                self.states.stage_delete(batch, key)
            kill_point("final-before-commit")
            self.states.commit(batch, needed=2 * batch.size_in_bytes())
            kill_point("final-after-commit")
        finally:
            del batch
        self.state = state

    def _finished_state(self, step: Step) -> State:
        now = utc_now()
        applied = set(self.state.applied)
        applied_at = dict(self.state.applied_at)
        if step.action == "apply":
            applied.add(step.id)
            applied_at[step.id] = now
        else:
            applied.discard(step.id)
            applied_at.pop(step.id, None)
        return self.state.evolve(
            status=Status.CLEAN,
            in_progress=None,
            applied=frozenset(applied),
            applied_at=applied_at,
            current_version=version_of(applied),
            last_migration=step.id,
            last_migration_at=now,
            last_error=None,
        )

    def _failed(
        self, step: Step, clock: _Clock, exc: Exception, details: str, where: str | None = None
    ) -> MigrateError:
        error = exc.message if isinstance(exc, MigrateError) else f"{type(exc).__name__}: {exc}"
        error = printable(error)  # an exception's text often carries data
        if where:
            error = f"{error.rstrip('.')} ({where})"
        record = self._history(step, clock, success=False, error=error)
        dirty = self.state.evolve(status=Status.DIRTY, last_error=error)
        try:
            kill_point("failure-before-record")
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
            if isinstance(exc, ValidationFailed):
                hint = exc.hint or hint
            elif isinstance(exc, CodeChanged):
                hint = self._code_changed_hint(step)
            elif isinstance(exc, MigrateError) and exc.hint:
                hint = f"{exc.hint} {hint}"
        failed = MigrationFailed(step.id, error, hint=hint, details=details)
        failed.cause = exc
        return failed

    def _interrupted(self, step: Step, clock: _Clock, note: str) -> None:
        progress = self.state.in_progress
        assert progress is not None  # _begin recorded it before the migration's code ran
        self.state = self.state.evolve(in_progress=replace(progress, note=note))
        kill_point("interrupt-before-record")
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
        signum = self.interrupted()
        name = signal.Signals(signum).name
        left = plan.ids[index:]
        if not left:
            return MigrationInterrupted(
                f"{name} received as the last step finished; every step of the "
                f"{plan.command} was recorded ({', '.join(plan.ids)})",
                signum=signum,
                hint="The database is clean; nothing is left to run.",
            )
        done = f"after {plan.ids[index - 1]}" if index else "before the first step"
        cli = self.cli_name
        if plan.command == "rerun":
            step = plan.steps[index]
            again = (
                f"Run `{cli} up {step.migration.version}` to apply it again"
                if step.action == "apply"
                else f"Run `{cli} rerun {step.id}` again"
            )
            hint = f"The database is clean. {again}."
        else:
            hint = (
                f"The database is clean. Run `{cli} {plan.command} {plan.to_version}` to continue."
            )
        return MigrationInterrupted(
            f"stopped {done}; {len(left)} step(s) not run: {', '.join(left)}",
            signum=signum,
            hint=hint,
        )

    def _down_to(self) -> str:
        """The VERSION of the `down VERSION` that finishes this rollback (the plan's target,
        whether it was given as a version or as --steps)."""
        return str(self._plan.to_version) if self._plan is not None else "VERSION"

    def _continue_hint(self, step: Step) -> str:
        cli = self.cli_name
        if self._plan is not None and self._plan.command == "rerun":
            return f"Run `{cli} rerun {step.id}` to continue where it stopped."
        if step.action == "rollback":
            return f"The status stays `rollback`. Run `{cli} down {self._down_to()}` to finish."
        if step.migration.rerunnable or (
            self.state.in_progress is not None and self.state.in_progress.resumable
        ):
            return f"The status stays `migrating`. Run `{cli} up` to continue where it stopped."
        return (
            f"The status stays `migrating`, and {step.id} wrote outside ctx, so it cannot "
            f"resume by itself. See `{cli} status --verbose`. `{cli} force-clean`, then "
            f"`{cli} up`, goes on after the last key it committed (from its first key if "
            "none) and runs again what it wrote outside ctx since: do it if that is safe "
            "(mark it `rerunnable = True` if "
            "it always is); `up --from-start` instead runs it again over everything. Or "
            f"restore a backup (`{cli} backup list`)."
        )

    def _code_changed_hint(self, step: Step) -> str:
        from pebble_migrate.catalog import resume_impossible_hint

        cli = self.cli_name
        way_out = resume_impossible_hint(
            self.db_path, self.backup_dir, step.id, cli, self.database_id, forced=True
        ).removeprefix("Nothing was changed. ")
        return (
            f"The status is now `dirty`; what the run that stopped committed is kept. Put "
            f"the code of {step.id} back as it was, then run `{cli} force-clean` and "
            f"`{cli} up`. Or: {way_out}"
        )

    def failure_hint_for(self, states: StateStore) -> str:
        """Return the failure hint for the current step, read through `states`."""
        assert self._step is not None
        return self._failure_hint(self._step, states)

    def _failure_hint(self, step: Step, states: StateStore | None = None) -> str:
        cli = self.cli_name
        records = run_records(states or self.states)
        record = records.get((step.id, "apply" if step.action == "apply" else "rollback"))
        if step.action == "rollback":
            return (
                "The status is now `dirty`; the failed chunk was discarded. Fix the cause, then "
                f"run `{cli} down {self._down_to()}` to continue the rollback; or restore a "
                f"backup (`{cli} backup list`)."
            )
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


class _SideChannel:
    """A reporter that cannot fail the migration: the first error it raises (a closed pipe,
    a full terminal, a bug in a progress callback) is logged and reporting stops."""

    def __init__(self, reporter: Reporter, logger: logging.Logger) -> None:
        self._reporter: Reporter | None = reporter
        self._logger = logger

    def __call__(self, event: Event) -> None:
        if self._reporter is None:
            return
        try:
            self._reporter(event)
        except Exception as exc:  # noqa: BLE001 - output must never decide the data's fate
            self._reporter = None
            self._logger.warning(
                "progress reporting stopped (%s: %s); the migration goes on",
                type(exc).__name__,
                exc,
            )


def _refuse_unrun(step: Step, returned: object) -> None:
    """Raise if `up`/`down` handed back work it never did (a coroutine, a generator)."""
    if (
        inspect.iscoroutine(returned)
        or inspect.isgenerator(returned)
        or inspect.isasyncgen(returned)
    ):
        kind = type(returned).__name__
        close = getattr(returned, "close", None)
        if callable(close):
            close()  # no "never awaited" warning: we say it ourselves
        raise UsageError(
            f"{step.id} returned a {kind} instead of running: `async def` and functions "
            "containing `yield` are not run by pebble-migrate.",
            hint="Make the migration's functions plain `def` functions.",
        )


class ProcessExit(BaseException):
    """Raised in place of `os._exit` while a migration runs under `guard_process_exit`."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@contextlib.contextmanager
def guard_process_exit() -> Iterator[None]:
    """Make `os._exit` in this process raise ProcessExit for the duration (a forked child
    still exits). The CLI uses it: a migration that ends the process would otherwise leave
    the command's exit code to chance. An application's own process is not touched."""
    real, owner = os._exit, os.getpid()

    def refused(status: int) -> NoReturn:
        if os.getpid() != owner:
            real(status)  # pragma: no cover - forked child only; os._exit skips coverage's save
        raise ProcessExit(status)

    os._exit = refused
    try:
        yield
    finally:
        os._exit = real


def _as_failure(exc: BaseException) -> Exception:
    """Return the error to record for what a migration raised (SystemExit and other
    BaseExceptions are failures, never a clean exit)."""
    if isinstance(exc, Exception):
        return exc
    if isinstance(exc, SystemExit | ProcessExit):
        call = "sys.exit" if isinstance(exc, SystemExit) else "os._exit"
        return UsageError(
            f"the migration called {call}({exc.code!r}); its work is not finished.",
            hint="A migration must return (or raise) instead of exiting the process.",
        )
    return UsageError(f"the migration raised {type(exc).__name__}: {exc}")
