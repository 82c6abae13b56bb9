"""Backup edge cases not reached elsewhere: refused modes, failed archives, a backup
directory that cannot be asked about or is replaced while it is made, strange entries in a
scan's view, a damaged checksum cache, processes of other users, and every malformed field
of backup.json.

All on real RocksDB directories; faults are injected only at OS calls.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import pebble_migrate as pm
from pebble_migrate import commands
from pebble_migrate.backup import (
    _CACHE,
    ARCHIVE_SUFFIX,
    DATA,
    META,
    BackupCorrupt,
    BackupError,
    BackupInfo,
    NotABackup,
    create_backup,
    load_backup,
    remove_backup,
    sha256_of,
    sweep_temporary,
    verify_backup,
)
from pebble_migrate.context import ChunkPolicy
from pebble_migrate.errors import UsageError
from pebble_migrate.testing import contents, create_database
from pebble_migrate.views import scans_dir
from tests.conftest import Invoke, migration, registry_of
from tests.test_backup import dead_pid, tree

MID = "1700000000_plus"
KEYS = {b"k:%03d" % i: b"v" for i in range(120)}


def _halfway(tmp_path: Path) -> Path:
    """Return a database whose migration MID failed halfway (its scan's view is kept)."""
    db = create_database(tmp_path / "db", KEYS)

    def up(ctx: Any) -> None:
        for key, value in ctx.scan(prefix=b"k:"):
            if key == b"k:060":
                raise RuntimeError("stop here")
            ctx.put(key, value + b"+")

    options = commands.RunOptions(policy=ChunkPolicy(10), handle_signals=False)
    with pytest.raises(pm.MigrationFailed):
        commands.up(db, registry_of(migration(MID, up=up)), options=options)
    return db


def _view(db: Path) -> Path:
    (view,) = (scans_dir(db) / MID).iterdir()
    return view


def _rewrite_meta(info: BackupInfo, **changes: Any) -> None:
    """Change fields of a backup's backup.json (a value of ... removes the field)."""
    meta = info.path / META
    data = json.loads(meta.read_text())
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    meta.write_text(json.dumps(data))


# --- creating -------------------------------------------------------------------------


def test_an_unknown_mode_is_a_usage_error_that_writes_nothing(db_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown backup mode 'zip'; choose one of link, copy"):
        create_backup(db_path, mode="zip")
    assert not (db_path.parent / "db.backups").exists()


def test_a_failed_archive_removes_the_backup_directory_too(
    db_path: Path, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_rename = os.rename

    def rename(src: Any, dst: Any, **kwargs: Any) -> None:
        if str(dst).endswith(ARCHIVE_SUFFIX):
            raise OSError(errno.EIO, "Input/output error", str(dst))
        real_rename(src, dst, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    before = contents(db_path, state=True)
    result = invoke("backup", "create", "-d", str(db_path), "--compress")
    assert result.exit_code == 1, result.output
    root = db_path.parent / "db.backups"
    assert f"cannot write under {root}: Input/output error" in result.stderr
    assert "Nothing was changed." in result.stderr
    assert tree(root) == [_CACHE]  # no backup directory, no archive, no temporary file
    assert contents(db_path, state=True) == before


def test_a_backup_directory_whose_filesystem_cannot_be_asked_is_still_used(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def statvfs(path: Any) -> Any:
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(os, "statvfs", statvfs)
    info = create_backup(db_path)
    assert info.path.parent == db_path.parent / "db.backups"
    verify_backup(load_backup(info.path))


def test_a_backup_directory_replaced_by_a_file_as_it_is_made_is_refused(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = db_path.parent / "db.backups"
    real_mkdir = os.mkdir

    def mkdir(path: Any, mode: int = 0o777, **kwargs: Any) -> None:
        real_mkdir(path, mode, **kwargs)
        if Path(path) == root:  # another process swaps in a file at once
            os.rmdir(root)
            root.write_text("not a directory")

    monkeypatch.setattr(os, "mkdir", mkdir)
    with pytest.raises(BackupError, match="as the backup directory: it is not a directory"):
        create_backup(db_path)
    assert root.read_text() == "not a directory"


# --- the views of a migration left halfway ---------------------------------------------


def test_links_and_fifos_in_a_scans_view_are_left_out_of_the_backup(tmp_path: Path) -> None:
    db = _halfway(tmp_path)
    view = _view(db)
    secret = tmp_path / "secret"
    secret.write_text("not the database's")
    (view / "stray-link").symlink_to(secret)
    os.mkfifo(view / "stray-fifo")
    info = create_backup(db)
    assert MID in info.partial
    backed_up = info.path / DATA / view.relative_to(db)
    names = sorted(p.name for p in backed_up.iterdir())
    regular = sorted(p.name for p in view.iterdir() if p.is_file() and not p.is_symlink())
    assert names == regular
    assert "stray-link" not in names and "stray-fifo" not in names
    verify_backup(load_backup(info.path))


def test_a_view_that_cannot_be_hard_linked_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _halfway(tmp_path)
    view = _view(db)
    real_link = os.link

    def link(src: Any, dst: Any, **kwargs: Any) -> None:
        if Path(src).is_relative_to(view):
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
        real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", link)
    info = create_backup(db)
    backed_up = info.path / DATA / view.relative_to(db)
    copied = sorted(backed_up.iterdir())
    assert [p.name for p in copied] == sorted(p.name for p in view.iterdir())
    for path in copied:
        source = view / path.name
        assert path.stat().st_ino != source.stat().st_ino
        assert sha256_of(path) == sha256_of(source)
    verify_backup(load_backup(info.path))


# --- the checksum cache ---------------------------------------------------------------


def test_cache_entries_without_a_sum_are_ignored_and_summed_again(db_path: Path) -> None:
    first = create_backup(db_path)
    cache = first.path.parent / _CACHE
    entries = json.loads(cache.read_text())
    assert entries
    cache.write_text(json.dumps({key: {"sha256": 7, "checked": True} for key in entries}))
    second = create_backup(db_path)
    verify_backup(load_backup(second.path))
    rewritten = json.loads(cache.read_text())
    assert set(rewritten) == set(entries)
    assert all(isinstance(v["sha256"], str) and v["checked"] for v in rewritten.values())


def test_a_cache_that_is_not_json_is_rebuilt(db_path: Path) -> None:
    first = create_backup(db_path)
    cache = first.path.parent / _CACHE
    good = json.loads(cache.read_text())
    cache.write_text("{not json")
    second = create_backup(db_path)
    verify_backup(load_backup(second.path))
    assert json.loads(cache.read_text()) == good


# --- sweeping -------------------------------------------------------------------------


def test_a_temporary_directory_of_another_users_process_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs, gone = dead_pid(), dead_pid()
    real_kill = os.kill

    def kill(pid: int, sig: int) -> None:
        if pid == theirs:  # alive, but not ours to signal
            raise PermissionError(errno.EPERM, "Operation not permitted")
        real_kill(pid, sig)

    monkeypatch.setattr(os, "kill", kill)
    kept = tmp_path / f".tmp-20240301T120000Z-{theirs}"
    dead = tmp_path / f".tmp-20240301T120001Z-{gone}"
    kept.mkdir()
    dead.mkdir()
    assert sweep_temporary(tmp_path) == [dead]
    assert kept.is_dir() and not dead.exists()


# --- reading, verifying, removing -----------------------------------------------------


def test_loading_a_path_that_does_not_exist_says_so(tmp_path: Path) -> None:
    with pytest.raises(NotABackup, match="is not a backup: no such file or directory"):
        load_backup(tmp_path / "20240301T120000Z")


def test_verify_refuses_a_data_directory_that_is_a_symlink(db_path: Path) -> None:
    info = create_backup(db_path)
    elsewhere = db_path.parent / "elsewhere"
    (info.path / DATA).rename(elsewhere)
    (info.path / DATA).symlink_to(elsewhere)
    with pytest.raises(BackupCorrupt, match=f"backup {info.id} is damaged: db is a symlink"):
        verify_backup(load_backup(info.path))


def test_verify_refuses_a_backup_whose_data_is_gone(db_path: Path, invoke: Invoke) -> None:
    info = create_backup(db_path)
    (info.path / DATA).rename(db_path.parent / "moved")
    result = invoke("backup", "verify", info.id, "-d", str(db_path))
    assert result.exit_code != 0
    assert f"backup {info.id} is damaged: db is missing" in result.stderr
    with pytest.raises(BackupCorrupt, match="db is missing"):
        verify_backup(load_backup(info.path))


def test_a_backup_reached_through_a_symlink_is_not_removed(db_path: Path) -> None:
    info = create_backup(db_path)
    link = db_path.parent / "20240301T120000Z"
    link.symlink_to(info.path)
    with pytest.raises(BackupError, match="is a symlink; pebble-migrate removes only its own"):
        remove_backup(replace(info, path=link))
    assert link.is_symlink()
    verify_backup(load_backup(info.path))


# --- backup.json fields ---------------------------------------------------------------


def test_a_backup_json_without_partial_applied_or_mode_is_an_older_backup(
    db_path: Path,
) -> None:
    info = create_backup(db_path)
    _rewrite_meta(info, partial=..., applied=..., mode=...)
    old = load_backup(info.path)
    assert (old.partial, old.applied, old.mode) == ({}, None, "link")
    assert old.files == info.files
    verify_backup(old)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"size": "12"}, "ValueError: size of CURRENT is '12'"),
        ({"size": True}, "ValueError: size of CURRENT is True"),
        ({"sha256": "ZZ"}, "ValueError: sha256 of CURRENT is 'ZZ'"),
    ],
)
def test_a_recorded_file_with_a_bad_size_or_sum_is_not_a_backup(
    db_path: Path, changes: dict[str, Any], reason: str
) -> None:
    info = create_backup(db_path)
    files = json.loads((info.path / META).read_text())["files"]
    (current,) = [f for f in files if f["name"] == "CURRENT"]
    current.update(changes)
    _rewrite_meta(info, files=files)
    with pytest.raises(NotABackup, match=f"backup.json is malformed \\({reason}\\)"):
        load_backup(info.path)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"mode": "hardlink"}, "ValueError: unknown mode 'hardlink'"),
        ({"partial": ["x"]}, "TypeError: partial must map migration ids to text"),
        ({"partial": {"x": 1}}, "TypeError: partial must map migration ids to text"),
        ({"applied": "1700000000_a"}, "TypeError: applied must be a list of migration ids"),
        ({"applied": [1]}, "TypeError: applied must be a list of migration ids"),
        ({"description": 5}, "TypeError: description is not text of at most 10000 characters"),
        ({"status": "x" * 17}, "TypeError: status is not text of at most 16 characters"),
        ({"created_at": "2024-03-01T12:00:00"}, "ValueError: created_at has no time zone"),
    ],
)
def test_a_malformed_field_of_backup_json_is_not_a_backup(
    db_path: Path, changes: dict[str, Any], reason: str
) -> None:
    info = create_backup(db_path)
    _rewrite_meta(info, **changes)
    with pytest.raises(NotABackup, match=f"backup.json is malformed \\({reason}\\)"):
        load_backup(info.path)


def test_a_backup_json_that_is_not_an_object_is_not_a_backup(db_path: Path) -> None:
    info = create_backup(db_path)
    (info.path / META).write_text("[]")
    with pytest.raises(
        NotABackup, match=r"malformed \(TypeError: expected an object, found list\)"
    ):
        load_backup(info.path)
