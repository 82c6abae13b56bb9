"""The `backup` commands and the automatic backups of up/down/rerun, through the real CLI.

Every bad input is checked twice: the `Error: ...` message and exit code, and that nothing
changed (the database read key by key, the backup directory listing, the files beside the
database).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pebble_migrate.backup import BackupInfo, create_backup
from pebble_migrate.catalog import list_backups
from pebble_migrate.testing import contents
from tests.conftest import Invoke, snapshot, tmpfs, write_migration
from tests.test_backup import (
    AGES,
    T0,
    Clock,
    backups_at,
    dead_pid,
    filled_db,
    initialize,
    put,
    tree,
)
from tests.test_restore import held_open, run_restore

ADD_X = "1700000000_add_x"
ADD_X_BODY = '''
    """Add x."""


    def up(ctx):
        ctx.put(b"x", b"1")


    def down(ctx):
        ctx.delete(b"x")
'''
WIDE = {"COLUMNS": "200"}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A migrated-state database with several table files."""
    path = filled_db(tmp_path / "db")
    initialize(path)
    return path


@pytest.fixture
def good(db: Path, clock: Clock) -> BackupInfo:
    """A backup of `db`, after which `db` changed."""
    info = create_backup(db, description="good")
    put(db, {b"after-backup": b"1"})
    clock.now = T0 + timedelta(hours=1)
    return info


class Unchanged:
    """Remembers the database, the backups and the database's siblings; `check()` them."""

    def __init__(self, db: Path, backups: Path | None = None) -> None:
        self.db = db
        self.backups = backups or db.parent / f"{db.name}.backups"
        self.data = snapshot(db) if db.is_dir() else None
        self.listing = tree(self.backups)
        self.siblings = sorted(os.listdir(db.parent))

    def check(self) -> None:
        assert (snapshot(self.db) if self.db.is_dir() else None) == self.data
        assert tree(self.backups) == self.listing
        assert sorted(os.listdir(self.db.parent)) == self.siblings


def error_of(result: Any) -> str:
    """The `Error: ...` line the CLI printed on stderr."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert lines, result.stderr
    return str(lines[0])


def replace_file(path: Path, data: bytes) -> None:
    """Give `path` new content in a new inode (backup table files are hard links shared
    with the live database, which must stay intact)."""
    path.unlink()
    path.write_bytes(data)


# --- create ---------------------------------------------------------------------------


def test_create_with_description(invoke: Invoke, db: Path, clock: Clock) -> None:
    result = invoke("backup", "create", "before deploy", "-d", str(db))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("Backup 20240301T120000Z (")
    assert "db.backups/20240301T120000Z" in result.stdout
    [info] = list_backups(db)
    assert info.description == "before deploy"
    assert info.trigger is None
    meta = json.loads((info.path / "backup.json").read_text())
    assert meta["database_id"] == snapshot_id(db)
    assert contents(info.path / "db", state=True) == snapshot(db)


def snapshot_id(db: Path) -> str:
    state = json.loads(snapshot(db)["pebble_migrate"][b"meta"])
    return str(state["database_id"])


def test_create_default_description_and_json(invoke: Invoke, db: Path, clock: Clock) -> None:
    result = invoke("backup", "create", "-d", str(db), "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["backup"]["id"] == "20240301T120000Z"
    assert out["backup"]["description"] == "manual backup"
    assert out["backup"]["status"] == "clean"


def test_create_compressed(invoke: Invoke, db: Path, clock: Clock) -> None:
    result = invoke("backup", "create", "ship it", "--compress", "-d", str(db))
    assert result.exit_code == 0, result.stderr
    assert "20240301T120000Z.tar.gz" in result.stdout
    assert tree(db.parent / "db.backups") == [".checksums.json", "20240301T120000Z.tar.gz"]
    [info] = list_backups(db)
    assert info.archive
    assert info.description == "ship it"


def test_backup_dir_from_option_environment_and_pyproject(
    invoke: Invoke, db: Path, tmp_path: Path, clock: Clock
) -> None:
    assert invoke("backup", "create", "-d", str(db), "--backup-dir", "by-option").exit_code == 0
    assert len(list_backups(db, backup_dir=tmp_path / "by-option")) == 1

    env = {"PEBBLE_MIGRATE_BACKUP_DIR": str(tmp_path / "by-env")}
    assert invoke("backup", "create", "-d", str(db), env=env).exit_code == 0
    assert len(list_backups(db, backup_dir=tmp_path / "by-env")) == 1

    (tmp_path / "pyproject.toml").write_text('[tool.pebble-migrate]\nbackup-dir = "by-toml"\n')
    assert invoke("backup", "create", "-d", str(db)).exit_code == 0
    assert len(list_backups(db, backup_dir=tmp_path / "by-toml")) == 1
    listed = json.loads(invoke("backup", "list", "-d", str(db), "--json").stdout)
    assert [b["path"] for b in listed] == [str(tmp_path / "by-toml" / "20240301T120000Z")]
    assert not (tmp_path / "db.backups").exists()


def test_create_sweeps_leftover_temporary_directories(
    invoke: Invoke, db: Path, clock: Clock
) -> None:
    root = db.parent / "db.backups"
    leftover = root / f".tmp-20240101T000000Z-{dead_pid()}" / "db"
    leftover.mkdir(parents=True)
    assert invoke("backup", "create", "-d", str(db)).exit_code == 0
    assert sorted(os.listdir(root)) == [".checksums.json", "20240301T120000Z"]


# --- automatic backups ----------------------------------------------------------------


def test_up_takes_a_backup_before_its_first_write(
    invoke: Invoke, db: Path, migrations_dir: Path, clock: Clock
) -> None:
    write_migration(migrations_dir, ADD_X, ADD_X_BODY)
    before = contents(db)

    result = invoke("up", "-d", str(db), "-m", str(migrations_dir))

    assert result.exit_code == 0, result.stderr
    [info] = list_backups(db)
    assert info.description == "before up to 1700000000: 1 migration"
    assert info.trigger == ADD_X
    assert info.version == 0
    assert info.status == "clean"
    assert f"backup {info.id} taken at" in result.stderr
    assert contents(info.path / "db") == before  # taken before the migration wrote
    assert contents(db)["default"][b"x"] == b"1"

    again = invoke("up", "-d", str(db), "-m", str(migrations_dir))  # nothing to do
    assert again.exit_code == 0, again.stderr
    assert len(list_backups(db)) == 1


def test_no_backup_flag(invoke: Invoke, db: Path, migrations_dir: Path) -> None:
    write_migration(migrations_dir, ADD_X, ADD_X_BODY)
    result = invoke("up", "--no-backup", "-d", str(db), "-m", str(migrations_dir))
    assert result.exit_code == 0, result.stderr
    assert contents(db)["default"][b"x"] == b"1"
    assert not (db.parent / "db.backups").exists()
    down = invoke("down", "0", "--no-backup", "-y", "-d", str(db), "-m", str(migrations_dir))
    assert down.exit_code == 0, down.stderr
    assert b"x" not in contents(db)["default"]
    assert not (db.parent / "db.backups").exists()


def test_down_and_rerun_take_backups(
    invoke: Invoke, db: Path, migrations_dir: Path, clock: Clock
) -> None:
    write_migration(migrations_dir, ADD_X, ADD_X_BODY)
    m = ("-d", str(db), "-m", str(migrations_dir))
    assert invoke("up", "--no-backup", *m).exit_code == 0

    clock.now = T0 + timedelta(minutes=1)
    rerun = invoke("rerun", ADD_X, "-y", *m)
    assert rerun.exit_code == 0, rerun.stderr
    clock.now = T0 + timedelta(minutes=2)
    down = invoke("down", "0", "-y", *m)
    assert down.exit_code == 0, down.stderr
    nothing = invoke("down", "0", "-y", *m)  # nothing left to roll back: no backup
    assert nothing.exit_code == 0, nothing.stderr

    found = list_backups(db)
    assert [(b.description, b.trigger, b.version) for b in found] == [
        (f"before rerun of {ADD_X}", ADD_X, 1700000000),
        ("before down to 0: 1 migration", ADD_X, 1700000000),
    ]
    assert contents(found[1].path / "db")["default"][b"x"] == b"1"
    assert b"x" not in contents(db)["default"]


def test_retention_setting_applies_after_automatic_backups(
    invoke: Invoke, db: Path, migrations_dir: Path, tmp_path: Path, clock: Clock
) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.pebble-migrate]\nbackup-keep = 2\n")
    write_migration(migrations_dir, ADD_X, ADD_X_BODY)
    old = backups_at(db, clock, [T0 - timedelta(days=d) for d in (3, 2, 1)])
    clock.now = T0

    result = invoke("up", "-d", str(db), "-m", str(migrations_dir))

    assert result.exit_code == 0, result.stderr
    assert [b.id for b in list_backups(db)] == [old[2].id, "20240301T120000Z"]
    for gone in old[:2]:
        assert f"retention removed backup {gone.id}" in result.stderr
        assert not gone.path.exists()


def test_bad_retention_setting_stops_before_anything(
    invoke: Invoke, db: Path, migrations_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.pebble-migrate]\nbackup-older-than = "soon"\n')
    write_migration(migrations_dir, ADD_X, ADD_X_BODY)
    unchanged = Unchanged(db)
    result = invoke("up", "-d", str(db), "-m", str(migrations_dir))
    assert result.exit_code == 2
    assert "backup-older-than must be like \"30d\", not 'soon'" in error_of(result)
    unchanged.check()


# --- list -----------------------------------------------------------------------------


def test_list_table(invoke: Invoke, db: Path, clock: Clock) -> None:
    clock.now = T0 - timedelta(days=3)
    first = create_backup(db, description="nightly")
    clock.now = T0 - timedelta(hours=5)
    second = create_backup(db, description="to ship", compress=True)
    clock.now = T0

    result = invoke("backup", "list", "-d", str(db), env=WIDE)

    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    header = ["id", "created", "(UTC)", "age", "version", "size", "mode", "description"]
    assert lines[0].split() == header
    assert first.id in lines[1]
    assert "2024-02-27 12:00:00" in lines[1]
    assert " 3d " in lines[1]
    assert " link, shares files " in lines[1]
    assert lines[1].rstrip().endswith("nightly")
    assert second.id in lines[2] and " archive " in lines[2]
    assert " 5h " in lines[2]
    assert lines[2].rstrip().endswith("to ship")
    assert len(lines) == 3


def test_list_json(invoke: Invoke, db: Path, migrations_dir: Path, clock: Clock) -> None:
    write_migration(migrations_dir, ADD_X, ADD_X_BODY)
    assert invoke("up", "-d", str(db), "-m", str(migrations_dir)).exit_code == 0
    clock.now = T0 + timedelta(minutes=5)
    create_backup(db, description="after")

    result = invoke("backup", "list", "-d", str(db), "--json")

    assert result.exit_code == 0, result.stderr
    listed = json.loads(result.stdout)
    assert isinstance(listed, list)
    keys = {"id", "path", "created_at", "description", "version", "status", "size_bytes"}
    assert all(keys | {"trigger"} <= set(item) for item in listed)
    assert [(b["id"], b["version"], b["status"], b["trigger"]) for b in listed] == [
        ("20240301T120000Z", 0, "clean", ADD_X),
        ("20240301T120500Z", 1700000000, "clean", None),
    ]
    assert listed[0]["created_at"] == T0.isoformat()
    assert listed[0]["description"] == "before up to 1700000000: 1 migration"
    assert listed[0]["path"] == str(db.parent / "db.backups" / "20240301T120000Z")
    assert all(isinstance(b["size_bytes"], int) and b["size_bytes"] > 0 for b in listed)


def test_list_when_there_are_none(invoke: Invoke, db: Path) -> None:
    result = invoke("backup", "list", "-d", str(db), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == []
    table = invoke("backup", "list", "-d", str(db))
    assert table.exit_code == 0
    assert "No backups in" in table.stdout
    (db.parent / "db.backups" / "not-a-backup").mkdir(parents=True)
    assert json.loads(invoke("backup", "list", "-d", str(db), "--json").stdout) == []


# --- restore --------------------------------------------------------------------------


def test_restore_path_with_database_option(invoke: Invoke, db: Path, good: BackupInfo) -> None:
    old = snapshot(db)
    result = invoke("backup", "restore", str(good.path), "--database", str(db), "--force")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[0] == (
        f"Restored backup {good.id} into {db} (version 0, clean)."
    )
    kept = db.parent / "db.pre-restore-20240301T130000Z"
    assert f"The replaced database is kept at {kept}." in result.stdout
    assert snapshot(db) == contents(good.path / "db", state=True)
    assert snapshot(kept) == old
    assert sorted(os.listdir(db.parent)) == ["db", "db.backups", kept.name]


def test_restore_into_a_path_that_was_removed(invoke: Invoke, db: Path, good: BackupInfo) -> None:
    shutil.rmtree(db)
    result = invoke("backup", "restore", str(good.path), str(db), "--force")
    assert result.exit_code == 0, result.stderr
    assert "kept at" not in result.stdout
    assert snapshot(db) == contents(good.path / "db", state=True)
    assert sorted(os.listdir(db.parent)) == ["db", "db.backups"]


def test_restore_by_id(invoke: Invoke, db: Path, good: BackupInfo) -> None:
    result = invoke("backup", "restore", good.id, "-d", str(db), "--force", "--discard-current")
    assert result.exit_code == 0, result.stderr
    assert snapshot(db) == contents(good.path / "db", state=True)
    assert sorted(os.listdir(db.parent)) == ["db", "db.backups"]  # --discard-current


def test_restore_archive(invoke: Invoke, db: Path, clock: Clock) -> None:
    archived = create_backup(db, description="shipped", compress=True)
    wanted = snapshot(db)
    put(db, {b"later": b"1"})
    clock.now = T0 + timedelta(hours=2)
    shipped = db.parent / "elsewhere" / archived.path.name
    shipped.parent.mkdir()
    shutil.move(archived.path, shipped)

    result = invoke("backup", "restore", str(shipped), str(db), "--force")

    assert result.exit_code == 0, result.stderr
    assert snapshot(db) == wanted
    assert (db.parent / "db.pre-restore-20240301T140000Z").is_dir()


def test_restore_json(invoke: Invoke, db: Path, good: BackupInfo) -> None:
    result = invoke("backup", "restore", good.id, "-d", str(db), "--force", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["restored"]["id"] == good.id
    assert out["target"] == str(db)
    assert out["kept_as"] == str(db.parent / "db.pre-restore-20240301T130000Z")


def test_restore_asks_on_a_terminal(
    invoke: Invoke, db: Path, good: BackupInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pebble_migrate.cli.options.is_terminal", lambda: True)
    unchanged = Unchanged(db)
    no = invoke("backup", "restore", good.id, "-d", str(db), input="n\n")
    assert no.exit_code == 1
    assert "Replace the database at" in no.stderr
    assert error_of(no) == "Error: aborted; nothing was changed."
    unchanged.check()

    yes = invoke("backup", "restore", good.id, "-d", str(db), input="y\n")
    assert yes.exit_code == 0, yes.stderr
    assert snapshot(db) == contents(good.path / "db", state=True)


def test_restore_dry_run_changes_nothing(invoke: Invoke, db: Path, good: BackupInfo) -> None:
    unchanged = Unchanged(db)
    result = invoke("backup", "restore", good.id, "-d", str(db), "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert f"Would restore backup {good.id} (version 0, verified) into {db}." in result.stdout
    assert "nothing was changed" in result.stdout
    unchanged.check()


def test_restore_dry_run_verifies_and_speaks_json(
    invoke: Invoke, db: Path, good: BackupInfo
) -> None:
    result = invoke("backup", "restore", good.id, "-d", str(db), "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["would_restore"]["id"] == good.id
    table = next((good.path / "db").glob("OPTIONS-*"))  # a copy; table files are shared links
    table.write_bytes(table.read_bytes() + b"#")
    unchanged = Unchanged(db)
    damaged = invoke("backup", "restore", good.id, "-d", str(db), "--dry-run")
    assert damaged.exit_code == 1
    assert table.name in damaged.stderr
    unchanged.check()


def test_restore_two_different_targets_is_a_usage_error(
    invoke: Invoke, db: Path, good: BackupInfo, tmp_path: Path
) -> None:
    unchanged = Unchanged(db)
    result = invoke("backup", "restore", good.id, str(tmp_path / "x"), "-d", str(db), "--force")
    assert result.exit_code == 2
    assert "two targets given" in error_of(result)
    unchanged.check()


def test_restore_recovers_an_interrupted_one_first(
    invoke: Invoke, db: Path, good: BackupInfo
) -> None:
    assert run_restore(good.path, db, kill_at="restore-swapped:1").returncode == -9
    result = invoke("backup", "restore", good.id, "-d", str(db), "--force", "--discard-current")
    assert result.exit_code == 0, result.stderr
    assert f"First finished an interrupted restore into {db}." in result.stderr
    kept = [n for n in os.listdir(db.parent) if n.startswith("db.pre-restore-")]
    assert len(kept) == 1  # the interrupted restore's copy of the old database
    assert [n for n in os.listdir(db.parent) if ".restore" in n] == []


def test_create_recovers_an_interrupted_restore_first(
    invoke: Invoke, db: Path, good: BackupInfo
) -> None:
    run = run_restore(good.path, db, kill_at="restore-moved-away:1", no_exchange=True)
    assert run.returncode == -9
    assert not db.exists()
    result = invoke("backup", "create", "-d", str(db))
    assert result.exit_code == 0, result.stderr
    assert "Undid an interrupted restore" in result.stderr
    assert b"after-backup" in contents(db)["default"]


# --- verify ---------------------------------------------------------------------------


def test_verify(invoke: Invoke, db: Path, good: BackupInfo, clock: Clock) -> None:
    ok = invoke("backup", "verify", good.id, "-d", str(db))
    assert ok.exit_code == 0, ok.stderr
    assert f"Backup {good.id}: {len(good.files)} files match their checksums." in ok.stdout
    archived = create_backup(db, compress=True)
    assert invoke("backup", "verify", str(archived.path)).exit_code == 0
    sst = next(f.name for f in good.files if f.name.endswith(".sst"))
    replace_file(good.path / "db" / sst, b"rot")
    bad = invoke("backup", "verify", good.id, "-d", str(db))
    assert bad.exit_code == 1
    assert f"backup {good.id} is damaged: {sst} has 3 bytes" in error_of(bad)


# --- cleanup --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "gone"),
    [
        (["--older-than", "30d"], [0]),
        (["--older-than", "24h"], [0, 1, 2, 3]),
        (["--older-than", "7d"], [0, 1, 2]),
        (["--older-than", "2w"], [0, 1]),
        (["--keep", "2"], [0, 1, 2]),
        (["--keep", "10"], []),
        (["--older-than", "7d", "--keep", "4"], [0]),
        (["--older-than", "15d", "--keep", "2"], [0, 1]),
    ],
)
def test_cleanup(invoke: Invoke, db: Path, clock: Clock, args: list[str], gone: list[int]) -> None:
    taken = backups_at(db, clock, [T0 - age for age in AGES])
    clock.now = T0
    result = invoke("backup", "cleanup", "-d", str(db), *args)
    assert result.exit_code == 0, result.stderr
    removed = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("removed")]
    assert removed == [taken[i].id for i in gone]
    assert [b.id for b in list_backups(db)] == [b.id for i, b in enumerate(taken) if i not in gone]
    assert result.stdout.splitlines()[-1] == f"{len(gone)} removed, {5 - len(gone)} kept."


def test_cleanup_dry_run_lists_without_removing(invoke: Invoke, db: Path, clock: Clock) -> None:
    taken = backups_at(db, clock, [T0 - age for age in AGES])
    clock.now = T0
    listing = tree(db.parent / "db.backups")
    result = invoke("backup", "cleanup", "--older-than", "7d", "--dry-run", "-d", str(db))
    assert result.exit_code == 0, result.stderr
    assert [line.split()[:2] for line in result.stdout.splitlines()[:3]] == [
        ["would", "remove"]
    ] * 3
    assert [line.split()[2] for line in result.stdout.splitlines()[:3]] == [b.id for b in taken[:3]]
    assert tree(db.parent / "db.backups") == listing


def test_cleanup_protects_the_newest_unless_forced(invoke: Invoke, db: Path, clock: Clock) -> None:
    taken = backups_at(db, clock, [T0 - timedelta(days=d) for d in (50, 40)])
    clock.now = T0
    result = invoke("backup", "cleanup", "--older-than", "30d", "-d", str(db))
    assert result.exit_code == 0, result.stderr
    assert f"removed {taken[0].id}" in result.stdout
    assert f"kept {taken[1].id} (newest" in result.stdout
    assert [b.id for b in list_backups(db)] == [taken[1].id]

    forced = invoke("backup", "cleanup", "--older-than", "30d", "--force", "-d", str(db))
    assert forced.exit_code == 0, forced.stderr
    assert f"removed {taken[1].id}" in forced.stdout
    assert list_backups(db) == []


def test_cleanup_json(invoke: Invoke, db: Path, clock: Clock) -> None:
    taken = backups_at(db, clock, [T0 - timedelta(days=d) for d in (50, 40, 1)])
    clock.now = T0
    result = invoke("backup", "cleanup", "--keep", "1", "--json", "-d", str(db))
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert [b["id"] for b in out["removed"]] == [taken[0].id, taken[1].id]
    assert out["protected"] == []
    assert out["dry_run"] is False


def test_cleanup_needs_a_criterion(invoke: Invoke, db: Path, good: BackupInfo) -> None:
    unchanged = Unchanged(db)
    result = invoke("backup", "cleanup", "-d", str(db))
    assert result.exit_code == 2
    assert "say what to remove" in error_of(result)
    unchanged.check()


# --- bad inputs: a clear error, and nothing changed ----------------------------------


@pytest.mark.parametrize("what", ["random directory", "the database itself", "unknown id"])
def test_restore_something_that_is_not_a_backup(
    invoke: Invoke, db: Path, good: BackupInfo, tmp_path: Path, what: str
) -> None:
    source = {
        "random directory": tmp_path / "photos",
        "the database itself": db,
        "unknown id": Path("20990101T000000Z"),
    }[what]
    if what == "random directory":
        source.mkdir()
        (source / "cat.jpg").write_bytes(b"meow")
    unchanged = Unchanged(db)

    result = invoke("backup", "restore", str(source), "-d", str(db), "--force")

    assert result.exit_code == 1
    assert error_of(result).startswith(f"Error: {source} is not a backup: ")
    if what == "unknown id":
        assert "no backup with that id in" in error_of(result)
    else:
        assert "it has no backup.json" in error_of(result)
    unchanged.check()


@pytest.mark.parametrize("damage", ["altered", "truncated", "missing", "extra"])
def test_restore_a_damaged_backup(invoke: Invoke, db: Path, good: BackupInfo, damage: str) -> None:
    data = good.path / "db"
    manifest = next(f.name for f in good.files if f.name.startswith("MANIFEST-"))
    sst = next(f.name for f in good.files if f.name.endswith(".sst"))
    if damage == "altered":
        raw = bytearray((data / manifest).read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        replace_file(data / manifest, bytes(raw))
        expected = f"{manifest} does not match its recorded checksum."
    elif damage == "truncated":
        size = (data / sst).stat().st_size
        replace_file(data / sst, (data / sst).read_bytes()[:100])
        expected = f"{sst} has 100 bytes, {size} recorded."
    elif damage == "missing":
        (data / sst).unlink()
        expected = f"{sst} is missing."
    else:
        (data / "999999.sst").write_bytes(b"stowaway")
        expected = "999999.sst is not part of the backup."
    unchanged = Unchanged(db)

    result = invoke("backup", "restore", good.id, "-d", str(db), "--force")

    assert result.exit_code == 1
    assert error_of(result) == f"Error: backup {good.id} is damaged: {expected}"
    unchanged.check()


def test_restore_a_backup_of_another_database(
    invoke: Invoke, db: Path, tmp_path: Path, clock: Clock
) -> None:
    other = filled_db(tmp_path / "other", tag=b"other")
    initialize(other)
    theirs = create_backup(other)
    unchanged = Unchanged(db)
    ours, their_id = snapshot_id(db), snapshot_id(other)
    assert ours != their_id

    for extra in ([], ["--force"]):  # --force answers the question; it does not bypass this
        result = invoke("backup", "restore", str(theirs.path), "-d", str(db), *extra)
        assert result.exit_code == 1
        assert error_of(result) == (
            f"Error: backup {theirs.id} is of database {their_id}, "
            f"but the target is database {ours}."
        )
        assert "--other-database" in result.stderr
        unchanged.check()

    result = invoke(
        "backup", "restore", str(theirs.path), "-d", str(db), "--force", "--other-database"
    )
    assert result.exit_code == 0, result.stderr
    assert snapshot_id(db) == their_id


def test_restore_onto_a_file(invoke: Invoke, db: Path, good: BackupInfo, tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("precious")
    unchanged = Unchanged(db)
    result = invoke(
        "backup", "restore", good.id, str(target), "--force", "--backup-dir", str(good.path.parent)
    )
    assert result.exit_code == 1
    assert error_of(result) == (
        f"Error: {target} is not a usable RocksDB database: it is a file; "
        "restore needs a database directory path."
    )
    assert target.read_text() == "precious"
    unchanged.check()


def test_restore_without_enough_space(invoke: Invoke, tmp_path: Path, clock: Clock) -> None:
    big = filled_db(tmp_path / "big", flushes=5, per_flush=250, size=2000)  # ~2.5 MB random
    initialize(big)
    info = create_backup(big)
    with tmpfs(tmp_path / "small", "4m") as small:
        db = small / "db"
        shutil.copytree(big, db)  # the same database, on a disk too small for a second copy
        unchanged = Unchanged(db, backups=big.parent / "big.backups")
        result = invoke("backup", "restore", str(info.path), str(db), "--force")
        assert result.exit_code == 1
        message = error_of(result)
        assert message.startswith(
            f"Error: not enough free space for restoring backup {info.id} at {small}: "
        )
        assert " free, " in message
        assert message.endswith(" needed.")
        unchanged.check()


def test_create_without_enough_space(invoke: Invoke, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "4m") as small:
        db = filled_db(small / "db", flushes=2)
        unchanged = Unchanged(db)
        result = invoke("backup", "create", "-d", str(db))
        assert result.exit_code == 1
        message = error_of(result)
        assert message.startswith(f"Error: not enough free space for a backup at {db}.backups: ")
        assert " MiB free, " in message
        assert message.endswith(" needed.")
        unchanged.check()
        assert sorted(os.listdir(small)) == ["db"]


def _tar_gz(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            entry = tarfile.TarInfo(name)
            entry.size = len(data)
            tar.addfile(entry, io.BytesIO(data))


@pytest.mark.parametrize("kind", ["text file", "tar without metadata", "truncated", "altered"])
def test_restore_an_archive_that_is_not_one(
    invoke: Invoke, db: Path, tmp_path: Path, clock: Clock, kind: str
) -> None:
    archived = create_backup(db, compress=True)
    put(db, {b"after-backup": b"1"})
    path = tmp_path / "incoming.tar.gz"
    if kind == "text file":
        path.write_text("this is not an archive\n")
        expected = f"{path} is not a backup: not a readable .tar.gz archive"
    elif kind == "tar without metadata":
        _tar_gz(path, {"db/CURRENT": b"MANIFEST-000001\n"})
        expected = f"{path} is not a backup: the archive does not start with backup.json."
    elif kind == "truncated":
        raw = archived.path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
        expected = f"{path} is not a backup: the archive is damaged"
    else:
        with tarfile.open(archived.path, "r:gz") as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]
        current = members["db/CURRENT"]
        members["db/CURRENT"] = current[:-2] + b"9\n"
        _tar_gz(path, members)
        expected = f"backup {archived.id} is damaged: CURRENT does not match its recorded checksum."
    unchanged = Unchanged(db)

    result = invoke("backup", "restore", str(path), "-d", str(db), "--force")

    assert result.exit_code == 1
    assert error_of(result).startswith(f"Error: {expected}")
    unchanged.check()


@pytest.mark.parametrize("age", ["soon", "30", "30 days", "-1d", "1y"])
def test_cleanup_with_an_age_that_does_not_parse(
    invoke: Invoke, db: Path, clock: Clock, age: str
) -> None:
    backups_at(db, clock, [T0 - timedelta(days=d) for d in (90, 60)])
    clock.now = T0
    unchanged = Unchanged(db)
    result = invoke("backup", "cleanup", "--older-than", age, "-d", str(db))
    assert result.exit_code == 2
    assert error_of(result) == (
        f"Error: --older-than: cannot read {age!r} as an age; use a number and a unit, "
        "like 30d, 24h, 2w."
    )
    unchanged.check()


def test_restore_while_another_process_uses_the_database(
    invoke: Invoke, db: Path, good: BackupInfo
) -> None:
    with held_open(db):
        unchanged = Unchanged(db)
        result = invoke("backup", "restore", good.id, "-d", str(db), "--force")
        assert result.exit_code == 5
        assert error_of(result) == (
            f"Error: the database at {db} is in use by another process (its LOCK is held)."
        )
        unchanged.check()
    assert b"after-backup" in contents(db)["default"]


def test_create_while_another_process_uses_the_database(invoke: Invoke, db: Path) -> None:
    with held_open(db):
        unchanged = Unchanged(db)
        result = invoke("backup", "create", "-d", str(db))
        assert result.exit_code == 5
        assert "is in use by another process" in error_of(result)
        unchanged.check()


def test_restore_without_a_terminal_or_force_refuses(
    invoke: Invoke, db: Path, good: BackupInfo
) -> None:
    unchanged = Unchanged(db)
    result = invoke("backup", "restore", good.id, "-d", str(db))
    assert result.exit_code == 2
    assert error_of(result) == (
        "Error: there is no terminal to ask on, and this needs confirmation: Replace the "
        f"database at {db} (version 0, clean) with backup {good.id} (version 0, clean)?"
    )
    assert "Re-run with --yes to confirm." in result.stderr
    unchanged.check()
