"""Applied means finished; views prove whose they are; the state machine's edges."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import pebble_migrate as pm
from pebble_migrate import commands, views
from pebble_migrate.context import ChunkPolicy
from pebble_migrate.state import StateStore
from pebble_migrate.store import open_database
from pebble_migrate.testing import contents, create_database
from tests.conftest import Invoke, migration, registry_of, snapshot, write_migration

KEYS = {b"k:%03d" % i: b"v" for i in range(60)}
MID = "1700000000_plus"


def _opts(records: int = 10, **kwargs: Any) -> commands.RunOptions:
    return commands.RunOptions(policy=ChunkPolicy(records), handle_signals=False, **kwargs)


def _plus(ctx: Any) -> None:
    for key, value in ctx.scan(prefix=b"k:"):
        ctx.put(key, value + b"+")


def _stop_at(stop: bytes) -> Any:
    def up(ctx: Any) -> None:
        for key, value in ctx.scan(prefix=b"k:"):
            if key == stop:
                raise KeyboardInterrupt
            ctx.put(key, value + b"+")

    return up


def _state(path: Path) -> pm.State:
    db = open_database(path, read_only=True)
    try:
        with StateStore(db, str(path)) as states:
            return states.read()
    finally:
        db.close()


# --- validate after apply ----------------------------------------------------------


def _checked(ok: bool) -> Any:
    return migration(
        MID, up=_plus, validate=lambda ctx: [] if ok else ["k:000 is not what it should be"]
    )


def test_a_failing_validate_leaves_the_migration_dirty_with_the_data_as_written(
    tmp_path: Path,
) -> None:
    db = create_database(tmp_path / "db", KEYS)
    with pytest.raises(pm.MigrationFailed) as info:
        commands.up(db, registry_of(_checked(False)), options=_opts())
    assert "its validate() found 1 problem(s): k:000 is not what it should be" in str(info.value)
    assert "up --no-validate" in (info.value.hint or "")
    state = _state(db)
    assert (state.status, MID in state.applied) == (pm.Status.DIRTY, False)
    assert contents(db)["default"] == {k: v + b"+" for k, v in KEYS.items()}
    # Fixing the check and continuing runs only the check: nothing is applied twice.
    pm.force_clean(db)
    commands.up(db, registry_of(_checked(True)), options=_opts())
    assert MID in _state(db).applied
    assert contents(db)["default"] == {k: v + b"+" for k, v in KEYS.items()}


def test_no_validate_skips_the_check(tmp_path: Path) -> None:
    db = create_database(tmp_path / "db", KEYS)
    commands.up(db, registry_of(_checked(False)), options=_opts(validate=False))
    assert MID in _state(db).applied


def test_the_startup_api_validates_unless_told_not_to(tmp_path: Path) -> None:
    import rocksdict

    db = create_database(tmp_path / "db", KEYS)
    opts = pm.default_startup_options()
    opts.run_migrations = True
    opts.registry = registry_of(_checked(False))
    handle = rocksdict.Rdict(str(db))
    try:
        with pytest.raises(pm.MigrationFailed):
            pm.check_and_run_startup_migrations(handle, db, opts)
    finally:
        handle.close()
    pm.force_clean(db)
    opts.validate_after_apply = False
    handle = rocksdict.Rdict(str(db))
    try:
        pm.check_and_run_startup_migrations(handle, db, opts)
    finally:
        handle.close()
    assert MID in _state(db).applied


def test_cli_up_no_validate(tmp_path: Path, invoke: Invoke, migrations_dir: Path) -> None:
    db = create_database(tmp_path / "db", KEYS)
    write_migration(
        migrations_dir,
        MID,
        """
        def up(ctx):
            for key, value in ctx.scan(prefix=b"k:"):
                ctx.put(key, value + b"+")

        def validate(ctx):
            return ["never right"]
        """,
    )
    failed = invoke("up", "-d", str(db), "--no-backup")
    assert failed.exit_code == 6
    assert "its validate() found 1 problem(s): never right" in failed.stderr
    invoke("force-clean", "-d", str(db), "--yes")
    done = invoke("up", "-d", str(db), "--no-backup", "--no-validate")
    assert done.exit_code == 0, done.stderr
    assert contents(db)["default"] == {k: v + b"+" for k, v in KEYS.items()}


# --- applied means finished -----------------------------------------------------------


def test_a_scan_opened_and_never_read_fails_the_run(tmp_path: Path) -> None:
    db = create_database(tmp_path / "db", KEYS)

    def lazy(ctx: Any) -> None:
        ctx.scan(prefix=b"k:")

    with pytest.raises(pm.MigrationFailed) as info:
        commands.up(db, registry_of(migration(MID, up=lazy)), options=_opts())
    assert "returned before its scan(s) 'default' reached the end" in str(info.value)
    assert MID not in _state(db).applied


def test_a_scan_an_earlier_run_started_must_be_finished(tmp_path: Path) -> None:
    db = create_database(tmp_path / "db", KEYS)
    with pytest.raises(KeyboardInterrupt):
        commands.up(db, registry_of(migration(MID, up=_stop_at(b"k:030"))), options=_opts())
    # The code was edited between the runs: it no longer opens that scan.
    with pytest.raises(pm.MigrationFailed) as info:
        commands.up(db, registry_of(migration(MID, up=lambda ctx: None)), options=_opts())
    assert "'default'" in str(info.value)
    assert MID not in _state(db).applied
    pm.force_clean(db)
    commands.up(db, registry_of(migration(MID, up=_plus)), options=_opts())
    assert contents(db)["default"] == {k: v + b"+" for k, v in KEYS.items()}


def test_break_and_return_inside_the_loop_count_as_finished(tmp_path: Path) -> None:
    db = create_database(tmp_path / "db", KEYS)

    def first_ten(ctx: Any) -> None:
        for key, value in ctx.scan(prefix=b"k:"):
            ctx.put(key, value + b"+")
            if key == b"k:009":
                return

    commands.up(db, registry_of(migration(MID, up=first_ten)), options=_opts(records=4))
    data = contents(db)["default"]
    assert sum(v == b"v+" for v in data.values()) == 10
    assert MID in _state(db).applied


class _Custom(BaseException):
    pass


def test_a_base_exception_from_a_migration_is_a_failure(tmp_path: Path) -> None:
    db = create_database(tmp_path / "db", KEYS)

    def odd(ctx: Any) -> None:
        raise _Custom("not an Exception")

    with pytest.raises(pm.MigrationFailed) as info:
        commands.up(db, registry_of(migration(MID, up=odd)), options=_opts())
    assert "_Custom" in str(info.value)
    assert _state(db).status is pm.Status.DIRTY


def test_a_callable_returning_a_coroutine_is_a_failure_not_applied(tmp_path: Path) -> None:
    db = create_database(tmp_path / "db", KEYS)

    async def later(ctx: Any) -> None:
        _plus(ctx)

    def sneaky(ctx: Any) -> Any:
        return later(ctx)  # a plain function, so the load check cannot see it

    with pytest.raises(pm.MigrationFailed) as info:
        commands.up(db, registry_of(migration(MID, up=sneaky)), options=_opts())
    assert "returned a coroutine instead of running" in str(info.value)
    assert MID not in _state(db).applied


def test_migration_code_in_python_refuses_async_functions() -> None:
    async def up(ctx: Any) -> None:
        return None

    with pytest.raises(pm.InvalidMigrationId) as info:
        pm.Migration(id=MID, up=up)
    assert "`async def` coroutine function" in str(info.value)


# --- views prove whose they are ---------------------------------------------------------


def _interrupted(tmp_path: Path, name: str = "db", data: dict[bytes, bytes] = KEYS) -> Path:
    db = create_database(tmp_path / name, data)
    with pytest.raises(KeyboardInterrupt):
        commands.up(db, registry_of(migration(MID, up=_stop_at(b"k:030"))), options=_opts())
    return db


def test_a_view_from_another_database_is_never_read(tmp_path: Path) -> None:
    ours = _interrupted(tmp_path, "ours")
    theirs = _interrupted(tmp_path, "theirs", dict.fromkeys(KEYS, b"THEIRS"))
    view = views.view_path(ours, MID, "apply", "default")
    shutil.rmtree(view)
    shutil.copytree(views.view_path(theirs, MID, "apply", "default"), view)
    before = snapshot(ours)
    with pytest.raises(pm.NotCleanError) as info:
        commands.up(ours, registry_of(migration(MID, up=_plus)), options=_opts())
    assert "belongs to another run or another database" in str(info.value)
    assert "up --from-start" in (info.value.hint or "")
    assert snapshot(ours) == before


def test_a_missing_view_names_the_backup_taken_before(tmp_path: Path) -> None:
    db = create_database(tmp_path / "db", KEYS)
    commands.up(db, registry_of(), options=_opts())  # the state, and so the database's id
    first = pm.create_backup(db, description="before")
    with pytest.raises(KeyboardInterrupt):
        commands.up(db, registry_of(migration(MID, up=_stop_at(b"k:030"))), options=_opts())
    shutil.rmtree(views.view_path(db, MID, "apply", "default"))
    with pytest.raises(pm.NotCleanError) as info:
        commands.up(db, registry_of(migration(MID, up=_plus)), options=_opts())
    assert f"backup restore {first.id} --force" in (info.value.hint or "")


def test_a_symlinked_work_directory_is_not_followed(tmp_path: Path) -> None:
    db = _interrupted(tmp_path)
    outside = tmp_path / "outside"
    shutil.move(db / ".pebble-migrate", outside)
    (db / ".pebble-migrate").symlink_to(outside)
    before = snapshot(db)
    with pytest.raises(pm.NotCleanError) as info:
        commands.up(db, registry_of(migration(MID, up=_plus)), options=_opts())
    assert "is a symlink" in str(info.value)
    assert snapshot(db) == before
    assert (outside / "scans" / MID).is_dir()  # nothing removed through the link


def test_a_cursor_without_a_view_token_is_not_resumed(tmp_path: Path) -> None:
    db = _interrupted(tmp_path)
    handle = open_database(db, read_only=False)
    try:
        with StateStore(handle, str(db)) as states:
            key = b"cursor/" + MID.encode() + b"/apply"
            record = json.loads(states.get(key))
            record["scans"]["default"].pop("token")
            record["scans"]["default"]["view"] = "/elsewhere"
            batch = states.batch()
            states.stage_put(batch, key, record)
            states.commit(batch)
            del batch
    finally:
        handle.close()
    with pytest.raises(pm.NotCleanError) as info:
        commands.up(db, registry_of(migration(MID, up=_plus)), options=_opts())
    assert "written by an older version" in str(info.value)


# --- the state machine's edges -----------------------------------------------------------


def test_up_to_a_version_below_a_partly_applied_migration_is_refused(tmp_path: Path) -> None:
    db = create_database(tmp_path / "db", KEYS)
    reg = registry_of(migration("1600000000_low"), migration(MID, up=_stop_at(b"k:030")))
    with pytest.raises(KeyboardInterrupt):
        commands.up(db, registry_of(migration(MID, up=_stop_at(b"k:030"))), options=_opts())
    pm.force_clean(db)
    before = snapshot(db)
    with pytest.raises(pm.UsageError) as info:
        commands.up(db, reg, target="1600000000", options=_opts())
    assert "must finish before the others" in str(info.value)
    assert snapshot(db) == before


def test_status_shows_what_is_left_halfway_without_verbose(
    tmp_path: Path, invoke: Invoke, migrations_dir: Path
) -> None:
    db = _interrupted(tmp_path)
    pm.force_clean(db)
    write_migration(
        migrations_dir,
        MID,
        'def up(ctx):\n    for k, v in ctx.scan(prefix=b"k:"):\n        ctx.put(k, v)\n',
    )
    shown = invoke("status", "-d", str(db), "-m", str(migrations_dir))
    assert f"Left halfway    partly-applied: {MID}, after b'k:029'" in shown.stdout
    assert "(up: continues" in shown.stdout
    data = json.loads(invoke("status", "-d", str(db), "-m", str(migrations_dir), "--json").stdout)
    assert (data["situation"], data["left_halfway"]) == ("partly-applied", MID)
    assert invoke("status", "-d", str(db), "-m", str(migrations_dir), "--check").exit_code == 3
