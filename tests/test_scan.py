"""ctx: batched writes, resumable scans, chunk commits, resume, signals (in-process)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from pebble_migrate import (
    ChunkPolicy,
    Event,
    MigrationFailed,
    MigrationInterrupted,
    PlanError,
    Status,
    UsageError,
    commands,
    maintenance,
    validation,
)
from pebble_migrate.commands import RunOptions
from pebble_migrate.executor import run_records
from pebble_migrate.state import StateStore
from pebble_migrate.store import open_database
from pebble_migrate.testing import contents, create_database
from pebble_migrate.views import work_dir
from tests.conftest import migration, registry_of

USERS = {b"user:%03d" % i: b"v%d" % i for i in range(100)}


@pytest.fixture
def users_db(tmp_path: Path) -> Path:
    return create_database(tmp_path / "db", {**USERS, b"other:1": b"x"})


def _opts(records: int = 10, events: list[Event] | None = None) -> RunOptions:
    return RunOptions(
        policy=ChunkPolicy(records=records),
        handle_signals=True,
        reporter=(events.append if events is not None else (lambda e: None)),
    )


def _state(path: Path) -> Any:
    db = open_database(path, read_only=True)
    try:
        with StateStore(db, str(path)) as states:
            return states.read(), run_records(states)
    finally:
        db.close()


def _plus(ctx: Any, fail_at: bytes | None = None) -> None:
    """A transform that is not idempotent: it reads the live value, so twice shows as '++'."""
    for key, _ in ctx.scan(prefix=b"user:"):
        if key == fail_at:
            raise RuntimeError(f"bad {key!r}")
        ctx.put(key, ctx.get(key) + b"+")


def test_get_sees_pending_puts_and_deletes(users_db: Path) -> None:
    seen = []

    def up(ctx: Any) -> None:
        ctx.put(b"new", b"1")
        ctx.delete(b"other:1")
        seen.extend(
            [
                ctx.get(b"new"),
                ctx.get(b"other:1"),
                ctx.get(b"other:1", b"gone"),
                ctx.get(b"user:001"),
            ]
        )

    commands.up(users_db, registry_of(migration("1700000000_a", up=up)))
    assert seen == [b"1", None, b"gone", b"v1"]


def test_scan_prefix_and_range(users_db: Path) -> None:
    got: dict[str, list[bytes]] = {}

    def up(ctx: Any) -> None:
        got["prefix"] = [k for k, _ in ctx.scan(prefix=b"user:09")]
        got["range"] = [k for k, _ in ctx.scan(start=b"user:010", end=b"user:013", name="r")]
        got["tail"] = [k for k, _ in ctx.scan(start=b"user:099", name="t")]

    commands.up(users_db, registry_of(migration("1700000000_a", up=up)))
    assert got["prefix"] == [b"user:%03d" % i for i in range(90, 100)]
    assert got["range"] == [b"user:010", b"user:011", b"user:012"]
    assert got["tail"] == [b"user:099"]


def test_scan_name_reused_is_an_error(users_db: Path) -> None:
    def up(ctx: Any) -> None:
        list(ctx.scan(prefix=b"user:"))
        list(ctx.scan(prefix=b"other:"))

    with pytest.raises(MigrationFailed) as info:
        commands.up(users_db, registry_of(migration("1700000000_a", up=up)))
    assert "give each scan its own name=" in str(info.value)


def test_scan_rejects_prefix_with_range(users_db: Path) -> None:
    def up(ctx: Any) -> None:
        ctx.scan(prefix=b"u", start=b"a")

    with pytest.raises(MigrationFailed) as info:
        commands.up(users_db, registry_of(migration("1700000000_a", up=up)))
    assert "either prefix= or start=/end=" in str(info.value)


def test_rename_within_prefix_does_not_process_its_own_output(users_db: Path) -> None:
    def up(ctx: Any) -> None:
        for key, value in ctx.scan(prefix=b"user:"):
            ctx.delete(key)
            ctx.put(b"user:" + key[5:] + b":renamed", value)

    commands.up(users_db, registry_of(migration("1700000000_a", up=up)), options=_opts(7))
    data = contents(users_db)["default"]
    assert data == {**{k + b":renamed": v for k, v in USERS.items()}, b"other:1": b"x"}


def test_several_scans_in_one_migration(users_db: Path) -> None:
    def up(ctx: Any) -> None:
        for key, value in ctx.scan(prefix=b"user:", name="first"):
            ctx.put(key, value + b"1")
        for key, value in ctx.scan(prefix=b"user:", name="second"):
            ctx.put(key, value + b"2")  # sees the first scan's committed output

    commands.up(users_db, registry_of(migration("1700000000_a", up=up)), options=_opts(9))
    data = contents(users_db)["default"]
    assert all(data[k] == v + b"12" for k, v in USERS.items())


def test_exception_keeps_committed_chunks_and_resume_is_exactly_once(users_db: Path) -> None:
    reg = registry_of(migration("1700000000_plus", up=lambda ctx: _plus(ctx, b"user:025")))
    with pytest.raises(MigrationFailed) as info:
        commands.up(users_db, reg, options=_opts(10))
    assert "continues after b'user:019'" in str(info.value)
    data = contents(users_db)["default"]
    assert [k for k in USERS if data[k].endswith(b"+")] == list(USERS)[:20]
    state, records = _state(users_db)
    assert state.status is Status.DIRTY
    cursor = records[("1700000000_plus", "apply")].scans["default"]
    assert (cursor.after, cursor.count, cursor.done) == (b"user:019", 20, False)

    maintenance.force_clean(users_db)
    events: list[Event] = []
    fixed = registry_of(migration("1700000000_plus", up=_plus))
    commands.up(users_db, fixed, options=_opts(10, events))
    assert any(e.kind == "resume" and "after b'user:019'" in e.message for e in events)
    data = contents(users_db)["default"]
    assert all(data[k] == v + b"+" for k, v in USERS.items())
    state, records = _state(users_db)
    assert state.status is Status.CLEAN and records == {}
    assert not (work_dir(users_db) / "scans" / "1700000000_plus").exists()


def test_interrupt_without_signal_handling_is_resumable_by_up(users_db: Path) -> None:
    def stop_at_55(ctx: Any) -> None:
        for key, value in ctx.scan(prefix=b"user:"):
            if key == b"user:055":
                raise KeyboardInterrupt
            ctx.put(key, value + b"+")

    reg = registry_of(migration("1700000000_plus", up=stop_at_55))
    with pytest.raises(KeyboardInterrupt):
        commands.up(users_db, reg, options=RunOptions(policy=ChunkPolicy(10), handle_signals=False))
    state, _ = _state(users_db)
    assert state.status is Status.MIGRATING and state.in_progress.resumable
    commands.up(users_db, registry_of(migration("1700000000_plus", up=_plus)), options=_opts(10))
    data = contents(users_db)["default"]
    assert all(data[k] == v + b"+" for k, v in USERS.items())


def test_first_signal_commits_up_to_the_current_key(users_db: Path) -> None:
    def interrupted(ctx: Any) -> None:
        for key, value in ctx.scan(prefix=b"user:"):
            ctx.put(key, value + b"+")
            if key == b"user:042":
                os.kill(os.getpid(), signal.SIGINT)

    reg = registry_of(migration("1700000000_plus", up=interrupted))
    with pytest.raises(MigrationInterrupted) as info:
        commands.up(users_db, reg, options=_opts(10))
    assert info.value.exit_code == 130
    assert "at b'user:042' (43 of ~100)" in info.value.message
    assert "pebble-migrate up" in (info.value.hint or "")
    data = contents(users_db)["default"]
    assert [k for k in USERS if data[k].endswith(b"+")] == list(USERS)[:43]
    state, _ = _state(users_db)
    assert state.status is Status.MIGRATING
    last = commands.history(users_db)[-1]
    assert last.success is False and "interrupted at b'user:042' (43 of ~100)" in (last.note or "")
    commands.up(users_db, registry_of(migration("1700000000_plus", up=_plus)), options=_opts(10))
    data = contents(users_db)["default"]
    assert all(data[k] == v + b"+" for k, v in USERS.items())


def test_sigterm_exit_code_is_143(users_db: Path) -> None:
    def interrupted(ctx: Any) -> None:
        for key, value in ctx.scan(prefix=b"user:"):
            ctx.put(key, value + b"+")
            if key == b"user:010":
                os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(MigrationInterrupted) as info:
        commands.up(
            users_db, registry_of(migration("1700000000_p", up=interrupted)), options=_opts(10)
        )
    assert info.value.exit_code == 143


def test_second_signal_stops_at_once_without_the_open_chunk(users_db: Path) -> None:
    def twice(ctx: Any) -> None:
        for key, value in ctx.scan(prefix=b"user:"):
            ctx.put(key, value + b"+")
            if key == b"user:033":
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(MigrationInterrupted) as info:
        commands.up(users_db, registry_of(migration("1700000000_p", up=twice)), options=_opts(10))
    assert "at once" in info.value.message
    data = contents(users_db)["default"]
    assert [k for k in USERS if data[k].endswith(b"+")] == list(USERS)[:30]
    assert _state(users_db)[0].status is Status.MIGRATING


def test_signal_after_scan_finished_completes_normally(users_db: Path) -> None:
    def late(ctx: Any) -> None:
        _plus(ctx)
        os.kill(os.getpid(), signal.SIGINT)
        ctx.put(b"after", b"scan")

    with pytest.raises(MigrationInterrupted) as info:
        commands.up(
            users_db,
            registry_of(migration("1700000000_p", up=late), migration("1700100000_next")),
            options=_opts(10),
        )
    assert info.value.message == "stopped after 1700000000_p; 1 step(s) not run: 1700100000_next"
    state, _ = _state(users_db)
    assert (state.status, state.applied) == (Status.CLEAN, {"1700000000_p"})
    data = contents(users_db)["default"]
    assert data[b"after"] == b"scan"
    assert all(data[k] == v + b"+" for k, v in USERS.items())


def test_from_start_discards_progress_and_reapplies(users_db: Path) -> None:
    reg = registry_of(migration("1700000000_plus", up=lambda ctx: _plus(ctx, b"user:025")))
    with pytest.raises(MigrationFailed):
        commands.up(users_db, reg, options=_opts(10))
    maintenance.force_clean(users_db)
    asked: list[str] = []
    opts = _opts(10)
    opts.confirm = lambda q: asked.append(q) is None
    commands.up(
        users_db, registry_of(migration("1700000000_plus", up=_plus)), from_start=True, options=opts
    )
    assert "not idempotent" in asked[0]
    data = contents(users_db)["default"]
    assert [k for k in USERS if data[k].endswith(b"++")] == list(USERS)[:20]
    assert all(data[k].endswith(b"+") for k in USERS)


def test_down_of_partly_applied_migration_runs_down_and_clears_cursor(users_db: Path) -> None:
    def undo(ctx: Any) -> None:
        for key, value in ctx.scan(prefix=b"user:"):
            ctx.put(key, value.rstrip(b"+"))

    failing = registry_of(
        migration("1700000000_plus", up=lambda ctx: _plus(ctx, b"user:025"), down=undo)
    )
    commands.up(users_db, registry_of(migration("1600000000_base")), options=_opts(10))
    with pytest.raises(MigrationFailed):
        commands.up(
            users_db,
            registry_of(
                migration("1600000000_base"),
                migration("1700000000_plus", up=lambda ctx: _plus(ctx, b"user:025"), down=undo),
            ),
            options=_opts(10),
        )
    maintenance.force_clean(users_db)
    reg = registry_of(migration("1600000000_base"), *failing.all())
    outcome = commands.down(users_db, reg, "1600000000")
    assert outcome.plan.ids == ("1700000000_plus",)
    assert contents(users_db)["default"] == {**USERS, b"other:1": b"x"}
    state, records = _state(users_db)
    assert records == {} and state.applied == {"1600000000_base"}


def test_loose_writes_before_a_scan_are_not_replayed_on_resume(users_db: Path) -> None:
    def counted(ctx: Any, fail: bool) -> None:
        ctx.put(b"runs", str(int(ctx.get(b"runs", b"0")) + 1).encode())
        for key, value in ctx.scan(prefix=b"user:"):
            if fail and key == b"user:050":
                raise RuntimeError("stop")
            ctx.put(key, value + b"+")

    with pytest.raises(MigrationFailed):
        commands.up(
            users_db,
            registry_of(migration("1700000000_c", up=lambda c: counted(c, True))),
            options=_opts(10),
        )
    maintenance.force_clean(users_db)
    commands.up(
        users_db,
        registry_of(migration("1700000000_c", up=lambda c: counted(c, False))),
        options=_opts(10),
    )
    data = contents(users_db)["default"]
    assert data[b"runs"] == b"1"
    assert all(data[k] == v + b"+" for k, v in USERS.items())


def test_direct_write_makes_the_run_not_resumable_and_is_recorded(users_db: Path) -> None:
    flags = []

    def direct(ctx: Any) -> None:
        from pebble_migrate import read_state

        flags.append(read_state(ctx.db).in_progress.resumable)
        ctx.db.put(b"direct", b"1")
        flags.append(read_state(ctx.db).in_progress.resumable)

    commands.up(users_db, registry_of(migration("1700000000_d", up=direct)))
    assert flags == [True, False]
    assert commands.history(users_db)[-1].note == "wrote outside ctx"


def test_progress_events_report_counts(users_db: Path) -> None:
    events: list[Event] = []
    commands.up(
        users_db, registry_of(migration("1700000000_p", up=_plus)), options=_opts(10, events)
    )
    progress = [e for e in events if e.kind == "progress"]
    assert progress[-1].data == {
        "scan": "default",
        "done": 100,
        "total": 100,
        "action": "apply",
        "label": "1700000000_p",
    }


def test_validate_scans_a_snapshot_and_cannot_write_directly(users_db: Path) -> None:
    def check(ctx: Any) -> list[str]:
        bad = [k for k, v in ctx.scan(prefix=b"user:") if not v.endswith(b"+")]
        try:
            ctx.db[b"x"] = b"y"
        except UsageError:
            return bad
        return ["wrote!"]

    reg = registry_of(migration("1700000000_p", up=_plus, validate=check))
    commands.up(users_db, reg)
    assert validation.validate(users_db, reg).problems == []


def test_down_of_partly_applied_migration_can_stop_where_up_stopped(users_db: Path) -> None:
    def undo(ctx: Any) -> None:
        stop = ctx.partial["default"] if ctx.partial else None
        for key, value in ctx.scan(prefix=b"user:"):
            if stop is not None and key > stop:
                break
            ctx.put(key, value[:-1])  # a naive inverse: only right where up wrote

    reg = registry_of(
        migration("1700000000_plus", up=lambda ctx: _plus(ctx, b"user:025"), down=undo)
    )
    with pytest.raises(MigrationFailed):
        commands.up(users_db, reg, options=_opts(10))
    maintenance.force_clean(users_db)
    commands.down(users_db, reg, "0")
    assert contents(users_db)["default"] == {**USERS, b"other:1": b"x"}


def test_str_prefix_in_a_pickle_mode_database(tmp_path: Path) -> None:
    import rocksdict

    path = tmp_path / "pickled"
    db = rocksdict.Rdict(str(path))
    for i in range(5):
        db[f"user:{i}"] = f"v{i}"
    db["zzz"] = "other"
    db.close()

    def up(ctx: Any) -> None:
        for key, value in ctx.scan(prefix="user:"):
            ctx.put(key, value.upper())

    commands.up(path, registry_of(migration("1700000000_a", up=up)))
    db = rocksdict.Rdict(str(path))
    try:
        assert [db[f"user:{i}"] for i in range(5)] == [f"V{i}" for i in range(5)]
        assert db["zzz"] == "other"
    finally:
        db.close()


def test_down_to_the_failed_migrations_own_version_keeps_its_work_and_says_so(
    users_db: Path,
) -> None:
    base = migration("1600000000_base")
    reg = registry_of(base, migration("1700000000_plus", up=lambda c: _plus(c, b"user:025")))
    with pytest.raises(MigrationFailed):
        commands.up(users_db, reg, options=_opts(10))
    before = contents(users_db, state=True)
    with pytest.raises(PlanError) as info:
        commands.down(users_db, reg, "1700000000")
    assert "1700000000_plus is half applied (status dirty)" in info.value.message
    assert contents(users_db, state=True) == before
    dry = commands.down(users_db, reg, "1600000000", dry_run=True)
    assert (dry.plan.ids, dry.plan.from_version, dry.plan.to_version) == (
        ("1700000000_plus",),
        1600000000,
        1600000000,
    )


def test_break_then_another_scan_resumes_exactly_once(tmp_path: Path) -> None:
    data = {b"a:%03d" % i: b"x" for i in range(100)} | {b"b:%03d" % i: b"x" for i in range(100)}
    path = create_database(tmp_path / "db", data)

    def job(ctx: Any, stop_in_b: bool) -> None:
        for key, _ in ctx.scan(prefix=b"a:", name="a"):
            ctx.put(key, ctx.get(key) + b"+")
            if key == b"a:049":
                break
        for key, _ in ctx.scan(prefix=b"b:", name="b"):
            if stop_in_b and key == b"b:025":
                raise KeyboardInterrupt  # as if killed: the open chunk is lost
            ctx.put(key, ctx.get(key) + b"+")

    first = registry_of(migration("1700000000_job", up=lambda ctx: job(ctx, True)))
    with pytest.raises(KeyboardInterrupt):
        commands.up(path, first, options=RunOptions(policy=ChunkPolicy(10), handle_signals=False))
    commands.up(
        path,
        registry_of(migration("1700000000_job", up=lambda ctx: job(ctx, False))),
        options=_opts(10),
    )
    after = contents(path)["default"]
    assert [k for k, v in after.items() if v == b"x+"] == [
        *(b"a:%03d" % i for i in range(50)),
        *(b"b:%03d" % i for i in range(100)),
    ]
    assert all(after[b"a:%03d" % i] == b"x" for i in range(50, 100))


def test_nested_scans_are_refused_before_anything_is_committed(users_db: Path) -> None:
    def nested(ctx: Any) -> None:
        for key, _ in ctx.scan(prefix=b"user:", name="outer"):
            ctx.put(key, b"changed")
            for _ in ctx.scan(prefix=b"other:", name="inner"):
                pass

    with pytest.raises(MigrationFailed) as info:
        commands.up(users_db, registry_of(migration("1700000000_n", up=nested)), options=_opts(10))
    assert "scans cannot be nested or interleaved" in info.value.message
    assert contents(users_db)["default"] == {**USERS, b"other:1": b"x"}


def _interrupt_at(key: bytes) -> Any:
    """Return a scan body step that simulates a kill at `key` (the open chunk is lost)."""

    def check(current: bytes) -> None:
        if current == key:
            raise KeyboardInterrupt

    return check


def _no_signals(records: int = 10) -> RunOptions:
    return RunOptions(policy=ChunkPolicy(records), handle_signals=False)


def test_interrupted_rerun_rollback_blocks_down_around_it_and_rerun_continues(
    users_db: Path,
) -> None:
    stop = _interrupt_at(b"user:035")

    def undo(ctx: Any, interrupt: bool) -> None:
        for key, _ in ctx.scan(prefix=b"user:"):
            if interrupt:
                stop(key)
            ctx.put(key, ctx.get(key)[:-1])

    def reg(interrupt: bool) -> Any:
        return registry_of(
            migration("1700000000_plus", up=_plus, down=lambda c: undo(c, interrupt)),
            migration("1700000100_other"),
        )

    commands.up(users_db, reg(False), options=_opts(10))
    with pytest.raises(KeyboardInterrupt):
        commands.rerun(
            users_db, reg(True), "1700000000_plus", allow_later=True, options=_no_signals()
        )
    assert _state(users_db)[0].status is Status.ROLLBACK
    before = contents(users_db, state=True)
    with pytest.raises(PlanError) as info:
        commands.down(users_db, reg(False), "1700000000")
    assert "1700000000_plus is half rolled back" in info.value.message
    assert contents(users_db, state=True) == before
    commands.rerun(users_db, reg(False), "1700000000_plus", allow_later=True, options=_opts(10))
    state, records = _state(users_db)
    assert (state.status, records) == (Status.CLEAN, {})
    assert all(v == USERS[k] + b"+" for k, v in contents(users_db)["default"].items() if k in USERS)


def test_failed_direct_writer_below_the_target_is_not_cleaned_around(users_db: Path) -> None:
    def bump(ctx: Any) -> None:
        ctx.db[b"count"] = b"%d" % (int(ctx.db.get(b"count") or b"0") + 1)
        raise RuntimeError("after the direct write")

    reg = registry_of(migration("1700000300_c"), migration("1700000200_f", up=bump))
    commands.up(users_db, registry_of(migration("1700000300_c")))
    with pytest.raises(MigrationFailed):
        commands.up(users_db, reg, options=commands.RunOptions(allow_out_of_order=True))
    before = contents(users_db, state=True)
    with pytest.raises(PlanError):
        commands.down(users_db, reg, "1700000200")
    assert contents(users_db, state=True) == before


def test_failed_rollback_that_committed_chunks_is_not_called_clean(users_db: Path) -> None:
    def undo(ctx: Any) -> None:
        for key, _ in ctx.scan(prefix=b"user:"):
            if key == b"user:050":
                raise RuntimeError("stop")
            ctx.put(key, ctx.get(key)[:-1])

    reg = registry_of(migration("1700000000_plus", up=_plus, down=undo))
    commands.up(users_db, reg, options=_opts(10))
    with pytest.raises(MigrationFailed):
        commands.down(users_db, reg, "0", options=_opts(10))
    before = contents(users_db, state=True)
    with pytest.raises(PlanError) as info:
        commands.down(users_db, reg, "1700000000")
    assert "half rolled back (status dirty)" in info.value.message
    assert contents(users_db, state=True) == before


def test_interrupted_rerun_of_rerunnable_without_down_is_finished_by_up_and_startup(
    users_db: Path,
) -> None:
    import rocksdict

    import pebble_migrate as pm

    stop = _interrupt_at(b"user:045")

    def redo(ctx: Any, interrupt: bool) -> None:
        for key, _ in ctx.scan(prefix=b"user:"):
            if interrupt:
                stop(key)
            ctx.put(key, USERS[key] + b"!")

    def reg(interrupt: bool) -> Any:
        return registry_of(
            migration(
                "1700000000_redo", up=lambda c: redo(c, interrupt), down=None, rerunnable=True
            )
        )

    commands.up(users_db, reg(False), options=_opts(10))
    with pytest.raises(KeyboardInterrupt):
        commands.rerun(users_db, reg(True), "1700000000_redo", options=_no_signals())
    assert _state(users_db)[0].status is Status.MIGRATING
    assert commands.up(users_db, reg(False), dry_run=True).plan.ids == ("1700000000_redo",)
    opts = pm.default_startup_options()
    opts.registry = reg(False)
    opts.run_migrations = True
    db = rocksdict.Rdict(str(users_db))
    try:
        report = pm.check_and_run_startup_migrations(db, users_db, opts)
    finally:
        db.close()
    assert report is not None and [s.kind for s in report.steps] == ["rerun"]
    assert _state(users_db)[0].status is Status.CLEAN
