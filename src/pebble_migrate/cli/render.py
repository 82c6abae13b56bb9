"""The only place that prints: styled text for people, JSON lines for programs."""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pebble_migrate.cli.outlet import OUTPUT, Outlet
from pebble_migrate.cli.screen import Cell, Screen, Styled, columns, styled
from pebble_migrate.errors import MigrateError, MigrationFailed, name_the_cli
from pebble_migrate.transitions import TABLE, Situation
from pebble_migrate.units import (
    format_age,
    format_bytes,
    format_duration,
    format_time,
    one_line,
    printable,
    utc_now,
    version_time,
)

# What the renderer shows is only named in annotations: importing it here would make
# every command (`status` above all) pay for the modules of every other one. Progress
# bars are imported by the first one shown.
if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from pebble_migrate.backup import BackupInfo
    from pebble_migrate.catalog import KeptDatabase
    from pebble_migrate.commands import Outcome, StatusReport
    from pebble_migrate.events import Event
    from pebble_migrate.maintenance import ForceCleanResult, RepairReport, StampResult
    from pebble_migrate.plan import Plan
    from pebble_migrate.state import HistoryRecord, State, Status
    from pebble_migrate.transitions import Reading
    from pebble_migrate.validation import ValidationReport

LOG_EVERY_S = 5.0


def _plain(value: Any) -> Any:  # noqa: PLR0911 - one return per kind of value reads best
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, frozenset | set):
        return sorted(_plain(v) for v in value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    return value


class Renderer:
    """Turns library results and events into terminal output or JSON on stdout."""

    def __init__(
        self,
        *,
        json_mode: bool = False,
        verbose: bool = False,
        cli_name: str = "pebble-migrate",
        result: bool | None = None,
    ) -> None:
        self.json = json_mode
        self.verbose = verbose
        self.cli_name = cli_name
        if result is not None:
            OUTPUT.is_result = result
        self._stdout = Outlet(sys.stdout, stdout=True)
        self.out = Screen(self._stdout)
        self.err = Screen(Outlet(sys.stderr))
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._last_log: dict[str, float] = {}
        self._unshown: dict[str, str] = {}
        self._started: dict[str, tuple[float, int]] = {}

    # --- plumbing --------------------------------------------------------------

    def emit(self, obj: Any) -> None:
        """Write one JSON value (an object, or a list) as a line on stdout."""
        self._stdout.write(json.dumps(_plain(obj), sort_keys=True) + "\n")
        self._stdout.flush()

    def say(self, text: Cell) -> None:
        """Tell the operator something: stdout for people, stderr in JSON mode."""
        (self.err if self.json else self.out).print(text)

    def note(self, text: str) -> None:
        """Print a side remark to stderr."""
        self.err.print(text)

    def error(self, exc: MigrateError) -> None:
        """Print `Error: ...` (and a JSON error object in JSON mode)."""
        self.stop_progress(clear=True)
        name_the_cli(exc, self.cli_name)
        if self.verbose and not exc.expected:
            details = exc.details if isinstance(exc, MigrationFailed) else ""
            self.err.block(details or "".join(traceback.format_exception(exc)))
        self.err.print(Styled(("Error:", "bold red"), " ", exc.message))
        if exc.hint:
            self.err.print(exc.hint)
        if self.json:
            self.emit(
                {
                    "error": {
                        "type": type(exc).__name__,
                        "message": exc.message,
                        "hint": exc.hint,
                        "exit_code": exc.exit_code,
                    }
                }
            )

    # --- events while running ----------------------------------------------------

    def event(self, event: Event) -> None:
        """Show an event from a running migration."""
        if self.json:
            self.emit(
                {
                    "event": event.kind,
                    "message": event.message,
                    "migration": event.migration_id,
                    **event.data,
                }
            )
            return
        if event.kind == "progress":
            self._show_progress(event)
            return
        self._flush_progress(event.migration_id or "")
        if event.kind in ("interrupted", "step_failed"):
            self.stop_progress(clear=True)  # the bar goes before the message
        if event.kind == "step_done":
            self._finish_task(event.migration_id or "")
        style = {"step_failed": "red", "interrupted": "yellow", "resume": "cyan"}.get(event.kind)
        self.err.print(styled(event.message, style or ""))

    def _show_progress(self, event: Event) -> None:
        key = f"{event.migration_id}/{event.data.get('action', '')}/{event.data.get('scan', '')}"
        done, total = event.data.get("done", 0), event.data.get("total")
        if not self.err.can_redraw:  # a pipe, a log, or a dumb terminal: lines
            now = time.monotonic()
            if now - self._last_log.get(key, 0.0) >= LOG_EVERY_S:
                self._last_log[key] = now
                self._unshown.pop(key, None)
                self.err.print(f"{event.message} keys")
            else:
                self._unshown[key] = event.message  # shown before the step's next message
            return
        if self._progress is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=_rich_console(self.err.stream),
                transient=False,
            )
            self._progress.start()
            self.err.live = self._progress.console
            _LIVE[:] = [self._progress.console]
        if key not in self._tasks:
            scan = event.data.get("scan") or ""
            label = f"{event.data.get('label', event.migration_id)} {scan}".strip()
            self._tasks[key] = self._progress.add_task(label, total=total, rate="")
            self._started[key] = (time.monotonic(), done)
        began, first = self._started[key]
        elapsed = time.monotonic() - began
        rate = f"{(done - first) / elapsed:,.0f} keys/s" if elapsed > 0.5 else ""
        self._progress.update(self._tasks[key], completed=done, total=total, rate=rate)

    def _flush_progress(self, migration_id: str) -> None:
        """Without a terminal, print the latest progress line of the step that was held
        back by the rate limit, so the line before `applied` shows the final count."""
        for key in [k for k in self._unshown if k.startswith(migration_id + "/")]:
            self.err.print(f"{self._unshown.pop(key)} keys")

    def _finish_task(self, migration_id: str) -> None:
        for key in [k for k in self._tasks if k.startswith(migration_id + "/")]:
            del self._tasks[key]
        if not self._tasks:
            self.stop_progress()

    def stop_progress(self, *, clear: bool = False) -> None:
        """Stop the live progress display, if any; with `clear`, take the bar off the
        screen (its count would be stale under the message that follows)."""
        if self._progress is not None:
            if clear:
                self._progress.live.transient = True
            self._progress.stop()
            self._progress = None
            self.err.live = None
            self._tasks.clear()
            _LIVE.clear()

    # --- results ---------------------------------------------------------------

    def status(self, report: StatusReport) -> None:
        """Show `status`."""
        state = report.state
        if self.json:
            self.emit(self._status_json(report))
            return
        table: list[tuple[str, Cell]] = [
            ("Database", report.database),
            ("Version", _version(state.current_version)),
            ("Status", _status(state.status)),
        ]
        if not state.initialized:
            what = (
                "empty: `up` will stamp it at the latest version"
                if report.fresh_empty
                else "has data: `up` will run every migration"
            )
            table.append(("State", f"not initialized ({what})"))
        table.append(("Last migration", _last_run(state, report.last)))
        known = len(report.migrations)
        table.append(
            (
                "Migrations",
                f"{len(state.applied)} applied, {len(report.pending)} pending, {known} known",
            )
        )
        if state.in_progress is not None:
            progress = state.in_progress
            where = f", {report.interrupted.describe()}" if report.interrupted else ""
            resumable = "resumable" if progress.resumable else "not resumable (wrote outside ctx)"
            table.append(("In progress", f"{progress.id} ({progress.kind}, {resumable}{where})"))
        reading = report.reading
        if reading.situation is not Situation.CLEAN:
            rule = TABLE[reading.situation]["up"]
            up_would = rule.said_of(reading.migration_id)
            table.append(("Left halfway", f"{reading.describe()} (up: {up_would})"))
            if reading.rollback_to is not None:
                table.append(
                    (
                        "To finish",
                        f"`{self.cli_name} down {reading.rollback_to}` (rolls back "
                        f"{reading.migration_id} and nothing below it)",
                    )
                )
        if state.last_error:
            table.append(("Last error", styled(printable(state.last_error), "red")))
        if self.verbose:
            table.append(("Database id", state.database_id or "-"))
            for record in report.partial:
                table.append(("Partly applied", f"{record.migration_id} {record.describe()}"))
        self.out.lines(columns(table))
        if report.missing:
            self.out.print(
                Styled(
                    ("Applied but missing from the code:", "yellow"), " ", ", ".join(report.missing)
                )
            )
        self._pending(report)
        if report.history:
            self.out.print()
            self.out.print(styled("Recent history", "bold"))
            self.out.lines(_history_table(report.history))

    def _pending(self, report: StatusReport) -> None:
        """The pending migrations, those out of order apart."""
        late = {m.id for m in report.out_of_order}
        in_order = [m for m in report.pending if m.id not in late]
        if in_order:
            self.out.print()
            self.out.print(styled("Pending", "bold"))
            self.out.lines(columns([(f"  {m.id}", m.description) for m in in_order]))
        if late:
            self.out.print()
            self.out.print(
                styled(
                    "Pending out of order (below the current version; "
                    "up --allow-out-of-order applies them)",
                    "bold",
                )
            )
            self.out.lines(columns([(f"  {m.id}", m.description) for m in report.out_of_order]))

    def _status_json(self, report: StatusReport) -> dict[str, Any]:
        state = report.state
        return {
            "database": report.database,
            "initialized": state.initialized,
            "status": state.status,
            "current_version": state.current_version,
            "current_version_time": version_time(state.current_version),
            "applied": sorted(state.applied),
            "last_migration": state.last_migration,
            "last_migration_at": state.last_migration_at,
            "in_progress": state.in_progress,
            "last_error": state.last_error,
            "database_id": state.database_id,
            "pending": [m.id for m in report.pending],
            "out_of_order": [m.id for m in report.out_of_order],
            "missing_code": report.missing,
            "counts": {
                "applied": len(state.applied),
                "pending": len(report.pending),
                "known": len(report.migrations),
            },
            "history": report.history,
            "resume": report.interrupted.describe() if report.interrupted else None,
            "partial": {r.migration_id: r.describe() for r in report.partial},
            "situation": report.reading.situation,
            "left_halfway": report.reading.migration_id,
            "up_would": TABLE[report.reading.situation]["up"].said_of(report.reading.migration_id),
            "rollback_to": report.reading.rollback_to,
        }

    def plan(self, plan: Plan, *, dry_run: bool, later: Sequence[str] = ()) -> None:
        """Show the steps of a plan (the whole output of a dry run)."""
        if self.json:
            self.emit(
                {
                    "plan": {
                        "command": plan.command,
                        "dry_run": dry_run,
                        "later_applied": list(later),
                        "from_version": plan.from_version,
                        "to_version": plan.to_version,
                        "steps": [
                            {
                                "action": s.action,
                                "id": s.id,
                                "kind": s.kind,
                                "description": s.migration.description,
                            }
                            for s in plan.steps
                        ],
                    }
                }
            )
            return
        if not plan.steps:
            self.say(
                "Nothing to do: the database is up to date."
                if plan.command == "up"
                else "Nothing to roll back."
            )
            return
        head = "Would run" if dry_run else "Plan"
        self.say(
            Styled(
                (head, "bold"),
                f" ({plan.command}, version {plan.from_version} -> {plan.to_version}):",
            )
        )
        width = max(len(step.id) for step in plan.steps)
        for n, step in enumerate(plan.steps, 1):
            verb = "apply   " if step.action == "apply" else "rollback"
            text = f"  {n}. {verb} {step.id:<{width}}  {step.migration.description}"
            self.say(text)
        if dry_run:
            self.say("Dry run: nothing was changed.")

    def outcome(self, outcome: Outcome, *, dry_run: bool = False) -> None:
        """Show the end of an up/down/rerun (the plan, for a dry run)."""
        self.stop_progress()
        report = outcome.report
        if outcome.cleared is not None:
            self._said(outcome.cleared, dry_run)
            return
        if outcome.stamp or outcome.created:
            what = (
                f"fresh empty database: stamped at version {outcome.plan.to_version} with every "
                "known migration marked applied; nothing ran"
                if outcome.stamp
                else "no migrations to run"
            )
            if outcome.created:
                what = f"create an empty database (raw mode) at {outcome.created}; then {what}"
            self._said(what, dry_run)
            return
        if report is None:
            self.plan(outcome.plan, dry_run=dry_run, later=outcome.later)
            return
        if self.json:
            self.emit(
                {
                    "result": {
                        "command": outcome.plan.command,
                        "from_version": report.from_version,
                        "to_version": report.to_version,
                        "steps": report.steps,
                    }
                }
            )
            return
        self.say(
            Styled(
                ("Done:", "green"),
                f" {len(report.steps)} step(s); version "
                f"{report.from_version} -> {_version(report.to_version)}.",
            )
        )

    def _said(self, what: str, dry_run: bool) -> None:
        if self.json:
            self.emit({"result": {"note": what, "dry_run": dry_run}})
        elif dry_run:
            self.say(f"Would do: {what}. Dry run: nothing was changed.")
        else:
            self.say(what[0].upper() + what[1:] + ".")

    def history(self, records: Sequence[HistoryRecord]) -> None:
        """Show `history`."""
        if self.json:
            self.emit({"history": list(records)})
            return
        if not records:
            self.say("No history recorded.")
            return
        self.out.lines(_history_table(records, errors=True))

    def validation(self, report: ValidationReport) -> None:
        """Show `validate`."""
        if self.json:
            # `way_out` says what to do about a failed check: empty for one that passed.
            checks = [
                {**_plain(check), "way_out": "" if check.ok else check.way_out}
                for check in report.checks
            ]
            self.emit({"valid": not report.problems, "checks": checks})
            return
        for check in report.checks:
            if check.ok and not self.verbose and not check.notice:
                continue
            mark = (
                styled("note", "yellow")
                if check.notice
                else styled("ok  ", "green")
                if check.ok
                else styled("FAIL", "red")
            )
            self.out.print(Styled(mark, f" {check.name}: {check.detail}"))
        if not report.problems:
            ran = sum(1 for check in report.checks if not check.notice)
            self.out.print(Styled(("Valid:", "green"), f" {ran} checks passed."))

    def state_change(self, result: ForceCleanResult, *, dry_run: bool = False) -> None:
        """Show the result of force-clean, and what is left halfway after it."""
        before, after, left = result.before, result.after, result.left
        changed = before is not after
        if self.json:
            self.emit(
                {
                    "before": before.status,
                    "after": after.status,
                    "changed": changed,
                    "dry_run": dry_run,
                    "situation": left.situation,
                    "left_halfway": left.migration_id,
                }
            )
            return
        if not changed:
            self.say(f"Nothing to do: status is {before.status.value}.")
            return
        progress = before.in_progress
        what = f" ({progress.id})" if progress else ""
        head = f"{before.status.value}{what} -> {after.status.value}"
        if dry_run:
            self.say(f"Would set the status {head}. Dry run: nothing was changed.")
            return
        self.say(f"Status {head}. {_after_force_clean(before, left)}")

    def repair(self, report: RepairReport, *, dry_run: bool = False) -> None:
        """Show the result of repair."""
        if self.json:
            self.emit(
                {
                    "added_history": report.added_history,
                    "version_fixed": report.version_fixed,
                    "dry_run": dry_run,
                }
            )
            return
        if not report.added_history and report.version_fixed is None:
            self.say("Nothing to repair.")
            return
        verb = "would add" if dry_run else "added"
        for mid in report.added_history:
            self.say(f"{verb} history for {mid}")
        if report.version_fixed:
            old, new = report.version_fixed
            self.say(f"{'would set' if dry_run else 'set'} version {old} -> {new}")
        if dry_run:
            self.say("Dry run: nothing was changed.")

    def stamped(self, result: StampResult, *, dry_run: bool = False) -> None:
        """Show what stamp recorded (or would record)."""
        if self.json:
            self.emit(
                {
                    "version": result.version,
                    "recorded_applied": result.added,
                    "recorded_not_applied": result.removed,
                    "from_version": result.before,
                    "to_version": result.after,
                    "changed": result.changed,
                    "dry_run": dry_run,
                }
            )
            return
        if not result.changed:
            self.say(f"Nothing to do: the recorded version is already {result.after}.")
            return
        would = "would record" if dry_run else "recorded"
        for mid in result.added:
            self.say(f"{would} {mid} as applied (not run)")
        for mid in result.removed:
            self.say(f"{would} {mid} as not applied (not rolled back)")
        head = "Would set" if dry_run else "Set"
        tail = " Dry run: nothing was changed." if dry_run else ""
        self.say(f"{head} the version {result.before} -> {result.after}.{tail}")

    def created(self, path: Path, dry_run: bool = False) -> None:
        """Show the file `create` wrote (or would write)."""
        if self.json:
            self.emit({"created": str(path), "dry_run": dry_run})
        else:
            self.say(f"{'Would create' if dry_run else 'Created'} {path!s}")

    def backups(
        self,
        found: Sequence[BackupInfo],
        kept: Sequence[KeptDatabase],
        where: Path,
        others: int = 0,
    ) -> None:
        """Show `backup list`: the backups, then the databases restores kept."""
        if self.json:
            # A plain list ([] when there is nothing); `kind` tells the two apart.
            self.emit(
                [{"kind": "backup", **b.summary()} for b in found] + [k.summary() for k in kept]
            )
            return
        if not found:
            self.say(f"No backups in {where!s}.")
        else:
            self.out.lines(_backup_table(found))
        if kept:
            self.say("")
            self.say(
                Styled(("Databases kept by restores", "bold"), " (removed by `backup cleanup`)")
            )
            now = utc_now()
            for k in kept:
                age = format_age(now - k.created_at)
                self.say(f"  {k.id}  {age} old  {k.path!s}")

    def records(self, key: str, rows: Iterable[Any]) -> None:
        """Emit a list of records under `key` (JSON mode)."""
        self.emit({key: list(rows)})


def _backup_table(found: Sequence[BackupInfo]) -> list[Styled]:
    now = utc_now()
    rows: list[list[Cell]] = []
    for b in found:
        mode = "archive" if b.archive else b.mode
        if b.shares_live:
            mode += ", shares files"
        partly = "".join(f" (partly applied: {m})" for m in b.partial)
        rows.append(
            [
                b.id,
                format_time(b.created_at).removesuffix(" UTC"),
                format_age(now - b.created_at),
                str(b.version),
                format_bytes(b.size_bytes),
                mode,
                b.description + partly,
            ]
        )
    header = ("id", "created (UTC)", "age", "version", "size", "mode", "description")
    return columns(rows, header=header, edge=1)


def _after_force_clean(before: State, left: Reading) -> str:
    mid = left.migration_id
    where = f" ({left.record.describe()})" if left.record is not None else ""
    if left.situation is Situation.HALF_ROLLED_BACK:
        return (
            f"The rollback of {mid} is still halfway{where}: finish it with "
            f"`down {left.rollback_to}`; `up` refuses until then."
        )
    if left.situation is Situation.PARTLY_APPLIED:
        return f"Nothing was marked applied; `up` continues {mid}{where}."
    progress = before.in_progress
    if progress is not None and progress.kind == "rollback":
        return (
            f"{progress.id} stays applied, but its `down` may have changed data before it "
            "stopped: check it (`validate`), then `down VERSION` again, or restore a backup."
        )
    return "Nothing was marked applied; `up` runs it again from its start."


_LIVE: list[Console] = []
"""The console of the progress bar on screen, if one is: log lines go through it."""


def log_line(text: str) -> bool:
    """Print a log line above the progress bar on screen (rich redraws the bar below it);
    return False when no bar is on screen (the caller prints it as usual)."""
    if not _LIVE:
        return False
    from rich.text import Text

    _LIVE[0].print(Text(one_line(text)))
    return True


def _rich_console(stream: Any) -> Console:
    """rich's console for a progress bar on `stream` (a terminal)."""
    from rich.console import Console

    # No markup: everything shown comes from a database or a file, and is shown as text.
    return Console(file=stream, highlight=False, soft_wrap=True, markup=False, emoji=False)


def _version(version: int) -> str:
    return f"{version} ({version_time(version)})" if version else "0 (nothing applied)"


def _last_run(state: State, last: HistoryRecord | None) -> str:
    if state.last_migration is None:
        return "-"
    # The kind only when the newest record is the run that set `last_migration` (the same
    # id, and it succeeded): a later failed or stopped run of that id is not what that
    # time is the time of.
    kind = (
        last.kind if last is not None and last.id == state.last_migration and last.success else None
    )
    what = f"{kind} of " if kind else ""
    return f"{what}{state.last_migration} at {format_time(state.last_migration_at)}"


def _status(status: Status) -> Styled:
    color = {"clean": "green", "migrating": "yellow", "rollback": "yellow"}.get(status.value, "red")
    return styled(status.value, color)


def _history_table(records: Sequence[HistoryRecord], errors: bool = False) -> list[Styled]:
    header = ["#", "started (UTC)", "id", "kind", "result", "took"]
    if errors:
        header.append("detail")
    rows: list[list[Cell]] = []
    for r in records:
        stopped = r.note and not r.error
        result = (
            styled("ok", "green")
            if r.success
            else styled("stopped", "yellow")
            if stopped
            else styled("failed", "red")
        )
        row: list[Cell] = [
            str(r.seq),
            format_time(r.started_at).removesuffix(" UTC"),
            r.id,
            r.kind,
            result,
            format_duration(r.duration_s),
        ]
        if errors:
            row.append(printable(r.error or r.note or ""))
        rows.append(row)
    return columns(rows, header=header, edge=1)
