"""The internal modules' edges: what a migration sees (context), frozen scan views (views),
single-file archives (archive), the backup catalog (catalog), RocksDB's own checksums
(integrity), opening and walking RocksDB (store), free space and the ballast (space), and
the units shown to users (units).

Everything runs against real RocksDB directories under tmp_path. Where a failure cannot be
produced for real (a disk error, a full disk, a process of another user, a directory that
cannot be listed), the OS call is made to fail; the database is never mocked.
"""

from __future__ import annotations

import errno
import inspect
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import rocksdict

import pebble_migrate as pm
from pebble_migrate import (
    archive,
    catalog,
    commands,
    context,
    counting,
    integrity,
    space,
    store,
    units,
    views,
)
from pebble_migrate.backup import BackupError, BackupInfo, load_backup
from pebble_migrate.context import ChunkPolicy, MigrationContext, validation_problems
from pebble_migrate.errors import CorruptionError, StorageError
from pebble_migrate.events import Event
from pebble_migrate.paths import work_dir
from pebble_migrate.state import META_KEY
from pebble_migrate.store import STATE_CF
from pebble_migrate.testing import contents, create_database
from tests.conftest import migration, registry_of

MID = "1700000000_job"
KEYS = {b"k:%03d" % i: b"v" for i in range(300)}


def _opts(records: int = 10, **kwargs: Any) -> commands.RunOptions:
    return commands.RunOptions(policy=ChunkPolicy(records), handle_signals=False, **kwargs)


def _flip(path: Path, start: int, size: int) -> None:
    """Invert `size` bytes of a file from `start`: a damaged block, found by its checksum."""
    data = bytearray(path.read_bytes())
    for i in range(start, min(start + size, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _damage_first_block(folder: Path) -> None:
    """Damage the first data block of every table file in `folder`, each made its own
    file first (a checkpoint's table files are hard links of the database's)."""
    for sst in integrity.table_files(folder):
        data = sst.read_bytes()
        sst.unlink()
        sst.write_bytes(data)
        _flip(sst, 20, 8)


@pytest.fixture
def big_sst(tmp_path: Path) -> Path:
    """A raw-mode database of one table file of many blocks."""
    return create_database(tmp_path / "big", {b"k:%04d" % i: b"v" * 200 for i in range(3000)})


@pytest.fixture
def tmpdir_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary directory of this test's own, for read-only opens' shadows."""
    where = tmp_path / "tmp"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    return where


def _failing(
    monkeypatch: pytest.MonkeyPatch, name: str, when: Callable[..., bool], exc: BaseException
) -> None:
    """Make `os.<name>` raise `exc` for the calls `when` picks; the others go through."""
    real = getattr(os, name)

    def call(*args: Any, **kwargs: Any) -> Any:
        if when(*args):
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, call)


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


# --- units ----------------------------------------------------------------------------


def test_run_times_show_milliseconds_tenths_of_seconds_or_minutes_and_seconds() -> None:
    assert units.format_duration(0.012) == "12ms"
    assert units.format_duration(3.44) == "3.4s"
    assert units.format_duration(59.94) == "59.9s"
    assert units.format_duration(125.9) == "2m05s"


def test_times_are_shown_in_utc_and_no_time_as_a_dash() -> None:
    assert units.format_time(None) == "-"
    assert units.format_time(datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)) == (
        "2023-11-14 22:13:20 UTC"
    )


# --- space ----------------------------------------------------------------------------


def test_no_ballast_is_made_for_a_database_that_is_not_there(tmp_path: Path) -> None:
    ballast = space.Ballast(tmp_path / "gone")
    ballast.ensure()  # best effort: nothing to reserve room in
    assert not (tmp_path / "gone").exists()


def test_a_ballast_that_cannot_be_allocated_is_not_left_half_made(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, offset: int, size: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    ballast = space.Ballast(db_path)
    ballast.ensure()
    assert work_dir(db_path).is_dir()
    assert not os.path.lexists(ballast.path)


def test_a_filesystem_that_reports_no_free_space_figure_does_not_block_a_run(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unknown(path: Any) -> Any:
        raise OSError(errno.ENOSYS, "Function not implemented", str(path))

    monkeypatch.setattr(shutil, "disk_usage", unknown)
    assert store.free_space(db_path) is None
    space.check_space(db_path, 1e12)  # no figure to refuse on
    commands.up(db_path, registry_of(migration(MID)), options=_opts())
    assert pm.status(db_path, None).state.current_version == 1700000000


# --- integrity ------------------------------------------------------------------------


def test_naming_only_files_the_database_does_not_have_reads_no_block(big_sst: Path) -> None:
    _damage_first_block(big_sst)
    (live,) = integrity.table_files(big_sst)
    assert integrity.check_tables(big_sst, only=["999999.sst"]) is None
    damage = integrity.check_tables(big_sst, only=[live.name])
    assert damage is not None and damage.file == live.name


def test_a_pickle_mode_database_is_read_whole_even_when_files_are_named(tmp_path: Path) -> None:
    db = create_database(tmp_path / "db", {f"k:{i:04d}": "v" * 200 for i in range(3000)}, raw=False)
    _damage_first_block(db)
    damage = integrity.check_tables(db, only=["999999.sst"])
    assert damage is not None
    assert damage.file == integrity.table_files(db)[0].name
    assert "block checksum mismatch" in damage.detail


def test_a_damaged_blob_file_is_found_by_reading_the_values(tmp_path: Path) -> None:
    path = tmp_path / "blobs"
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_enable_blob_files(True)
    options.set_min_blob_size(0)
    db = rocksdict.Rdict(str(path), options)
    for i in range(50):
        db[b"k%03d" % i] = bytes([i]) * 300
    db.flush()
    db.close()
    assert integrity.check_tables(path) is None
    (blob,) = path.glob("*.blob")
    _flip(blob, 200, 400)
    damage = integrity.check_tables(path)
    assert damage is not None and "Blob CRC mismatch" in damage.detail


@pytest.mark.parametrize("config", ["[]", '{"raw_mode": "yes"}', "{}"])
def test_a_rocksdict_config_that_does_not_say_the_key_mode_is_damage(
    db_path: Path, config: str
) -> None:
    (db_path / "rocksdict-config.json").write_text(config)
    damage = integrity.check_settings_files(db_path)
    assert damage == integrity.Damage(
        "rocksdict-config.json", "rocksdict-config.json does not say the key mode (raw_mode)"
    )


def test_an_options_file_that_cannot_be_read_is_damage(db_path: Path) -> None:
    assert integrity.check_settings_files(db_path) is None
    (db_path / "OPTIONS-999999").mkdir()
    damage = integrity.check_settings_files(db_path)
    assert damage == integrity.Damage(
        "OPTIONS-999999", "OPTIONS-999999 cannot be read (Is a directory)"
    )


# --- store ----------------------------------------------------------------------------


def test_a_damaged_first_block_stops_a_checked_scan_with_rocksdbs_error(big_sst: Path) -> None:
    _damage_first_block(big_sst)
    (sst,) = integrity.table_files(big_sst)
    db = store.open_database(big_sst, read_only=True)
    try:
        assert dict(db.items()) == {}  # RocksDB's own walk stops there, silently
        with pytest.raises(CorruptionError) as scan:
            list(store.checked_items(db, str(big_sst)))
        assert f"{sst} offset 0" in scan.value.message
        assert str(big_sst) in scan.value.message
        with pytest.raises(CorruptionError, match="block checksum mismatch"):
            store.is_empty(db, str(big_sst))
    finally:
        store.close_database(db)


def test_a_live_database_written_during_a_checked_scan_looks_truncated(db_path: Path) -> None:
    db = store.open_database(db_path, read_only=False)
    try:
        walk = store.checked_items(db, str(db_path))
        assert next(walk) == (b"seed", b"1")
        db.put(b"zz-later", b"2")  # after the walk's implicit snapshot
        with pytest.raises(CorruptionError) as info:
            next(walk)
        assert info.value.message == (
            f"a scan of {db_path} stopped early after key b'seed' with no error reported; "
            "the data may be damaged."
        )
    finally:
        store.close_database(db)


def test_pickle_mode_checked_scans_keep_to_their_bounds_type(tmp_path: Path) -> None:
    db_path = create_database(
        tmp_path / "db", {b"a:1": b"1", b"a:2": b"2", "text": "t", 7: "seven"}, raw=False
    )
    db = store.open_database(db_path, read_only=True)
    try:
        bounded = list(store.checked_items(db, str(db_path), start=b"a", end=b"b"))
        assert bounded == [(b"a:1", b"1"), (b"a:2", b"2")]
        onwards = dict(store.checked_items(db, str(db_path), start=b"a:2"))
        assert onwards == {b"a:2": b"2", "text": "t", 7: "seven"}
    finally:
        store.close_database(db)


def test_the_state_family_alone_does_not_make_a_database_hold_data(tmp_path: Path) -> None:
    db_path = create_database(tmp_path / "db")
    commands.up(db_path, registry_of(migration(MID)), options=_opts())
    assert pm.status(db_path, None).state.initialized
    db = store.open_database(db_path, read_only=True)
    try:
        assert STATE_CF in rocksdict.Rdict.list_cf(str(db_path))
        assert store.is_empty(db, str(db_path))
    finally:
        store.close_database(db)


def test_a_read_only_open_of_a_database_without_rocksdicts_config_writes_none(
    tmp_path: Path,
) -> None:
    db_path = create_database(tmp_path / "db", {b"key": b"value"})
    (db_path / "rocksdict-config.json").unlink()  # as a database made by another program
    assert integrity.check_settings_files(db_path) is None  # nothing to check it against
    db = store.open_database(db_path, read_only=True)
    try:
        assert db.get(b"key") == b"value"
    finally:
        store.close_database(db)
    assert not (db_path / "rocksdict-config.json").exists()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_shadows_are_not_swept_from_a_temporary_directory_that_cannot_be_listed(
    db_path: Path, tmpdir_here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmpdir_here / f"pebble-migrate-ro-{_dead_pid()}-x"
    stale.mkdir()
    _failing(
        monkeypatch,
        "scandir",
        lambda path=".": str(path) == str(tmpdir_here),
        OSError(errno.EIO, "Input/output error"),
    )
    assert contents(db_path) == {"default": {b"seed": b"1"}}
    assert stale.is_dir()
    monkeypatch.undo()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir_here))
    assert contents(db_path) == {"default": {b"seed": b"1"}}
    assert not stale.exists()  # once it can be listed, the dead process's shadow goes


def test_a_shadow_of_a_process_we_may_not_signal_is_left_alone(
    db_path: Path, tmpdir_here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = _dead_pid()
    theirs = tmpdir_here / f"pebble-migrate-ro-{other}-x"
    theirs.mkdir()
    _failing(
        monkeypatch,
        "kill",
        lambda pid, sig: pid == other,
        PermissionError(errno.EPERM, "Operation not permitted"),
    )
    assert contents(db_path) == {"default": {b"seed": b"1"}}
    assert theirs.is_dir()  # alive as far as we can tell, so not ours to remove


def test_our_own_errors_pass_through_translation_unchanged() -> None:
    error = StorageError("already ours")
    assert store.translate(error, "/db") is error


# --- views ----------------------------------------------------------------------------


APP = {b"app:%03d" % i: b"a" * 100 for i in range(100)}


def _state_db(path: Path, state: dict[bytes, bytes]) -> Path:
    """A raw database holding some app data and these keys in the state family (with
    padding, so each family's first block is a large one)."""
    create_database(path, APP)
    db = rocksdict.Rdict(str(path))
    try:
        db.create_column_family(STATE_CF, rocksdict.Options(raw_mode=True))
        cf = db.get_column_family(STATE_CF)
        for i in range(100):
            cf[b"padding:%03d" % i] = b"p" * 100
        for key, value in state.items():
            cf[key] = value
        del cf
    finally:
        db.close()
    return path


def _view_of(db_path: Path, scan: str = "default") -> Path:
    path = views.view_path(db_path, MID, "apply", scan)
    db = store.open_database(db_path, read_only=False)
    try:
        views.create_view(db, db_path, path)
    finally:
        store.close_database(db)
    return path


TOKEN = "ab" * 16


def test_a_view_holding_anything_but_regular_files_is_not_used(tmp_path: Path) -> None:
    db_path = _state_db(tmp_path / "db", {views.marker_key(MID, "apply", "default"): b"x"})
    path = _view_of(db_path)
    (path / "extra").mkdir()
    with pytest.raises(views.ViewMissing) as info:
        views.open_view(db_path, MID, "apply", "default", TOKEN, None)
    assert f"{path / 'extra'} is not a regular file" in info.value.message


@pytest.mark.parametrize("meta", [b"{not json", None], ids=["unreadable-meta", "no-meta"])
def test_a_view_without_a_readable_database_id_belongs_to_no_database(
    tmp_path: Path, meta: bytes | None
) -> None:
    state = {views.marker_key(MID, "apply", "default"): TOKEN.encode()}
    if meta is not None:
        state[META_KEY] = meta
    db_path = _state_db(tmp_path / "db", state)
    _view_of(db_path)
    with pytest.raises(views.ViewMissing) as info:
        views.open_view(db_path, MID, "apply", "default", TOKEN, "db-1")
    assert "it belongs to another run or another database" in info.value.message
    view, _ = views.open_view(db_path, MID, "apply", "default", TOKEN, None)
    store.close_database(view)  # the token matches, and neither names a database


def test_a_view_whose_marker_cannot_be_read_is_not_used(tmp_path: Path) -> None:
    db_path = _state_db(tmp_path / "db", {views.marker_key(MID, "apply", "default"): b"x"})
    path = _view_of(db_path)
    _damage_first_block(path)
    with pytest.raises(views.ViewMissing) as info:
        views.open_view(db_path, MID, "apply", "default", TOKEN, None)
    assert "it cannot be read: RocksDB reports corrupt data" in info.value.message
    assert contents(db_path)["default"] == APP  # the database's own files are intact


def test_a_linked_scans_directory_is_neither_swept_nor_followed(
    db_path: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    (outside / "1600000000_old").mkdir(parents=True)
    views.require_work_dir(db_path)
    views.scans_dir(db_path).symlink_to(outside)
    assert views.sweep(db_path, keep=set()) == []
    assert (outside / "1600000000_old").is_dir()


def test_dropping_the_views_of_a_linked_migration_removes_only_the_link(
    db_path: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("theirs")
    views.scans_dir(db_path).mkdir(parents=True)
    link = views.scans_dir(db_path) / MID
    link.symlink_to(outside)
    views.drop_views(db_path, MID)
    assert not os.path.lexists(link)
    assert (outside / "keep").read_text() == "theirs"


# --- archive --------------------------------------------------------------------------


@pytest.fixture
def backup(db_path: Path, tmp_path: Path) -> BackupInfo:
    """A directory backup of a database holding a few table files."""
    db = rocksdict.Rdict(str(db_path))
    try:
        for i in range(3):
            db[b"t:%d" % i] = b"x" * 1000
            db.flush()
    finally:
        db.close()
    return pm.create_backup(db_path, backup_dir=tmp_path / "backups")


def test_archiving_without_room_for_the_archive_is_refused(
    backup: BackupInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    nearly_full = shutil.disk_usage(backup.path)._replace(free=10)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: nearly_full)
    with pytest.raises(pm.InsufficientSpace) as info:
        archive.archive_backup(backup)
    assert f"archiving backup {backup.id}" in info.value.message
    assert load_backup(backup.path) == backup
    assert sorted(p.name for p in backup.path.parent.iterdir()) == [".checksums.json", backup.id]


@pytest.mark.parametrize(
    ("fault", "raised"),
    [
        (OSError(errno.EIO, "Input/output error"), BackupError),
        (KeyboardInterrupt(), KeyboardInterrupt),
    ],
    ids=["eio", "ctrl-c"],
)
def test_an_archive_whose_fsync_fails_is_removed_and_the_backup_kept(
    backup: BackupInfo, monkeypatch: pytest.MonkeyPatch, fault: BaseException, raised: type
) -> None:
    _failing(monkeypatch, "fsync", lambda fd: ".tar.gz-" in _fd_path(fd), fault)
    with pytest.raises(raised) as info:
        archive.archive_backup(backup)
    if isinstance(info.value, BackupError):
        assert info.value.message.startswith(f"cannot write under {backup.path.parent}: ")
        assert "fsync failed: Input/output error" in info.value.message
    assert load_backup(backup.path) == backup
    assert sorted(p.name for p in backup.path.parent.iterdir()) == [".checksums.json", backup.id]


def _rewrite(info: BackupInfo, edit: Callable[[list[tuple[str, bytes]]], None]) -> None:
    """Rewrite an archive with its members (name, data) edited; backup.json stays first."""
    with tarfile.open(info.path, "r:gz") as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]
    edit(members)
    with tarfile.open(info.path, "w:gz") as tar:
        for name, data in members:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


@pytest.fixture
def packed(backup: BackupInfo) -> BackupInfo:
    """The backup, packed into a .tar.gz archive."""
    info = archive.archive_backup(backup)
    archive.verify_archive(info)
    return info


def _table(info: BackupInfo) -> str:
    return next(f.name for f in info.files if f.name.endswith(".sst"))


def test_an_archive_member_outside_the_database_is_refused(packed: BackupInfo) -> None:
    _rewrite(packed, lambda members: members.append(("notes.txt", b"hello")))
    with pytest.raises(pm.NotABackup) as info:
        archive.verify_archive(packed)
    assert info.value.message == f"{packed.path} is not a backup: unexpected entry 'notes.txt'."


def test_an_archive_member_that_appears_twice_is_refused(packed: BackupInfo) -> None:
    name = _table(packed)
    _rewrite(
        packed, lambda members: members.extend(m for m in list(members) if m[0] == f"db/{name}")
    )
    with pytest.raises(pm.BackupCorrupt) as info:
        archive.verify_archive(packed)
    assert (
        info.value.message == f"backup {packed.id} is damaged: {name} appears twice in the archive."
    )


def test_an_archive_member_of_another_size_than_recorded_is_refused(packed: BackupInfo) -> None:
    name = _table(packed)
    size = next(f.size for f in packed.files if f.name == name)

    def shorten(members: list[tuple[str, bytes]]) -> None:
        members[:] = [(n, d[:-1] if n == f"db/{name}" else d) for n, d in members]

    _rewrite(packed, shorten)
    with pytest.raises(pm.BackupCorrupt) as info:
        archive.verify_archive(packed)
    assert info.value.message == (
        f"backup {packed.id} is damaged: {name} has {size - 1} bytes, {size} recorded."
    )


def test_an_archive_missing_a_recorded_file_is_refused(packed: BackupInfo, tmp_path: Path) -> None:
    name = _table(packed)
    _rewrite(
        packed, lambda members: members.remove(next(m for m in members if m[0] == f"db/{name}"))
    )
    with pytest.raises(pm.BackupCorrupt) as info:
        archive.verify_archive(packed)
    assert info.value.message == f"backup {packed.id} is damaged: {name} is missing."
    with pytest.raises(pm.BackupCorrupt, match="is missing"):
        archive.extract_archive(packed, tmp_path / "restored")


# --- catalog --------------------------------------------------------------------------

FIRST, SECOND = "1700000000_first", "1700000100_second"


def test_the_backup_to_restore_is_the_newest_taken_before_the_migration_began(
    db_path: Path,
) -> None:
    reg = registry_of(migration(FIRST), migration(SECOND, FIRST))
    commands.up(db_path, reg, target=FIRST, options=_opts())
    before = pm.create_backup(db_path, description="before second")
    commands.up(db_path, reg, options=_opts())
    after = pm.create_backup(db_path, description="after second")
    database_id = catalog.database_id_of(db_path)
    assert database_id is not None
    assert [b.id for b in pm.list_backups(db_path)] == [before.id, after.id]
    found = catalog.backup_before(db_path, None, SECOND, database_id)
    assert found is not None and found.id == before.id
    hint = catalog.resume_impossible_hint(db_path, None, SECOND, "pm", database_id)
    assert f"`pm backup restore {before.id} --force`, then `pm up`" in hint


def test_a_backup_directory_that_cannot_be_listed_leaves_the_advice_general(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = pm.create_backup(db_path)
    root = info.path.parent
    _failing(monkeypatch, "listdir", lambda path=".": Path(path) == root, OSError(errno.EIO, "EIO"))
    database_id = catalog.database_id_of(db_path)
    assert catalog.backup_before(db_path, None, MID, database_id) is None
    hint = catalog.resume_impossible_hint(db_path, None, MID, "pm", database_id)
    assert f"restore a backup taken before {MID} began (`pm backup list`), then `pm up`" in hint
    assert catalog.damage_hint(db_path, None, "000009.sst", "pm") == (
        f"There is no backup of it in {root}. Check the disk; restore from a copy kept "
        "elsewhere, if any."
    )


def test_listing_backups_needs_a_database_or_a_directory() -> None:
    with pytest.raises(ValueError, match="give db_path or backup_dir"):
        pm.list_backups()


def test_a_listing_of_a_directory_alone_does_not_say_what_is_shared(
    db_path: Path, tmp_path: Path
) -> None:
    info = pm.create_backup(db_path, backup_dir=tmp_path / "backups")
    (by_dir,) = pm.list_backups(backup_dir=tmp_path / "backups")
    assert by_dir.id == info.id and by_dir.shares_live is None
    (by_db,) = pm.list_backups(db_path, backup_dir=tmp_path / "backups")
    assert by_db.shares_live is True


def test_the_backups_of_a_database_that_is_gone_share_nothing_with_it(
    db_path: Path, tmp_path: Path
) -> None:
    info = pm.create_backup(db_path, backup_dir=tmp_path / "backups")
    shutil.rmtree(db_path)
    assert catalog.database_id_of(db_path) is None
    (found,) = pm.list_backups(db_path, backup_dir=tmp_path / "backups")
    assert found.id == info.id and found.shares_live is False


def test_a_database_whose_state_cannot_be_read_has_no_database_id(tmp_path: Path) -> None:
    db_path = _state_db(tmp_path / "db", {META_KEY: b"{not json"})
    assert catalog.database_id_of(db_path) is None


def test_damage_in_no_named_file_gets_the_general_advice(db_path: Path) -> None:
    assert catalog.damage_hint(db_path, None, None, "pm") == (
        "Check the disk, then restore a backup (`pm backup list`)."
    )


def test_no_kept_databases_are_listed_beside_a_missing_directory(tmp_path: Path) -> None:
    assert catalog.kept_databases(tmp_path / "nowhere" / "db") == []


def _info(day: int) -> BackupInfo:
    return BackupInfo(
        id=f"b{day}",
        path=Path(f"/backups/b{day}"),
        created_at=datetime(2026, 1, day, tzinfo=UTC),
        description="",
        database_path="/db",
        database_id=None,
        version=0,
        status="clean",
        trigger=None,
    )


def test_cleanup_guards_no_extra_backup_when_none_predates_the_last_migration() -> None:
    backups = [_info(2), _info(3), _info(4)]
    now = datetime(2026, 2, 1, tzinfo=UTC)

    def select(last: datetime) -> catalog.CleanupResult:
        return catalog.select_for_cleanup(
            backups, older_than=None, keep=1, last_migration_at=last, force=False, now=now
        )

    early = select(datetime(2026, 1, 1, tzinfo=UTC))
    assert [b.id for b in early.removed] == ["b2", "b3"] and early.protected == []
    later = select(datetime(2026, 1, 3, 12, tzinfo=UTC))
    assert [b.id for b in later.removed] == ["b2"] and [b.id for b in later.protected] == ["b3"]


def test_a_kept_database_replaced_by_a_link_is_neither_followed_nor_removed(
    tmp_path: Path,
) -> None:
    target = create_database(tmp_path / "elsewhere", {b"k": b"v"})
    link = tmp_path / "db.pre-restore-20260101T000000Z"
    link.symlink_to(target)
    kept = catalog.KeptDatabase(link, datetime(2026, 1, 1, tzinfo=UTC))
    assert catalog._remove_kept(kept) is False
    assert link.is_symlink() and contents(target)["default"] == {b"k": b"v"}


# --- context: outside a run (validate) ------------------------------------------------


def _problems(db_path: Path, validate: Callable[[Any], Any] | None) -> list[str]:
    db = store.open_database(db_path, read_only=True)
    try:
        return validation_problems(db, migration(MID, validate=validate))
    finally:
        store.close_database(db)


def test_a_migration_without_validate_has_no_problems(db_path: Path) -> None:
    assert _problems(db_path, None) == []


async def _later(ctx: Any) -> bool:
    return False


def _hands_back_a_coroutine(ctx: Any) -> Any:
    return _later(ctx)  # a plain function, so the migration loads


@pytest.mark.parametrize(
    ("validate", "problems"),
    [
        (lambda ctx: False, ["validate() returned False"]),
        (lambda ctx: True, []),
        (lambda ctx: None, []),
        (lambda ctx: ("a", 2), ["a", "2"]),
        (_hands_back_a_coroutine, ["validate() returned a coroutine instead of running"]),
        (lambda ctx: int("x"), ["ValueError: invalid literal for int() with base 10: 'x'"]),
        (lambda ctx: ctx.db.unwrap(), ["validate() must not write; it only checks the data."]),
        (
            lambda ctx: ctx.scan(name="no spaces"),
            ["scan name 'no spaces' must be 1-64 letters, digits, '_', '.', '-'."],
        ),
    ],
    ids=["false", "true", "none", "tuple", "coroutine", "raises", "unwrap", "bad-scan-name"],
)
def test_what_validate_returns_or_raises_becomes_its_problems(
    db_path: Path, validate: Callable[[Any], Any], problems: list[str]
) -> None:
    assert _problems(db_path, validate) == problems


def test_an_interruption_in_validate_is_raised_on(db_path: Path) -> None:
    def interrupted(ctx: Any) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _problems(db_path, interrupted)


def test_validate_may_read_through_ctx_db_and_report_progress(db_path: Path) -> None:
    seen: list[Any] = []

    def reads(ctx: Any) -> list[str]:
        ctx.progress(1, 2)  # no run to report to, and no signal to stop at
        seen.append((ctx.db[b"seed"], b"seed" in ctx.db, b"nope" in ctx.db))
        return []

    assert _problems(db_path, reads) == []
    assert seen == [(b"1", True, False)]


def test_a_scan_left_open_by_validate_is_closed_when_it_returns(tmp_path: Path) -> None:
    db_path = create_database(tmp_path / "db", KEYS)
    held: list[Iterator[Any]] = []

    def peeks(ctx: Any) -> list[str]:
        scan = ctx.scan(prefix=b"k:")
        held.append(scan)
        next(scan)
        return []

    assert _problems(db_path, peeks) == []
    assert inspect.getgeneratorstate(held[0]) == inspect.GEN_CLOSED  # type: ignore[arg-type]


def test_pickle_mode_scans_need_bounds_that_end(tmp_path: Path) -> None:
    db_path = create_database(tmp_path / "db", {"k": "v"}, raw=False)
    top = chr(0x10FFFF)
    assert _problems(db_path, lambda ctx: ctx.scan(prefix=top * 2)) == [
        f"prefix {top * 2!r} has no end in a pickle-mode database."
    ]
    assert _problems(db_path, lambda ctx: ctx.scan(start="k")) == [
        "in a pickle-mode database a scan with start= needs end= (or use prefix=): keys of "
        "other types follow the range on disk."
    ]


def test_a_read_from_a_closed_database_fails_the_run_with_the_first_error(db_path: Path) -> None:
    db = store.open_database(db_path, read_only=False)
    ctx = MigrationContext(db, migration(MID), run=None)
    db.close()
    with pytest.raises(StorageError) as first:
        ctx.get(b"seed")
    assert first.value.message == (
        f"the database at {db_path} was closed while pebble-migrate was using it."
    )
    with pytest.raises(StorageError) as second:
        ctx.get(b"seed")
    assert second.value is not first.value and ctx.failure is first.value
    ctx.release()


def test_a_key_of_the_wrong_type_is_the_migrations_own_error(db_path: Path) -> None:
    db = store.open_database(db_path, read_only=True)
    try:
        ctx = MigrationContext(db, migration(MID), run=None)
        with pytest.raises(KeyError, match="raw mode only support bytes"):
            ctx.get("seed")
        assert ctx.failure is None
        ctx.release()
    finally:
        store.close_database(db)


# --- context: in a run ----------------------------------------------------------------


def test_a_resumed_run_does_not_repeat_a_delete_made_before_its_scan(tmp_path: Path) -> None:
    db_path = create_database(tmp_path / "db", {**KEYS, b"gone": b"old"})
    loose: list[tuple[str, str, int]] = []

    def up(ctx: Any) -> None:
        record = ctx.record
        loose.append((record.migration_id, record.action, record.loose))
        ctx.delete(b"gone")
        for key, value in ctx.scan(prefix=b"k:"):
            if key == b"k:150" and len(loose) == 1:
                raise RuntimeError("the first run fails halfway")
            ctx.put(key, value + b"+")

    reg = registry_of(migration(MID, up=up))
    with pytest.raises(pm.MigrationFailed):
        commands.up(db_path, reg, options=_opts())
    assert b"gone" not in contents(db_path)["default"]  # committed with the scan's start
    pm.force_clean(db_path)
    db = rocksdict.Rdict(str(db_path))
    db[b"gone"] = b"back"  # written again between the runs
    db.close()
    commands.up(db_path, reg, options=_opts())
    assert loose == [(MID, "apply", 0), (MID, "apply", 1)]
    assert contents(db_path)["default"] == {
        **{k: v + b"+" for k, v in KEYS.items()},
        b"gone": b"back",  # the delete was not staged a second time
    }


def test_direct_writes_through_ctx_db_are_made_and_noted(db_path: Path) -> None:
    noted: list[bool] = []

    def up(ctx: Any) -> None:
        del ctx.db[b"seed"]
        ctx.db.unwrap()[b"direct"] = b"1"
        noted.append(ctx.wrote_directly)

    commands.up(db_path, registry_of(migration(MID, up=up)), options=_opts())
    assert noted == [True]
    assert contents(db_path)["default"] == {b"direct": b"1"}


def test_a_write_between_opening_a_scan_and_walking_it_is_committed(tmp_path: Path) -> None:
    db_path = create_database(tmp_path / "db", KEYS)

    def up(ctx: Any) -> None:
        scan = ctx.scan(prefix=b"k:")
        ctx.put(b"between", b"1")
        for key, value in scan:
            ctx.put(key, value + b"+")

    commands.up(db_path, registry_of(migration(MID, up=up)), options=_opts())
    assert contents(db_path)["default"] == {
        **{k: v + b"+" for k, v in KEYS.items()},
        b"between": b"1",
    }


def test_a_pickle_mode_scan_stops_at_keys_of_another_type(tmp_path: Path) -> None:
    db_path = create_database(
        tmp_path / "db", {b"a:1": b"1", b"a:2": b"2", "text": "t", 7: "seven"}, raw=False
    )
    seen: list[Any] = []

    def up(ctx: Any) -> None:
        for key, value in ctx.scan(start=b"a", end=b"b"):
            seen.append(key)
            ctx.put(key, value + b"+")

    commands.up(db_path, registry_of(migration(MID, up=up)), options=_opts())
    assert seen == [b"a:1", b"a:2"]
    assert contents(db_path)["default"] == {b"a:1": b"1+", b"a:2": b"2+", "text": "t", 7: "seven"}


def test_progress_is_reported_at_most_every_quarter_second(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(context.time, "monotonic", lambda: clock[0])
    events: list[Event] = []

    def up(ctx: Any) -> None:
        ctx.progress(1, 3)
        ctx.progress(2, 3)  # too soon after the last report
        clock[0] += context.PROGRESS_EVERY_S
        ctx.progress(3)

    commands.up(db_path, registry_of(migration(MID, up=up)), options=_opts(reporter=events.append))
    shown = [e.message for e in events if e.kind == "progress"]
    assert shown == [f"{MID}: 1 of ~3", f"{MID}: 3"]


def test_progress_is_a_stop_point_when_a_signal_came(db_path: Path) -> None:
    def up(ctx: Any) -> None:
        ctx.put(b"staged", b"1")
        signal.raise_signal(signal.SIGINT)
        ctx.progress(1)

    with pytest.raises(pm.MigrationInterrupted) as info:
        commands.up(
            db_path,
            registry_of(migration(MID, up=up)),
            options=commands.RunOptions(policy=ChunkPolicy(10), handle_signals=True),
        )
    assert info.value.message == f"interrupted {MID} before its work was committed"
    assert b"staged" not in contents(db_path)["default"]


def test_a_large_scan_is_counted_by_a_child_without_waiting_for_it(tmp_path: Path) -> None:
    many = {b"n:%06d" % i: b"" for i in range(counting.INLINE_LIMIT + 2_000)}
    db_path = create_database(tmp_path / "db", many)
    events: list[Event] = []

    def up(ctx: Any) -> None:
        for key, _ in ctx.scan(prefix=b"n:"):
            if key == b"n:050000":
                ctx.put(b"done", b"1")

    commands.up(
        db_path,
        registry_of(migration(MID, up=up)),
        options=commands.RunOptions(
            policy=ChunkPolicy(5_000), handle_signals=False, reporter=events.append
        ),
    )
    last = [e for e in events if e.kind == "progress"][-1]
    assert last.data["done"] == len(many)
    assert last.data["total"] in (None, len(many))  # the child may still be counting
    assert contents(db_path)["default"][b"done"] == b"1"
