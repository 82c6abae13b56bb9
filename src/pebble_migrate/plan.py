"""The pure planner: migrations and applied ids in, an ordered plan out. No I/O."""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from pebble_migrate.errors import (
    DependencyCycle,
    DuplicateMigration,
    IrreversibleMigration,
    PlanError,
    UnknownDependency,
    UnknownTarget,
)
from pebble_migrate.migration import Migration, parse_id

Action = Literal["apply", "rollback"]
Command = Literal["up", "down", "rerun"]


@dataclass(frozen=True)
class Step:
    """One migration to apply or roll back, and the kind of history record it leaves."""

    action: Action
    migration: Migration
    kind: str

    @property
    def id(self) -> str:
        """The migration id."""
        return self.migration.id


@dataclass(frozen=True)
class Plan:
    """The ordered steps of an up, down or rerun, and the version before and after."""

    command: Command
    steps: tuple[Step, ...]
    from_version: int
    to_version: int

    def __bool__(self) -> bool:
        return bool(self.steps)

    @property
    def ids(self) -> tuple[str, ...]:
        """The ids of the steps, in order."""
        return tuple(step.id for step in self.steps)


def check(migrations: Sequence[Migration]) -> None:
    """Raise if ids or versions repeat, a dependency is unknown, or dependencies cycle."""
    order(migrations)


def order(migrations: Sequence[Migration]) -> list[Migration]:
    """Return migrations dependencies-first, then by ascending version among the ready."""
    by_id = _index(migrations)
    waiting = {m.id: set(m.dependencies) for m in migrations}
    dependents: dict[str, list[str]] = {m.id: [] for m in migrations}
    for m in migrations:
        for dep in set(m.dependencies):
            dependents[dep].append(m.id)
    ready = [(m.version, m.id) for m in migrations if not m.dependencies]
    heapq.heapify(ready)
    result: list[Migration] = []
    while ready:
        _, mid = heapq.heappop(ready)
        result.append(by_id[mid])
        for child in dependents[mid]:
            waiting[child].discard(mid)
            if not waiting[child]:
                heapq.heappush(ready, (by_id[child].version, child))
    if len(result) < len(migrations):
        stuck = {mid for mid, deps in waiting.items() if deps}
        raise DependencyCycle(_find_cycle(stuck, by_id))
    return result


def _index(migrations: Sequence[Migration]) -> dict[str, Migration]:
    by_id: dict[str, Migration] = {}
    by_version: dict[int, str] = {}
    for m in migrations:
        if m.id in by_id:
            raise DuplicateMigration([m.id, m.id])
        if m.version in by_version:
            raise DuplicateMigration([by_version[m.version], m.id], what="version")
        by_id[m.id] = m
        by_version[m.version] = m.id
    for m in migrations:
        missing = [dep for dep in m.dependencies if dep not in by_id]
        if missing:
            raise UnknownDependency(m.id, missing)
    return by_id


def _find_cycle(stuck: set[str], by_id: dict[str, Migration]) -> list[str]:
    # Every stuck node has a stuck dependency, so walking dependencies must revisit a node.
    node = min(stuck)
    path: list[str] = []
    seen: dict[str, int] = {}
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = min(dep for dep in by_id[node].dependencies if dep in stuck)
    return [*path[seen[node] :], node]


def version_of(applied: Iterable[str]) -> int:
    """Return the highest version among applied ids, or 0 when none is applied."""
    return max((parse_id(mid) for mid in applied), default=0)


def pending(migrations: Sequence[Migration], applied: Collection[str]) -> list[Migration]:
    """Return the migrations not yet applied, in the order `up` would run them."""
    return [m for m in order(migrations) if m.id not in applied]


def resolve_version(migrations: Sequence[Migration], target: str, *, allow_zero: bool) -> int:
    """Return the version a user's target names: a version number, or a migration id."""
    text = target.strip()
    if allow_zero and text == "0":
        return 0
    for m in migrations:
        if text in (m.id, str(m.version)):
            return m.version
    raise UnknownTarget(target, [m.id for m in order(migrations)])


def plan_up(
    migrations: Sequence[Migration],
    applied: Collection[str],
    target: int | None = None,
    rerun: str | None = None,
    first: str | None = None,
) -> Plan:
    """Return the steps that apply pending migrations, up to `target` when given.

    `rerun` names an applied migration whose rerun was interrupted in its apply phase: it
    comes first, to be finished. `first` names a pending migration left halfway: it also
    comes first, before any other (one merged later with a lower version included), so
    nothing runs on data it has half changed.
    """
    todo = pending(migrations, applied)
    if target is not None:
        todo = _up_to(todo, target)
    if first is not None and first in {m.id for m in todo}:
        todo = _first(todo, first, applied)
    current = version_of(applied)
    steps = tuple(Step("apply", m, "apply") for m in todo)
    again = [m for m in migrations if m.id == rerun]
    if again:
        steps = (Step("apply", again[0], "rerun"), *steps)
    return Plan("up", steps, current, version_of([*applied, *(s.id for s in steps)]))


def _first(todo: list[Migration], first: str, applied: Collection[str]) -> list[Migration]:
    head = next(m for m in todo if m.id == first)
    missing = sorted(dep for dep in head.dependencies if dep not in applied)
    if missing:
        raise PlanError(
            f"{first} was left halfway, but it now depends on {', '.join(missing)}, which "
            "is not applied: its code changed since it ran.",
            hint="Put its dependencies back as they were to finish it, or restore a backup "
            "taken before it began (`pebble-migrate backup list`).",
        )
    return [head, *(m for m in todo if m.id != first)]


def up_to(
    migrations: Sequence[Migration], target: int, cli: str = "pebble-migrate"
) -> list[Migration]:
    """Return the migrations at or below version `target` and everything they depend on,
    as `up VERSION` applies them (PlanError when a dependency lies above `target`)."""
    return _up_to(list(migrations), target, cli)


def _up_to(todo: list[Migration], target: int, cli: str = "pebble-migrate") -> list[Migration]:
    by_id = {m.id: m for m in todo}
    chosen: set[str] = set()
    stack = [m.id for m in todo if m.version <= target]
    while stack:
        mid = stack.pop()
        if mid in chosen:
            continue
        chosen.add(mid)
        stack.extend(dep for dep in by_id[mid].dependencies if dep in by_id)
    above = sorted(mid for mid in chosen if by_id[mid].version > target)
    if above:
        raise PlanError(
            f"cannot stop at version {target}: {', '.join(above)} lie above it but "
            "migrations at or below it depend on them.",
            hint=f"Choose a later version, or run `{cli} up` with no version.",
        )
    return [m for m in todo if m.id in chosen]


def out_of_order(migrations: Sequence[Migration], applied: Collection[str]) -> list[Migration]:
    """Return the pending migrations whose version is below the current version: applying
    them runs them after migrations that came later (a branch merged late, say)."""
    current = version_of(applied)
    return [m for m in pending(migrations, applied) if m.version < current]


def check_order(
    plan: Plan,
    migrations: Sequence[Migration],
    applied: Collection[str],
    *,
    allowed: bool,
    halfway: str | None = None,
    cli: str = "pebble-migrate",
    allow_with: str | None = None,
) -> list[str]:
    """Return the ids of `plan` that run out of order; raise PlanError unless `allowed`.

    `halfway` names a migration left halfway: it was let through when it started, so it
    finishes without being asked again.
    """
    late = [m.id for m in out_of_order(migrations, applied) if m.id in plan.ids]
    if not allowed and [mid for mid in late if mid != halfway]:
        current = version_of(applied)
        raise PlanError(
            f"{len(late)} pending migration(s) have a version below the current version "
            f"{current}: {', '.join(late)}. Applying them now would run them after "
            "migrations that came later.",
            hint="Nothing was changed. If they do not depend on what the later migrations "
            f"changed, allow it: {allow_with or f'`{cli} up --allow-out-of-order`'}; "
            "otherwise give each a new "
            f"version (`{cli} create NAME`, then move the code over).",
        )
    return late


def steps_back(applied: Collection[str], steps: int, cli: str = "pebble-migrate") -> int:
    """Return the version `down` stops at to roll back the `steps` applied migrations with
    the highest versions (the ones `down VERSION` would take first)."""
    newest = sorted(applied, key=parse_id, reverse=True)
    if steps < 1:
        raise PlanError(
            f"--steps must be 1 or more, not {steps}.",
            hint=f"`{cli} down --steps 1` rolls back the newest applied migration.",
        )
    if steps > len(newest):
        shown = ", ".join(newest[:5]) + (", ..." if len(newest) > 5 else "")
        raise PlanError(
            f"cannot roll back {steps} migration(s): there are only {len(newest)}"
            + (f" ({shown})." if newest else "."),
            hint=f"Nothing was changed. `{cli} down 0` rolls back every applied migration."
            if newest
            else "Nothing was changed, and there is nothing to roll back.",
        )
    return parse_id(newest[steps]) if steps < len(newest) else 0


def plan_down(
    migrations: Sequence[Migration],
    applied: Collection[str],
    target: int,
    partial: Collection[str] = (),
) -> Plan:
    """Return the steps that roll back every applied migration above `target`, newest first.

    `partial` names migrations that are not applied but left writes behind (committed scan
    chunks, or a failed run that wrote around ctx): they are rolled back too.
    """
    present = set(applied) | set(partial)
    known = {m.id for m in migrations}
    lost = sorted(mid for mid in present if mid not in known and parse_id(mid) > target)
    if lost:
        raise PlanError(
            f"cannot roll back {', '.join(lost)}: applied, but not in the migrations "
            "directory any more.",
            hint="Restore the migration files (or choose a target at or above them); "
            "nothing was changed.",
        )
    undo = [m for m in reversed(order(migrations)) if m.id in present and m.version > target]
    _check_reversible(undo)
    _check_no_dependents(migrations, present, {m.id for m in undo})
    steps = tuple(Step("rollback", m, "rollback") for m in undo)
    remaining = [mid for mid in applied if mid not in {m.id for m in undo}]
    return Plan("down", steps, version_of(applied), version_of(remaining))


def find(migrations: Sequence[Migration], migration_id: str) -> Migration:
    """Return the migration a user named by id or version; raise UnknownTarget."""
    text = migration_id.strip()
    for m in migrations:
        if text in (m.id, str(m.version)):
            return m
    raise UnknownTarget(migration_id, [m.id for m in order(migrations)])


def applied_after(
    migrations: Sequence[Migration], applied: Collection[str], migration_id: str
) -> list[str]:
    """Return the applied migrations that come after `migration_id` in the order `up`
    runs them (a rerun of it would rebuild its output under their feet)."""
    ids = [m.id for m in order(migrations)]
    if migration_id not in ids:
        return []
    return [mid for mid in ids[ids.index(migration_id) + 1 :] if mid in applied]


def plan_rerun(
    migrations: Sequence[Migration], applied: Collection[str], migration_id: str
) -> Plan:
    """Return the steps that roll a migration back and apply it again."""
    m = find(migrations, migration_id)
    if m.id not in applied:
        raise PlanError(
            f"{m.id} is not applied, so there is nothing to rerun.",
            hint="Run `pebble-migrate up` to apply it.",
        )
    if m.down is None and not m.rerunnable:
        raise IrreversibleMigration([m.id])
    steps: tuple[Step, ...] = (Step("apply", m, "rerun"),)
    if m.down is not None:
        steps = (Step("rollback", m, "rollback"), *steps)
    current = version_of(applied)
    return Plan("rerun", steps, current, current)


def _check_reversible(undo: Sequence[Migration]) -> None:
    missing = [m.id for m in undo if m.down is None]
    if missing:
        raise IrreversibleMigration(missing)


def _check_no_dependents(
    migrations: Sequence[Migration], applied: Collection[str], undo: set[str]
) -> None:
    for m in migrations:
        if m.id in applied and m.id not in undo:
            needed = sorted(set(m.dependencies) & undo)
            if needed:
                raise PlanError(
                    f"cannot roll back {', '.join(needed)}: {m.id} stays applied and "
                    "depends on it.",
                    hint=f"Choose a target below {m.version} so {m.id} is rolled back too.",
                )
