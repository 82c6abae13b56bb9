"""Restore on real RocksDB directories: the swap, what is kept, recovery after a kill.

The matrix of bad inputs, each with its message and proof that nothing changed, is in
tests/cli/test_backup_cli.py; here are the mechanisms underneath.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import rocksdict

from pebble_migrate import Aborted, DatabaseInUse, NotADatabase
from pebble_migrate.backup import BackupError, BackupInfo, create_backup, verify_backup
from pebble_migrate.durable import ENV_NO_EXCHANGE
from pebble_migrate.restore import recover, restore_backup
from pebble_migrate.testing import Contents, contents
from tests.test_backup import T0, Clock, filled_db, initialize, put, tree

Scenario = tuple[Path, BackupInfo, Contents]
PEBBLE = [sys.executable, "-m", "pebble_migrate"]
HOLD_OPEN = """
import sys, rocksdict
db = rocksdict.Rdict(sys.argv[1])
print("ready", flush=True)
sys.stdin.read()
db.close()
"""


@contextlib.contextmanager
def held_open(path: Path) -> Iterator[subprocess.Popen[str]]:
    """Have another process open the database read-write until the block ends."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_OPEN, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "ready"
        yield child
    finally:
        child.stdin.close()
        assert child.wait(timeout=60) == 0


def run_restore(
    source: Path, db: Path, *args: str, kill_at: str | None = None, no_exchange: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI's `backup restore` in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_MIGRATE_")}
    if kill_at is not None:
        env["PEBBLE_MIGRATE_KILL_AT"] = kill_at
    if no_exchange:
        env[ENV_NO_EXCHANGE] = "1"
    return subprocess.run(
        [*PEBBLE, "backup", "restore", str(source), "-d", str(db), "--force", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


@pytest.fixture
def scenario(tmp_path: Path, clock: Clock) -> Scenario:
    """A database, a backup of it, then more writes: (db, backup, contents after writes)."""
    db = filled_db(tmp_path / "db")
    initialize(db)
    info = create_backup(db, description="good")
    put(db, {b"after-backup": b"1", b"k-00-0000": b"changed"})
    clock.now = T0 + timedelta(hours=1)
    return db, info, contents(db, state=True)


def siblings(db: Path) -> list[str]:
    """The names beside the database (where staging copies and journals would be left)."""
    return sorted(os.listdir(db.parent))


# --- the swap -------------------------------------------------------------------------


def test_restore_swaps_in_the_backup_and_keeps_the_old_database(
    scenario: Scenario,
) -> None:
    db, info, old = scenario
    result = restore_backup(str(info.path), db)

    assert contents(db, state=True) == contents(info.path / "db", state=True)
    assert b"after-backup" not in contents(db)["default"]
    kept = db.parent / "db.pre-restore-20240301T130000Z"
    assert result.kept_as == kept
    assert contents(kept, state=True) == old
    assert result.replaced
    assert result.target == db
    assert result.backup.id == info.id
    assert result.state.current_version == 0
    assert result.recovered is None
    assert siblings(db) == ["db", "db.backups", kept.name]


def test_restored_database_is_writable_and_the_backup_stays_intact(
    scenario: Scenario,
) -> None:
    db, info, _ = scenario
    restore_backup(info.id, db, discard_current=True)
    # Table files are hard-linked from the backup: writing and compacting the restored
    # database must not change a byte of it.
    rdb = rocksdict.Rdict(str(db))
    try:
        for i in range(200):
            rdb[b"k-00-%04d" % i] = b"overwritten"
        rdb.flush()
        rdb.compact_range(None, None)
    finally:
        rdb.close()
    verify_backup(info)
    assert contents(db)["default"][b"k-00-0000"] == b"overwritten"
    assert contents(info.path / "db")["default"][b"k-00-0000"] != b"overwritten"


def test_discard_current_keeps_no_copy(scenario: Scenario) -> None:
    db, info, _ = scenario
    result = restore_backup(info.id, db, discard_current=True)
    assert result.kept_as is None
    assert contents(db) == contents(info.path / "db")
    assert siblings(db) == ["db", "db.backups"]


def test_restore_into_a_path_that_does_not_exist(
    scenario: Scenario,
) -> None:
    db, info, _ = scenario
    shutil.rmtree(db)
    result = restore_backup(str(info.path), db)
    assert not result.replaced
    assert result.kept_as is None
    assert contents(db, state=True) == contents(info.path / "db", state=True)
    assert siblings(db) == ["db", "db.backups"]


def test_restore_into_new_nested_path_and_empty_directory(
    scenario: Scenario, tmp_path: Path
) -> None:
    _, info, _ = scenario
    nested = tmp_path / "a" / "b" / "db"
    restore_backup(info, nested)
    assert contents(nested) == contents(info.path / "db")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = restore_backup(info, empty)
    assert result.kept_as is None
    assert contents(empty) == contents(info.path / "db")
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith((".empty", "empty"))) == ["empty"]


def test_restore_an_archive(scenario: Scenario) -> None:
    db, info, old = scenario
    archived = create_backup(db, description="shipped", compress=True)
    restore_backup(info.id, db, discard_current=True)
    assert b"after-backup" not in contents(db)["default"]

    result = restore_backup(str(archived.path), db)
    assert contents(db, state=True) == old
    assert result.kept_as is not None
    assert b"after-backup" not in contents(result.kept_as)["default"]


def test_two_renames_fallback_when_exchange_is_unavailable(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, info, old = scenario
    monkeypatch.setenv(ENV_NO_EXCHANGE, "1")
    result = restore_backup(info.id, db)
    assert contents(db) == contents(info.path / "db")
    assert result.kept_as is not None
    assert contents(result.kept_as, state=True) == old
    assert siblings(db) == ["db", "db.backups", result.kept_as.name]
    put(db, {b"again": b"1"})
    again = restore_backup(info.id, db, discard_current=True)
    assert again.kept_as is None
    assert contents(db) == contents(info.path / "db")
    assert siblings(db) == ["db", "db.backups", result.kept_as.name]


def test_damaged_database_can_be_replaced(
    scenario: Scenario,
) -> None:
    """The errors for a damaged state or database say "restore a backup": that must work."""
    db, info, _ = scenario
    rdb = rocksdict.Rdict(str(db))
    cf = rdb.get_column_family("pebble_migrate")
    cf[b"meta"] = b"{not json"
    del cf
    rdb.close()
    questions: list[str] = []

    def yes(question: str) -> bool:
        questions.append(question)
        return True

    result = restore_backup(info.id, db, confirm=yes)
    assert "Replace the damaged database" in questions[0]
    assert "damaged" in questions[0]
    assert contents(db, state=True) == contents(info.path / "db", state=True)
    assert result.kept_as is not None

    (db / "CURRENT").unlink()  # RocksDB no longer opens it at all
    result = restore_backup(info.id, db, discard_current=True)
    assert contents(db) == contents(info.path / "db")


def test_confirmation_is_asked_and_no_changes_nothing(
    scenario: Scenario,
) -> None:
    db, info, old = scenario
    questions: list[str] = []

    def say_no(question: str) -> bool:
        questions.append(question)
        return False

    with pytest.raises(Aborted, match="nothing was changed"):
        restore_backup(info.id, db, confirm=say_no)
    assert questions == [
        f"Replace the database at {db} (version 0, clean) with backup {info.id} (version 0, clean)?"
    ]
    assert contents(db, state=True) == old
    assert siblings(db) == ["db", "db.backups"]


def test_a_backup_that_does_not_open_is_refused(
    scenario: Scenario,
) -> None:
    """Checksums match (the metadata was rewritten to fit) but RocksDB cannot open it."""
    db, info, old = scenario
    data = info.path / "db"
    (data / "CURRENT").write_text("MANIFEST-999999\n")
    meta_path = info.path / "backup.json"
    meta = json.loads(meta_path.read_text())
    for f in meta["files"]:
        if f["name"] == "CURRENT":
            f["size"] = (data / "CURRENT").stat().st_size
            f["sha256"] = hashlib.sha256((data / "CURRENT").read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(BackupError, match=f"backup {info.id} does not open as a database"):
        restore_backup(info.id, db)
    assert contents(db, state=True) == old
    assert siblings(db) == ["db", "db.backups"]


def test_refuses_a_directory_that_is_not_a_database(scenario: Scenario, tmp_path: Path) -> None:
    _, info, _ = scenario
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(NotADatabase, match="holding no RocksDB files"):
        restore_backup(info.id, photos, backup_dir=info.path.parent)
    assert tree(photos) == ["cat.jpg"]
    assert not any(".photos" in name for name in os.listdir(tmp_path))


# --- in use ---------------------------------------------------------------------------


def test_refuses_while_another_process_has_it_open(
    scenario: Scenario,
) -> None:
    db, info, old = scenario
    with held_open(db):
        with pytest.raises(DatabaseInUse, match="in use by another process"):
            restore_backup(info.id, db)
        assert siblings(db) == ["db", "db.backups"]
    assert contents(db, state=True) == old


def test_refuses_while_this_process_has_it_open_and_keeps_its_lock(
    scenario: Scenario,
) -> None:
    db, info, old = scenario
    app = rocksdict.Rdict(str(db))
    try:
        with pytest.raises(DatabaseInUse):
            restore_backup(info.id, db)
        # The application's lock survived the attempt: another process still cannot open.
        probe = subprocess.run(
            [sys.executable, "-c", "import rocksdict, sys; rocksdict.Rdict(sys.argv[1])", str(db)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert probe.returncode != 0
        assert "lock" in probe.stderr.lower()
        assert app[b"after-backup"] == b"1"
    finally:
        app.close()
    assert contents(db, state=True) == old
    restore_backup(info.id, db, discard_current=True)  # once closed, it goes through
    assert contents(db) == contents(info.path / "db")


# --- recovery after a kill ------------------------------------------------------------


def leftovers(db: Path) -> list[str]:
    """Staging copies, journals and their temp files beside the database."""
    return [name for name in siblings(db) if ".restore" in name]


def test_kill_after_exchange_is_finished_by_recover(
    scenario: Scenario,
) -> None:
    db, info, old = scenario
    run = run_restore(info.path, db, kill_at="restore-swapped:1")
    assert run.returncode == -9
    assert contents(db) == contents(info.path / "db")  # already the restored one
    assert ".db.restore-journal.json" in leftovers(db)

    message = recover(db)

    assert message == f"finished an interrupted restore into {db}"
    assert leftovers(db) == []
    [kept] = [name for name in siblings(db) if name.startswith("db.pre-restore-")]
    assert contents(db.parent / kept, state=True) == old


def test_kill_between_the_two_renames_is_undone_by_recover(
    scenario: Scenario,
) -> None:
    db, info, old = scenario
    run = run_restore(info.path, db, kill_at="restore-moved-away:1", no_exchange=True)
    assert run.returncode == -9
    assert not db.exists()  # the one window the fallback has; the journal covers it

    message = recover(db)

    assert message == f"undid an interrupted restore; {db} is the database it was before"
    assert contents(db, state=True) == old
    assert siblings(db) == ["db", "db.backups"]


def test_kill_while_building_leaves_a_copy_that_is_swept(
    scenario: Scenario,
) -> None:
    db, info, old = scenario
    run = run_restore(info.path, db, kill_at="restore-built:1")
    assert run.returncode == -9
    assert leftovers(db)
    assert all(name.startswith(".db.restore-") for name in leftovers(db))
    assert recover(db) is None  # no journal: nothing to finish, only a copy to sweep
    assert leftovers(db) == []
    assert contents(db, state=True) == old


def test_next_restore_recovers_first_and_says_so(
    scenario: Scenario,
) -> None:
    db, info, _ = scenario
    assert run_restore(info.path, db, kill_at="restore-journal:1").returncode == -9
    result = restore_backup(info.id, db, discard_current=True)
    assert result.recovered == f"cleaned up an interrupted restore; {db} is unchanged"
    assert contents(db) == contents(info.path / "db")
    assert leftovers(db) == []


def test_recover_leaves_a_running_restore_alone(
    scenario: Scenario,
) -> None:
    db, info, old = scenario
    assert run_restore(info.path, db, kill_at="restore-journal:1").returncode == -9
    journal = db.parent / ".db.restore-journal.json"
    record = json.loads(journal.read_text())
    record["pid"] = os.getppid()  # a process that is alive
    journal.write_text(json.dumps(record))
    before = leftovers(db)

    with pytest.raises(BackupError, match=rf"a restore into {db} is running \(process"):
        recover(db)
    with pytest.raises(BackupError, match="is running"):
        restore_backup(info.id, db)

    assert leftovers(db) == before
    assert contents(db, state=True) == old


def test_unreadable_journal_stops_everything(
    scenario: Scenario,
) -> None:
    db, info, old = scenario
    assert run_restore(info.path, db, kill_at="restore-swapped:1").returncode == -9
    journal = db.parent / ".db.restore-journal.json"
    journal.write_text("{")
    before = {name: tree(db.parent / name) for name in leftovers(db)}

    with pytest.raises(BackupError, match="is unreadable") as caught:
        recover(db)

    assert "check by hand" in (caught.value.hint or "").lower()
    assert {name: tree(db.parent / name) for name in leftovers(db)} == before
    # The old database is still there, under the staging name, untouched.
    [staging] = [name for name in before if name != journal.name]
    assert contents(db.parent / staging, state=True) == old


@pytest.mark.parametrize("no_exchange", [False, True])
def test_recovery_from_another_directory_keeps_what_the_journal_promised(
    tmp_path: Path, no_exchange: bool
) -> None:
    """A restore run with a relative path, killed mid-swap, settled from elsewhere."""
    srv = tmp_path / "srv"
    (srv / "data").mkdir(parents=True)
    db = filled_db(srv / "data" / "app.db")
    initialize(db)
    backup = create_backup(db)
    put(db, {b"written-after-backup": b"1"})
    old = contents(db)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_MIGRATE_")}
    env["PEBBLE_MIGRATE_KILL_AT"] = "restore-moved-away:1" if no_exchange else "restore-swapped:1"
    if no_exchange:
        env[ENV_NO_EXCHANGE] = "1"
    killed = subprocess.run(
        [*PEBBLE, "backup", "restore", backup.id, "-d", "data/app.db", "--force"],
        cwd=srv,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.chdir(elsewhere)  # the autouse fixture's monkeypatch.chdir restores the directory
    message = recover(db)
    assert message is not None
    after = contents(db)
    assert after in (old, contents(backup.path / "db"))
    kept = sorted((srv / "data").glob("app.db.pre-restore-*"))
    if after != old:  # the swap happened: the replaced database must be kept
        assert len(kept) == 1
        assert contents(kept[0]) == old
