"""`validate`: the registry, the recorded state's consistency, each applied migration's data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import rocksdict

from pebble_migrate import integrity, store, views
from pebble_migrate import plan as planner
from pebble_migrate.commands import opened
from pebble_migrate.context import validation_problems
from pebble_migrate.cursor import RunRecord, run_records
from pebble_migrate.errors import (
    CorruptStateError,
    MigrateError,
    PlanError,
    reports_filesystem_errors,
)
from pebble_migrate.migration import Migration
from pebble_migrate.paths import resolve_database
from pebble_migrate.registry import Registry
from pebble_migrate.state import State, Status


@dataclass
class Check:
    """One validation check and its outcome."""

    name: str
    ok: bool
    detail: str = ""
    way_out: str = ""
    """What to do when the check failed (empty: the report's general advice applies)."""
    notice: bool = False
    """Shown even when it passed: the operator asked for something this check could not do
    (`validate ID` of a migration without a `validate` of its own)."""


@dataclass
class ValidationReport:
    """The checks `validate` ran."""

    checks: list[Check]

    @property
    def problems(self) -> list[str]:
        """The failed checks, as `name: detail`."""
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]

    @property
    def way_out(self) -> str:
        """The next steps for the failed checks, most serious first, each said once."""
        steps: list[str] = []
        for check in self.checks:
            if not check.ok and check.way_out and check.way_out not in steps:
                steps.append(check.way_out)
        return " ".join(steps)


@reports_filesystem_errors("validate")
def validate(
    db_path: str | Path,
    registry: Registry,
    *,
    deep: bool = False,
    only: Sequence[str] = (),
    cli: str = "pebble-migrate",
) -> ValidationReport:
    """Check the registry, the state's consistency and each applied migration's data.

    `only` (ids or versions) runs the `validate` of just those migrations, each of which
    must be applied; the registry and state checks run as always.

    With `deep`, first read everything back as RocksDB stored it: every block of every
    table file (its checksums), the write-ahead log with no damaged record tolerated, every
    state record, and the frozen views of migrations left halfway. Damage found that way is
    reported as failed checks, naming the file or record, rather than raised.
    """
    checks: list[Check] = []
    migrations = registry.ordered()
    chosen = _chosen(migrations, only)
    checks.append(Check("registry", True, f"{len(migrations)} migration(s), order resolved"))
    path = resolve_database(db_path)
    if deep:
        storage = _storage_checks(path)
        checks.extend(storage)
        if any(c.name == "open" for c in storage):
            return ValidationReport(checks)  # nothing further can be read
    try:
        with opened(path, read_only=True) as session:
            db, states = session.db, session.states
            state = states.read()
            records = run_records(states)
            seen = {r.id for r in states.history() if r.success}
            checks.extend(_state_checks(state, migrations, records, seen))
            if deep:
                checks.extend(_view_checks(path, records, state.database_id))
            by_id = {m.id: m for m in migrations}
            order = _applied_in_order(migrations, state)
            if chosen is not None:
                _require_applied(chosen, state, cli)
                checks.extend(
                    Check(
                        f"validate {mid}",
                        True,
                        "it has no validate() of its own, so none of its data was checked "
                        "(the state checks ran as always)",
                        notice=True,
                    )
                    for mid in sorted(chosen)
                    if by_id.get(mid) is not None and by_id[mid].validate is None
                )
            for m in (by_id[mid] for mid in order):
                if chosen is None or m.id in chosen:
                    later = _applied_after(m.id, migrations, state)
                    checks.append(_run_validate(db, m, str(session.path), later))
    except PlanError:
        raise  # a request that cannot be answered, not a finding
    except MigrateError as exc:
        if not deep:
            raise
        name = "state records" if isinstance(exc, CorruptStateError) else "open"
        checks.append(Check(name, False, exc.message.rstrip("."), exc.hint or ""))
    return ValidationReport(checks)


RESTORE = (
    "The database's files are damaged: stop the application and write nothing more to it. "
    "Restore the last good backup (`pebble-migrate backup list`, then "
    "`pebble-migrate backup restore ID --force`); with no backup, copy the directory aside "
    "before trying anything else."
)


STATUS = "Run `pebble-migrate status`: it says how to finish or undo what is left halfway."
REPAIR = "Run `pebble-migrate repair` to rebuild the version and the history from the applied set."


def _storage_checks(path: Path) -> list[Check]:
    """Read the settings files, every table file's blocks and the write-ahead log back.

    A database that does not open at all gives one `open` check (the others would only
    repeat its error), and nothing after it is read.
    """
    settings = integrity.check_settings_files(path)
    checks = [
        Check(
            "settings files",
            settings is None,
            "rocksdict-config.json and OPTIONS read back whole"
            if settings is None
            else settings.detail,
            RESTORE,
        )
    ]
    try:
        store.close_database(store.open_database(path, read_only=True))
    except MigrateError as exc:
        detail = exc.message.rstrip(".")
        if integrity.damage_is_in_the_log(path):  # name what is damaged
            detail += " (in the write-ahead log: a damaged record before its last one)"
        checks.append(Check("open", False, detail, RESTORE))
        return checks
    tables = integrity.check_tables(path)
    wal = integrity.check_wal(path)
    checks.append(
        Check(
            "table files",
            tables is None,
            "every block of every table file reads back intact"
            if tables is None
            else f"{tables.file or 'the database'} is damaged: {_short(tables.detail)}",
            RESTORE,
        )
    )
    checks.append(
        Check(
            "write-ahead log",
            wal is None,
            "every record reads back intact"
            if wal is None
            else f"damaged: {_short(wal.detail)} (an incomplete last record is what a crash "
            "during a write leaves; pebble-migrate's opens drop only that, and refuse a log "
            "damaged anywhere else)",
            "If a process died while writing, the damaged record is that unfinished write, "
            "which was never acknowledged: nothing is lost and the next open drops it. "
            "Otherwise, treat it as damage. " + RESTORE,
        )
    )
    return checks


def _view_checks(
    path: Path, records: dict[tuple[str, str], RunRecord], database_id: str | None
) -> list[Check]:
    """Check the frozen views that migrations left halfway would resume from."""
    checks = []
    for (mid, action), record in sorted(records.items()):
        for cursor in (c for c in record.scans.values() if not c.done):
            name = f"view {mid}/{action}-{cursor.name}"
            try:
                view, where = views.open_view(
                    path, mid, action, cursor.name, cursor.token, database_id
                )
            except MigrateError as exc:
                checks.append(Check(name, False, exc.message.rstrip(".")))
                continue
            store.close_database(view)
            damage = integrity.check_tables(where)
            detail = "intact" if damage is None else f"damaged: {_short(damage.detail)}"
            checks.append(Check(name, damage is None, detail))
    return checks


def _short(detail: str) -> str:
    return detail.split(": ", 1)[-1] if detail.startswith("RocksDB") else detail


def _applied_in_order(migrations: list[Migration], state: State) -> list[str]:
    return [m.id for m in migrations if m.id in state.applied and m.validate is not None]


def _state_checks(
    state: State,
    migrations: list[Migration],
    records: dict[tuple[str, str], RunRecord],
    seen: set[str],
) -> list[Check]:
    if not state.initialized:
        return [
            Check(
                "state",
                False,
                "no migration state recorded yet",
                "Run `pebble-migrate up` to apply the migrations (it records the state).",
            )
        ]
    checks = [
        Check(
            "status",
            state.status is Status.CLEAN,
            f"status is {state.status.value}"
            + (f" ({state.in_progress.id})" if state.in_progress else ""),
            STATUS,
        ),
    ]
    expected = planner.version_of(state.applied)
    checks.append(
        Check(
            "version",
            expected == state.current_version,
            f"recorded {state.current_version}, applied set says {expected}",
            REPAIR,
        )
    )
    known = {m.id: m for m in migrations}
    lost = sorted(mid for mid in state.applied if mid not in known)
    checks.append(
        Check(
            "code",
            not lost,
            "applied but missing from the migrations directory: " + ", ".join(lost)
            if lost
            else "every applied migration has its code",
            "Put the missing migration files back in the migrations directory (from version "
            "control): rolling back needs their down().",
        )
    )
    unmet = sorted(
        f"{mid} needs {dep}"
        for mid in state.applied
        if mid in known
        for dep in known[mid].dependencies
        if dep not in state.applied
    )
    # A missing dependency below the current version is out of order: a plain `up`
    # refuses it, so the advice names the flag that applies it.
    below = any(
        dep not in state.applied and dep in known and known[dep].version < state.current_version
        for mid in state.applied
        if mid in known
        for dep in known[mid].dependencies
    )
    apply = "pebble-migrate up --allow-out-of-order" if below else "pebble-migrate up"
    checks.append(
        Check(
            "dependencies",
            not unmet,
            "; ".join(unmet) or "all met",
            f"Apply what is missing (`{apply}`), or roll back what needs it "
            "(`pebble-migrate down VERSION`).",
        )
    )
    no_history = sorted(mid for mid in state.applied if mid not in seen)
    checks.append(
        Check(
            "history",
            not no_history,
            "no history for " + ", ".join(no_history)
            if no_history
            else "every applied id has history",
            REPAIR,
        )
    )
    partial = sorted(f"{mid} ({r.describe()})" for (mid, _), r in records.items())
    checks.append(
        Check(
            "progress",
            not partial,
            "partly applied: " + ", ".join(partial) if partial else "no partly applied migration",
            STATUS,
        )
    )
    return checks


def _applied_after(mid: str, migrations: list[Migration], state: State) -> list[str]:
    """The migrations applied after `mid`, in the order they were applied (the recorded
    times; an out-of-order migration runs after ones with higher versions). Without a
    time for one of them, the order of the migrations stands in for it."""
    rank = {m.id: i for i, m in enumerate(migrations)}
    when = state.applied_at
    applied = [x for x in state.applied if x in rank]
    if mid in when and all(x in when for x in applied):
        return sorted((x for x in applied if when[x] > when[mid]), key=lambda x: when[x])
    return sorted((x for x in applied if rank[x] > rank[mid]), key=rank.__getitem__)


def _chosen(migrations: list[Migration], only: Sequence[str]) -> set[str] | None:
    """The ids `validate ID...` names (ids or versions), or None for all."""
    if not only:
        return None
    chosen = set()
    for target in only:
        version = planner.resolve_version(migrations, target, allow_zero=False)
        chosen.add(next(m.id for m in migrations if m.version == version))
    return chosen


def _require_applied(chosen: set[str], state: State, cli: str) -> None:
    absent = sorted(chosen - state.applied)
    if absent:
        raise PlanError(
            f"{', '.join(absent)} is not applied: its validate() checks the data its up() "
            "leaves, so there is nothing to check yet.",
            hint=f"Nothing was changed. `{cli} status` lists what is applied.",
        )


def _run_validate(
    db: rocksdict.Rdict, migration: Migration, where: str, later: Sequence[str] = ()
) -> Check:
    problems = validation_problems(db, migration, where)
    way_out = (
        f"The data does not pass {migration.id}'s own check: fix the data or the check, or "
        "undo the migration with `pebble-migrate down VERSION`."
    )
    if problems and later:
        way_out = (
            f"Warning: {', '.join(later)} applied after it and may have changed the data "
            "this check reads, so the check may be stale rather than the data wrong (see "
            '"Checks that stay true" in docs/writing-migrations.md). ' + way_out
        )
    shown = "; ".join(problems[:SHOWN]) or "ok"
    if len(problems) > SHOWN:
        shown += f"; ... and {len(problems) - SHOWN} more"
    return Check(f"validate {migration.id}", not problems, shown, way_out)


SHOWN = 10
"""How many of one check's problems are shown; the rest are counted."""
