"""`validate`: the registry, the recorded state's consistency, each applied migration's data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import rocksdict

from pebble_migrate import plan as planner
from pebble_migrate.commands import opened
from pebble_migrate.context import validation_problems
from pebble_migrate.cursor import RunRecord
from pebble_migrate.executor import run_records
from pebble_migrate.migration import Migration
from pebble_migrate.registry import Registry
from pebble_migrate.state import State, Status


@dataclass
class Check:
    """One validation check and its outcome."""

    name: str
    ok: bool
    detail: str = ""


@dataclass
class ValidationReport:
    """The checks `validate` ran."""

    checks: list[Check]

    @property
    def problems(self) -> list[str]:
        """The failed checks, as `name: detail`."""
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]


def validate(db_path: str | Path, registry: Registry) -> ValidationReport:
    """Check the registry, the state's consistency and each applied migration's data."""
    checks: list[Check] = []
    migrations = registry.ordered()
    checks.append(Check("registry", True, f"{len(migrations)} migration(s), order resolved"))
    with opened(db_path, read_only=True) as session:
        db, states = session.db, session.states
        state = states.read()
        records = run_records(states)
        seen = {r.id for r in states.history() if r.success}
        checks.extend(_state_checks(state, migrations, records, seen))
        by_id = {m.id: m for m in migrations}
        for m in (by_id[mid] for mid in _applied_in_order(migrations, state)):
            checks.append(_run_validate(db, m, str(session.path)))
    return ValidationReport(checks)


def _applied_in_order(migrations: list[Migration], state: State) -> list[str]:
    return [m.id for m in migrations if m.id in state.applied and m.validate is not None]


def _state_checks(
    state: State,
    migrations: list[Migration],
    records: dict[tuple[str, str], RunRecord],
    seen: set[str],
) -> list[Check]:
    if not state.initialized:
        return [Check("state", False, "no migration state recorded yet; run `up`")]
    checks = [
        Check(
            "status",
            state.status is Status.CLEAN,
            f"status is {state.status.value}"
            + (f" ({state.in_progress.id})" if state.in_progress else ""),
        ),
    ]
    expected = planner.version_of(state.applied)
    checks.append(
        Check(
            "version",
            expected == state.current_version,
            f"recorded {state.current_version}, applied set says {expected}",
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
        )
    )
    unmet = sorted(
        f"{mid} needs {dep}"
        for mid in state.applied
        if mid in known
        for dep in known[mid].dependencies
        if dep not in state.applied
    )
    checks.append(Check("dependencies", not unmet, "; ".join(unmet) or "all met"))
    no_history = sorted(mid for mid in state.applied if mid not in seen)
    checks.append(
        Check(
            "history",
            not no_history,
            "no history for " + ", ".join(no_history) + " (run `repair`)"
            if no_history
            else "every applied id has history",
        )
    )
    partial = sorted(f"{mid} ({r.describe()})" for (mid, _), r in records.items())
    checks.append(
        Check(
            "progress",
            not partial,
            "partly applied: " + ", ".join(partial) if partial else "no partly applied migration",
        )
    )
    return checks


def _run_validate(db: rocksdict.Rdict, migration: Migration, where: str) -> Check:
    problems = validation_problems(db, migration, where)
    return Check(f"validate {migration.id}", not problems, "; ".join(problems) or "ok")
