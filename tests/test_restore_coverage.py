"""Restore paths the other restore tests do not reach, each on real RocksDB directories.

Covers: a source that names nothing, the lock on a platform without open-file-description
locks and a lock call that fails, files of a backup swapped after it was verified, a
staging name taken while the question is asked, hard links refused, a restore not run as
root, a journal that cannot be written, a damaged target whose path contains "LOCK", and
recovery from journals that are malformed, planted, or left in states only a kill or an
operator produces (built here by hand, as a killed restore leaves them).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import rocksdict

from pebble_migrate import DatabaseInUse
from pebble_migrate.backup import BackupError, BackupInfo, NotABackup, create_backup, verify_backup
from pebble_migrate.errors import FilesystemError
from pebble_migrate.restore import recover, restore_backup
from pebble_migrate.testing import Contents, contents, create_database
from tests.conftest import Invoke
from tests.test_backup import dead_pid, filled_db, initialize, put, tree

Scenario = tuple[Path, BackupInfo, Contents]
KEPT = "db.pre-restore-20240301T120000Z"


@pytest.fixture
def scenario(tmp_path: Path) -> Scenario:
    """A database, a link backup of it, then more writes: (db, backup, contents now)."""
    db = filled_db(tmp_path / "db", flushes=2, per_flush=20)
    initialize(db)
    info = create_backup(db, description="good")
    put(db, {b"after-backup": b"1"})
    return db, info, contents(db, state=True)


def leftovers(db: Path) -> list[str]:
    """Staging copies, journals and their temp files beside the database."""
    return sorted(name for name in os.listdir(db.parent) if ".restore" in name)


def journal_of(db: Path) -> Path:
    return db.parent / f".{db.name}.restore-journal.json"


def write_journal(db: Path, **fields: Any) -> Path:
    """Write a restore journal beside `db` as a restore does, with `fields` overriding."""
    staging = db.parent / f".{db.name}.restore-{dead_pid()}"
    record: dict[str, Any] = {
        "target": str(db),
        "staging": str(staging),
        "staging_inode": 1,
        "keep_as": None,
        "replacing": True,
        "mode": "exchange",
        "pid": int(staging.name.rsplit("-", 1)[1]),
    }
    record.update(fields)
    journal = journal_of(db)
    journal.write_text(json.dumps(record))
    return journal


def staging_named_in(journal: Path) -> Path:
    return Path(json.loads(journal.read_text())["staging"])


# --- naming the backup ----------------------------------------------------------------


def test_a_missing_path_with_a_slash_is_not_taken_for_a_backup_id(scenario: Scenario) -> None:
    db, _, old = scenario
    with pytest.raises(NotABackup) as caught:
        restore_backup("elsewhere/" + "b1", db)
    assert caught.value.message == (
        f"elsewhere/b1 is not a backup: no such path, and no backup with that id in "
        f"{db.parent / 'db.backups'}."
    )
    assert contents(db, state=True) == old


# --- the lock -------------------------------------------------------------------------


OFD_SETLK = fcntl.F_OFD_SETLK  # kept: tests take it away from the module


def _ofd_lock(path: Path) -> int:
    """Take an open-file-description write lock on `path`; return its descriptor."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.fcntl(fd, OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))
    except OSError:
        os.close(fd)
        raise
    return fd


def test_without_ofd_locks_a_restore_locks_with_lockf_and_releases_it(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, info, _ = scenario
    monkeypatch.delattr(fcntl, "F_OFD_SETLK")
    result = restore_backup(info.id, db)
    assert result.replaced
    assert contents(db) == contents(info.path / "db")
    # The lockf lock was on the replaced database's LOCK; it went with the restore (an
    # open-file-description lock conflicts with it, this process's or not).
    assert result.kept_as is not None
    os.close(_ofd_lock(result.kept_as / "LOCK"))


def test_without_ofd_locks_a_lock_held_elsewhere_refuses_the_restore(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, info, old = scenario
    holder = _ofd_lock(db / "LOCK")
    try:
        monkeypatch.delattr(fcntl, "F_OFD_GETLK")
        with pytest.raises(DatabaseInUse):
            restore_backup(info.id, db)
    finally:
        os.close(holder)
    assert contents(db, state=True) == old
    assert leftovers(db) == []


def test_a_lock_call_the_kernel_refuses_is_reported_and_changes_nothing(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, info, old = scenario
    real_fcntl = fcntl.fcntl

    def no_locks_left(fd: int, cmd: int, arg: Any = 0) -> Any:
        if cmd == OFD_SETLK:
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
        return real_fcntl(fd, cmd, arg)

    monkeypatch.setattr(fcntl, "fcntl", no_locks_left)
    with pytest.raises(FilesystemError) as caught:
        restore_backup(info.id, db)
    assert caught.value.message == f"backup restore failed: {os.strerror(errno.ENOLCK)}."
    assert contents(db, state=True) == old
    assert leftovers(db) == []


# --- building the copy ----------------------------------------------------------------


def _after_question(action: Callable[[], None]) -> Callable[[str], bool]:
    """A confirmation that does `action` (what happens meanwhile), then says yes."""

    def confirm(question: str) -> bool:
        action()
        return True

    return confirm


def test_a_staging_directory_made_while_asking_is_replaced_not_merged(
    scenario: Scenario,
) -> None:
    db, info, _ = scenario
    staging = db.parent / f".db.restore-{os.getpid()}"

    def make_staging() -> None:
        staging.mkdir()
        (staging / "stray").write_text("not from the backup")

    restore_backup(info.id, db, discard_current=True, confirm=_after_question(make_staging))
    assert not (db / "stray").exists()
    assert contents(db, state=True) == contents(info.path / "db", state=True)
    assert leftovers(db) == []


def test_a_backup_file_swapped_for_a_fifo_after_verification_is_refused(
    scenario: Scenario,
) -> None:
    db, info, old = scenario
    current = info.path / "db" / "CURRENT"
    writer: list[int] = []

    def swap_for_fifo() -> None:
        current.unlink()
        os.mkfifo(current)
        # Held open for writing, so the restore's read-only open does not wait.
        writer.append(os.open(current, os.O_RDWR | os.O_NONBLOCK))

    try:
        with pytest.raises(BackupError) as caught:
            restore_backup(info.id, db, confirm=_after_question(swap_for_fifo))
    finally:
        for fd in writer:
            os.close(fd)
    assert caught.value.message == f"{current} is not a regular file; nothing was changed."
    assert contents(db, state=True) == old
    assert leftovers(db) == []


def test_a_copy_backups_table_swapped_for_a_symlink_after_verification_is_refused(
    scenario: Scenario,
) -> None:
    db, _, old = scenario
    info = create_backup(db, mode="copy")
    sst = sorted((info.path / "db").glob("*.sst"))[0]

    def swap_for_link() -> None:
        moved = sst.with_name("moved-away")
        sst.rename(moved)
        sst.symlink_to(moved)

    with pytest.raises(BackupError) as caught:
        restore_backup(info.id, db, confirm=_after_question(swap_for_link))
    assert caught.value.message == f"{sst} is not a regular file; nothing was changed."
    assert contents(db, state=True) == old
    assert leftovers(db) == []


def test_table_files_are_copied_where_hard_links_are_refused(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, info, _ = scenario

    def refused(source: Any, target: Any, **kwargs: Any) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM), str(source))

    monkeypatch.setattr(os, "link", refused)
    restore_backup(info.id, db, discard_current=True)
    tables = sorted(db.glob("*.sst"))
    assert tables
    for table in tables:
        assert table.stat().st_nlink == 1
        assert table.read_bytes() == (info.path / "db" / table.name).read_bytes()
    assert contents(db, state=True) == contents(info.path / "db", state=True)
    verify_backup(info)


def test_a_restore_not_run_as_root_leaves_the_files_its_own(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, info, _ = scenario
    os.chown(db, 4321, 4321)  # the application's user; only root could give files to it
    monkeypatch.setattr(os, "geteuid", lambda: 4321)
    restore_backup(info.id, db, discard_current=True)
    me = os.getuid()
    assert {p.lstat().st_uid for p in [db, *db.rglob("*")]} == {me}
    assert contents(db) == contents(info.path / "db")


# --- the swap -------------------------------------------------------------------------


def test_a_journal_that_cannot_be_written_leaves_the_target_and_no_copy(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, info, old = scenario
    journal = journal_of(db)
    real_replace = os.replace

    def failing(src: Any, dst: Any, **kwargs: Any) -> None:
        if Path(dst) == journal:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(FilesystemError) as caught:
        restore_backup(info.id, db)
    assert caught.value.message == f"backup restore failed: {os.strerror(errno.EIO)} ({journal})."
    assert contents(db, state=True) == old
    assert leftovers(db) == []


def test_a_damaged_database_at_a_path_containing_lock_is_replaced(tmp_path: Path) -> None:
    # RocksDB names the path in its error; a path with "LOCK" in it must not make a damaged
    # database look like one in use, which a restore would refuse to replace.
    db = filled_db(tmp_path / "BLOCKS", flushes=2, per_flush=20)
    initialize(db)
    info = create_backup(db)
    for table in db.glob("*.sst"):
        table.unlink()
    questions: list[str] = []

    def ask(question: str) -> bool:
        questions.append(question)
        return True

    result = restore_backup(info.id, db, confirm=ask)
    assert result.replaced
    assert result.kept_as is not None
    assert questions[0].startswith(f"Replace the damaged database at {db} (")
    assert contents(db, state=True) == contents(info.path / "db", state=True)
    assert not list(result.kept_as.glob("*.sst"))


def test_status_of_a_damaged_database_at_a_path_containing_lock_says_damaged(
    tmp_path: Path, invoke: Invoke
) -> None:
    db = filled_db(tmp_path / "BLOCKS", flushes=2, per_flush=20)
    initialize(db)
    for table in db.glob("*.sst"):
        table.unlink()

    shown = invoke("status", "-d", str(db))

    assert shown.exit_code == 1
    assert "in use" not in shown.stderr
    assert ".sst" in shown.stderr


def test_a_database_really_in_use_at_such_a_path_is_still_in_use(
    tmp_path: Path, invoke: Invoke
) -> None:
    db = filled_db(tmp_path / "BLOCKS", flushes=1, per_flush=5)
    initialize(db)
    held = rocksdict.Rdict(str(db))
    try:
        refused = invoke("up", "-d", str(db), "-m", str(tmp_path))
    finally:
        held.close()
    assert refused.exit_code == 5
    assert "in use" in refused.stderr


# --- recovery: journals that are not a restore's ----------------------------------------


def test_a_journal_that_is_a_directory_is_refused(scenario: Scenario) -> None:
    db, _, old = scenario
    journal_of(db).mkdir()
    with pytest.raises(BackupError, match="it is not a small regular file"):
        recover(db)
    assert journal_of(db).is_dir()
    assert contents(db, state=True) == old


def test_an_oversized_journal_is_refused_unread(scenario: Scenario) -> None:
    db, _, old = scenario
    journal = write_journal(db)
    journal.write_text(journal.read_text() + " " * (64 * 1024))
    with pytest.raises(BackupError, match="it is not a small regular file"):
        recover(db)
    assert journal.exists()
    assert contents(db, state=True) == old


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"keep_as": "/etc"}, "its kept database '/etc' is not a name a restore gives"),
        ({"keep_as": 7}, "its kept database 7 is not a name a restore gives"),
        ({"staging_inode": "12"}, "staging_inode is not a number"),
        ({"staging_inode": True}, "staging_inode is not a number"),
        ({"replacing": "yes"}, "replacing is not true or false"),
        ({"mode": "copy"}, "mode 'copy' is unknown"),
        ({"pid": "123"}, "pid is not a number"),
        ({"pid": False}, "pid is not a number"),
    ],
)
def test_a_journal_field_of_the_wrong_kind_is_refused_and_nothing_moves(
    scenario: Scenario, fields: dict[str, Any], reason: str
) -> None:
    db, _, old = scenario
    journal = write_journal(db, **{"staging_inode": db.stat().st_ino, **fields})
    staging = staging_named_in(journal)
    staging.mkdir()
    with pytest.raises(BackupError) as caught:
        recover(db)
    assert f"is unreadable or not one a restore wrote ({reason})." in caught.value.message
    assert staging.is_dir()
    assert journal.exists()
    assert contents(db, state=True) == old


def test_a_planted_staging_symlink_is_unlinked_never_its_target(
    scenario: Scenario, tmp_path: Path
) -> None:
    db, _, old = scenario
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "data").write_text("keep me")
    journal = write_journal(db, staging_inode=db.stat().st_ino)
    staging = staging_named_in(journal)
    staging.symlink_to(victim)

    assert recover(db) == f"finished an interrupted restore into {db}"
    assert not os.path.lexists(staging)
    assert (victim / "data").read_text() == "keep me"
    assert contents(db, state=True) == old
    assert leftovers(db) == []


# --- recovery: what a kill (or an operator since) leaves --------------------------------


def test_recover_leaves_the_staging_copy_of_a_live_process_alone(scenario: Scenario) -> None:
    db, _, old = scenario
    theirs = db.parent / f".db.restore-{os.getppid()}"
    theirs.mkdir()
    (theirs / "CURRENT").write_text("MANIFEST-000001\n")
    ours_dead = db.parent / f".db.restore-{dead_pid()}"
    ours_dead.mkdir()

    assert recover(db) is None
    assert tree(theirs) == ["CURRENT"]
    assert not ours_dead.exists()
    assert contents(db, state=True) == old


def test_recover_sweeps_a_dead_restores_temp_journal_and_staging_link_unfollowed(
    scenario: Scenario, tmp_path: Path
) -> None:
    db, _, old = scenario
    pid = dead_pid()
    temp = db.parent / f"..db.restore-journal.json.{pid}.tmp"
    temp.write_text("{")
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "data").write_text("keep me")
    link = db.parent / f".db.restore-{pid}-old"
    link.symlink_to(victim)

    assert recover(db) is None
    assert leftovers(db) == []
    assert (victim / "data").read_text() == "keep me"
    assert contents(db, state=True) == old


def test_recover_puts_the_built_copy_in_place_when_the_target_is_gone(
    scenario: Scenario,
) -> None:
    db, info, _ = scenario
    journal = write_journal(db, keep_as=str(db.parent / KEPT))
    staging = staging_named_in(journal)
    shutil.copytree(info.path / "db", staging)
    shutil.rmtree(db)

    assert recover(db) == f"finished an interrupted restore into {db}"
    assert contents(db, state=True) == contents(info.path / "db", state=True)
    assert leftovers(db) == []


def test_recover_will_not_choose_between_the_moved_database_and_a_new_one(
    scenario: Scenario,
) -> None:
    db, info, old = scenario
    moved = db.parent / KEPT
    journal = write_journal(db, keep_as=str(moved), mode="rename")
    staging = staging_named_in(journal)
    shutil.copytree(info.path / "db", staging)
    db.rename(moved)
    create_database(db, {b"new": b"app started"})  # an application opened the path meanwhile

    with pytest.raises(BackupError) as caught:
        recover(db)

    assert caught.value.message == (
        f"an interrupted restore moved the database at {db} to {moved}, "
        f"and a new database has appeared at {db} since."
    )
    assert str(staging) in (caught.value.hint or "")
    assert contents(moved, state=True) == old
    assert contents(db) == {"default": {b"new": b"app started"}}
    assert contents(staging) == contents(info.path / "db")
    assert journal.exists()


def test_recover_with_neither_database_left_deletes_nothing_and_says_where_to_look(
    scenario: Scenario,
) -> None:
    db, _, old = scenario
    aside = db.parent / "db.elsewhere"
    db.rename(aside)
    journal = write_journal(db, keep_as=str(db.parent / KEPT), mode="rename")

    with pytest.raises(BackupError) as caught:
        recover(db)

    assert caught.value.message == (
        f"an interrupted restore into {db} left neither the database it replaced nor "
        "the restored copy where its journal says."
    )
    assert f"delete {journal}" in (caught.value.hint or "")
    assert journal.exists()
    assert contents(aside, state=True) == old
