"""Fixing the recorded state by hand, and starting new migration files."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pebble_migrate import plan as planner
from pebble_migrate import transitions
from pebble_migrate.commands import Aborted, Confirm, always, opened
from pebble_migrate.cursor import run_records
from pebble_migrate.errors import NotCleanError, UsageError, reports_filesystem_errors
from pebble_migrate.faults import kill_point
from pebble_migrate.migration import MAX_ID_LENGTH, is_valid_name, parse_id
from pebble_migrate.registry import Registry
from pebble_migrate.state import HistoryRecord, State, Status, new_state
from pebble_migrate.units import utc_now


@dataclass(frozen=True)
class ForceCleanResult:
    """What force-clean did: the state before and after (the same object when there was
    nothing to do), and what is left halfway afterwards. Unpacks as (before, after)."""

    before: State
    after: State
    left: transitions.Reading

    def __iter__(self) -> Iterator[State]:
        return iter((self.before, self.after))


@reports_filesystem_errors("force-clean")
def force_clean(
    db_path: str | Path, *, confirm: Confirm = always, dry_run: bool = False
) -> ForceCleanResult:
    """Set the status to clean without marking the interrupted migration applied.

    Committed scan progress is kept, so the next `up` (or, for a rollback, `down`)
    continues it. A dry run writes nothing.
    """
    with opened(db_path, read_only=dry_run) as session:
        states = session.states
        before = states.read()
        records = run_records(states)
        reading = transitions.read(before, records, {})
        rule = transitions.decide(reading, "force-clean", "pebble-migrate")
        if not before.initialized or rule.verdict is transitions.Verdict.NOTHING:
            return ForceCleanResult(before, before, reading)
        progress = before.in_progress
        what = f"{before.status.value}" + (f" ({progress.id})" if progress else "")
        after = before.evolve(status=Status.CLEAN, in_progress=None, last_error=None)
        left = transitions.read(after, records, {})
        if dry_run:
            return ForceCleanResult(before, after, left)
        if not confirm(f"Force the status from {what} to clean?"):
            raise Aborted()
        record = HistoryRecord(
            0,
            progress.id if progress else "-",
            f"status was {what}",
            "force-clean",
            utc_now(),
            0.0,
            True,
            error=before.last_error,
            note="status forced to clean; migration not marked applied",
        )
        kill_point("force-clean-before-write")
        return ForceCleanResult(before, states.write_state(after, record), left)


@dataclass(frozen=True)
class StampResult:
    """What `stamp` recorded: the migrations it marked applied and the ones it marked not
    applied (neither ran), and the version before and after."""

    version: int
    added: list[str]
    removed: list[str]
    before: int
    after: int
    initialized: bool

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.initialized)


@reports_filesystem_errors("stamp")
def stamp(
    db_path: str | Path,
    registry: Registry,
    target: str,
    *,
    confirm: Confirm = always,
    dry_run: bool = False,
    cli: str = "pebble-migrate",
) -> StampResult:
    """Record every known migration up to `target` as applied, and the ones above it as not
    applied, without running any of them (a baseline for a database made by other means).

    `target` is a version, an id, or 0 (nothing applied). The database must be clean with
    nothing left halfway. One history record of kind `stamp` per migration whose record
    changes, all in one write with the new state.
    """
    migrations = registry.ordered()
    version = planner.resolve_version(migrations, target, allow_zero=True)
    known = {m.id for m in migrations}
    with opened(db_path, read_only=dry_run) as session:
        states = session.states
        before = states.read()
        halfway = run_records(states)
        if before.status is not Status.CLEAN or before.in_progress is not None or halfway:
            left = sorted({mid for mid, _ in halfway})
            why = (
                f"its status is {before.status.value}"
                if before.status is not Status.CLEAN
                else f"{', '.join(left)} is left halfway"
            )
            raise NotCleanError(
                f"cannot stamp {db_path}: {why}; stamp only records versions on a clean "
                "database with nothing left halfway.",
                hint=f"Nothing was changed. Finish or undo the interrupted run first "
                f"(`{cli} status` says how), then stamp.",
            )
        # As `up VERSION` would apply: everything at or below it, and what that depends on
        # (refused when a dependency lies above VERSION).
        chosen = {m.id for m in planner.up_to(migrations, version, cli)}
        # Applied ids with no file here are records only: kept at or below the version.
        kept = {mid for mid in before.applied if mid not in known and parse_id(mid) <= version}
        applied = chosen | kept
        added = sorted(applied - before.applied, key=parse_id)
        removed = sorted(before.applied - applied, key=parse_id)
        result = StampResult(
            version,
            added,
            removed,
            before.current_version,
            planner.version_of(applied),
            not before.initialized,
        )
        if not result.changed or dry_run:
            return result
        question = f"Record {len(added)} migration(s) as applied without running them"
        if removed:
            question += f" and {len(removed)} as not applied without rolling them back"
        if not confirm(question + f" (version {before.current_version} -> {result.after})?"):
            raise Aborted()
        now = utc_now()
        base = before if before.initialized else new_state()
        records = [
            HistoryRecord(0, mid, f"stamped at version {version}", "stamp", now, 0.0, True,
                          note="recorded as applied; up() did not run")
            for mid in added
        ] + [
            HistoryRecord(0, mid, f"stamped at version {version}", "stamp", now, 0.0, True,
                          note="recorded as not applied; down() did not run")
            for mid in removed
        ]  # fmt: skip
        if not records:
            records.append(
                HistoryRecord(0, "-", f"stamped at version {version}", "stamp", now, 0.0, True,
                              note="migration state initialized")
            )  # fmt: skip
        applied_at = {mid: t for mid, t in base.applied_at.items() if mid in applied}
        applied_at.update(dict.fromkeys(added, now))
        after = base.evolve(
            applied=frozenset(applied),
            applied_at=applied_at,
            current_version=result.after,
            last_migration=records[-1].id if records[-1].id != "-" else base.last_migration,
            last_migration_at=now,
        )
        states.write_state(after, *records)
        return result


@dataclass
class RepairReport:
    """What `repair` changed."""

    added_history: list[str]
    version_fixed: tuple[int, int] | None


@reports_filesystem_errors("repair")
def repair(
    db_path: str | Path, *, confirm: Confirm = always, dry_run: bool = False
) -> RepairReport:
    """Add missing history for applied ids and correct a version that disagrees with them."""
    with opened(db_path, read_only=dry_run) as session:
        states = session.states
        state = states.read()
        if not state.initialized:
            raise UsageError(f"{db_path} has no migration state to repair.", hint="Run `up` first.")
        seen = {r.id for r in states.history() if r.success}
        missing = sorted(mid for mid in state.applied if mid not in seen)
        version = planner.version_of(state.applied)
        fix = (state.current_version, version) if version != state.current_version else None
        if (not missing and fix is None) or dry_run:
            return RepairReport(missing, fix)
        if not confirm(
            f"Add history for {len(missing)} applied migration(s)"
            + (f" and set the version {fix[0]} -> {fix[1]}" if fix else "")
            + "?"
        ):
            raise Aborted()
        now = utc_now()
        records = [
            HistoryRecord(
                0,
                mid,
                "history added by repair",
                "repair",
                state.applied_at.get(mid, now),
                0.0,
                True,
                note="applied before history was recorded",
            )
            for mid in missing
        ]
        if fix:
            records.append(
                HistoryRecord(
                    0,
                    "-",
                    f"version {fix[0]} -> {fix[1]}",
                    "repair",
                    now,
                    0.0,
                    True,
                    note="version recomputed from applied set",
                )
            )
        kill_point("repair-before-write")
        states.write_state(state.evolve(current_version=version), *records)
        return RepairReport(missing, fix)


@reports_filesystem_errors("create", database=False)
def create(
    directory: str | Path, name: str, *, now: datetime | None = None, dry_run: bool = False
) -> Path:
    """Write a ready-to-edit migration file named `<timestamp>_<name>.py`; return its path.

    A dry run only returns the path it would write.
    """
    if not is_valid_name(name):
        raise UsageError(
            f"invalid migration name {name!r}: use letters, digits, underscores and hyphens.",
            hint="For example: pebble-migrate create add_email_index",
        )
    root = Path(directory)
    stamp = int((now or utc_now()).timestamp())
    taken = {p.stem.split("_", 1)[0] for p in root.glob("*.py")}
    while str(stamp) in taken:
        stamp += 1  # versions must be unique; two files in the same second get consecutive ones
    longest = MAX_ID_LENGTH - len(str(stamp)) - 1
    if len(name) > longest:
        raise UsageError(
            f"migration name too long: {len(name)} characters, at most {longest} (an id, "
            f"its timestamp included, is at most {MAX_ID_LENGTH} characters).",
            hint="Nothing was written. Choose a shorter name; the docstring can say more.",
        )
    path = root / f"{stamp}_{name}.py"
    if dry_run:
        return path
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(_TEMPLATE.format(title=title(name)))
    return path


_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z0-9]+|[A-Z0-9]+")


def title(name: str) -> str:
    """Return the sentence a migration's docstring starts with, from its name:
    `AddUsers`, `add_users` and `add-users` all give "Add users"; acronyms stay
    (`AddHTTPCache` gives "Add HTTP cache")."""
    words = [w if len(w) > 1 and w.isupper() else w.lower() for w in _WORD.findall(name)]
    if not words:
        return name
    return " ".join([words[0][:1].upper() + words[0][1:], *words[1:]])


_TEMPLATE = '''"""{title}."""

# Set to True only if up() is safe to run again after an interruption even though it
# writes through ctx.db (those direct writes run again). A migration that writes only
# through ctx (ctx.scan, ctx.put, ctx.delete) resumes by itself and does not need it.
rerunnable = False
dependencies: list[str] = []


def up(ctx):
    for key, value in ctx.scan(prefix=b"example:"):
        ctx.put(key, value)


def down(ctx):
    for key, value in ctx.scan(prefix=b"example:"):
        ctx.put(key, value)


def validate(ctx):
    """Return a list of problems (empty when the data is as up() leaves it)."""
    return []
'''
