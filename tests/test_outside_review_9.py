"""What the outside review of issue 9 found, each pinned by a test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pebble_migrate.testing import contents, create_database
from tests.conftest import Invoke, write_migration

PLUS = """
import os
import signal


def up(ctx):
    for key, value in ctx.scan(prefix=b"k:"):
        ctx.put(key, value + b"+")
        if key == os.environ.get("PM_SIGINT_AT", "").encode():
            os.kill(os.getpid(), signal.SIGINT)
"""


def test_a_view_rocksdb_never_finished_neither_blocks_nor_enters_a_backup(
    tmp_path: Path, invoke: Invoke
) -> None:
    """A SIGKILL while RocksDB takes a scan's checkpoint leaves `<view>.tmp` (no CURRENT).
    The next `up` refused: its automatic backup took the half-built view for a damaged
    table file, and so did `backup create`; only `up --no-backup` got out."""
    db = create_database(tmp_path / "app.db", {b"k:%03d" % i: b"v" for i in range(40)})
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    write_migration(migrations, "1700000001_plus", PLUS)
    env = {**os.environ, "PM_SIGINT_AT": "k:020"}
    argv = [sys.executable, "-m", "pebble_migrate", "up", "--chunk-records", "5"]
    stopped = subprocess.run(
        [*argv, "-d", str(db), "-m", str(migrations)], env=env, capture_output=True, timeout=120
    )
    assert stopped.returncode == 130
    scans = db / ".pebble-migrate" / "scans" / "1700000001_plus"
    half = scans / "apply-second.tmp"  # what a kill inside create_checkpoint leaves
    half.mkdir()
    (half / "000009.sst").write_bytes(b"\0" * 64)

    made = invoke("backup", "create", "-d", str(db))
    resumed = invoke("up", "-d", str(db), "-m", str(migrations))

    assert made.exit_code == 0, made.stderr
    assert resumed.exit_code == 0, resumed.stderr
    assert set(contents(db)["default"].values()) == {b"v+"}  # each key exactly once
    for backup in (db.parent / "app.db.backups").iterdir():
        assert not list(backup.rglob("*.tmp")), backup


def test_a_stale_tmp_view_of_the_same_scan_is_cleared_before_the_checkpoint(
    tmp_path: Path, invoke: Invoke
) -> None:
    db = create_database(tmp_path / "app.db", {b"k:%03d" % i: b"v" for i in range(10)})
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    write_migration(migrations, "1700000001_plus", PLUS)
    left = db / ".pebble-migrate" / "scans" / "1700000001_plus" / "apply-default.tmp"
    left.mkdir(parents=True)
    (left / "junk").write_bytes(b"x")

    ran = invoke("up", "--no-backup", "-d", str(db), "-m", str(migrations))

    assert ran.exit_code == 0, ran.stderr
    assert set(contents(db)["default"].values()) == {b"v+"}
    assert not left.exists()


def test_a_pyproject_that_is_not_utf8_is_a_usage_error_naming_it(
    tmp_path: Path, invoke: Invoke
) -> None:
    (tmp_path / "pyproject.toml").write_bytes(b'x = "\xff"\n')
    db = create_database(tmp_path / "app.db", {b"k": b"v"})

    shown = invoke("status", "-d", str(db))

    assert shown.exit_code == 2
    assert "pyproject.toml" in shown.stderr and "cannot read" in shown.stderr


def test_closing_a_database_a_failed_write_already_closed_is_quiet(tmp_path: Path) -> None:
    """A disk that filled during `down` closed the handle inside RocksDB; closing it again
    on the way out raised DbClosedError over the real error, as a traceback."""
    from pebble_migrate import store

    db = store.open_database(create_database(tmp_path / "app.db", {b"k": b"v"}), read_only=False)
    db.close()

    store.close_database(db)  # no DbClosedError

    assert contents(tmp_path / "app.db")["default"] == {b"k": b"v"}


def test_the_disk_full_advice_holds_for_a_rollback_too() -> None:
    from pebble_migrate import DiskFullError

    hint = DiskFullError("/x", "No space left on device", 0, None).hint or ""
    assert "`pebble-migrate status`" in hint
    assert "force-clean" not in hint  # wrong for a rollback, needless for an apply


def test_backup_list_names_a_backup_whose_metadata_is_damaged(
    tmp_path: Path, invoke: Invoke
) -> None:
    db = create_database(tmp_path / "app.db", {b"k": b"v"})
    kept = invoke("backup", "create", "good", "-d", str(db), "--json")
    assert kept.exit_code == 0, kept.stderr
    bad = invoke("backup", "create", "bad", "-d", str(db), "--json")
    import json

    bad_id = json.loads(bad.stdout)["backup"]["id"]
    meta = tmp_path / "app.db.backups" / bad_id / "backup.json"
    meta.write_text(meta.read_text()[:20])  # truncated

    for extra in ([], ["--json"]):
        listed = invoke("backup", "list", "-d", str(db), *extra)
        assert listed.exit_code == 0
        assert f"warning: {bad_id} is not a usable backup" in listed.stderr


_WRITER = """
import os
import sys

import rocksdict

db = rocksdict.Rdict(sys.argv[1], rocksdict.Options(raw_mode=True))
sync = rocksdict.WriteOptions()
sync.sync = True
for i in range(400):
    db.put(b"w:%04d" % i, b"v" * 50, sync)
os._exit(0)  # killed, as it were: the writes are only in the write-ahead log
"""


def _logged_only(tmp_path: Path) -> Path:
    db = create_database(tmp_path / "app.db", {b"k": b"v"})
    subprocess.run([sys.executable, "-c", _WRITER, str(db)], check=True, timeout=60)
    return db


def _log(db: Path) -> Path:
    return max(db.glob("*.log"), key=lambda p: p.stat().st_size)


def test_a_write_open_never_hides_a_damaged_log_record(tmp_path: Path, invoke: Invoke) -> None:
    """RocksDB's default drops the log from a damaged record on; `up` then opened the
    database for writing, wrote the shortened data back, and `validate --deep` passed."""
    db = _logged_only(tmp_path)
    log = _log(db)
    with log.open("r+b") as handle:
        handle.seek(log.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    migrations = tmp_path / "migrations"
    migrations.mkdir()

    refused = invoke("up", "-d", str(db), "-m", str(migrations))
    deep = invoke("validate", "--deep", "-d", str(db), "-m", str(migrations))

    assert refused.exit_code == 1
    assert "corrupt data" in refused.stderr and "Restore a backup" in refused.stderr
    assert deep.exit_code == 7
    assert "in the write-ahead log" in deep.output
    assert log.exists() and log.stat().st_size > 0  # nothing was written back over it


def test_a_log_whose_last_record_a_crash_cut_short_still_opens(
    tmp_path: Path, invoke: Invoke
) -> None:
    db = _logged_only(tmp_path)
    log = _log(db)
    os.truncate(log, log.stat().st_size - 7)  # a write the crash left unfinished

    shown = invoke("status", "-d", str(db))

    assert shown.exit_code == 0, shown.stderr
    assert len(contents(db)["default"]) == 1 + 399  # every acknowledged write but the last
