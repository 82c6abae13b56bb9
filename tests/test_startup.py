"""The startup API an application calls on its open database."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import rocksdict

import pebble_migrate as pm
from pebble_migrate.testing import contents, create_database
from tests.conftest import migration, put_items, registry_of, snapshot


def _opts(reg: pm.Registry, **kwargs: Any) -> pm.StartupOptions:
    opts = pm.default_startup_options()
    opts.registry = reg
    for key, value in kwargs.items():
        setattr(opts, key, value)
    return opts


def _startup(path: Path, opts: pm.StartupOptions) -> Any:
    db = rocksdict.Rdict(str(path))
    try:
        return pm.check_and_run_startup_migrations(db, path, opts)
    finally:
        db.close()


def test_defaults() -> None:
    opts = pm.default_startup_options()
    assert opts.run_migrations is False
    assert opts.backup_enabled is False
    assert opts.check_disk_space is True
    assert opts.database_size_multiplier == 2.0
    assert opts.cli_name == "pebble-migrate"
    assert opts.registry is pm.default_registry
    assert isinstance(opts.logger, logging.Logger)


def test_runs_pending_migrations(db_path: Path) -> None:
    reg = registry_of(migration("1700000000_a", up=put_items({b"a": b"1"})))
    report = _startup(db_path, _opts(reg, run_migrations=True))
    assert [s.id for s in report.steps] == ["1700000000_a"]
    assert contents(db_path)["default"][b"a"] == b"1"
    assert _startup(db_path, _opts(reg, run_migrations=True)) is None


def test_refuses_pending_when_not_allowed_to_run(db_path: Path) -> None:
    reg = registry_of(migration("1700000000_a"), migration("1700100000_b"))
    _startup(db_path, _opts(registry_of(migration("1700000000_a")), run_migrations=True))
    before = snapshot(db_path)
    with pytest.raises(pm.PendingMigrations) as info:
        _startup(db_path, _opts(reg, cli_name="myapp-migrate"))
    assert "1700100000_b" in info.value.message
    assert "`myapp-migrate up`" in (info.value.hint or "")
    assert snapshot(db_path) == before


def test_fresh_empty_database_is_stamped(tmp_path: Path) -> None:
    path = create_database(tmp_path / "new")
    reg = registry_of(migration("1700000000_a", up=put_items({b"a": b"1"})))
    assert _startup(path, _opts(reg)) is None  # nothing pending, even without run_migrations
    db = rocksdict.Rdict(str(path))
    try:
        state = pm.read_state(db)
    finally:
        db.close()
    assert state.applied == {"1700000000_a"}
    assert contents(path) == {"default": {}}


def test_refuses_interrupted_non_rerunnable_naming_it_and_the_options(db_path: Path) -> None:
    def direct(ctx: Any) -> None:
        ctx.db[b"x"] = b"1"
        raise KeyboardInterrupt

    reg = registry_of(migration("1700000000_direct", up=direct))
    with pytest.raises(KeyboardInterrupt):
        _startup(db_path, _opts(reg, run_migrations=True, handle_signals=False))
    before = snapshot(db_path)
    with pytest.raises(pm.NotCleanError) as info:
        _startup(db_path, _opts(reg, run_migrations=True, cli_name="app-migrate"))
    text = str(info.value)
    assert "1700000000_direct" in text
    for command in (
        "app-migrate validate",
        "app-migrate force-clean",
        "app-migrate backup restore",
    ):
        assert command in text
    assert snapshot(db_path) == before


def test_insufficient_disk_space_is_refused_with_numbers(db_path: Path) -> None:
    reg = registry_of(migration("1700000000_a"))
    before = snapshot(db_path)
    with pytest.raises(pm.InsufficientSpace) as info:
        _startup(db_path, _opts(reg, run_migrations=True, database_size_multiplier=1e12))
    assert "free" in info.value.message and "needed" in info.value.message
    assert snapshot(db_path) == before


def test_backup_enabled_takes_a_backup_first(db_path: Path, tmp_path: Path) -> None:
    reg = registry_of(migration("1700000000_a", up=put_items({b"a": b"1"})))
    _startup(db_path, _opts(reg, run_migrations=True, backup_enabled=True))
    backups = pm.list_backups(db_path)
    assert len(backups) == 1
    assert backups[0].description == "before up to 1700000000: 1 migration"
    assert backups[0].trigger == "1700000000_a"


@pytest.mark.parametrize("failure", ["migration", "pending", "not_clean"])
def test_database_can_be_closed_and_reopened_after_an_error(db_path: Path, failure: str) -> None:
    """No column-family handle, iterator or batch may outlive the call, even when a stored
    exception keeps its frames alive."""

    def boom(ctx: Any) -> None:
        for _ in ctx.scan(prefix=b""):
            ctx.put(b"x", b"y")
            raise RuntimeError("boom")

    reg = registry_of(migration("1700000000_boom", up=boom))
    if failure == "not_clean":
        with pytest.raises(pm.MigrationFailed):
            _startup(db_path, _opts(reg, run_migrations=True))
    db = rocksdict.Rdict(str(db_path))
    kept: list[BaseException] = []
    try:
        pm.check_and_run_startup_migrations(
            db, db_path, _opts(reg, run_migrations=(failure != "pending"))
        )
    except pm.MigrateError as exc:
        kept.append(exc)  # the application stores the error, frames and all
    finally:
        db.close()
    assert kept, "the startup check should have failed"
    again = rocksdict.Rdict(str(db_path))  # raises 'lock hold by current process' if leaked
    again.close()


def test_signal_inside_the_app_is_redelivered_after_the_data_is_safe(tmp_path: Path) -> None:
    """The app's own SIGTERM handler runs once the open chunk is committed."""
    import os
    import signal

    path = create_database(tmp_path / "db", {b"k:%03d" % i: b"v" for i in range(100)})
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))

    def job(ctx: Any) -> None:
        for key, value in ctx.scan(prefix=b"k:"):
            ctx.put(key, value + b"+")
            if key == b"k:040":
                os.kill(os.getpid(), signal.SIGTERM)

    try:
        reg = registry_of(migration("1700000000_job", up=job))
        with pytest.raises(pm.MigrationInterrupted) as info:
            _startup(path, _opts(reg, run_migrations=True, chunk_policy=pm.ChunkPolicy(records=10)))
        assert received == [signal.SIGTERM]  # the app's handler, after our cleanup
        assert signal.getsignal(signal.SIGTERM) is not None
        assert info.value.exit_code == 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    data = contents(path)["default"]
    assert sum(v == b"v+" for v in data.values()) == 41
    _startup(path, _opts(registry_of(migration("1700000000_job", up=job)), run_migrations=True))
