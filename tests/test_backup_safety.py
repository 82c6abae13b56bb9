"""Issue 8: backups that survive damage to the files, and no way in through a backup.

Each test reproduces one case from the issue (numbered as there) on real databases and
the real CLI, and asserts the fix.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from click.testing import Result

import pebble_migrate as pm
from pebble_migrate.backup import (
    BackupCorrupt,
    NotABackup,
    TableDamaged,
    create_backup,
    load_backup,
    verify_backup,
)
from pebble_migrate.catalog import kept_databases, list_backups
from pebble_migrate.integrity import table_files
from pebble_migrate.restore import OtherDatabase, restore_backup
from pebble_migrate.testing import contents
from tests.conftest import Invoke, snapshot, tmpfs, write_migration
from tests.test_backup import filled_db, initialize

PLUS = """
def up(ctx):
    for key, value in ctx.scan(prefix=b"k"):
        ctx.put(key, value + b"+")
"""


def _damage(path: Path) -> Path:
    """Overwrite 4 KiB in the middle of the largest table file, in place (every hard link
    to it sees the damage); return the file."""
    sst = max(table_files(path), key=lambda p: p.stat().st_size)
    with sst.open("r+b") as handle:
        handle.seek(sst.stat().st_size // 2)
        handle.write(b"\0" * 4096)
    return sst


def _db(tmp_path: Path, name: str = "db") -> Path:
    db = filled_db(tmp_path / name, flushes=1, per_flush=3000)
    initialize(db)
    return db


# --- 1: one damaged table file, link and copy backups ---------------------------------


def test_1_a_copy_backup_survives_damage_that_breaks_every_link_backup(
    tmp_path: Path, invoke: Invoke, migrations_dir: Path
) -> None:
    db = _db(tmp_path)
    before = contents(db, state=True)
    links = [create_backup(db, description=f"link {i}") for i in range(3)]
    copy = create_backup(db, description="copy", mode="copy")
    assert copy.mode in ("copy", "reflink")
    listed = {b.id: b for b in list_backups(db)}
    assert [listed[b.id].shares_live for b in links] == [True, True, True]
    assert listed[copy.id].shares_live is False
    damaged = _damage(db)

    write_migration(migrations_dir, "1700000000_plus", PLUS)
    failed = invoke("up", "-d", str(db), "--no-backup")
    assert failed.exit_code == 6
    assert "corrupt" in failed.stderr
    assert f"{damaged.name} is the very same file (a hard link)" in failed.stderr
    assert f"Backups that do not share it: {copy.id} ({copy.mode})" in failed.stderr
    assert f"backup restore {copy.id} --force" in failed.stderr

    for link in links:
        with pytest.raises(BackupCorrupt):
            verify_backup(load_backup(link.path))
    verify_backup(load_backup(copy.path))
    invoke("force-clean", "-d", str(db), "--yes")
    restored = invoke("backup", "restore", copy.id, "-d", str(db), "--force")
    assert restored.exit_code == 0, restored.stderr
    assert contents(db, state=True) == before


def test_1_list_shows_each_backups_mode(tmp_path: Path, invoke: Invoke) -> None:
    db = _db(tmp_path)
    create_backup(db)
    create_backup(db, mode="copy")
    shown = invoke("backup", "list", "-d", str(db), "--json")
    modes = [(b["mode"], b["shares_files_with_database"]) for b in json.loads(shown.stdout)]
    assert modes[0] == ("link", True)
    assert modes[1][0] in ("copy", "reflink") and modes[1][1] is False


def test_1_the_copy_setting_applies_to_automatic_backups(
    tmp_path: Path, invoke: Invoke, migrations_dir: Path
) -> None:
    db = _db(tmp_path)
    write_migration(migrations_dir, "1700000000_plus", PLUS)
    done = invoke("up", "-d", str(db), env={"PEBBLE_MIGRATE_BACKUP_MODE": "copy"})
    assert done.exit_code == 0, done.stderr
    [auto] = list_backups(db)
    assert auto.mode in ("copy", "reflink") and auto.shares_live is False
    bad = invoke("up", "-d", str(db), env={"PEBBLE_MIGRATE_BACKUP_MODE": "copies"})
    assert bad.exit_code == 2
    assert 'PEBBLE_MIGRATE_BACKUP_MODE must be "link" or "copy"' in bad.stderr


# --- 2: never record a damaged file ------------------------------------------------------


def test_2_a_backup_of_a_damaged_database_is_refused(tmp_path: Path, invoke: Invoke) -> None:
    db = _db(tmp_path)
    damaged = _damage(db)
    with pytest.raises(TableDamaged) as info:
        create_backup(db)
    assert f"{damaged.name} is damaged (block checksum mismatch" in str(info.value)
    assert list_backups(db) == []
    refused = invoke("backup", "create", "-d", str(db))
    assert refused.exit_code == 1
    assert "A backup never records a damaged file" in refused.stderr
    assert not (tmp_path / "db.backups").exists()  # not even the directory it would make


def test_2_verify_reads_rocksdbs_own_checksums(tmp_path: Path, invoke: Invoke) -> None:
    db = _db(tmp_path)
    info = create_backup(db)
    data = info.path / "db"
    # Damage the backup's own copy, and record sums that match the damage (as a backup
    # made before this check, of a database already damaged, would have).
    sst = max(table_files(data), key=lambda p: p.stat().st_size)
    damaged = data / f"{sst.name}.new"
    shutil.copyfile(sst, damaged)
    with damaged.open("r+b") as handle:
        handle.seek(damaged.stat().st_size // 2)
        handle.write(b"\0" * 4096)
    damaged.replace(sst)
    meta = json.loads((info.path / "backup.json").read_text())
    for f in meta["files"]:
        if f["name"] == sst.name:
            f["sha256"] = hashlib.sha256(sst.read_bytes()).hexdigest()
    (info.path / "backup.json").write_text(json.dumps(meta))
    result = invoke("backup", "verify", info.id, "-d", str(db))
    assert result.exit_code == 1
    assert f"{sst.name} is damaged (block checksum mismatch" in result.stderr


# --- 3: symlinks and strangers inside a backup --------------------------------------------


def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "somewhere" / "secret.key"
    secret.parent.mkdir()
    secret.write_bytes(b"TOP SECRET")
    secret.chmod(0o600)
    return secret


def _record(info_path: Path, name: str, data: bytes) -> None:
    meta = json.loads((info_path / "backup.json").read_text())
    meta["files"].append(
        {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    )
    (info_path / "backup.json").write_text(json.dumps(meta))


def test_3_a_symlink_in_a_backup_is_never_followed(tmp_path: Path, invoke: Invoke) -> None:
    db = _db(tmp_path)
    secret = _secret(tmp_path)
    info = create_backup(db)
    (info.path / "db" / "notes.txt").symlink_to(secret)
    _record(info.path, "notes.txt", secret.read_bytes())
    before = snapshot(db)
    verified = invoke("backup", "verify", info.id, "-d", str(db))
    assert verified.exit_code == 1
    assert "notes.txt" in verified.stderr and "is not one a backup holds" in verified.stderr
    restored = invoke("backup", "restore", info.id, "-d", str(db), "--force")
    assert restored.exit_code == 1
    assert snapshot(db) == before
    assert not any(p.read_bytes() == b"TOP SECRET" for p in db.rglob("*") if p.is_file())


def test_3_a_table_file_linked_to_a_secret_is_refused(tmp_path: Path, invoke: Invoke) -> None:
    db = _db(tmp_path)
    secret = _secret(tmp_path)
    info = create_backup(db)
    (info.path / "db" / "999999.sst").symlink_to(secret)
    _record(info.path, "999999.sst", secret.read_bytes())
    before = snapshot(db)
    with pytest.raises(BackupCorrupt, match=r"999999\.sst is a symlink"):
        verify_backup(load_backup(info.path))
    restored = invoke("backup", "restore", info.id, "-d", str(db), "--force")
    assert restored.exit_code == 1
    assert "999999.sst is a symlink" in restored.stderr
    assert snapshot(db) == before
    assert not (db / "999999.sst").exists()


def test_3_cleanup_never_deletes_through_a_symlinked_entry(tmp_path: Path, invoke: Invoke) -> None:
    db = _db(tmp_path)
    create_backup(db)
    outside = tmp_path / "outside"
    shutil.copytree(create_backup(db).path, outside)
    (tmp_path / "db.backups" / "20200101T000000Z").symlink_to(outside)
    done = invoke("backup", "cleanup", "-d", str(db), "--keep", "1", "--force")
    assert done.exit_code == 0, done.stderr
    assert (outside / "backup.json").is_file()
    assert (tmp_path / "db.backups" / "20200101T000000Z").is_symlink()
    with pytest.raises(NotABackup, match="symlink"):
        load_backup(tmp_path / "db.backups" / "20200101T000000Z")


@pytest.mark.parametrize("mode", ["link", "copy"])
def test_3_restored_files_are_never_wider_than_their_source(tmp_path: Path, mode: str) -> None:
    db = _db(tmp_path)
    info = create_backup(db, mode=mode)
    for item in (info.path / "db").iterdir():
        item.chmod(0o600)  # a backup taken under a strict umask, or a secret slipped in
    restore_backup(info.id, db, discard_current=True)
    modes = {oct(p.stat().st_mode & 0o777) for p in db.iterdir() if p.is_file()}
    assert modes == {"0o600"}


# --- 4: a decompression bomb -------------------------------------------------------------


def _bomb(tmp_path: Path, db: Path) -> Path:
    """Return an archive of a real backup plus an unrecorded 96 MiB member of zeros."""
    info = create_backup(db, compress=True)
    bomb = info.path.with_name(info.path.name.replace(".tar.gz", "-bomb.tar.gz"))
    with tarfile.open(info.path, "r:gz") as source, tarfile.open(bomb, "w:gz") as tar:
        for member in source:
            tar.addfile(member, source.extractfile(member))
        huge = tarfile.TarInfo("db/000999.sst")
        huge.size = 96 * 1024 * 1024
        tar.addfile(huge, io.BytesIO(b"\0" * huge.size))
    info.path.unlink()
    return bomb


def test_4_a_decompression_bomb_is_refused_before_a_byte_is_written(
    tmp_path: Path, invoke: Invoke
) -> None:
    with tmpfs(tmp_path / "small", "64m") as mount:
        db = filled_db(mount / "db", flushes=1, per_flush=200)
        initialize(db)
        bomb = _bomb(tmp_path, db)
        assert bomb.stat().st_size < 1024 * 1024
        before = snapshot(db)
        restored = invoke("backup", "restore", str(bomb), "-d", str(db), "--force")
        assert restored.exit_code == 1
        assert "000999.sst is not part of the backup" in restored.stderr
        assert "disk" not in restored.stderr
        assert snapshot(db) == before
        assert sorted(p.name for p in mount.iterdir()) == ["db", "db.backups"]


# --- 5: -d . from inside the database ------------------------------------------------------


def test_5_dot_from_inside_the_database_keeps_backups_beside_it(
    tmp_path: Path, invoke: Invoke, migrations_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _db(tmp_path)
    write_migration(migrations_dir, "1700000000_plus", PLUS)
    monkeypatch.chdir(db)
    done = invoke("up", "-d", ".", "-m", str(migrations_dir))
    assert done.exit_code == 0, done.stderr
    assert not [p.name for p in db.iterdir() if p.name.startswith("..")]
    [taken] = list_backups(db)
    assert taken.path.parent == tmp_path / "db.backups"
    restored = invoke("backup", "restore", taken.id, "-d", "./", "--force")
    assert restored.exit_code == 0, restored.stderr


# --- 6: restore into a symlinked database path ----------------------------------------------


@pytest.mark.parametrize("discard", [False, True])
def test_6_restore_through_a_symlink_keeps_the_link(
    tmp_path: Path, invoke: Invoke, discard: bool
) -> None:
    real = _db(tmp_path / "disk2")
    link = tmp_path / "app.db"
    link.symlink_to(real)
    before = contents(real, state=True)
    info = create_backup(link)
    filled_db(real, flushes=1, per_flush=10, tag=b"late")
    args = ["backup", "restore", info.id, "-d", str(link), "--force"]
    restored = invoke(*args, *(["--discard-current"] if discard else []))
    assert restored.exit_code == 0, restored.stderr
    assert link.is_symlink() and link.resolve() == real
    assert contents(real, state=True) == before
    assert invoke("status", "-d", str(link)).exit_code == 0
    assert not list(tmp_path.glob(".*restore-journal*"))


# --- 7: foreign backups ------------------------------------------------------------------------


def test_7_a_backup_that_names_no_database_is_judged_by_its_own_state(
    tmp_path: Path, invoke: Invoke
) -> None:
    ours = _db(tmp_path, "ours")
    theirs = _db(tmp_path, "theirs")
    info = create_backup(theirs)
    meta = json.loads((info.path / "backup.json").read_text())
    meta["database_id"] = None
    (info.path / "backup.json").write_text(json.dumps(meta))
    before = snapshot(ours)
    with pytest.raises(OtherDatabase):
        restore_backup(str(info.path), ours)
    refused = invoke("backup", "restore", str(info.path), "-d", str(ours), "--force")
    assert refused.exit_code == 1 and "--other-database" in refused.stderr
    assert snapshot(ours) == before
    # The same backup of the same database restores: its own state proves whose it is.
    mine = create_backup(ours)
    meta = json.loads((mine.path / "backup.json").read_text())
    meta["database_id"] = None
    (mine.path / "backup.json").write_text(json.dumps(meta))
    restore_backup(mine.id, ours, discard_current=True)


def test_7_a_shared_backup_directory_sweep_leaves_other_programs_files(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    theirs = [shared / ".tmp-upload-1", shared / ".tmp-20240101T000000Z-1"]
    theirs[0].mkdir()
    theirs[1].write_text("someone else's, though it looks like ours: a file, pid 1 alive")
    create_backup(_db(tmp_path), backup_dir=shared)
    assert all(p.exists() for p in theirs)


# --- 8: clear errors, long names -----------------------------------------------------------------


@pytest.mark.parametrize("obstacle", ["file", "under-a-file"])
def test_8_a_backup_directory_that_cannot_be_made_is_a_clear_error(
    tmp_path: Path, invoke: Invoke, migrations_dir: Path, obstacle: str
) -> None:
    db = _db(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    where = blocker if obstacle == "file" else blocker / "backups"
    write_migration(migrations_dir, "1700000000_plus", PLUS)
    before = snapshot(db)
    for command in (["backup", "create"], ["up"]):
        result: Result = invoke(*command, "-d", str(db), "--backup-dir", str(where))
        assert result.exit_code == 1, result.stderr
        assert f"cannot use {where} as the backup directory" in result.stderr
        assert "Traceback" not in result.stderr
    assert snapshot(db) == before


@pytest.mark.parametrize("length", [226, 238, 250])
def test_8_long_database_names_work(tmp_path: Path, invoke: Invoke, length: int) -> None:
    db = _db(tmp_path, "d" * length)
    assert invoke("status", "-d", str(db)).exit_code == 0
    info = create_backup(db)
    restored = invoke("backup", "restore", info.id, "-d", str(db), "--force")
    assert restored.exit_code == 0, restored.stderr
    [kept] = kept_databases(db)
    assert len(kept.path.name.encode()) <= 255
    assert invoke("status", "-d", str(db)).exit_code == 0


# --- 9: read-only volumes ----------------------------------------------------------------


def test_9_read_only_commands_work_on_a_read_only_volume(
    tmp_path: Path, invoke: Invoke, migrations_dir: Path
) -> None:
    write_migration(migrations_dir, "1700000000_plus", PLUS)
    with tmpfs(tmp_path / "ro", "32m") as mount:
        db = _db(mount)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        try:
            for command in (["status"], ["history"], ["validate"], ["up", "--dry-run"]):
                result = invoke(*command, "-d", str(db), "-m", str(migrations_dir))
                assert result.exit_code in (0, 3), (command, result.stderr)
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)


def test_9_read_only_opens_write_nothing(tmp_path: Path, invoke: Invoke) -> None:
    db = _db(tmp_path)
    config = db / "rocksdict-config.json"
    stamp = config.stat().st_mtime_ns
    listing = sorted(os.listdir(db))
    assert invoke("status", "-d", str(db)).exit_code == 0
    assert invoke("history", "-d", str(db)).exit_code == 0
    assert config.stat().st_mtime_ns == stamp
    assert sorted(os.listdir(db)) == listing


# --- 10: the databases restores kept ------------------------------------------------------------


def test_10_databases_kept_by_restores_are_listed_and_cleaned_up(
    tmp_path: Path, invoke: Invoke
) -> None:
    db = _db(tmp_path)
    info = create_backup(db)
    for _ in range(3):
        assert invoke("backup", "restore", info.id, "-d", str(db), "--force").exit_code == 0
    kept = kept_databases(db)
    assert len(kept) == 3
    listed = json.loads(invoke("backup", "list", "-d", str(db), "--json").stdout)
    assert [e["id"] for e in listed if e["kind"] == "pre-restore"] == [k.id for k in kept]
    shown = invoke("backup", "list", "-d", str(db)).stdout
    assert "Databases kept by restores" in shown and kept[0].id in shown
    cleaned = invoke("backup", "cleanup", "-d", str(db), "--keep", "1")
    assert cleaned.exit_code == 0, cleaned.stderr
    assert [k.id for k in kept_databases(db)] == [kept[-1].id]
    assert invoke("backup", "cleanup", "-d", str(db), "--keep", "1", "--force").exit_code == 0
    assert [k.id for k in kept_databases(db)] == [kept[-1].id]  # newest N=1 stays
    dry = invoke("backup", "cleanup", "-d", str(db), "--older-than", "0s", "--force", "-n")
    assert kept[-1].id in dry.stdout
    assert pm.__name__ == "pebble_migrate"
