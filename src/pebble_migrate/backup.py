"""Backups: RocksDB checkpoints with checksummed metadata, listing, verification, cleanup."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import rocksdict

from pebble_migrate import store
from pebble_migrate.durable import fsync_dir, write_json_atomic
from pebble_migrate.errors import DiskFullError, InsufficientSpace, MigrateError
from pebble_migrate.faults import kill_point
from pebble_migrate.paths import default_backup_dir, resolve_database
from pebble_migrate.plan import Plan
from pebble_migrate.state import StateStore
from pebble_migrate.units import utc_now

META = "backup.json"
DATA = "db"
FORMAT = 1
ARCHIVE_SUFFIX = ".tar.gz"
_CACHE = ".checksums.json"
_IMMUTABLE = (".sst", ".blob")


class BackupError(MigrateError):
    """Raised when a backup cannot be created, read, verified or restored."""


class NotABackup(BackupError):
    """Raised when a path or id names no valid backup."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(
            f"{what} is not a backup: {reason}.",
            hint="List the backups with `pebble-migrate backup list -d DB`; nothing was changed.",
        )


class BackupCorrupt(BackupError):
    """Raised when a backup's files do not match its recorded sizes and checksums."""

    def __init__(self, backup_id: str, name: str, detail: str) -> None:
        self.file = name
        super().__init__(
            f"backup {backup_id} is damaged: {name} {detail}.",
            hint="Nothing was changed. Restore an older backup (`pebble-migrate backup list`).",
        )


@dataclass(frozen=True)
class BackupFile:
    """One file of a backup, with its size and SHA-256."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class BackupInfo:
    """A backup as recorded in its backup.json."""

    id: str
    path: Path
    created_at: datetime
    description: str
    database_path: str
    database_id: str | None
    version: int
    status: str
    trigger: str | None
    files: tuple[BackupFile, ...] = field(default=(), repr=False)
    archive: bool = False
    partial: dict[str, str] = field(default_factory=dict)
    """Migrations left halfway in the backed-up database: id -> how far (its scans' views
    are in the backup, so after a restore `up` continues them exactly)."""
    applied: tuple[str, ...] | None = None
    """The applied migrations (None in backups made before this was recorded)."""

    @property
    def size_bytes(self) -> int:
        """The total size of the backed-up database files."""
        return sum(f.size for f in self.files)

    def summary(self) -> dict[str, Any]:
        """Return the fields `backup list --json` shows."""
        return {
            "id": self.id,
            "path": str(self.path),
            "created_at": self.created_at.isoformat(),
            "description": self.description,
            "version": self.version,
            "status": self.status,
            "size_bytes": self.size_bytes,
            "trigger": self.trigger,
            "archive": self.archive,
            "partial": dict(self.partial),
        }


def backup_dir_for(db_path: str | Path, configured: str | Path | None = None) -> Path:
    """Return the backup directory: the configured one, or `<db>.backups` beside the
    resolved database path."""
    if configured is not None:
        return Path(configured)
    return default_backup_dir(resolve_database(db_path))


def backup_before(
    db_path: str | Path, backup_dir: str | Path | None, migration_id: str, database_id: Any
) -> BackupInfo | None:
    """Return the newest backup of this database (by its id) taken before `migration_id`
    began (it is neither applied nor halfway there), or None."""
    try:
        found = list_backups(db_path, backup_dir=backup_dir)
    except (MigrateError, OSError):
        return None
    for info in reversed(found):
        if (
            database_id is not None
            and info.database_id == database_id
            and info.applied is not None
            and migration_id not in info.applied
            and migration_id not in info.partial
        ):
            return info
    return None


def resume_impossible_hint(
    db_path: str | Path,
    backup_dir: str | Path | None,
    migration_id: str,
    cli: str,
    database_id: Any,
    *,
    forced: bool = False,
) -> str:
    """Return the way out when a migration left halfway cannot continue exactly
    (`forced`: the status is dirty, so `up --from-start` needs `force-clean` first)."""
    before = backup_before(db_path, backup_dir, migration_id, database_id)
    restore_it = (
        f"restore the backup taken before {migration_id} began: `{cli} backup restore "
        f"{before.id} --force`, then `{cli} up`"
        if before is not None
        else f"restore a backup taken before {migration_id} began (`{cli} backup list`), "
        f"then `{cli} up`"
    )
    again = (
        f"`{cli} force-clean`, then `{cli} up --from-start`"
        if forced
        else (f"`{cli} up --from-start`")
    )
    return (
        f"Nothing was changed. The safe way: {restore_it}. Only if {migration_id} is safe to "
        f"apply twice to the keys it already did: {again} (its committed chunks would be "
        "processed again)."
    )


def describe_trigger(plan: Plan) -> str:
    """Return the description of an automatic backup taken before `plan` runs."""
    if plan.command == "rerun" and plan.steps:
        return f"before rerun of {plan.steps[-1].id}"
    n = len(plan.steps)
    return f"before {plan.command} to {plan.to_version}: {n} migration{'s' if n != 1 else ''}"


# --- creating -----------------------------------------------------------------------


def create_backup(
    db_path: str | Path,
    *,
    backup_dir: str | Path | None = None,
    description: str = "manual backup",
    trigger: str | None = None,
    compress: bool = False,
) -> BackupInfo:
    """Open the database (it must not be in use) and back it up."""
    db = store.open_database(db_path, read_only=False)
    try:
        return create_backup_of_open(
            db,
            db_path,
            backup_dir=backup_dir,
            description=description,
            trigger=trigger,
            compress=compress,
        )
    finally:
        db.close()


def create_backup_of_open(
    db: rocksdict.Rdict,
    db_path: str | Path,
    *,
    backup_dir: str | Path | None = None,
    description: str = "manual backup",
    trigger: str | None = None,
    compress: bool = False,
) -> BackupInfo:
    """Back up an open database: checkpoint, checksums, metadata, then an atomic rename."""
    root = backup_dir_for(db_path, backup_dir)
    # Check the room first: a refused backup leaves no trace, not even the directory.
    _check_room(root, db, Path(db_path), compress)
    root.mkdir(parents=True, exist_ok=True)
    sweep_temporary(root)
    created = utc_now()
    backup_id = _new_id(root, created)
    tmp = root / f".tmp-{backup_id}-{os.getpid()}"
    try:
        _checkpoint(db, tmp / DATA)
        kill_point("backup-checkpoint")
        _copy_views(resolve_database(db_path), tmp / DATA, _partial_of(db, db_path))
        info = _describe(db, db_path, tmp, backup_id, created, description, trigger)
        write_json_atomic(tmp / META, encode_info(info))
        fsync_dir(tmp)
        final = root / backup_id
        tmp.rename(final)
        fsync_dir(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise disk_error(exc, root) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info = replace(info, path=final)
    if compress:
        from pebble_migrate.archive import archive_backup

        try:
            info = archive_backup(info)
        except BaseException:
            # The directory was only the means to the archive the user asked for.
            remove_backup(info)
            raise
    return info


def disk_error(exc: OSError, where: Path, needed: int | None = None) -> MigrateError:
    """Return DiskFullError for ENOSPC/EDQUOT, else a BackupError naming the failure."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(str(where), str(exc), store.free_space(where), needed)
    return BackupError(f"cannot write under {where}: {exc}")


def _checkpoint(db: rocksdict.Rdict, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = rocksdict.Checkpoint(db)
    try:
        checkpoint.create_checkpoint(str(target))
    except Exception as exc:  # noqa: BLE001 - rocksdict raises plain Exception
        raise store.translate(exc, str(db.path())) from None
    finally:
        del checkpoint


def _partial_of(db: rocksdict.Rdict, db_path: str | Path) -> dict[str, str]:
    from pebble_migrate.executor import run_records

    with StateStore(db, str(db_path)) as states:
        records = run_records(states)
    return {mid: r.describe() for (mid, _), r in sorted(records.items())}


def _copy_views(db_path: Path, data: Path, partial: dict[str, str]) -> None:
    """Put the frozen views of the migrations left halfway into the backup (hard links
    where possible), so that a restored copy continues them exactly."""
    from pebble_migrate.views import scans_dir

    source_root = scans_dir(db_path)
    for mid in partial:
        source = source_root / mid
        if not source.is_dir() or source.is_symlink():
            continue
        target = scans_dir(data) / mid
        for path in sorted(source.rglob("*")):
            relative = path.relative_to(source)
            if path.is_symlink():
                continue  # never followed out of the database
            if path.is_dir():
                (target / relative).mkdir(parents=True, exist_ok=True)
            elif path.is_file():
                (target / relative).parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(path, target / relative)
                except OSError:
                    shutil.copy2(path, target / relative)


def _check_room(root: Path, db: rocksdict.Rdict, db_path: Path, compress: bool) -> None:
    # A checkpoint hard-links the table files; what it writes anew is the flushed memtable
    # and copies of the small manifest/options files. On another filesystem it copies
    # everything, and an archive (of random data, at worst) is as large as the data.
    memtables = db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0
    needed = memtables + 4 * 1024 * 1024
    if compress or not same_filesystem(root, db_path):
        needed += store.directory_size(db_path)
    free = store.free_space(root)
    if free is not None and free < needed:
        raise InsufficientSpace(str(root), free, needed, "a backup")


def existing_ancestor(path: Path) -> Path:
    """Return `path` or its nearest ancestor that exists."""
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def same_filesystem(a: Path, b: Path) -> bool:
    """Return whether two paths (or their nearest existing ancestors) share a filesystem."""
    return existing_ancestor(a).stat().st_dev == existing_ancestor(b).stat().st_dev


def _new_id(root: Path, created: datetime) -> str:
    base = created.strftime("%Y%m%dT%H%M%SZ")
    candidate, n = base, 1
    while (root / candidate).exists() or (root / (candidate + ARCHIVE_SUFFIX)).exists():
        n += 1
        candidate = f"{base}-{n:02d}"
    return candidate


def _describe(
    db: rocksdict.Rdict,
    db_path: str | Path,
    folder: Path,
    backup_id: str,
    created: datetime,
    description: str,
    trigger: str | None,
) -> BackupInfo:
    with StateStore(db, str(db_path)) as states:
        state = states.read()
    partial = _partial_of(db, db_path)
    return BackupInfo(
        id=backup_id,
        path=folder,
        created_at=created,
        description=description,
        database_path=str(resolve_database(db_path)),
        database_id=state.database_id,
        version=state.current_version,
        status=state.status.value,
        trigger=trigger,
        files=tuple(checksum_files(folder / DATA, cache=folder.parent / _CACHE)),
        partial=partial,
        applied=tuple(sorted(state.applied)),
    )


def checksum_files(folder: Path, cache: Path | None = None) -> Iterator[BackupFile]:
    """Yield every file under `folder` with size and SHA-256.

    Table files are immutable in RocksDB and hard-linked into every checkpoint, so their
    sums are cached by inode: a backup only reads the files written since the last one.
    """
    known = _read_cache(cache) if cache is not None else {}
    fresh: dict[str, str] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        key = f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"
        cacheable = path.name.endswith(_IMMUTABLE)
        digest = known.get(key) if cacheable else None
        if digest is None:
            digest = sha256_of(path)
        if cacheable:
            fresh[key] = digest
        yield BackupFile(str(path.relative_to(folder)), stat.st_size, digest)
    if cache is not None:
        _write_cache(cache, fresh)


def sha256_of(path: Path) -> str:
    """Return the hex SHA-256 of a file."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _read_cache(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _write_cache(path: Path, entries: dict[str, str]) -> None:
    # Keep only the inodes still held by some backup, so the cache cannot grow forever.
    live = set(entries)
    for data in path.parent.glob(f"*/{DATA}"):
        for item in data.iterdir():
            with contextlib.suppress(OSError):
                st = item.stat()
                live.add(f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}")
    merged = {k: v for k, v in {**_read_cache(path), **entries}.items() if k in live}
    with contextlib.suppress(OSError):
        write_json_atomic(path, merged)


def sweep_temporary(root: Path) -> list[Path]:
    """Remove temporary directories left by backups whose process has died."""
    removed = []
    for item in root.glob(".tmp-*"):
        pid = item.name.rsplit("-", 1)[-1]
        if pid.isdigit() and process_alive(int(pid)):
            continue
        shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink(missing_ok=True)
        removed.append(item)
    return removed


def process_alive(pid: int) -> bool:
    """Return whether a process with this id exists (this process counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- reading ------------------------------------------------------------------------


def list_backups(
    db_path: str | Path | None = None, *, backup_dir: str | Path | None = None
) -> list[BackupInfo]:
    """Return the valid backups in the backup directory, oldest first."""
    if db_path is None and backup_dir is None:
        raise ValueError("give db_path or backup_dir")
    root = backup_dir_for(db_path or "", backup_dir)
    if not root.is_dir():
        return []
    found = []
    for item in sorted(root.iterdir()):
        if item.name.startswith("."):
            continue
        try:
            found.append(load_backup(item))
        except BackupError:
            continue  # a directory without valid metadata is not a backup
    found.sort(key=lambda b: (b.created_at, b.id))
    return found


def load_backup(path: Path) -> BackupInfo:
    """Return the BackupInfo of a backup directory or archive; raise NotABackup."""
    if path.is_file():
        from pebble_migrate.archive import read_archive_info

        return read_archive_info(path)
    meta = path / META
    if not path.is_dir():
        raise NotABackup(str(path), "no such file or directory")
    if not meta.is_file():
        raise NotABackup(str(path), f"it has no {META}")
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError) as exc:
        raise NotABackup(str(path), f"{META} is unreadable ({exc})") from None
    return decode_info(data, path, str(path))


def verify_backup(info: BackupInfo, data_dir: Path | None = None) -> None:
    """Raise BackupCorrupt unless every recorded file is present with its size and checksum.

    An archive is read through once, its files hashed as they stream by.
    """
    if info.archive and data_dir is None:
        from pebble_migrate.archive import verify_archive

        verify_archive(info)
        return
    folder = data_dir or info.path / DATA
    recorded = {f.name: f for f in info.files}
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    for name in sorted(recorded):
        expected = recorded[name]
        path = folder / name
        if name not in present:
            raise BackupCorrupt(info.id, name, "is missing")
        size = path.stat().st_size
        if size != expected.size:
            raise BackupCorrupt(info.id, name, f"has {size} bytes, {expected.size} recorded")
        if sha256_of(path) != expected.sha256:
            raise BackupCorrupt(info.id, name, "does not match its recorded checksum")
    extra = sorted(present - set(recorded) - {"LOCK", "LOG", "rocksdict-config.json"})
    extra = [name for name in extra if not name.startswith("LOG.old")]
    if extra:
        raise BackupCorrupt(info.id, extra[0], "is not part of the backup")


# --- cleanup ------------------------------------------------------------------------


@dataclass
class CleanupResult:
    """What cleanup removed (or would remove), and what it kept on purpose."""

    removed: list[BackupInfo]
    protected: list[BackupInfo]
    kept: list[BackupInfo]


def select_for_cleanup(
    backups: list[BackupInfo],
    *,
    older_than: timedelta | None,
    keep: int | None,
    last_migration_at: datetime | None,
    force: bool,
    now: datetime,
) -> CleanupResult:
    """Decide which backups go: older than the age (if given) and not among the newest
    `keep` (if given). Unless `force`, the newest backup, and the newest one taken before
    the last migration (the one that undoes it), always stay."""
    if older_than is None and keep is None:
        raise ValueError("give older_than, keep, or both")
    ordered = sorted(backups, key=lambda b: (b.created_at, b.id))
    newest_n = {b.id for b in ordered[max(0, len(ordered) - keep) :]} if keep else set()
    guarded: set[str] = set()
    if not force and ordered:
        guarded.add(ordered[-1].id)
        if last_migration_at is not None:
            before = [b for b in ordered if b.created_at <= last_migration_at]
            if before:
                guarded.add(before[-1].id)
    removed, protected, kept = [], [], []
    for b in ordered:
        old = older_than is None or now - b.created_at > older_than
        wanted_gone = old and b.id not in newest_n
        if wanted_gone and b.id in guarded:
            protected.append(b)
        elif wanted_gone:
            removed.append(b)
        else:
            kept.append(b)
    return CleanupResult(removed, protected, kept)


def cleanup_backups(
    db_path: str | Path,
    *,
    backup_dir: str | Path | None = None,
    older_than: timedelta | None = None,
    keep: int | None = None,
    force: bool = False,
    dry_run: bool = False,
    now: datetime | None = None,
) -> CleanupResult:
    """Remove old backups by age and/or count; see `select_for_cleanup` for the rule."""
    root = backup_dir_for(db_path, backup_dir)
    if root.is_dir() and not dry_run:
        sweep_temporary(root)
    result = select_for_cleanup(
        list_backups(db_path, backup_dir=backup_dir),
        older_than=older_than,
        keep=keep,
        last_migration_at=_last_migration_at(Path(db_path)),
        force=force,
        now=now or utc_now(),
    )
    if not dry_run:
        for b in result.removed:
            remove_backup(b)
    return result


def apply_retention(
    db_path: str | Path,
    *,
    backup_dir: str | Path | None,
    keep: int | None,
    older_than: timedelta | None,
    last_migration_at: datetime | None,
) -> list[BackupInfo]:
    """Apply the configured retention after an automatic backup; return what it removed."""
    result = select_for_cleanup(
        list_backups(db_path, backup_dir=backup_dir),
        older_than=older_than,
        keep=keep,
        last_migration_at=last_migration_at,
        force=False,
        now=utc_now(),
    )
    for b in result.removed:
        remove_backup(b)
    return result.removed


def _last_migration_at(db_path: Path) -> datetime | None:
    try:
        db = store.open_database(db_path, read_only=True)
    except MigrateError:
        return None
    try:
        with StateStore(db, str(db_path)) as states:
            return states.read().last_migration_at
    finally:
        db.close()


def remove_backup(info: BackupInfo) -> None:
    """Delete a backup: first its metadata (so a half-deleted one is no backup), then data."""
    if info.archive:
        info.path.unlink(missing_ok=True)
        return
    (info.path / META).unlink(missing_ok=True)
    fsync_dir(info.path)
    shutil.rmtree(info.path, ignore_errors=True)


# --- metadata encoding --------------------------------------------------------------


def encode_info(info: BackupInfo) -> dict[str, Any]:
    """Return the JSON form of backup.json."""
    return {
        "format": FORMAT,
        "id": info.id,
        "created_at": info.created_at.isoformat(),
        "description": info.description,
        "database_path": info.database_path,
        "database_id": info.database_id,
        "version": info.version,
        "status": info.status,
        "trigger": info.trigger,
        "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in info.files],
        "partial": dict(info.partial),
        "applied": None if info.applied is None else list(info.applied),
    }


def _text_map(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise TypeError("partial must map migration ids to text")
    return dict(value)


def _ids(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("applied must be a list of migration ids")
    return tuple(value)


def decode_info(data: Any, path: Path, what: str, *, archive: bool = False) -> BackupInfo:
    """Return the BackupInfo in backup.json data; raise NotABackup if malformed."""
    try:
        if data["format"] != FORMAT:
            raise ValueError(f"unknown format {data['format']!r}")
        return BackupInfo(
            id=str(data["id"]),
            path=path,
            created_at=datetime.fromisoformat(data["created_at"]).astimezone(UTC),
            description=str(data["description"]),
            database_path=str(data["database_path"]),
            database_id=data["database_id"],
            version=int(data["version"]),
            status=str(data["status"]),
            trigger=data["trigger"],
            files=tuple(
                BackupFile(str(f["name"]), int(f["size"]), str(f["sha256"])) for f in data["files"]
            ),
            archive=archive,
            partial=_text_map(data.get("partial")),
            applied=_ids(data.get("applied")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise NotABackup(what, f"{META} is malformed ({type(exc).__name__}: {exc})") from None
