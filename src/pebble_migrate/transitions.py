"""The state machine: from the recorded state and run records, what may run next.

Every command and the start-up API read the database's situation here and ask `decide`
whether they may go on. `TABLE` is the whole rule set; docs/architecture.md shows it, and
a test checks that the page and the code agree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from pebble_migrate.cursor import RunRecord
from pebble_migrate.errors import EXIT_NOT_CLEAN, EXIT_PENDING, NotCleanError
from pebble_migrate.migration import Migration, parse_id
from pebble_migrate.state import State, Status


class Situation(StrEnum):
    """Where the database stands, read from its status and its run records."""

    CLEAN = "clean"
    PARTLY_APPLIED = "partly-applied"
    HALF_ROLLED_BACK = "half-rolled-back"
    MIGRATING = "migrating"
    MIGRATING_STUCK = "migrating-stuck"
    ROLLING_BACK = "rolling-back"
    ROLLING_BACK_STUCK = "rolling-back-stuck"
    DIRTY = "dirty"
    DIRTY_ROLLBACK = "dirty-rollback"


class Verdict(StrEnum):
    """What a command does in a situation."""

    RUNS = "runs"
    CONTINUES = "continues"
    REFUSED = "refused"
    NOTHING = "nothing to do"
    CLEARS = "sets clean"


COMMANDS = ("up", "down", "rerun", "force-clean")
"""The commands the table rules on (the start-up API follows the `up` column)."""


@dataclass(frozen=True)
class Rule:
    """What one command does in one situation, as the docs state it."""

    verdict: Verdict
    text: str

    def said_of(self, migration_id: str | None) -> str:
        """Return the text with the migration's id in place of M."""
        return self.text if migration_id is None else re.sub(r"\bM\b", migration_id, self.text)


def _r(verdict: Verdict, text: str) -> Rule:
    return Rule(verdict, text)


R, C, X, N, S = Verdict.RUNS, Verdict.CONTINUES, Verdict.REFUSED, Verdict.NOTHING, Verdict.CLEARS

MEANING: dict[Situation, str] = {
    Situation.CLEAN: "status clean, no run left halfway",
    Situation.PARTLY_APPLIED: "status clean; M's `up` committed chunks and did not finish",
    Situation.HALF_ROLLED_BACK: "status clean; M's `down` committed chunks and did not finish",
    Situation.MIGRATING: "M's `up` was interrupted and can continue by itself",
    Situation.MIGRATING_STUCK: "M's `up` was interrupted; it wrote outside ctx and is not "
    "rerunnable, or its code is missing",
    Situation.ROLLING_BACK: "M's `down` was interrupted and can continue by itself",
    Situation.ROLLING_BACK_STUCK: "M's `down` was interrupted; it wrote outside ctx, or its "
    "code is missing",
    Situation.DIRTY: "M's `up` failed",
    Situation.DIRTY_ROLLBACK: "M's `down` failed",
}

TABLE: dict[Situation, dict[str, Rule]] = {
    Situation.CLEAN: {
        "up": _r(R, "applies the pending migrations"),
        "down": _r(R, "rolls back the migrations above VERSION"),
        "rerun": _r(R, "rolls ID back and applies it again"),
        "force-clean": _r(N, "nothing to do"),
    },
    Situation.PARTLY_APPLIED: {
        "up": _r(C, "continues M after its last committed key, then the rest"),
        "down": _r(R, "rolls M back too (its `down` gets `ctx.partial`)"),
        "rerun": _r(C, "continues M's apply, if ID is M; otherwise refused"),
        "force-clean": _r(N, "nothing to do (the cursor stays)"),
    },
    Situation.HALF_ROLLED_BACK: {
        "up": _r(X, "refused: finish the rollback with `down`, or restore a backup"),
        "down": _r(C, "continues M's rollback (VERSION below M), then the rest"),
        "rerun": _r(C, "continues M's rollback then applies it, if ID is M"),
        "force-clean": _r(N, "nothing to do (the cursor stays)"),
    },
    Situation.MIGRATING: {
        "up": _r(C, "continues M where it stopped, then the rest"),
        "down": _r(X, "refused: continue with `up`, or `force-clean` first"),
        "rerun": _r(C, "continues M, if ID is M; otherwise refused"),
        "force-clean": _r(S, "clean, cursor kept: partly-applied"),
    },
    Situation.MIGRATING_STUCK: {
        "up": _r(X, "refused: `force-clean` then `up` if M is safe to run again, or restore"),
        "down": _r(X, "refused"),
        "rerun": _r(X, "refused"),
        "force-clean": _r(S, "clean; M is pending (partly-applied if it committed chunks)"),
    },
    Situation.ROLLING_BACK: {
        "up": _r(X, "refused: finish the rollback with `down`"),
        "down": _r(C, "continues M's rollback (VERSION below M), then the rest"),
        "rerun": _r(C, "continues M's rollback then applies it, if ID is M"),
        "force-clean": _r(S, "clean, cursor kept: half-rolled-back"),
    },
    Situation.ROLLING_BACK_STUCK: {
        "up": _r(X, "refused"),
        "down": _r(X, "refused: `force-clean`, then decide, or restore a backup"),
        "rerun": _r(X, "refused"),
        "force-clean": _r(S, "clean; half-rolled-back if M's `down` committed chunks"),
    },
    Situation.DIRTY: {
        "up": _r(X, "refused: fix the cause, `force-clean`, then `up`"),
        "down": _r(R, "rolls M back too (its `down` gets `ctx.partial`)"),
        "rerun": _r(X, "refused"),
        "force-clean": _r(S, "clean; partly-applied if M committed chunks"),
    },
    Situation.DIRTY_ROLLBACK: {
        "up": _r(X, "refused: finish the rollback with `down`"),
        "down": _r(C, "continues M's rollback (VERSION below M), then the rest"),
        "rerun": _r(X, "refused"),
        "force-clean": _r(S, "clean; half-rolled-back if M's `down` committed chunks"),
    },
}

CHECK_CODE: dict[Situation, str] = {
    Situation.CLEAN: "0, or 3 when migrations are pending",
    Situation.PARTLY_APPLIED: "3",
}
"""`status --check` in each situation: 4 (not clean) where not listed."""


@dataclass(frozen=True)
class Reading:
    """The situation of one database: which migration it concerns and its run record."""

    situation: Situation
    migration_id: str | None = None
    record: RunRecord | None = None
    error: str | None = None
    rollback_to: int | None = None
    """For a rollback left halfway: the VERSION of the `down VERSION` that finishes it (the
    highest applied version below the migration, so nothing else is rolled back)."""

    def check_code(self, pending: bool) -> int:
        """Return the exit code of `status --check`."""
        if self.situation is Situation.CLEAN:
            return EXIT_PENDING if pending else 0
        if self.situation is Situation.PARTLY_APPLIED:
            return EXIT_PENDING
        return EXIT_NOT_CLEAN

    def describe(self) -> str:
        """Return one line an operator reads: the situation, the migration, how far."""
        if self.situation is Situation.CLEAN:
            return "clean"
        where = f", {self.record.describe()}" if self.record is not None else ""
        return f"{self.situation.value}: {self.migration_id}{where}"


def read(
    state: State, records: Mapping[tuple[str, str], RunRecord], migrations: Mapping[str, Migration]
) -> Reading:
    """Return the situation of a database from its state, run records and known code."""
    progress = state.in_progress
    if state.status is Status.CLEAN or progress is None:
        return _clean_reading(state, records)
    mid = progress.id
    rollback = progress.kind == "rollback"
    record = records.get((mid, "rollback" if rollback else "apply"))
    migration = migrations.get(mid)
    below = _below(state, mid) if rollback else None
    if state.status is Status.DIRTY:
        kind = Situation.DIRTY_ROLLBACK if rollback else Situation.DIRTY
        return Reading(kind, mid, record, state.last_error, below)
    if state.status is Status.ROLLBACK or rollback:
        moving = migration is not None and progress.resumable
        kind = Situation.ROLLING_BACK if moving else Situation.ROLLING_BACK_STUCK
        return Reading(kind, mid, record, rollback_to=below)
    moving = migration is not None and (progress.resumable or migration.rerunnable)
    return Reading(Situation.MIGRATING if moving else Situation.MIGRATING_STUCK, mid, record)


def _clean_reading(state: State, records: Mapping[tuple[str, str], RunRecord]) -> Reading:
    # A rollback left halfway outranks an apply left halfway: until it is finished the
    # data is neither before nor after that migration.
    for (mid, act), record in sorted(records.items()):
        if act == "rollback":
            return Reading(Situation.HALF_ROLLED_BACK, mid, record, rollback_to=_below(state, mid))
    for (mid, act), record in sorted(records.items()):
        if act == "apply":
            return Reading(Situation.PARTLY_APPLIED, mid, record)
    return Reading(Situation.CLEAN)


def _below(state: State, migration_id: str) -> int:
    version = parse_id(migration_id)
    return max((v for v in map(parse_id, state.applied) if v < version), default=0)


def decide(reading: Reading, command: str, cli: str, *, target_id: str | None = None) -> Rule:
    """Return the rule for `command` in this situation; raise NotCleanError if refused.

    `command` is one of COMMANDS, or "startup" (which follows "up"). For `rerun`,
    `target_id` is the migration asked for: a rerun continues only that migration.
    """
    column = "up" if command == "startup" else command
    rule = TABLE[reading.situation][column]
    mid = reading.migration_id
    if (
        column == "rerun"
        and rule.verdict is Verdict.CONTINUES
        and target_id is not None
        and target_id != mid
    ):
        raise NotCleanError(
            f"{mid} is {reading.situation.value.replace('-', ' ')}; `rerun {target_id}` would "
            "run on data that is neither before nor after it.",
            hint=_way_out(reading, cli),
        )
    if rule.verdict is Verdict.REFUSED:
        raise NotCleanError(_refusal(reading, command), hint=_way_out(reading, cli))
    return rule


def _refusal(reading: Reading, command: str) -> str:
    mid = reading.migration_id
    where = f" ({reading.record.describe()})" if reading.record is not None else ""
    what = {
        Situation.HALF_ROLLED_BACK: f"{mid} is half rolled back{where}",
        Situation.MIGRATING: f"migration {mid} was interrupted{where}",
        Situation.MIGRATING_STUCK: f"migration {mid} was interrupted{where} and cannot safely "
        "continue "
        "by itself (it wrote outside ctx, or its code is missing)",
        Situation.ROLLING_BACK: f"the rollback of {mid} was interrupted{where}",
        Situation.ROLLING_BACK_STUCK: f"the rollback of {mid} was interrupted{where} and cannot "
        "safely continue by itself (it wrote outside ctx, or its code is missing)",
        Situation.DIRTY: f"the database is dirty: {mid} failed: {reading.error}",
        Situation.DIRTY_ROLLBACK: f"the database is dirty: the rollback of {mid} failed: "
        f"{reading.error}",
    }.get(reading.situation, f"the database is {reading.situation.value}")
    return f"{what}. `{command}` cannot run now."


def _way_out(reading: Reading, cli: str) -> str:
    s, mid = reading.situation, reading.migration_id
    if s in (Situation.HALF_ROLLED_BACK, Situation.ROLLING_BACK, Situation.DIRTY_ROLLBACK):
        return (
            f"Nothing was changed. Finish the rollback with `{cli} down {reading.rollback_to}` "
            f"(it rolls back {mid} and nothing below it), or restore the backup taken before "
            f"it (`{cli} backup list`)."
        )
    if s in (Situation.MIGRATING, Situation.PARTLY_APPLIED):
        return f"Nothing was changed. Run `{cli} up` to continue {mid} first."
    return (
        f"Nothing was changed. Check with `{cli} status --verbose` and `{cli} validate`. "
        f"`{cli} force-clean`, then `{cli} up`, goes on after the last key {mid} committed "
        "(from its first key if it committed none), and runs again whatever it wrote "
        "outside ctx since: do it if that is "
        "safe (mark the migration `rerunnable = True` if it always is); `up --from-start` "
        "instead runs it again over everything. Or restore a backup: "
        f"`{cli} backup list`, then `{cli} backup restore ID --force`."
    )


def rerun_to_finish(reading: Reading, state: State) -> str | None:
    """Return the id of an applied migration whose rerun stopped in its apply phase (its
    rerun is finished by `up` and by the start-up API before anything else)."""
    mid = reading.migration_id
    if reading.situation in (Situation.MIGRATING, Situation.PARTLY_APPLIED) and (
        mid in state.applied
    ):
        return mid
    return None


def to_continue(reading: Reading) -> str | None:
    """Return the migration `up` must continue before anything else, if any."""
    if reading.situation in (Situation.MIGRATING, Situation.PARTLY_APPLIED):
        return reading.migration_id
    return None


def half_done(reading: Reading) -> str | None:
    """Return the migration left partly applied or partly rolled back, if any."""
    if reading.situation is Situation.CLEAN:
        return None
    return reading.migration_id


def table_markdown() -> str:
    """Return TABLE as the Markdown table docs/architecture.md shows (a test compares)."""
    head = ["Situation", "Meaning", *(f"`{c}`" for c in COMMANDS), "`status --check`"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for situation, rules in TABLE.items():
        cells = [f"`{situation.value}`", MEANING[situation]]
        cells += [rules[c].text for c in COMMANDS]
        cells.append(CHECK_CODE.get(situation, "4"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
