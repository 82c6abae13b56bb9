"""The corruption catalogue: each kind of damage, in the live database and in a backup,
is detected, named, and met with the way out; nothing hides it and nothing restores a
backup that was not verified.

`validate --deep` reads everything back (every table file's blocks, the write-ahead log
with no damaged record tolerated, every state record); `backup verify` and every restore
check a backup's sums and its table files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pebble_migrate.backup import create_backup
from pebble_migrate.integrity import table_files
from pebble_migrate.state import META_KEY
from pebble_migrate.store import STATE_CF
from pebble_migrate.testing import create_database
from tests.conftest import Invoke, snapshot, write_migration

DOCUMENTED = {0, 1, 2, 3, 4, 5, 6, 7}
PLUS = 'def up(ctx):\n    for k, v in ctx.scan(prefix=b"k:"):\n        ctx.put(k, v + b"+")\n'

# A process that writes (synced) and dies by SIGKILL, so its writes stay in the WAL.
WRITER = """
import os, signal, sys, rocksdict
db = rocksdict.Rdict(sys.argv[1])
sync = rocksdict.WriteOptions()
sync.sync = True
batch = rocksdict.WriteBatch(raw_mode=True)
for i in range(200):
    batch.put(b"w:%04d" % i, b"x" * 100)
db.write(batch, sync)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture
def live(tmp_path: Path, invoke: Invoke, migrations_dir: Path) -> Path:
    """A migrated database with flushed table files and synced writes left in its WAL."""
    db = create_database(tmp_path / "db", {b"k:%04d" % i: b"v" * 200 for i in range(3000)})
    write_migration(migrations_dir, "1700000000_plus", PLUS)
    assert invoke("up", "-d", str(db), "--no-backup").exit_code == 0
    done = subprocess.run([sys.executable, "-c", WRITER, str(db)], check=False)
    assert done.returncode == -signal.SIGKILL
    return db


def _largest_sst(path: Path) -> Path:
    return max(table_files(path), key=lambda p: p.stat().st_size)


def _flip(path: Path, at: float = 0.5, size: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    for i in range(start, min(start + size, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _wal(path: Path) -> Path:
    logs = [p for p in path.glob("*.log") if p.stat().st_size > 0]
    assert logs, "the fixture left synced writes in the WAL"
    return logs[-1]


def _meta(path: Path, raw: bytes) -> None:
    import rocksdict

    db = rocksdict.Rdict(str(path))
    try:
        cf = db.get_column_family(STATE_CF)
        cf[META_KEY] = raw
        del cf
    finally:
        db.close()


LIVE: dict[str, tuple[Callable[[Path], None], str]] = {
    "CURRENT garbage": (lambda p: (p / "CURRENT").write_text("garbage\n"), "CURRENT names"),
    "CURRENT deleted": (lambda p: (p / "CURRENT").unlink(), "CURRENT file is missing"),
    "MANIFEST truncated": (
        lambda p: next(p.glob("MANIFEST-*")).write_bytes(
            next(p.glob("MANIFEST-*")).read_bytes()[:40]
        ),
        "MANIFEST",
    ),
    "SST flipped": (lambda p: _flip(_largest_sst(p)), ".sst"),
    "SST truncated": (
        lambda p: os.truncate(_largest_sst(p), _largest_sst(p).stat().st_size // 2),
        ".sst",
    ),
    "SST deleted": (lambda p: _largest_sst(p).unlink(), ".sst"),
    "WAL tail cut": (lambda p: os.truncate(_wal(p), _wal(p).stat().st_size - 7), "write-ahead log"),
    "WAL flipped": (lambda p: _flip(_wal(p), at=0.5, size=64), "write-ahead log"),
    "OPTIONS damaged": (
        lambda p: next(p.glob("OPTIONS-*")).write_text("[Version]\\n garbage = ="),
        "OPTIONS",
    ),
    "rocksdict config damaged": (
        lambda p: (p / "rocksdict-config.json").write_text("{not json"),
        "rocksdict-config.json",
    ),
    "state record garbage": (lambda p: _meta(p, b"\x00\xffgarbage"), "'meta'"),
    "state record of wrong types": (
        lambda p: _meta(p, json.dumps({"format": 1, "status": 5}).encode()),
        "'meta'",
    ),
    "state from a newer version": (
        lambda p: _meta(p, json.dumps({"format": 7}).encode()),
        "newer pebble-migrate",
    ),
}


@pytest.mark.parametrize("damage", sorted(LIVE))
def test_damage_to_the_live_database_is_found_and_named(
    invoke: Invoke, live: Path, migrations_dir: Path, damage: str
) -> None:
    harm, named = LIVE[damage]
    harm(live)
    deep = invoke("validate", "--deep", "-d", str(live), "-m", str(migrations_dir))
    assert deep.exit_code in (1, 7), deep.output
    assert named in deep.output, deep.output
    assert "Traceback" not in deep.output
    # ... and says the way out: restore a backup (or, for a newer state, upgrade).
    way_out = "Upgrade pebble-migrate" if "newer" in damage else "backup restore ID --force"
    assert way_out in deep.stderr, deep.stderr
    assert "down VERSION" not in deep.stderr, deep.stderr
    # No command hides it: each one either works (it reads nothing damaged) or fails
    # naming it, with a documented exit code and no traceback.
    for command in (["status"], ["up"], ["validate"]):
        result = invoke(*command, "-d", str(live), "-m", str(migrations_dir))
        assert result.exit_code in DOCUMENTED, (command, result.output)
        assert "Traceback" not in result.output


def _rehash(backup: Path, digest: str) -> None:
    meta = json.loads((backup / "backup.json").read_text())
    meta["files"][0]["sha256"] = digest
    (backup / "backup.json").write_text(json.dumps(meta))


def _flip_recorded(backup: Path) -> None:
    """Damage a table file and record sums that match the damage, as a backup made by an
    older version (before table files were checked) of an already damaged database would."""
    import hashlib

    sst = _largest_sst(backup / "db")
    copy = sst.with_name("copy")
    copy.write_bytes(sst.read_bytes())
    _flip(copy)
    copy.replace(sst)
    meta = json.loads((backup / "backup.json").read_text())
    for f in meta["files"]:
        if f["name"] == sst.name:
            f["sha256"] = hashlib.sha256(sst.read_bytes()).hexdigest()
    meta["tables_checked"] = False
    (backup / "backup.json").write_text(json.dumps(meta))


BACKUP: dict[str, tuple[Callable[[Path], None], str]] = {
    "backup.json truncated": (
        lambda b: (b / "backup.json").write_text((b / "backup.json").read_text()[:50]),
        "backup.json is unreadable",
    ),
    "backup.json with a wrong hash": (
        lambda b: _rehash(b, "0" * 64),
        "does not match its recorded checksum",
    ),
    "SST flipped, sums updated": (_flip_recorded, "is damaged"),
    "SST deleted": (lambda b: _largest_sst(b / "db").unlink(), "is missing"),
    "a file added": (
        lambda b: (b / "db" / "000999.sst").write_bytes(b"x"),
        "not part of the backup",
    ),
}


@pytest.mark.parametrize("damage", sorted(BACKUP))
def test_damage_to_a_backup_is_found_and_never_restored(
    invoke: Invoke, live: Path, damage: str
) -> None:
    info = create_backup(live)
    harm, named = BACKUP[damage]
    harm(info.path)
    verified = invoke("backup", "verify", str(info.path), "-d", str(live))
    assert verified.exit_code == 1
    assert named in verified.stderr, verified.stderr
    before = snapshot(live)
    restored = invoke("backup", "restore", str(info.path), "-d", str(live), "--force")
    assert restored.exit_code == 1
    assert "Traceback" not in restored.stderr
    assert snapshot(live) == before


def test_leftovers_of_dead_backups_are_swept(live: Path) -> None:
    root = live.parent / "db.backups"
    first = create_backup(live)
    dead = root / ".tmp-20200101T000000Z-999999"
    (dead / "db").mkdir(parents=True)
    half = root / "20200101T000001Z"
    (half / "db").mkdir(parents=True)  # a removal killed after backup.json went
    create_backup(live)
    assert not dead.exists() and not half.exists()
    assert first.path.exists()
