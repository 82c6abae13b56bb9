"""Backups: RocksDB checkpoints with checksummed metadata, listing, verification, cleanup."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import rocksdict

from pebble_migrate import integrity, store
from pebble_migrate.durable import clone_or_copy, fsync_dir, write_json_atomic
from pebble_migrate.errors import (
    CorruptionError,
    DiskFullError,
    InsufficientSpace,
    MigrateError,
    UsageError,
    reports_filesystem_errors,
)
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


class TableDamaged(CorruptionError):
    """Raised when RocksDB finds a table file of the database damaged while backing it up."""

    def __init__(
        self, db_path: Path, damage: integrity.Damage, backup_dir: str | Path | None
    ) -> None:
        self.file = damage.file
        name = damage.file or "a table file"
        detail = damage.detail
        if detail.startswith("RocksDB reports corrupt data in "):
            detail = detail.split(": ", 1)[-1]
        super().__init__(
            f"refusing to back up {db_path}: {name} is damaged ({detail}). A backup never "
            "records a damaged file.",
            hint="Nothing was written. " + _damage_hint(db_path, backup_dir, damage.file),
        )


def _damage_hint(db_path: Path, backup_dir: str | Path | None, file: str | None) -> str:
    from pebble_migrate.catalog import damage_hint

    return damage_hint(db_path, backup_dir, file)


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
    mode: str = "link"
    """How its files were made: `link` (hard links, shared with the live database),
    `copy` or `reflink` (independent inodes), or `archive` once packed."""
    tables_checked: bool = False
    """Whether RocksDB's own checksums of its table files were read when it was made."""
    shares_live: bool | None = None
    """Whether it shares files with the live database (None: not looked at)."""

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
            "mode": "archive" if self.archive else self.mode,
            "shares_files_with_database": self.shares_live,
        }


def backup_dir_for(db_path: str | Path, configured: str | Path | None = None) -> Path:
    """Return the backup directory: the configured one, or `<db>.backups` beside the
    resolved database path."""
    if configured is not None:
        root = Path(configured)
        if str(db_path):
            _refuse_inside_the_database(root, resolve_database(db_path))
        return root
    return default_backup_dir(resolve_database(db_path))


def _refuse_inside_the_database(root: Path, db: Path) -> None:
    """A backup directory inside the database directory would go with it: a restore
    replaces that directory whole, and RocksDB may treat unknown files there as its own."""
    real = Path(os.path.realpath(os.path.expanduser(os.fspath(root))))
    if real == db or db in real.parents:
        raise UsageError(
            f"the backup directory {root} is inside the database directory {db}: a restore "
            "replaces that directory, and every backup in it would go with it.",
            hint=f"Nothing was changed. Choose a backup directory outside the database "
            f"(--backup-dir, $PEBBLE_MIGRATE_BACKUP_DIR or `backup-dir` in pyproject.toml), "
            f"or leave it unset for the default, {default_backup_dir(db)}.",
        )


def describe_trigger(plan: Plan) -> str:
    """Return the description of an automatic backup taken before `plan` runs."""
    if plan.command == "rerun" and plan.steps:
        return f"before rerun of {plan.steps[-1].id}"
    n = len(plan.steps)
    return f"before {plan.command} to {plan.to_version}: {n} migration{'s' if n != 1 else ''}"


# --- creating -----------------------------------------------------------------------


MODES = ("link", "copy")
"""`link`: hard links (free, shares files with the live database); `copy`: independent
files (reflinks where the filesystem can clone, plain copies elsewhere)."""


DESCRIPTION_MAX = 2_000
"""The longest backup description taken (backup.json's reader accepts up to 10,000)."""


def check_description(description: str) -> None:
    """Refuse a description backup.json could not keep, before anything is written."""
    if len(description) > DESCRIPTION_MAX:
        raise UsageError(
            f"the backup description is {len(description):,} characters; at most "
            f"{DESCRIPTION_MAX:,} are kept.",
            hint="Nothing was written. Give a shorter description.",
        )


@reports_filesystem_errors("backup create")
def create_backup(
    db_path: str | Path,
    *,
    backup_dir: str | Path | None = None,
    description: str = "manual backup",
    trigger: str | None = None,
    compress: bool = False,
    mode: str = "link",
) -> BackupInfo:
    """Open the database (it must not be in use) and back it up."""
    db = store.open_database(resolve_database(db_path), read_only=False)
    try:
        return create_backup_of_open(
            db,
            db_path,
            backup_dir=backup_dir,
            description=description,
            trigger=trigger,
            compress=compress,
            mode=mode,
        )
    finally:
        store.close_database(db)


@reports_filesystem_errors("backup")
def create_backup_of_open(
    db: rocksdict.Rdict,
    db_path: str | Path,
    *,
    backup_dir: str | Path | None = None,
    description: str = "manual backup",
    trigger: str | None = None,
    compress: bool = False,
    mode: str = "link",
) -> BackupInfo:
    """Back up an open database: checkpoint, checks, checksums, metadata, atomic rename.

    RocksDB's checksums of every table file new since the last backup are read first; a
    damaged file is refused (`TableDamaged`) and nothing is written. With `mode="copy"`,
    the checkpoint's hard links are replaced by independent files.
    """
    if mode not in MODES:
        raise UsageError(f"unknown backup mode {mode!r}; choose one of {', '.join(MODES)}.")
    check_description(description)
    path = resolve_database(db_path)
    root = backup_dir_for(path, backup_dir)
    # Check the room first: a refused backup leaves no trace, not even the directory.
    _refuse_read_only(root)
    _check_room(root, db, path, compress or mode == "copy")
    made_root = not os.path.lexists(root)
    make_backup_root(root)
    sweep_temporary(root)
    created = utc_now()
    backup_id = _new_id(root, created)
    tmp = root / f".tmp-{backup_id}-{os.getpid()}"
    if mode == "link" and not same_filesystem(root, path):
        mode = "copy"  # a checkpoint on another filesystem copies every file
    try:
        _checkpoint(db, tmp / DATA)
        kill_point("backup-checkpoint")
        _copy_views(path, tmp / DATA, _partial_of(db, path))
        files = _checked_files(path, tmp / DATA, root / _CACHE, backup_dir)
        kill_point("backup-checked")
        made = _unshare(tmp / DATA, files, path) if mode == "copy" else "link"
        info = _describe(db, path, tmp, backup_id, created, description, trigger, files, made)
        write_json_atomic(tmp / META, encode_info(info))
        fsync_dir(tmp)
        final = root / backup_id
        tmp.rename(final)
        fsync_dir(root)
        kill_point("backup-renamed")
    except OSError as exc:
        _forget(tmp, root if made_root else None)
        raise disk_error(exc, root) from None
    except BaseException:
        _forget(tmp, root if made_root else None)
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


def _forget(tmp: Path, made_root: Path | None) -> None:
    """Remove what a refused or failed backup wrote: its temporary directory, and the backup
    directory itself if this backup made it and nothing else is in it."""
    shutil.rmtree(tmp, ignore_errors=True)
    if made_root is not None:
        with contextlib.suppress(OSError):
            (made_root / _CACHE).unlink(missing_ok=True)
            made_root.rmdir()


def _refuse_read_only(root: Path) -> None:
    """Raise BackupError when the backup directory is on a read-only filesystem."""
    probe = existing_ancestor(root)
    try:
        read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    except OSError:
        return
    if read_only:
        raise BackupError(
            f"cannot use {root} as the backup directory: its filesystem is read-only.",
            hint="Nothing was written. Choose another with --backup-dir (or "
            "PEBBLE_MIGRATE_BACKUP_DIR, or backup-dir in pyproject.toml); `up --no-backup` runs "
            "without a backup.",
        )


def make_backup_root(root: Path) -> None:
    """Create the backup directory if needed; raise BackupError saying why it cannot be."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not root.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "it is not a directory", str(root))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if isinstance(exc, FileExistsError):
            reason = "a file is in the way"
        raise BackupError(
            f"cannot use {root} as the backup directory: {reason}.",
            hint="Nothing was written. Fix that path, or choose another with --backup-dir "
            "(or PEBBLE_MIGRATE_BACKUP_DIR, or backup-dir in pyproject.toml); `up --no-backup` "
            "runs without a backup.",
        ) from None


def _checked_files(
    db_path: Path, data: Path, cache: Path, backup_dir: str | Path | None
) -> list[BackupFile]:
    """Return the checkpoint's files with their sums, after RocksDB has read every table
    file not checked by an earlier backup; raise TableDamaged for a damaged one."""
    known = _read_cache(cache)
    files, entries = [], {}
    unchecked: dict[Path, list[str]] = {}
    for path in sorted(p for p in data.rglob("*") if p.is_file() and not p.is_symlink()):
        st = path.stat()
        key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
        entry = known.get(key) if path.name.endswith(_IMMUTABLE) else None
        digest = entry["sha256"] if entry else sha256_of(path)
        if path.name.endswith(_IMMUTABLE):
            entries[key] = {"sha256": digest, "checked": bool(entry and entry["checked"])}
            if not entries[key]["checked"]:
                unchecked.setdefault(path.parent, []).append(path.name)
        files.append(BackupFile(str(path.relative_to(data)), st.st_size, digest))
    for folder, names in unchecked.items():
        damage = integrity.check_tables(folder, only=names)
        if damage is not None:
            live = db_path / folder.relative_to(data)
            detail = damage.detail.replace(str(folder), str(live))
            raise TableDamaged(db_path, integrity.Damage(damage.file, detail), backup_dir)
    for entry_ in entries.values():
        entry_["checked"] = True
    _write_cache(cache, entries)
    return files


def _unshare(data: Path, files: list[BackupFile], db_path: Path) -> str:
    """Replace every file of the checkpoint that shares an inode (the table files it
    hard-linked) by an independent one; return "reflink" if every one was cloned.

    Each copy is read back and compared with the sum recorded when the file was first
    checked, so a file damaged in place since then is found here and refused."""
    sums = {f.name: f.sha256 for f in files}
    how = set()
    for path in sorted(p for p in data.rglob("*") if p.is_file() and not p.is_symlink()):
        st = path.stat()
        if st.st_nlink < 2:
            continue
        fresh = path.with_name(f".{path.name}.copy")
        how.add(clone_or_copy(path, fresh, stat.S_IMODE(st.st_mode)))
        if sha256_of(fresh) != sums[str(path.relative_to(data))]:
            fresh.unlink()
            damage = integrity.Damage(
                path.name,
                f"{path.name} no longer matches the sum recorded when it was first backed up: "
                "it was changed in place since",
            )
            raise TableDamaged(db_path, damage, None)
        fresh.replace(path)
        kill_point("backup-copied")
    fsync_dir(data)
    return "reflink" if how == {"reflink"} else "copy"


def disk_error(exc: OSError, where: Path, needed: int | None = None) -> MigrateError:
    """Return DiskFullError for ENOSPC/EDQUOT, else a BackupError naming the failure; both
    say that nothing of the backup or restore was left behind."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            str(where),
            str(exc),
            store.free_space(where),
            needed,
            hint="Nothing was changed: the database is as it was, and the partial copy was "
            "removed. Free some space there (or choose another backup directory) and run the "
            "command again.",
        )
    return BackupError(
        f"cannot write under {where}: {exc.strerror or exc} ({exc.filename}).",
        hint="Nothing was changed. Fix that path (an entry in the way, permissions), or "
        "choose another backup directory with --backup-dir.",
    )


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
    from pebble_migrate.cursor import run_records

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
            if relative.parts[0].endswith(".tmp"):
                continue  # a view RocksDB never finished (killed while it was taken)
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
    while any(
        os.path.lexists(root / name)
        for name in (candidate, candidate + ARCHIVE_SUFFIX, f".tmp-{candidate}-{os.getpid()}")
    ):
        n += 1
        candidate = f"{base}-{n:02d}"
    return candidate


def _describe(
    db: rocksdict.Rdict,
    db_path: Path,
    folder: Path,
    backup_id: str,
    created: datetime,
    description: str,
    trigger: str | None,
    files: list[BackupFile],
    mode: str,
) -> BackupInfo:
    with StateStore(db, str(db_path)) as states:
        state = states.read()
    return BackupInfo(
        id=backup_id,
        path=folder,
        created_at=created,
        description=description,
        database_path=str(db_path),
        database_id=state.database_id,
        version=state.current_version,
        status=state.status.value,
        trigger=trigger,
        files=tuple(files),
        partial=_partial_of(db, db_path),
        applied=tuple(sorted(state.applied)),
        mode=mode,
        tables_checked=True,
    )


def sha256_of(path: Path) -> str:
    """Return the hex SHA-256 of a file."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _read_cache(path: Path) -> dict[str, dict[str, Any]]:
    """Return the cache: inode key -> {"sha256", "checked" (by RocksDB)}; a damaged or
    foreign cache is simply empty (it only saves work)."""
    data = read_small_json(path, 64 * 1024 * 1024)
    if not isinstance(data, dict):
        return {}
    cache: dict[str, dict[str, Any]] = {}
    for key, raw in data.items():
        # A bare sum was written before files were checked by RocksDB.
        value = {"sha256": raw, "checked": False} if isinstance(raw, str) else raw
        if isinstance(value, dict) and isinstance(value.get("sha256"), str):
            cache[str(key)] = {"sha256": value["sha256"], "checked": value.get("checked") is True}
    return cache


def read_small_json(path: Path, limit: int) -> Any:
    """Return the JSON in a regular file of at most `limit` bytes, or None: a FIFO, a
    device, a link or a file too large is never read (it could hang or exhaust memory)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        try:
            return json.loads(handle.read(limit + 1))
        except ValueError:
            return None


def _backup_dirs(root: Path) -> list[Path]:
    """Return the directories in `root` named and shaped like backups (not followed)."""
    found = []
    for item in root.iterdir():
        data = item / DATA
        real = _BACKUP_ID.match(item.name) and not item.is_symlink() and item.is_dir()
        if real and not data.is_symlink() and data.is_dir():
            found.append(item)
    return found


def _write_cache(path: Path, entries: dict[str, dict[str, Any]]) -> None:
    # Keep only the inodes still held by some backup, so the cache cannot grow forever.
    live = set(entries)
    for folder in _backup_dirs(path.parent):
        data = folder / DATA
        for item in data.iterdir():
            with contextlib.suppress(OSError):
                st = item.lstat()
                live.add(f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}")
    merged = {k: v for k, v in {**_read_cache(path), **entries}.items() if k in live}
    with contextlib.suppress(OSError):
        write_json_atomic(path, merged)


_TEMPORARY = re.compile(
    r"^(?:\.tmp-\d{8}T\d{6}Z(?:-\d{2,})?(?:\.tar\.gz)?-|\.\.checksums\.json\.)(\d+)(?:\.tmp)?$"
)


_BACKUP_ID = re.compile(r"^\d{8}T\d{6}Z(-\d{2,})?$")


def looks_like_backup_id(name: str) -> bool:
    """Whether `name` has the shape of the ids this tool gives backups."""
    return bool(_BACKUP_ID.match(name))


def sweep_temporary(root: Path) -> list[Path]:
    """Remove what dead backup processes left: temporary entries (`.tmp-<backup id>-<pid>`)
    and backup directories whose backup.json is gone (a removal, or the packing into an
    archive, that was killed halfway). Only names this tool makes, never a symlink, never
    another program's files."""
    removed = []
    for item in root.iterdir():
        if (
            _BACKUP_ID.match(item.name)
            and item.is_dir()
            and not item.is_symlink()
            and not os.path.lexists(item / META)
            and os.path.lexists(item / DATA)
        ):
            shutil.rmtree(item, ignore_errors=True)
            removed.append(item)
    for item in [*root.glob(".tmp-*"), *root.glob("..checksums.json.*.tmp")]:
        match = _TEMPORARY.match(item.name)
        if match is None or process_alive(int(match.group(1))):
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
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


def load_backup(path: Path) -> BackupInfo:
    """Return the BackupInfo of a backup directory or archive; raise NotABackup.

    A symlink is refused: a backup is a directory or file of its own, and nothing read
    through it is trusted to stay where it belongs.
    """
    if path.is_symlink():
        raise NotABackup(str(path), "it is a symlink")
    if path.is_file():
        from pebble_migrate.archive import read_archive_info

        return read_archive_info(path)
    meta = path / META
    if not path.is_dir():
        raise NotABackup(str(path), "no such file or directory")
    if meta.is_symlink() or not meta.is_file():
        raise NotABackup(str(path), f"it has no {META}")
    if meta.stat().st_size > META_LIMIT:
        raise NotABackup(str(path), f"{META} is unreadable (larger than {META_LIMIT} bytes)")
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError) as exc:
        raise NotABackup(str(path), f"{META} is unreadable ({exc})") from None
    return decode_info(data, path, str(path))


_LEFT_BY_OPENS = re.compile(r"^(LOCK|LOG|LOG\.old\.\d+)$")


@reports_filesystem_errors("backup verify")
def verify_backup(info: BackupInfo, data_dir: Path | None = None, *, tables: bool = True) -> None:
    """Raise BackupCorrupt unless the backup holds exactly its recorded files, each a
    regular file (no symlink, device or directory in its place) with its recorded size
    and SHA-256, and, with `tables`, unless RocksDB reads every table file intact.

    An archive is read through once, its files hashed as they stream by.
    """
    if info.archive and data_dir is None:
        from pebble_migrate.archive import verify_archive

        verify_archive(info)
        return
    folder = data_dir or info.path / DATA
    if data_dir is None and (info.path.is_symlink() or folder.is_symlink()):
        raise BackupCorrupt(info.id, DATA, "is a symlink")
    if not folder.is_dir():
        raise BackupCorrupt(info.id, DATA, "is missing")
    recorded = {f.name: f for f in info.files}
    present = _regular_files(info.id, folder)
    for name in sorted(recorded):
        expected = recorded[name]
        size = present.get(name)
        if size is None:
            raise BackupCorrupt(info.id, name, "is missing")
        if size != expected.size:
            raise BackupCorrupt(info.id, name, f"has {size} bytes, {expected.size} recorded")
        if sha256_of(folder / name) != expected.sha256:
            raise BackupCorrupt(info.id, name, "does not match its recorded checksum")
    extra = sorted(n for n in set(present) - set(recorded) if not _LEFT_BY_OPENS.match(n))
    if extra:
        raise BackupCorrupt(info.id, extra[0], "is not part of the backup")
    if tables:
        damage = integrity.check_tables(folder)
        if damage is not None:
            detail = damage.detail.split(": ", 1)[-1]
            what = damage.file or "its database"
            raise BackupCorrupt(info.id, what, f"is damaged ({detail})")


def _regular_files(backup_id: str, folder: Path) -> dict[str, int]:
    """Return every file under `folder` (relative name -> size), walking without following
    links; raise BackupCorrupt for anything that is not a regular file or directory."""
    found: dict[str, int] = {}
    pending = [folder]
    while pending:
        current = pending.pop()
        for entry in os.scandir(current):
            name = os.path.relpath(entry.path, folder)
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                pending.append(Path(entry.path))
            elif stat.S_ISREG(st.st_mode):
                found[name] = st.st_size
            else:
                kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                raise BackupCorrupt(backup_id, name, f"is {kind}")
    return found


def remove_backup(info: BackupInfo) -> None:
    """Delete a backup: first its metadata (so a half-deleted one is no backup), then data.

    A symlink is never followed: a backup reached through one is not removed."""
    if info.path.is_symlink():
        raise BackupError(f"{info.path} is a symlink; pebble-migrate removes only its own files.")
    if info.archive:
        info.path.unlink(missing_ok=True)
        return
    (info.path / META).unlink(missing_ok=True)
    fsync_dir(info.path)
    kill_point("backup-meta-removed")
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
        "mode": info.mode,
        "tables_checked": info.tables_checked,
    }


_SAFE_PART = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
_TOP_NAME = re.compile(
    r"^(CURRENT|IDENTITY|MANIFEST-\d+|OPTIONS-\d+|\d+\.(sst|log|blob)|rocksdict-config\.json)$"
)
_SHA = re.compile(r"^[0-9a-f]{64}$")


def _file(entry: Any) -> BackupFile:
    """Return one recorded file, refusing names that could point anywhere but inside the
    backup: only RocksDB's file names, and the scans' views under `.pebble-migrate/scans`."""
    name, size, digest = entry["name"], entry["size"], entry["sha256"]
    if not isinstance(name, str) or not _safe_name(name):
        raise ValueError(f"file name {name!r:.80} is not one a backup holds")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 2**50:
        raise ValueError(f"size of {name} is {size!r:.40}")
    if not isinstance(digest, str) or not _SHA.match(digest):
        raise ValueError(f"sha256 of {name} is {digest!r:.80}")
    return BackupFile(name, size, digest)


def _safe_name(name: str) -> bool:
    parts = name.split("/")
    if len(parts) == 1:
        return bool(_TOP_NAME.match(name))
    return (
        len(parts) == 5
        and parts[:2] == [".pebble-migrate", "scans"]
        and all(_SAFE_PART.match(p) and p not in (".", "..") for p in parts[2:])
        and bool(_TOP_NAME.match(parts[4]))
    )


def _mode(value: Any) -> str:
    if value not in ("link", "copy", "reflink"):
        raise ValueError(f"unknown mode {value!r:.40}")
    return str(value)


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


META_LIMIT = 16 * 1024 * 1024
"""The largest backup.json read (a real one is a few KiB per thousand files)."""


def decode_info(data: Any, path: Path, what: str, *, archive: bool = False) -> BackupInfo:
    """Return the BackupInfo in backup.json data; raise NotABackup if malformed.

    Every field is checked: its id must be the name of the backup's directory (or archive),
    each file is named once, numbers are in range and times are times.
    """
    try:
        if not isinstance(data, dict):
            raise TypeError(f"expected an object, found {type(data).__name__}")
        if data["format"] != FORMAT:
            raise ValueError(f"unknown format {data['format']!r:.40}")
        backup_id = _string(data["id"], "id", 64)
        name = path.name.removesuffix(ARCHIVE_SUFFIX) if archive else path.name
        if not _BACKUP_ID.match(backup_id):
            raise ValueError(f"its id {backup_id!r:.80} is not a backup id")
        # A copy shipped elsewhere may be renamed; a name shaped like an id must be its id.
        if _BACKUP_ID.match(name) and backup_id != name:
            raise ValueError(f"its id {backup_id!r:.80} is not its name {name!r:.80}")
        files = tuple(_file(f) for f in data["files"])
        names = [f.name for f in files]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"{twice[0]} is listed twice")
        version = data["version"]
        if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version < 2**63:
            raise TypeError(f"version {version!r:.40} is not a version")
        return BackupInfo(
            id=backup_id,
            path=path,
            created_at=_moment(data["created_at"]),
            description=_string(data["description"], "description", 10_000),
            database_path=_string(data["database_path"], "database_path", 8192),
            database_id=_optional(data["database_id"], "database_id", 64),
            version=version,
            status=_string(data["status"], "status", 16),
            trigger=_optional(data["trigger"], "trigger", 200),
            files=files,
            archive=archive,
            partial=_text_map(data.get("partial")),
            applied=_ids(data.get("applied")),
            mode=_mode(data.get("mode", "link")),
            tables_checked=data.get("tables_checked") is True,
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise NotABackup(what, f"{META} is malformed ({type(exc).__name__}: {exc})") from None


def _string(value: Any, field_name: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise TypeError(f"{field_name} is not text of at most {limit} characters")
    return value


def _optional(value: Any, field_name: str, limit: int) -> str | None:
    return None if value is None else _string(value, field_name, limit)


def _moment(value: Any) -> datetime:
    moment = datetime.fromisoformat(_string(value, "created_at", 64))
    if moment.tzinfo is None:
        raise ValueError("created_at has no time zone")
    return moment.astimezone(UTC)
