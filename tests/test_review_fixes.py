"""Regressions found in review: each test reproduces a failure that once happened."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import rocksdict

import pebble_migrate as pm
from pebble_migrate.commands import RunOptions
from pebble_migrate.state import CURSOR_PREFIX, HISTORY_PREFIX
from pebble_migrate.store import STATE_CF
from pebble_migrate.testing import contents, create_database
from tests.conftest import Invoke, migration, registry_of, snapshot, tmpfs


def _reopens(path: Path) -> bool:
    try:
        db = rocksdict.Rdict(str(path))
    except Exception:  # noqa: BLE001 - the lock error is a plain Exception
        return False
    db.close()
    return True


def _damage(path: Path, prefix: bytes) -> None:
    db = rocksdict.Rdict(str(path))
    cf = db.get_column_family(STATE_CF)
    cf[prefix + b"zzz"] = b"{not json"
    del cf
    db.close()


def test_stored_errors_from_damaged_records_hold_no_handle(tmp_path: Path) -> None:
    path = create_database(tmp_path / "db", {b"k": b"v"})
    pm.up(path, registry_of(migration("1700000000_a")))
    _damage(path, CURSOR_PREFIX)
    kept: list[BaseException] = []
    db = rocksdict.Rdict(str(path))
    opts = pm.default_startup_options()
    opts.registry = registry_of(migration("1700000000_a"), migration("1700000100_b"))
    opts.run_migrations = True
    try:
        pm.check_and_run_startup_migrations(db, path, opts)
    except pm.MigrateError as exc:
        kept.append(exc)
    finally:
        db.close()
    assert isinstance(kept[0], pm.CorruptStateError)
    assert _reopens(path)

    _damage(path, HISTORY_PREFIX)
    with pytest.raises(pm.CorruptStateError) as info:
        pm.repair(path)
    kept.append(info.value)
    assert _reopens(path)


def test_a_failed_migration_holding_an_iterator_does_not_hold_the_lock(tmp_path: Path) -> None:
    path = create_database(tmp_path / "db", {b"k": b"v"})

    def leaky(ctx: Any) -> None:
        it = ctx.db.iter()  # the author's own iterator, alive in this frame
        it.seek_to_first()
        raise RuntimeError("boom")

    db = rocksdict.Rdict(str(path))
    opts = pm.default_startup_options()
    opts.registry = registry_of(migration("1700000000_leaky", up=leaky))
    opts.run_migrations = True
    kept: list[BaseException] = []
    try:
        pm.check_and_run_startup_migrations(db, path, opts)
    except pm.MigrationFailed as exc:
        kept.append(exc)
    finally:
        db.close()
    assert kept
    assert _reopens(path)


def test_a_second_signal_while_recording_the_first_still_ends_cleanly(tmp_path: Path) -> None:
    path = create_database(tmp_path / "db", {b"k:%03d" % i: b"v" for i in range(60)})

    def job(ctx: Any) -> None:
        for key, value in ctx.scan(prefix=b"k:"):
            ctx.put(key, value + b"+")
            if key == b"k:020":
                os.kill(os.getpid(), signal.SIGINT)

    def reporter(event: pm.Event) -> None:
        if event.kind == "interrupted":  # lands after the first signal's state was written
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(pm.MigrationInterrupted) as info:
        pm.up(
            path,
            registry_of(migration("1700000000_job", up=job)),
            options=RunOptions(policy=pm.ChunkPolicy(10), reporter=reporter),
        )
    assert "at once" in info.value.message
    assert sum(v == b"v+" for v in contents(path)["default"].values()) == 21


def test_status_of_a_pickle_database_never_unpickles_its_values(
    tmp_path: Path, invoke: Invoke
) -> None:
    models = tmp_path / "models_dir"
    models.mkdir()
    (models / "models.py").write_text("class User:\n    name = 'ada'\n")
    writer = textwrap.dedent(f"""
        import rocksdict, models
        db = rocksdict.Rdict({str(tmp_path / "db")!r})
        db["user:1"] = models.User()
        db.close()
    """)
    env = {**os.environ, "PYTHONPATH": str(models)}
    subprocess.run([sys.executable, "-c", writer], env=env, check=True)
    result = invoke("status", "-d", str(tmp_path / "db"), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["initialized"] is False


def test_restore_into_a_mount_point_is_refused_cleanly(tmp_path: Path, invoke: Invoke) -> None:
    with tmpfs(tmp_path / "volume", "16m") as volume:
        create_database(volume, {b"k": b"v"})
        pm.up(volume, registry_of(migration("1700000000_a")))
        info = pm.create_backup(volume, backup_dir=tmp_path / "backups")
        before = snapshot(volume)
        result = invoke("backup", "restore", str(info.path), "-d", str(volume), "--force")
        assert result.exit_code == 1
        assert "it is a mount point" in result.stderr
        assert "Traceback" not in result.stderr
        assert snapshot(volume) == before
        assert not list(tmp_path.glob(".volume.restore-*"))


def test_a_bad_retention_setting_stops_up_before_any_write(
    tmp_path: Path, invoke: Invoke, migrations_dir: Path
) -> None:
    (migrations_dir / "1700000000_a.py").write_text("def up(ctx):\n    ctx.put(b'a', b'1')\n")
    path = create_database(tmp_path / "db", {b"k": b"v"})
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pebble-migrate]\nbackup-older-than = "a month"\n'
    )
    before = snapshot(path)
    result = invoke("up", "-d", str(path))
    assert result.exit_code == 2
    assert "backup-older-than" in result.stderr
    assert snapshot(path) == before
