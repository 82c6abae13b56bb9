"""Backups on real RocksDB directories: create, metadata, ids, archives, listing, cleanup.

The helpers at the top are shared with the restore, CLI and crash tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import rocksdict

from pebble_migrate import Registry, StartupOptions, check_and_run_startup_migrations
from pebble_migrate.archive import verify_archive
from pebble_migrate.backup import (
    BackupCorrupt,
    BackupInfo,
    NotABackup,
    backup_dir_for,
    create_backup,
    load_backup,
    verify_backup,
)
from pebble_migrate.catalog import cleanup_backups, list_backups
from pebble_migrate.commands import RunOptions, up
from pebble_migrate.state import read_state
from pebble_migrate.testing import contents
from tests.conftest import migration, put_items, registry_of, tmpfs

T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
CLOCK_USERS = (
    "pebble_migrate.units",
    "pebble_migrate.backup",
    "pebble_migrate.catalog",
    "pebble_migrate.restore",
    "pebble_migrate.executor",
    "pebble_migrate.commands",
    "pebble_migrate.cli.render",
)


# --- shared helpers -------------------------------------------------------------------


def filled_db(
    path: Path, *, flushes: int = 4, per_flush: int = 40, tag: bytes = b"k", size: int = 200
) -> Path:
    """Create (or extend) a raw-mode database holding random values in `flushes` SSTs."""
    db = rocksdict.Rdict(str(path), rocksdict.Options(raw_mode=True))
    try:
        for i in range(flushes):
            for j in range(per_flush):
                db[b"%s-%02d-%04d" % (tag, i, j)] = os.urandom(size)
            db.flush()
    finally:
        db.close()
    return path


def initialize(path: Path) -> str:
    """Give the database its migration state (and so its database id); return the id."""
    up(path, Registry([]), options=RunOptions(handle_signals=False, check_space=False))
    found = database_id(path)
    assert found is not None
    return found


def database_id(path: Path) -> str | None:
    """Return the database id recorded in the state of the database at `path`."""
    db = rocksdict.Rdict(str(path), access_type=rocksdict.AccessType.read_only())
    try:
        return read_state(db).database_id
    finally:
        db.close()


def put(path: Path, items: dict[bytes, bytes]) -> None:
    """Write keys into the database at `path` (raw mode)."""
    db = rocksdict.Rdict(str(path))
    try:
        for key, value in items.items():
            db[key] = value
        db.flush()
    finally:
        db.close()


def tree(path: Path) -> list[str]:
    """Every entry below `path` as a sorted relative path ([] when `path` is missing)."""
    if not path.exists():
        return []
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def dead_pid() -> int:
    """Return the pid of a process that has exited (and been reaped)."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(child.stdout)


class Clock:
    """The one clock tests may replace, patched where each module imported it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = T0
        for module in CLOCK_USERS:
            monkeypatch.setattr(f"{module}.utc_now", self)

    def __call__(self) -> datetime:
        return self.now

    def at(self, moment: datetime) -> Clock:
        self.now = moment
        return self


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A fixed clock (T0) that tests move by assigning `clock.now`."""
    return Clock(monkeypatch)


def backups_at(db: Path, clock: Clock, moments: list[datetime]) -> list[BackupInfo]:
    """Take one backup at each moment; return them in order."""
    taken = []
    for moment in moments:
        clock.now = moment
        taken.append(create_backup(db, description=f"at {moment.isoformat()}"))
    return taken


# --- create ---------------------------------------------------------------------------


def test_create_writes_checkpoint_and_metadata(tmp_path: Path, clock: Clock) -> None:
    db = filled_db(tmp_path / "db")
    dbid = initialize(db)
    before = contents(db, state=True)

    info = create_backup(db, description="before deploy")

    assert info.id == "20240301T120000Z"
    assert info.path == tmp_path / "db.backups" / info.id
    meta = json.loads((info.path / "backup.json").read_text())
    assert meta["format"] == 1
    assert meta["id"] == info.id
    assert datetime.fromisoformat(meta["created_at"]) == T0
    assert meta["description"] == "before deploy"
    assert meta["database_path"] == str(db.resolve())
    assert meta["database_id"] == dbid
    assert meta["version"] == 0
    assert meta["status"] == "clean"
    assert meta["trigger"] is None
    on_disk = sorted(p.name for p in (info.path / "db").iterdir())
    assert [f["name"] for f in meta["files"]] == on_disk
    for f in meta["files"]:
        data = (info.path / "db" / f["name"]).read_bytes()
        assert f["size"] == len(data)
        assert f["sha256"] == hashlib.sha256(data).hexdigest()
    assert "CURRENT" in on_disk
    assert sum(name.endswith(".sst") for name in on_disk) >= 4
    # The checkpoint opens on its own and holds exactly the data, state included.
    assert contents(info.path / "db", state=True) == before
    # Hard links, not copies: the cost does not grow with the data.
    for name in on_disk:
        if name.endswith(".sst"):
            assert (info.path / "db" / name).stat().st_nlink >= 2
    assert sorted(os.listdir(tmp_path / "db.backups")) == [".checksums.json", info.id]
    verify_backup(info)


def test_ids_sort_by_time_and_never_collide(tmp_path: Path, clock: Clock) -> None:
    db = filled_db(tmp_path / "db", flushes=1)
    moments = [
        T0,
        T0 + timedelta(milliseconds=300),  # same second
        T0 + timedelta(milliseconds=600),  # same second again
        T0 + timedelta(seconds=1),
        T0 + timedelta(days=1),
        T0 + timedelta(days=40),
    ]
    taken = backups_at(db, clock, moments)
    ids = [b.id for b in taken]
    assert ids == [
        "20240301T120000Z",
        "20240301T120000Z-02",
        "20240301T120000Z-03",
        "20240301T120001Z",
        "20240302T120000Z",
        "20240410T120000Z",
    ]
    assert sorted(ids) == ids  # `ls` order is time order
    listed = list_backups(db)
    assert [b.id for b in listed] == ids
    assert [b.created_at for b in listed] == moments


def test_backup_of_a_database_never_migrated(tmp_path: Path) -> None:
    db = filled_db(tmp_path / "db", flushes=1)
    info = create_backup(db)
    assert info.database_id is None
    assert info.version == 0
    assert info.status == "clean"
    assert info.description == "manual backup"
    assert contents(info.path / "db") == contents(db)


def test_backup_dir_option_and_default(tmp_path: Path) -> None:
    db = filled_db(tmp_path / "db", flushes=1)
    assert backup_dir_for(db) == tmp_path / "db.backups"
    assert backup_dir_for(str(db) + "/") == tmp_path / "db.backups"
    elsewhere = tmp_path / "vault" / "nested"
    info = create_backup(db, backup_dir=elsewhere)
    assert info.path.parent == elsewhere
    assert not (tmp_path / "db.backups").exists()
    assert [b.id for b in list_backups(db, backup_dir=elsewhere)] == [info.id]
    assert list_backups(db) == []


def test_backup_on_another_filesystem_copies_the_files(tmp_path: Path) -> None:
    db = filled_db(tmp_path / "db", flushes=2)
    with tmpfs(tmp_path / "other", "32m") as other:
        info = create_backup(db, backup_dir=other / "backups")
        for f in info.files:
            assert (info.path / "db" / f.name).stat().st_nlink == 1
        assert contents(info.path / "db") == contents(db)
        verify_backup(info)


def test_directory_without_valid_metadata_is_not_a_backup(tmp_path: Path, clock: Clock) -> None:
    db = filled_db(tmp_path / "db", flushes=1)
    real = create_backup(db)
    root = real.path.parent
    (root / "20240101T000000Z" / "db").mkdir(parents=True)  # no backup.json at all
    (root / "20240102T000000Z").mkdir()
    (root / "20240102T000000Z" / "backup.json").write_text("{")
    (root / "20240103T000000Z").mkdir()
    (root / "20240103T000000Z" / "backup.json").write_text(json.dumps({"format": 1, "id": "x"}))
    (root / "20240104T000000Z").mkdir()
    meta = json.loads((real.path / "backup.json").read_text())
    (root / "20240104T000000Z" / "backup.json").write_text(json.dumps({**meta, "format": 99}))

    assert [b.id for b in list_backups(db)] == [real.id]
    reasons = {
        "20240101T000000Z": "has no backup.json",
        "20240102T000000Z": "backup.json is unreadable",
        "20240103T000000Z": "backup.json is malformed (",
        "20240104T000000Z": "unknown format 99",
    }
    for name, reason in reasons.items():
        with pytest.raises(NotABackup, match="is not a backup") as caught:
            load_backup(root / name)
        assert reason in caught.value.message


def test_leftover_temporary_directories_are_swept(tmp_path: Path, clock: Clock) -> None:
    db = filled_db(tmp_path / "db", flushes=1)
    root = tmp_path / "db.backups"
    dead = dead_pid()
    (root / f".tmp-20240101T000000Z-{dead}" / "db").mkdir(parents=True)
    (root / f".tmp-20240101T000000Z-{dead}" / "db" / "000009.sst").write_bytes(b"half")
    (root / f".tmp-20240102T000000Z.tar.gz-{dead}").write_bytes(b"half an archive")
    mine = root / f".tmp-20240103T000000Z-{os.getpid()}"  # a live process: not touched
    mine.mkdir()

    info = create_backup(db)

    assert sorted(os.listdir(root)) == [".checksums.json", mine.name, info.id]
    (root / f".tmp-20240104T000000Z-{dead}").mkdir()
    cleanup_backups(db, keep=5)
    assert sorted(os.listdir(root)) == [".checksums.json", mine.name, info.id]


def test_checksums_are_cached_by_inode_and_verification_rereads(
    tmp_path: Path, clock: Clock
) -> None:
    db = filled_db(tmp_path / "db")
    first = create_backup(db)
    cache_path = tmp_path / "db.backups" / ".checksums.json"
    cache = json.loads(cache_path.read_text())
    recorded = {f.name: f.sha256 for f in first.files}
    for name, digest in recorded.items():
        st = (first.path / "db" / name).stat()
        key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
        assert (key in cache) == name.endswith(".sst")
        if key in cache:
            assert cache[key] == {"sha256": digest, "checked": True}

    # The second backup takes the table files' sums from the cache (it does not read
    # them again): a poisoned cache shows up in its metadata...
    cache_path.write_text(json.dumps(dict.fromkeys(cache, "0" * 64)))
    clock.now = T0 + timedelta(minutes=1)
    second = create_backup(db)
    shared = [f for f in second.files if f.name.endswith(".sst") and f.name in recorded]
    assert shared
    assert all(f.sha256 == "0" * 64 for f in shared)
    for f in second.files:  # files that are not tables are always read
        if not f.name.endswith(".sst"):
            data = (second.path / "db" / f.name).read_bytes()
            assert f.sha256 == hashlib.sha256(data).hexdigest()
    # ...and verification, which always rereads, catches it.
    with pytest.raises(BackupCorrupt, match=r"\.sst does not match its recorded checksum"):
        verify_backup(second)
    verify_backup(first)


def test_compressed_backup_is_a_single_archive(tmp_path: Path, clock: Clock) -> None:
    db = filled_db(tmp_path / "db")
    initialize(db)
    info = create_backup(db, description="to ship", compress=True)

    assert info.archive
    assert info.path == tmp_path / "db.backups" / "20240301T120000Z.tar.gz"
    assert sorted(os.listdir(tmp_path / "db.backups")) == [".checksums.json", info.path.name]
    with tarfile.open(info.path, "r:gz") as tar:
        names = tar.getnames()
    assert names[0] == "backup.json"
    assert sorted(names[1:]) == sorted(f"db/{f.name}" for f in info.files)
    loaded = load_backup(info.path)
    assert (loaded.id, loaded.description, loaded.archive) == (info.id, "to ship", True)
    assert loaded.files == info.files
    [listed] = list_backups(db)
    assert listed.summary()["archive"] is True
    assert listed.size_bytes == sum(f.size for f in info.files) > 0
    verify_archive(loaded)


def test_summary_has_the_listed_fields(tmp_path: Path, clock: Clock) -> None:
    db = filled_db(tmp_path / "db", flushes=1)
    initialize(db)
    info = create_backup(db, description="d", trigger="1700000000_x")
    summary = info.summary()
    assert summary == {
        "id": info.id,
        "path": str(info.path),
        "created_at": T0.isoformat(),
        "description": "d",
        "version": 0,
        "status": "clean",
        "size_bytes": info.size_bytes,
        "trigger": "1700000000_x",
        "archive": False,
        "partial": {},
        "mode": "link",
        "shares_files_with_database": None,
    }
    assert info.size_bytes == sum((info.path / "db" / f.name).stat().st_size for f in info.files)


# --- automatic backups through the startup API --------------------------------------


ADD_X = "1700000000_add_x"


def _startup(db_path: Path, registry: Registry, *, backup_enabled: bool) -> None:
    db = rocksdict.Rdict(str(db_path))
    try:
        check_and_run_startup_migrations(
            db,
            db_path,
            StartupOptions(
                run_migrations=True,
                backup_enabled=backup_enabled,
                registry=registry,
                handle_signals=False,
            ),
        )
    finally:
        db.close()


def test_startup_takes_a_backup_before_running_when_enabled(tmp_path: Path, clock: Clock) -> None:
    db = filled_db(tmp_path / "db", flushes=1)
    before = contents(db)
    registry = registry_of(migration(ADD_X, up=put_items({b"x": b"1"})))

    _startup(db, registry, backup_enabled=True)

    [info] = list_backups(db)
    assert info.description == "before up to 1700000000: 1 migration"
    assert info.trigger == ADD_X
    assert info.version == 0
    assert info.database_id == database_id(db)
    assert contents(info.path / "db") == before
    assert contents(db)["default"][b"x"] == b"1"

    _startup(db, registry, backup_enabled=True)  # nothing pending: no backup
    assert len(list_backups(db)) == 1


def test_startup_takes_no_backup_unless_enabled(tmp_path: Path) -> None:
    db = filled_db(tmp_path / "db", flushes=1)
    registry = registry_of(migration(ADD_X, up=put_items({b"x": b"1"})))
    _startup(db, registry, backup_enabled=False)
    assert contents(db)["default"][b"x"] == b"1"
    assert not (tmp_path / "db.backups").exists()


# --- cleanup --------------------------------------------------------------------------

AGES = [
    timedelta(days=40),
    timedelta(days=20),
    timedelta(days=10),
    timedelta(days=2),
    timedelta(hours=1),
]


@pytest.mark.parametrize(
    ("older_than", "keep", "gone"),
    [
        (timedelta(days=30), None, [0]),
        (timedelta(days=7), None, [0, 1, 2]),
        (timedelta(hours=24), None, [0, 1, 2, 3]),
        (timedelta(weeks=2), None, [0, 1]),
        (None, 2, [0, 1, 2]),
        (None, 5, []),
        (None, 9, []),
        (timedelta(days=15), 4, [0]),  # old enough, and not among the newest 4
        (timedelta(hours=24), 2, [0, 1, 2]),
        (timedelta(days=1), 1, [0, 1, 2, 3]),
    ],
)
def test_cleanup_by_age_and_count(
    tmp_path: Path,
    clock: Clock,
    older_than: timedelta | None,
    keep: int | None,
    gone: list[int],
) -> None:
    db = filled_db(tmp_path / "db", flushes=1)
    taken = backups_at(db, clock, [T0 - age for age in AGES])
    clock.now = T0
    expected_gone = [taken[i].id for i in gone]
    expected_left = [b.id for b in taken if b.id not in expected_gone]

    dry = cleanup_backups(db, older_than=older_than, keep=keep, dry_run=True)
    assert [b.id for b in dry.removed] == expected_gone
    assert [b.id for b in list_backups(db)] == [b.id for b in taken]  # dry run: all still there

    result = cleanup_backups(db, older_than=older_than, keep=keep)
    assert [b.id for b in result.removed] == expected_gone
    assert [b.id for b in list_backups(db)] == expected_left
    assert sorted(p for p in os.listdir(tmp_path / "db.backups") if not p.startswith(".")) == (
        expected_left
    )


def test_cleanup_needs_an_age_or_a_count(tmp_path: Path) -> None:
    db = filled_db(tmp_path / "db", flushes=1)
    create_backup(db)
    with pytest.raises(ValueError, match="give older_than, keep, or both"):
        cleanup_backups(db)
    assert len(list_backups(db)) == 1


def test_cleanup_keeps_the_newest_backup_unless_forced(tmp_path: Path, clock: Clock) -> None:
    db = filled_db(tmp_path / "db", flushes=1)
    taken = backups_at(db, clock, [T0 - timedelta(days=d) for d in (40, 35, 31)])
    clock.now = T0

    result = cleanup_backups(db, older_than=timedelta(days=30))
    assert [b.id for b in result.removed] == [taken[0].id, taken[1].id]
    assert [b.id for b in result.protected] == [taken[2].id]
    assert [b.id for b in list_backups(db)] == [taken[2].id]

    forced = cleanup_backups(db, older_than=timedelta(days=30), force=True)
    assert [b.id for b in forced.removed] == [taken[2].id]
    assert list_backups(db) == []


def test_cleanup_keeps_the_backup_that_undoes_the_last_migration(
    tmp_path: Path, clock: Clock
) -> None:
    db = filled_db(tmp_path / "db", flushes=1)
    registry = registry_of(migration(ADD_X, up=put_items({b"x": b"1"})))
    old = backups_at(db, clock, [T0 - timedelta(days=40), T0 - timedelta(days=30)])
    clock.now = T0 - timedelta(days=30) + timedelta(minutes=1)
    up(db, registry, options=RunOptions(handle_signals=False, check_space=False))
    later = backups_at(db, clock, [T0 - timedelta(days=20), T0 - timedelta(days=10)])
    clock.now = T0

    result = cleanup_backups(db, older_than=timedelta(days=7))

    assert [b.id for b in result.removed] == [old[0].id, later[0].id]
    assert [b.id for b in result.protected] == [old[1].id, later[1].id]
    assert [b.id for b in list_backups(db)] == [old[1].id, later[1].id]


def test_cleanup_removes_archives_too(tmp_path: Path, clock: Clock) -> None:
    db = filled_db(tmp_path / "db", flushes=1)
    clock.now = T0 - timedelta(days=9)
    archived = create_backup(db, compress=True)
    clock.now = T0 - timedelta(days=1)
    create_backup(db)
    clock.now = T0
    result = cleanup_backups(db, older_than=timedelta(days=7))
    assert [b.id for b in result.removed] == [archived.id]
    assert not archived.path.exists()
