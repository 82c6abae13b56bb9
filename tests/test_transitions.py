"""Every state transition, through the library verbs, on real databases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pebble_migrate import (
    IrreversibleMigration,
    MigrationFailed,
    NotCleanError,
    Status,
    UnknownTarget,
    UsageError,
    commands,
    maintenance,
    validation,
)
from pebble_migrate.state import InProgress, StateStore
from pebble_migrate.store import open_database
from pebble_migrate.testing import contents, create_database
from pebble_migrate.units import utc_now
from tests.conftest import migration, put_items, registry_of, snapshot


def _state(path: Path) -> Any:
    db = open_database(path, read_only=True)
    try:
        with StateStore(db, str(path)) as states:
            return states.read()
    finally:
        db.close()


def _seen_status() -> tuple[list[Any], Any]:
    seen: list[Any] = []

    def look(ctx: Any) -> None:
        from pebble_migrate import read_state

        state = read_state(ctx.db)
        seen.append((state.status, state.in_progress.id if state.in_progress else None))

    return seen, look


def test_up_goes_clean_migrating_clean(db_path: Path) -> None:
    seen, look = _seen_status()
    reg = registry_of(migration("1700000000_a", up=look))
    commands.up(db_path, reg)
    assert seen == [(Status.MIGRATING, "1700000000_a")]
    state = _state(db_path)
    assert (state.status, state.in_progress, state.current_version) == (
        Status.CLEAN,
        None,
        1700000000,
    )


def test_down_goes_through_rollback(db_path: Path) -> None:
    seen, look = _seen_status()
    reg = registry_of(migration("1700000000_a", down=look))
    commands.up(db_path, reg)
    commands.down(db_path, reg, "0")
    assert seen == [(Status.ROLLBACK, "1700000000_a")]
    state = _state(db_path)
    assert (state.status, state.applied, state.current_version) == (Status.CLEAN, set(), 0)


def test_failure_marks_dirty_and_keeps_nothing_of_the_batch(db_path: Path) -> None:
    def boom(ctx: Any) -> None:
        ctx.put(b"half", b"written")
        raise ValueError("bad row 7")

    reg = registry_of(
        migration("1700000000_ok", up=put_items({b"ok": b"1"})),
        migration("1700100000_boom", up=boom),
    )
    with pytest.raises(MigrationFailed) as info:
        commands.up(db_path, reg)
    assert "1700100000_boom failed: ValueError: bad row 7" in str(info.value)
    assert "force-clean" in str(info.value)
    assert contents(db_path)["default"] == {b"ok": b"1", b"seed": b"1"}
    state = _state(db_path)
    assert state.status is Status.DIRTY
    assert state.last_error == "ValueError: bad row 7"
    assert state.in_progress.id == "1700100000_boom"
    assert state.applied == {"1700000000_ok"}
    last = commands.history(db_path)[-1]
    assert (last.id, last.success, last.error) == (
        "1700100000_boom",
        False,
        "ValueError: bad row 7",
    )


def test_dirty_refuses_up_down_rerun_and_changes_nothing(db_path: Path) -> None:
    def boom(ctx: Any) -> None:
        raise RuntimeError("no")

    reg = registry_of(migration("1700000000_a"), migration("1700100000_b", up=boom))
    with pytest.raises(MigrationFailed):
        commands.up(db_path, reg)
    before = snapshot(db_path)
    for call in (
        lambda: commands.up(db_path, reg),
        lambda: commands.rerun(db_path, reg, "1700000000_a"),
    ):
        with pytest.raises(NotCleanError) as info:
            call()
        assert "dirty" in info.value.message
        assert "1700100000_b" in info.value.message
        assert "force-clean" in (info.value.hint or "")
    assert snapshot(db_path) == before


def test_down_from_dirty_rolls_back_to_the_previous_version(db_path: Path) -> None:
    """The guide's option 2 for a failed migration: `down [previous_version]`."""

    def boom(ctx: Any) -> None:
        ctx.put(b"never", b"kept")
        raise RuntimeError("no")

    undone: list[str] = []
    reg = registry_of(
        migration(
            "1700000000_a",
            up=put_items({b"a": b"1"}),
            down=lambda ctx: (undone.append("a"), ctx.delete(b"a")),
        ),
        migration(
            "1700100000_b",
            up=put_items({b"b": b"1"}),
            down=lambda ctx: (undone.append("b"), ctx.delete(b"b")),
        ),
        migration("1700200000_boom", up=boom, down=lambda ctx: undone.append("boom")),
    )
    with pytest.raises(MigrationFailed):
        commands.up(db_path, reg)
    outcome = commands.down(db_path, reg, "1700000000")
    assert outcome.plan.ids == ("1700100000_b",)  # the failed one left nothing to undo
    assert undone == ["b"]
    state = _state(db_path)
    assert (state.status, state.applied, state.last_error) == (
        Status.CLEAN,
        {"1700000000_a"},
        None,
    )
    assert contents(db_path)["default"] == {b"a": b"1", b"seed": b"1"}


def test_down_from_dirty_undoes_a_failed_migration_that_wrote_directly(db_path: Path) -> None:
    def direct(ctx: Any) -> None:
        ctx.db[b"direct"] = b"1"
        raise RuntimeError("half done")

    reg = registry_of(
        migration("1700000000_direct", up=direct, down=lambda ctx: ctx.delete(b"direct"))
    )
    with pytest.raises(MigrationFailed):
        commands.up(db_path, reg)
    assert contents(db_path)["default"][b"direct"] == b"1"
    assert commands.down(db_path, reg, "0").plan.ids == ("1700000000_direct",)
    assert contents(db_path)["default"] == {b"seed": b"1"}
    assert _state(db_path).status is Status.CLEAN


def test_force_clean_does_not_mark_applied_and_up_runs_it_again(db_path: Path) -> None:
    calls: list[int] = []

    def flaky(ctx: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first time fails")
        ctx.put(b"done", b"yes")

    reg = registry_of(migration("1700000000_flaky", up=flaky))
    with pytest.raises(MigrationFailed):
        commands.up(db_path, reg)
    before, after = maintenance.force_clean(db_path)
    assert (before.status, after.status) == (Status.DIRTY, Status.CLEAN)
    assert after.applied == frozenset()
    record = commands.history(db_path)[-1]
    assert (record.kind, record.id) == ("force-clean", "1700000000_flaky")
    commands.up(db_path, reg)
    assert calls == [1, 1]
    assert contents(db_path)["default"][b"done"] == b"yes"
    assert _state(db_path).applied == {"1700000000_flaky"}


def test_force_clean_on_clean_database_changes_nothing(db_path: Path) -> None:
    commands.up(db_path, registry_of(migration("1700000000_a")))
    before = snapshot(db_path)
    old, new = maintenance.force_clean(db_path)
    assert old is new
    assert snapshot(db_path) == before


def test_fresh_empty_database_is_stamped_without_running(tmp_path: Path) -> None:
    path = create_database(tmp_path / "empty")
    reg = registry_of(
        migration("1700000000_a", up=put_items({b"a": b"1"})),
        migration("1700100000_b", up=put_items({b"b": b"1"})),
    )
    outcome = commands.up(path, reg)
    assert outcome.plan.steps == ()
    assert contents(path) == {"default": {}}
    state = _state(path)
    assert state.current_version == 1700100000
    assert state.applied == {"1700000000_a", "1700100000_b"}
    notes = [(r.id, r.note) for r in commands.history(path)]
    assert notes == [
        ("1700000000_a", "skipped: fresh database"),
        ("1700100000_b", "skipped: fresh database"),
    ]


def test_database_with_data_but_no_state_runs_everything(db_path: Path) -> None:
    reg = registry_of(migration("1700000000_a", up=put_items({b"a": b"1"})))
    outcome = commands.up(db_path, reg)
    assert outcome.plan.ids == ("1700000000_a",)
    assert contents(db_path)["default"] == {b"a": b"1", b"seed": b"1"}


def test_up_to_version_then_rest(db_path: Path) -> None:
    reg = registry_of(
        migration("1700000000_a"), migration("1700100000_b"), migration("1700200000_c")
    )
    commands.up(db_path, reg, target="1700100000")
    assert _state(db_path).applied == {"1700000000_a", "1700100000_b"}
    commands.up(db_path, reg)
    assert _state(db_path).current_version == 1700200000


def test_down_keeps_the_target_applied(db_path: Path) -> None:
    reg = registry_of(
        migration("1700000000_a"), migration("1700100000_b"), migration("1700200000_c")
    )
    commands.up(db_path, reg)
    outcome = commands.down(db_path, reg, "1700000000")
    assert outcome.plan.ids == ("1700200000_c", "1700100000_b")
    state = _state(db_path)
    assert (state.applied, state.current_version) == ({"1700000000_a"}, 1700000000)
    assert [r.kind for r in commands.history(db_path)][-2:] == ["rollback", "rollback"]


def test_down_through_migration_without_down_changes_nothing(db_path: Path) -> None:
    reg = registry_of(migration("1700000000_a"), migration("1700100000_b", down=None))
    commands.up(db_path, reg)
    before = snapshot(db_path)
    with pytest.raises(IrreversibleMigration) as info:
        commands.down(db_path, reg, "0")
    assert "1700100000_b" in info.value.message
    assert snapshot(db_path) == before


def test_unknown_version_changes_nothing(db_path: Path) -> None:
    reg = registry_of(migration("1700000000_a"))
    commands.up(db_path, reg)
    before = snapshot(db_path)
    for call in (
        lambda: commands.down(db_path, reg, "1600000000"),
        lambda: commands.up(db_path, reg, target="nope"),
        lambda: commands.rerun(db_path, reg, "1700000001_x"),
    ):
        with pytest.raises(UnknownTarget):
            call()
    assert snapshot(db_path) == before


def test_rerun_rolls_back_then_applies(db_path: Path) -> None:
    log: list[str] = []
    reg = registry_of(
        migration(
            "1700000000_a", up=lambda ctx: log.append("up"), down=lambda ctx: log.append("down")
        )
    )
    commands.up(db_path, reg)
    commands.rerun(db_path, reg, "1700000000_a")
    assert log == ["up", "down", "up"]
    assert [r.kind for r in commands.history(db_path)] == ["apply", "rollback", "rerun"]
    assert _state(db_path).applied == {"1700000000_a"}


def test_dry_run_touches_nothing(db_path: Path) -> None:
    reg = registry_of(migration("1700000000_a", up=put_items({b"a": b"1"})))
    before = snapshot(db_path)
    outcome = commands.up(db_path, reg, dry_run=True)
    assert outcome.plan.ids == ("1700000000_a",)
    assert outcome.report is None
    assert snapshot(db_path) == before
    commands.up(db_path, reg)
    before = snapshot(db_path)
    assert commands.down(db_path, reg, "0", dry_run=True).plan.ids == ("1700000000_a",)
    assert commands.rerun(db_path, reg, "1700000000_a", dry_run=True).plan.ids == (
        "1700000000_a",
        "1700000000_a",
    )
    assert snapshot(db_path) == before


def test_repair_adds_missing_history_and_fixes_version(db_path: Path) -> None:
    commands.up(db_path, registry_of(migration("1700000000_a")))
    db = open_database(db_path, read_only=False)
    try:
        with StateStore(db, str(db_path)) as states:
            state = states.read()
            states.write_state(
                state.evolve(applied=state.applied | {"1700100000_b"}, current_version=5)
            )
    finally:
        db.close()
    report = maintenance.repair(db_path)
    assert report.added_history == ["1700100000_b"]
    assert report.version_fixed == (5, 1700100000)
    assert _state(db_path).current_version == 1700100000
    assert maintenance.repair(db_path).added_history == []


def test_interrupted_non_resumable_refuses_and_rerunnable_recovers(db_path: Path) -> None:
    """A `migrating` state left by a migration that wrote around ctx needs the operator."""

    def direct(ctx: Any) -> None:
        ctx.db[b"direct"] = b"1"
        raise KeyboardInterrupt

    reg = registry_of(migration("1700000000_direct", up=direct))
    with pytest.raises(KeyboardInterrupt):
        commands.up(db_path, reg, options=commands.RunOptions(handle_signals=False))
    state = _state(db_path)
    assert state.status is Status.MIGRATING
    assert state.in_progress.resumable is False
    before = snapshot(db_path)
    with pytest.raises(NotCleanError) as info:
        commands.up(db_path, reg)
    assert "1700000000_direct" in info.value.message
    assert "force-clean" in (info.value.hint or "")
    assert snapshot(db_path) == before

    rerunnable = registry_of(
        migration("1700000000_direct", up=put_items({b"x": b"1"}), rerunnable=True)
    )
    commands.up(db_path, rerunnable)
    assert _state(db_path).status is Status.CLEAN
    assert contents(db_path)["default"][b"x"] == b"1"


def test_validate_reports_problems(db_path: Path) -> None:
    def check(ctx: Any) -> list[str]:
        return [] if ctx.get(b"a") == b"1" else ["a is wrong"]

    reg = registry_of(migration("1700000000_a", up=put_items({b"a": b"2"}), validate=check))
    commands.up(db_path, reg, options=commands.RunOptions(validate=False))
    report = validation.validate(db_path, reg)
    assert report.problems == ["validate 1700000000_a: a is wrong"]


def test_validate_may_not_write(db_path: Path) -> None:
    def sneaky(ctx: Any) -> None:
        ctx.put(b"x", b"y")

    reg = registry_of(migration("1700000000_a", validate=sneaky))
    commands.up(db_path, reg, options=commands.RunOptions(validate=False))
    before = snapshot(db_path)
    report = validation.validate(db_path, reg)
    assert report.problems == [
        "validate 1700000000_a: validate() must not write; it only checks the data."
    ]
    assert snapshot(db_path) == before


def test_validate_flags_inconsistent_state(db_path: Path) -> None:
    reg = registry_of(migration("1700000000_a"))
    commands.up(db_path, reg)
    db = open_database(db_path, read_only=False)
    try:
        with StateStore(db, str(db_path)) as states:
            state = states.read()
            states.write_state(
                state.evolve(
                    applied=state.applied | {"1700100000_gone"},
                    status=Status.MIGRATING,
                    in_progress=InProgress("1700100000_gone", "apply", utc_now()),
                )
            )
    finally:
        db.close()
    problems = validation.validate(db_path, reg).problems
    assert any(p.startswith("status:") for p in problems)
    assert any("1700100000_gone" in p and p.startswith("code:") for p in problems)
    assert any(p.startswith("version:") for p in problems)
    assert any(p.startswith("history:") for p in problems)


def test_up_refuses_uninitialized_down(db_path: Path) -> None:
    before = snapshot(db_path)
    with pytest.raises(UsageError) as info:
        commands.down(db_path, registry_of(migration("1700000000_a")), "0")
    assert "no migration state" in info.value.message
    assert snapshot(db_path) == before
