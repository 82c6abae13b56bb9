"""What an outside review of issue 8 found, each with a test (numbered as in the review).

Someone who can write into the backup directory, or beside the database, is an attacker
here: nothing they plant may make the tool delete, link, read without bound, or restore
what it should not.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pebble_migrate.backup import NotABackup, create_backup, load_backup, verify_backup
from pebble_migrate.catalog import kept_databases, list_backups
from pebble_migrate.integrity import table_files
from pebble_migrate.restore import OtherDatabase, restore_backup
from tests.conftest import Invoke, snapshot, tmpfs, write_migration
from tests.test_backup import filled_db, initialize

PLUS = 'def up(ctx):\n    for k, v in ctx.scan(prefix=b"k"):\n        ctx.put(k, v + b"+")\n'


def _db(root: Path, name: str = "app.db") -> Path:
    db = filled_db(root / name, flushes=1, per_flush=2000)
    initialize(db)
    return db


def _rot(path: Path) -> None:
    """Flip 4 KiB in the middle of a file in place, keeping its times (bit rot)."""
    st = path.stat()
    with path.open("r+b") as handle:
        handle.seek(st.st_size // 2)
        chunk = handle.read(4096)
        handle.seek(st.st_size // 2)
        handle.write(bytes(b ^ 0xFF for b in chunk))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_01_a_planted_journal_never_deletes_anything(tmp_path: Path, invoke: Invoke) -> None:
    db = _db(tmp_path)
    create_backup(db)
    for staging in ("app.db", "app.db.backups", "../elsewhere"):
        journal = tmp_path / ".app.db.restore-journal.json"
        journal.write_text(
            json.dumps(
                {
                    "target": "app.db",
                    "staging": staging,
                    "staging_inode": 1,
                    "keep_as": None,
                    "replacing": False,
                    "mode": "exchange",
                    "pid": 99999999,
                }
            )
        )
        before = snapshot(db)
        result = invoke("status", "-d", str(db))
        assert result.exit_code == 1
        assert "not one a restore wrote" in result.stderr
        assert snapshot(db) == before
        assert (tmp_path / "app.db.backups").is_dir()
    journal.write_text(json.dumps({"staging": 5}))
    assert "Traceback" not in invoke("status", "-d", str(db)).stderr


def test_02_a_shared_backup_directory_keeps_each_databases_backups(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    a, b = _db(tmp_path, "a.db"), _db(tmp_path, "b.db")
    theirs = [create_backup(b, backup_dir=shared) for _ in range(2)]
    ours = [create_backup(a, backup_dir=shared) for _ in range(2)]
    assert [x.id for x in list_backups(a, backup_dir=shared)] == [x.id for x in ours]
    from pebble_migrate.catalog import cleanup_backups

    cleanup_backups(a, backup_dir=shared, keep=1, force=True)
    assert [x.id for x in list_backups(b, backup_dir=shared)] == [x.id for x in theirs]


def test_03_restoring_a_copy_backup_keeps_it_independent(tmp_path: Path) -> None:
    db = _db(tmp_path)
    copy = create_backup(db, mode="copy")
    restore_backup(copy.id, db, discard_current=True)
    [listed] = list_backups(db)
    assert listed.shares_live is False
    for sst in table_files(db):
        _rot(sst)
    verify_backup(load_backup(copy.path))


def test_04_a_table_file_owned_by_someone_else_is_copied_not_linked(tmp_path: Path) -> None:
    db = _db(tmp_path)
    info = create_backup(db, mode="copy")
    sst = max(table_files(info.path / "db"), key=lambda p: p.stat().st_size)
    os.chown(sst, 65534, 65534)  # nobody
    sst.chmod(0o666)
    restore_backup(info.id, db, discard_current=True)
    restored = db / sst.name
    st = restored.stat()
    assert st.st_ino != sst.stat().st_ino
    assert st.st_uid == db.stat().st_uid
    assert not st.st_mode & 0o022


def test_05_a_fifo_in_place_of_the_checksum_cache_does_not_hang(tmp_path: Path) -> None:
    db = _db(tmp_path)
    root = tmp_path / "app.db.backups"
    root.mkdir()
    os.mkfifo(root / ".checksums.json")
    done = subprocess.run(
        [sys.executable, "-m", "pebble_migrate", "backup", "create", "-d", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in done.stderr


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def _cli_limited(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pebble_migrate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limit_memory,
        check=False,
    )


def test_06_metadata_and_header_bombs_are_refused_within_bounds(tmp_path: Path) -> None:
    db = _db(tmp_path)
    root = tmp_path / "app.db.backups"
    real = create_backup(db, compress=True)
    # (a) an archive whose backup.json member is 1.5 GiB of spaces
    bomb = root / "20000101T000000Z.tar.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        member = tarfile.TarInfo("backup.json")
        member.size = 1536 << 20
        tar.addfile(member, io.BytesIO(b" " * member.size))
    listed = _cli_limited("backup", "list", "-d", str(db), "--json")
    assert listed.returncode == 0, listed.stderr
    assert [e["id"] for e in json.loads(listed.stdout)] == [real.id]
    # (b) a GNU long-name header of 1.5 GiB in front of a member
    header = root / "header.tar.gz"
    with (
        tarfile.open(real.path) as source,
        gzip.open(header, "wb", compresslevel=9) as raw,
        tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        for member in source:
            tar.addfile(member, source.extractfile(member))
        long = tarfile.TarInfo("db/" + "x" * (1536 << 20))
        tar.addfile(long, io.BytesIO(b""))
    verified = _cli_limited("backup", "verify", str(header), "-d", str(db))
    assert verified.returncode == 1
    assert "MemoryError" not in verified.stderr and "Traceback" not in verified.stderr
    # (c) a huge, sparse backup.json in a backup directory
    sparse = root / "20000101T000001Z"
    (sparse / "db").mkdir(parents=True)
    with (sparse / "backup.json").open("wb") as handle:
        handle.truncate(3 << 30)
    listed = _cli_limited("backup", "list", "-d", str(db))
    assert listed.returncode == 0, listed.stderr


def test_07_a_copy_backup_finds_a_file_damaged_since_it_was_first_checked(
    tmp_path: Path, invoke: Invoke
) -> None:
    db = _db(tmp_path)
    create_backup(db)
    _rot(max(table_files(db), key=lambda p: p.stat().st_size))
    refused = invoke("backup", "create", "--copy", "-d", str(db))
    assert refused.exit_code == 1
    assert "no longer matches the sum recorded when it was first backed up" in refused.stderr


def test_09_the_damage_hint_judges_by_the_damaged_files_inode(
    tmp_path: Path, invoke: Invoke, migrations_dir: Path
) -> None:
    db = _db(tmp_path)
    links = [create_backup(db) for _ in range(2)]
    archive = create_backup(db, compress=True)
    write_migration(migrations_dir, "1700000000_plus", PLUS)
    sst = max(table_files(db), key=lambda p: p.stat().st_size)
    _rot(sst)
    failed = invoke("up", "-d", str(db), "--no-backup")
    assert failed.exit_code == 6
    for link in links:
        assert link.id in failed.stderr.split("so they are damaged too")[0]
    assert f"Backups that do not share it: {archive.id} (archive)" in failed.stderr


def test_10_a_moved_database_still_finds_its_copy(
    tmp_path: Path, invoke: Invoke, migrations_dir: Path
) -> None:
    db = _db(tmp_path)
    copy = create_backup(db, mode="copy")
    moved = tmp_path / "new.db"
    db.rename(moved)
    (tmp_path / "app.db.backups").rename(tmp_path / "new.db.backups")
    write_migration(migrations_dir, "1700000000_plus", PLUS)
    _rot(max(table_files(moved), key=lambda p: p.stat().st_size))
    failed = invoke("up", "-d", str(moved), "--no-backup")
    assert f"backup restore {copy.id} --force" in failed.stderr


def test_11_a_backup_whose_id_is_not_its_name_is_refused(tmp_path: Path) -> None:
    db = _db(tmp_path)
    first, second = create_backup(db), create_backup(db)
    meta = json.loads((first.path / "backup.json").read_text())
    meta["id"] = second.id
    (first.path / "backup.json").write_text(json.dumps(meta))
    with pytest.raises(NotABackup, match="is not its name"):
        load_backup(first.path)
    assert [b.id for b in list_backups(db)] == [second.id]


def test_12_a_restore_as_root_leaves_the_database_its_owners(tmp_path: Path) -> None:
    db = _db(tmp_path)
    info = create_backup(db, compress=True)
    for path in [db, *db.rglob("*")]:
        os.lchown(path, 65534, 65534)
    restore_backup(info.id, db, discard_current=True)
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in [db, *db.iterdir()]}
    assert owners == {(65534, 65534)}


def test_13_cleanup_keeps_a_kept_database_that_is_in_use(tmp_path: Path) -> None:
    import rocksdict

    db = _db(tmp_path)
    info = create_backup(db)
    restore_backup(info.id, db)
    restore_backup(info.id, db)
    kept = kept_databases(db)
    holder = rocksdict.Rdict(str(kept[0].path))
    try:
        from pebble_migrate.catalog import cleanup_backups

        result = cleanup_backups(db, keep=1, force=True)
    finally:
        holder.close()
    assert kept[0].path.is_dir()
    assert kept[0] in result.kept_protected


def test_14_strangers_in_the_backup_directory_do_not_block_backups(
    tmp_path: Path, invoke: Invoke
) -> None:
    db = _db(tmp_path)
    root = tmp_path / "app.db.backups"
    (root / "mysql-dump").mkdir(parents=True)
    (root / "mysql-dump" / "db").write_text("someone else's")
    done = invoke("backup", "create", "-d", str(db))
    assert done.exit_code == 0, done.stderr
    assert (root / "mysql-dump" / "db").read_text() == "someone else's"


@pytest.mark.parametrize(
    ("field", "value"),
    [("version", 1e400), ("created_at", "9999-12-31T23:59:59-05:00"), ("version", "1")],
)
def test_15_out_of_range_metadata_is_not_a_backup(
    tmp_path: Path, invoke: Invoke, field: str, value: object
) -> None:
    db = _db(tmp_path)
    bad, good = create_backup(db), create_backup(db)
    meta = json.loads((bad.path / "backup.json").read_text())
    meta[field] = value
    (bad.path / "backup.json").write_text(json.dumps(meta))
    listed = invoke("backup", "list", "-d", str(db), "--json")
    assert listed.exit_code == 0, listed.stderr
    assert [e["id"] for e in json.loads(listed.stdout)] == [good.id]
    assert invoke("backup", "cleanup", "-d", str(db), "--keep", "5").exit_code == 0


def test_16_a_kept_database_name_with_a_bad_date_is_not_ours(
    tmp_path: Path, invoke: Invoke
) -> None:
    db = _db(tmp_path)
    (tmp_path / "app.db.pre-restore-20261399T999999Z").mkdir()
    assert kept_databases(db) == []
    for command in (["backup", "list"], ["backup", "cleanup", "--keep", "1"]):
        result = invoke(*command, "-d", str(db))
        assert result.exit_code == 0, result.stderr
    assert (tmp_path / "app.db.pre-restore-20261399T999999Z").is_dir()


def test_17_an_unsettled_restore_on_a_read_only_volume_is_a_clear_error(
    tmp_path: Path, invoke: Invoke
) -> None:
    with tmpfs(tmp_path / "ro", "32m") as mount:
        db = _db(mount)
        info = create_backup(db)
        killed = subprocess.run(
            [
                sys.executable,
                "-m",
                "pebble_migrate",
                "backup",
                "restore",
                info.id,
                "-d",
                str(db),
                "--force",
            ],
            env={**os.environ, "PEBBLE_MIGRATE_KILL_AT": "restore-swapped"},
            capture_output=True,
            check=False,
        )
        assert killed.returncode < 0
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        try:
            for command in (["status"], ["history"], ["force-clean", "--dry-run"]):
                result = invoke(*command, "-d", str(db))
                assert result.exit_code == 1, result.output
                assert "must be settled first" in result.stderr
                assert "Traceback" not in result.stderr
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)
        assert invoke("status", "-d", str(db)).exit_code == 0


def test_18_a_file_listed_twice_is_not_a_backup(tmp_path: Path, invoke: Invoke) -> None:
    db = _db(tmp_path)
    info = create_backup(db)
    meta = json.loads((info.path / "backup.json").read_text())
    meta["files"].append(dict(meta["files"][0], size=1))
    (info.path / "backup.json").write_text(json.dumps(meta))
    verified = invoke("backup", "verify", str(info.path), "-d", str(db))
    assert verified.exit_code == 1
    assert "is listed twice" in verified.stderr


def test_19_a_full_disk_during_a_backup_says_nothing_was_changed(
    tmp_path: Path, invoke: Invoke
) -> None:
    db = _db(tmp_path)
    with tmpfs(tmp_path / "small", "1m") as mount:
        result = invoke("backup", "create", "--copy", "-d", str(db), "--backup-dir", str(mount))
        assert result.exit_code == 1
        assert "force-clean" not in result.stderr
        assert "Nothing was changed" in result.stderr or "nothing was changed" in result.stderr


def test_20_a_read_only_backup_directory_says_so(tmp_path: Path, invoke: Invoke) -> None:
    db = _db(tmp_path)
    with tmpfs(tmp_path / "ro", "4m") as mount:
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        result = invoke("backup", "create", "-d", str(db), "--backup-dir", str(mount / "b"))
        assert result.exit_code == 1
        assert "its filesystem is read-only" in result.stderr


def test_21_the_same_target_spelled_twice_is_one_target(
    tmp_path: Path, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _db(tmp_path)
    info = create_backup(db)
    monkeypatch.chdir(tmp_path)
    done = invoke("backup", "restore", info.id, "./app.db/", "-d", str(db), "--force")
    assert done.exit_code == 0, done.stderr


def test_22_a_backup_taken_before_the_first_up_is_explained(tmp_path: Path) -> None:
    db = filled_db(tmp_path / "app.db", flushes=1, per_flush=100)
    early = create_backup(db)
    initialize(db)
    with pytest.raises(OtherDatabase, match="holds no migration state"):
        restore_backup(early.id, db)


def test_23_a_backup_on_another_filesystem_is_a_copy(tmp_path: Path) -> None:
    db = _db(tmp_path)
    with tmpfs(tmp_path / "other", "64m") as mount:
        info = create_backup(db, backup_dir=mount)
        assert info.mode == "copy"


def test_24_a_refused_backup_leaves_nothing(tmp_path: Path, invoke: Invoke) -> None:
    db = _db(tmp_path)
    sst = max(table_files(db), key=lambda p: p.stat().st_size)
    _rot(sst)
    refused = invoke("backup", "create", "-d", str(db))
    assert refused.exit_code == 1
    assert ".tmp-" not in refused.stderr
    assert "There is no backup of it" in refused.stderr
    assert not (tmp_path / "app.db.backups").exists()


def test_25_leftover_cache_temp_files_are_swept(tmp_path: Path) -> None:
    db = _db(tmp_path)
    create_backup(db)
    stale = tmp_path / "app.db.backups" / "..checksums.json.99999999.tmp"
    stale.write_text("{}")
    create_backup(db)
    assert not stale.exists()
