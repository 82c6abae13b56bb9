"""The executor's rarer paths, in-process against real databases.

A migration handing back an async generator instead of running; a second signal that the
migration's own code swallowed; a signal to a migration that wrote outside ctx (no scan
open); writes through a `ctx.db` kept from an earlier step; and a hand-built plan that
asks the executor to apply a migration whose rollback is half done.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from pebble_migrate import ChunkPolicy, MigrationFailed, MigrationInterrupted, Status, commands
from pebble_migrate.commands import RunOptions
from pebble_migrate.errors import NotCleanError, StateError
from pebble_migrate.executor import Executor, run_records
from pebble_migrate.plan import Plan, Step
from pebble_migrate.state import State, StateStore
from pebble_migrate.store import close_database, open_database
from pebble_migrate.testing import contents, create_database
from tests.conftest import migration, registry_of

USERS = {b"user:%03d" % i: b"v%d" % i for i in range(40)}
FIRST = "1700000000_first"
SECOND = "1700000100_second"


@pytest.fixture
def users_db(tmp_path: Path) -> Path:
    """A database holding 40 user records."""
    return create_database(tmp_path / "db", USERS)


def _signals() -> RunOptions:
    return RunOptions(policy=ChunkPolicy(records=10), handle_signals=True)


def _no_signals() -> RunOptions:
    return RunOptions(policy=ChunkPolicy(records=10), handle_signals=False)


def _read(path: Path) -> tuple[State, dict[tuple[str, str], Any]]:
    db = open_database(path, read_only=True)
    try:
        with StateStore(db, str(path)) as states:
            return states.read(), run_records(states)
    finally:
        close_database(db)


def test_an_async_generator_handed_back_by_up_fails_the_step_unrun(users_db: Path) -> None:
    async def later(ctx: Any) -> AsyncGenerator[None, None]:
        ctx.put(b"never", b"written")
        yield None

    def sneaky(ctx: Any) -> Any:
        return later(ctx)  # a plain function, so loading the migration cannot tell

    with pytest.raises(MigrationFailed) as info:
        commands.up(users_db, registry_of(migration(FIRST, up=sneaky)), options=_no_signals())
    assert f"{FIRST} returned a async_generator instead of running" in info.value.message
    state, _ = _read(users_db)
    assert state.status is Status.DIRTY and FIRST not in state.applied
    assert contents(users_db)["default"] == USERS


def test_a_second_signal_swallowed_by_the_migration_still_stops_at_once(users_db: Path) -> None:
    def swallows(ctx: Any) -> None:
        ctx.put(b"open", b"chunk")
        try:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)  # the handler raises HardStop here
        except BaseException:  # noqa: BLE001 - the careless migration under test
            pass

    with pytest.raises(MigrationInterrupted) as info:
        commands.up(users_db, registry_of(migration(FIRST, up=swallows)), options=_signals())
    assert info.value.message == (
        f"stopped {FIRST} at once on a second SIGINT; the open chunk was not committed"
    )
    assert info.value.exit_code == 130
    assert "Run `pebble-migrate up` to continue" in (info.value.hint or "")
    assert b"open" not in contents(users_db)["default"]
    state, _ = _read(users_db)
    assert state.status is Status.MIGRATING and FIRST not in state.applied
    assert commands.history(users_db) == []


def test_a_signal_to_a_migration_that_wrote_outside_ctx_says_it_cannot_resume(
    users_db: Path,
) -> None:
    def direct(ctx: Any) -> None:
        ctx.db.put(b"direct", b"1")
        signal.raise_signal(signal.SIGINT)
        ctx.progress(1)  # a safe stop point, with no scan open

    with pytest.raises(MigrationInterrupted) as info:
        commands.up(users_db, registry_of(migration(FIRST, up=direct)), options=_signals())
    assert info.value.message == f"interrupted {FIRST} before its work was committed"
    assert info.value.exit_code == 130
    hint = info.value.hint or ""
    assert f"{FIRST} wrote outside ctx, so it cannot resume by itself" in hint
    assert "`pebble-migrate force-clean`" in hint
    state, _ = _read(users_db)
    assert state.status is Status.MIGRATING
    assert state.in_progress is not None and not state.in_progress.resumable
    last = commands.history(users_db)[-1]
    assert (last.success, last.note) == (False, "interrupted before its work was committed")
    assert contents(users_db)["default"][b"direct"] == b"1"
    # What force-clean then up really does is said, not "runs again from its start"; the
    # refusal of a plain `up` says the same (and names the restart from the start).
    said = " ".join(hint.split())
    assert "goes on after the last key it committed" in said and "up --from-start" in said
    before = contents(users_db)
    with pytest.raises(NotCleanError) as refused:
        commands.up(users_db, registry_of(migration(FIRST, up=direct)), options=_signals())
    way_out = " ".join((refused.value.hint or "").split())
    assert f"goes on after the last key {FIRST} committed" in way_out
    assert "`up --from-start` instead runs it again over everything" in way_out
    assert "from its start" not in way_out
    assert contents(users_db) == before


def test_a_kept_ctx_db_of_an_earlier_step_marks_the_running_step_unresumable_once(
    users_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept: list[Any] = []
    written: list[State] = []
    real_write_state = StateStore.write_state

    def spy(self: StateStore, state: State, *records: Any) -> State:
        written.append(state)
        return real_write_state(self, state, *records)

    monkeypatch.setattr(StateStore, "write_state", spy)

    def keeps(ctx: Any) -> None:
        kept.append(ctx.db)  # a helper caching the handle; nothing written here

    def both(ctx: Any) -> None:
        ctx.db.put(b"own", b"1")
        kept[0].put(b"kept", b"1")  # the first write through the earlier step's handle

    reg = registry_of(migration(FIRST, up=keeps), migration(SECOND, FIRST, up=both))
    commands.up(users_db, reg, options=_no_signals())
    unresumable = [
        s.in_progress for s in written if s.in_progress is not None and not s.in_progress.resumable
    ]
    assert [p.id for p in unresumable] == [SECOND]
    data = contents(users_db)["default"]
    assert (data[b"own"], data[b"kept"]) == (b"1", b"1")
    assert [(h.id, h.note) for h in commands.history(users_db)] == [
        (FIRST, None),
        (SECOND, "wrote outside ctx"),
    ]
    state, _ = _read(users_db)
    assert state.status is Status.CLEAN and state.applied == {FIRST, SECOND}


def test_the_executor_refuses_to_apply_a_migration_whose_rollback_is_half_done(
    users_db: Path,
) -> None:
    def plus(ctx: Any) -> None:
        for key, value in ctx.scan(prefix=b"user:"):
            ctx.put(key, value + b"+")

    def undo_until_025(ctx: Any) -> None:
        for key, value in ctx.scan(prefix=b"user:"):
            if key == b"user:025":
                raise KeyboardInterrupt  # as if killed: the open chunk is lost
            ctx.put(key, value[:-1])

    target = migration(FIRST, up=plus, down=undo_until_025)
    commands.up(users_db, registry_of(target), options=_no_signals())
    with pytest.raises(KeyboardInterrupt):
        commands.down(users_db, registry_of(target), "0", options=_no_signals())
    _, records = _read(users_db)
    assert set(records) == {(FIRST, "rollback")}
    before = contents(users_db, state=True)

    plan = Plan("up", (Step("apply", target, "apply"),), 0, target.version)
    db = open_database(users_db, read_only=False)
    executor = Executor(db, users_db, handle_signals=False)
    try:
        with pytest.raises(StateError) as info:
            executor.run(plan)
    finally:
        executor.release()
        close_database(db)
    assert info.value.message == (
        f"{FIRST} is half rolled back; it cannot be applied until the rollback is finished."
    )
    assert info.value.hint == f"Run `pebble-migrate down VERSION` below {FIRST}."
    assert contents(users_db, state=True) == before
