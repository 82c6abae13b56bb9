"""The catalog of backups: listing them, the databases restores kept, cleanup and
retention, and which backup to name when something must be restored."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pebble_migrate import integrity, store
from pebble_migrate.backup import (
    DATA,
    BackupError,
    BackupInfo,
    TableDamaged,
    backup_dir_for,
    load_backup,
    remove_backup,
    sweep_temporary,
)
from pebble_migrate.durable import fsync_dir
from pebble_migrate.errors import (
    CorruptionError,
    DatabaseInUse,
    MigrateError,
    reports_filesystem_errors,
)
from pebble_migrate.faults import kill_point
from pebble_migrate.paths import resolve_database
from pebble_migrate.state import StateStore
from pebble_migrate.units import utc_now

# --- listing ------------------------------------------------------------------------


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


@reports_filesystem_errors("backup list")
def list_backups(
    db_path: str | Path | None = None,
    *,
    backup_dir: str | Path | None = None,
    everything: bool = False,
) -> list[BackupInfo]:
    """Return the valid backups of the database in the backup directory, oldest first.

    A backup directory may be shared: with `db_path`, only this database's backups are
    returned (by its database id; by its path for backups taken before it had one), unless
    `everything`, and each says whether it shares files (hard links) with the live
    database. Entries that are symlinks are not ours and are skipped.
    """
    if db_path is None and backup_dir is None:
        raise ValueError("give db_path or backup_dir")
    root = backup_dir_for(db_path or "", backup_dir)
    if not root.is_dir():
        return []
    path = resolve_database(db_path) if db_path is not None else None
    live = _live_inodes(path) if path is not None else None
    ours = _identity(path) if path is not None and not everything else None
    found = []
    for item in sorted(root.iterdir()):
        if item.name.startswith(".") or item.is_symlink():
            continue
        try:
            info = load_backup(item)
        except BackupError:
            continue  # a directory without valid metadata is not a backup
        if ours is not None and not _is_ours(info, ours):
            continue
        if live is not None:
            info = replace(info, shares_live=_shares(info, live))
        found.append(info)
    found.sort(key=lambda b: (b.created_at, b.id))
    return found


def unreadable(db_path: str | Path, backup_dir: str | Path | None) -> list[tuple[str, str]]:
    """Return (name, why) for each entry named like a backup whose metadata does not load
    (backup.json damaged or deleted): `backup list` names them rather than leave them out."""
    from pebble_migrate.backup import looks_like_backup_id

    root = backup_dir_for(db_path, backup_dir)
    if not root.is_dir():
        return []
    damaged = []
    for item in sorted(root.iterdir()):
        if item.is_symlink() or not looks_like_backup_id(item.name.removesuffix(".tar.gz")):
            continue
        try:
            load_backup(item)
        except BackupError as exc:
            damaged.append((item.name, exc.message.rstrip(".")))
    return damaged


def others_in(db_path: str | Path, backup_dir: str | Path | None) -> int:
    """Return how many backups in the directory are of other databases."""
    everything = list_backups(db_path, backup_dir=backup_dir, everything=True)
    return len(everything) - len(list_backups(db_path, backup_dir=backup_dir))


def _identity(path: Path) -> tuple[str | None, str]:
    """Return (database id, resolved path) of a database: what tells its backups apart."""
    return database_id_of(path), str(path)


def _is_ours(info: BackupInfo, ours: tuple[str | None, str]) -> bool:
    database_id, path = ours
    if database_id is None or info.database_id is None:
        return database_id is None or info.database_path == path
    return info.database_id == database_id


def database_id_of(path: Path) -> str | None:
    """Return the database id in a database's state, or None (no state, or unreadable)."""
    try:
        db = store.open_database(path, read_only=True)
    except (MigrateError, OSError):
        return None
    try:
        with StateStore(db, str(path)) as states:
            return states.read().database_id
    except MigrateError:
        return None
    finally:
        store.close_database(db)


def _live_inodes(db_path: Path) -> set[tuple[int, int]]:
    inodes: set[tuple[int, int]] = set()
    if not db_path.is_dir():
        return inodes
    for entry in os.scandir(db_path):
        with contextlib.suppress(OSError):
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                inodes.add((st.st_dev, st.st_ino))
    return inodes


def _shares(info: BackupInfo, live: set[tuple[int, int]]) -> bool:
    if info.archive:
        return False
    for f in info.files:
        with contextlib.suppress(OSError):
            st = (info.path / DATA / f.name).lstat()
            if (st.st_dev, st.st_ino) in live:
                return True
    return False


def damage_hint(
    db_path: Path, backup_dir: str | Path | None, file: str | None, cli: str = "pebble-migrate"
) -> str:
    """Return what to do about a damaged table file: which backups share it (the very same
    inode, anywhere in them, so they are damaged too) and which do not (copies, archives,
    backups from before it existed), naming the newest of those to restore.

    `file` is the damaged file's path as RocksDB named it, or its name in the database."""
    if file is None:
        return f"Check the disk, then restore a backup (`{cli} backup list`)."
    damaged = Path(file) if Path(file).is_absolute() else db_path / file
    try:
        st = damaged.lstat()
        inode: tuple[int, int] | None = (st.st_dev, st.st_ino)
    except OSError:
        inode = None
    try:
        backups = list_backups(db_path, backup_dir=backup_dir)
    except (MigrateError, OSError):
        backups = []
    if not backups:
        return (
            f"There is no backup of it in {backup_dir_for(db_path, backup_dir)}. Check the "
            "disk; restore from a copy kept elsewhere, if any."
        )
    sharing = [b for b in backups if inode is not None and _holds(b, inode)]
    apart = [b for b in backups if b not in sharing]
    parts = []
    if sharing:
        ids = ", ".join(b.id for b in sharing)
        parts.append(
            f"{damaged.name} is the very same file (a hard link) in backup(s) {ids}, so they "
            "are damaged too."
        )
    if apart:
        named = ", ".join(f"{b.id} ({'archive' if b.archive else b.mode})" for b in apart)
        parts.append(
            f"Backups that do not share it: {named}. Check the disk, then restore the newest: "
            f"`{cli} backup restore {apart[-1].id} --force`."
        )
    else:
        parts.append(
            "No backup holds a copy of its own: link-mode backups share the database's "
            f"table files. Check the disk and restore from elsewhere; from now on, take "
            f"independent copies too (`{cli} backup create --copy`, or backup-mode = "
            '"copy").'
        )
    return " ".join(parts)


def _holds(info: BackupInfo, inode: tuple[int, int]) -> bool:
    """Whether a directory backup holds the very file `inode` anywhere in it."""
    if info.archive:
        return False
    for f in info.files:
        with contextlib.suppress(OSError):
            st = (info.path / DATA / f.name).lstat()
            if (st.st_dev, st.st_ino) == inode:
                return True
    return False


def explain_damage(
    error: MigrateError, db_path: str | Path, backup_dir: str | Path | None, cli: str
) -> None:
    """Give a corruption error (or a failure it caused) the hint that names the backups
    that can repair it."""
    cause = getattr(error, "cause", None)
    corrupt = error if isinstance(error, CorruptionError) else cause
    if not isinstance(corrupt, CorruptionError) or isinstance(corrupt, TableDamaged):
        return
    file = integrity.damaged_path(corrupt.message) or integrity.damaged_file(corrupt.message)
    if file is None:
        return
    advice = damage_hint(resolve_database(db_path), backup_dir, file, cli)
    error.hint = f"Nothing more was written. {advice}"


# --- the databases restores kept, and cleanup ----------------------------------------


# --- the databases restores kept, and cleanup ----------------------------------------


@dataclass(frozen=True)
class KeptDatabase:
    """A database that a restore replaced and kept beside it (`<db>.pre-restore-<time>`)."""

    path: Path
    created_at: datetime

    @property
    def id(self) -> str:
        """Its directory name."""
        return self.path.name

    def summary(self) -> dict[str, Any]:
        """Return the fields `backup list --json` shows."""
        return {
            "kind": "pre-restore",
            "id": self.id,
            "path": str(self.path),
            "created_at": self.created_at.isoformat(),
            "size_bytes": store.directory_size(self.path),
        }


def kept_databases(db_path: str | Path) -> list[KeptDatabase]:
    """Return the databases restores replaced and kept beside this one, oldest first
    (real directories with the name a restore gives; never a symlink)."""
    from pebble_migrate.restore import kept_pattern

    path = resolve_database(db_path)
    pattern = kept_pattern(path)
    found: list[KeptDatabase] = []
    if not path.parent.is_dir():
        return found
    for item in path.parent.iterdir():
        match = pattern.match(item.name)
        if match is None or item.is_symlink() or not item.is_dir():
            continue
        try:
            when = datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            continue  # not a time a restore writes: not one of ours
        found.append(KeptDatabase(item, when))
    found.sort(key=lambda k: (k.created_at, k.id))
    return found


@dataclass
class CleanupResult:
    """What cleanup removed (or would remove), and what it kept on purpose; the same for
    the databases restores kept (`kept_removed`, `kept_protected`)."""

    removed: list[BackupInfo]
    protected: list[BackupInfo]
    kept: list[BackupInfo]
    kept_removed: list[KeptDatabase] = field(default_factory=list)
    kept_protected: list[KeptDatabase] = field(default_factory=list)


def _select(
    items: list[Any],
    *,
    older_than: timedelta | None,
    keep: int | None,
    guarded: set[str],
    now: datetime,
) -> tuple[list[Any], list[Any], list[Any]]:
    """Split items (each with `id` and `created_at`) into (removed, protected, kept)."""
    ordered = sorted(items, key=lambda b: (b.created_at, b.id))
    newest_n = {b.id for b in ordered[max(0, len(ordered) - keep) :]} if keep else set()
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
    return removed, protected, kept


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
    guarded: set[str] = set()
    if not force and ordered:
        guarded.add(ordered[-1].id)
        if last_migration_at is not None:
            before = [b for b in ordered if b.created_at <= last_migration_at]
            if before:
                guarded.add(before[-1].id)
    removed, protected, kept = _select(
        ordered, older_than=older_than, keep=keep, guarded=guarded, now=now
    )
    return CleanupResult(removed, protected, kept)


@reports_filesystem_errors("backup cleanup")
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
    """Remove old backups, and old databases kept by restores, by age and/or count, by
    the rule of `select_for_cleanup` (for kept databases: the newest stays unless `force`)."""
    root = backup_dir_for(db_path, backup_dir)
    if root.is_dir() and not dry_run:
        sweep_temporary(root)
    moment = now or utc_now()
    result = select_for_cleanup(
        list_backups(db_path, backup_dir=backup_dir),
        older_than=older_than,
        keep=keep,
        last_migration_at=_last_migration_at(resolve_database(db_path)),
        force=force,
        now=moment,
    )
    kept = kept_databases(db_path)
    guarded = {kept[-1].id} if kept and not force else set()
    result.kept_removed, result.kept_protected, _ = _select(
        kept, older_than=older_than, keep=keep, guarded=guarded, now=moment
    )
    if not dry_run:
        for b in result.removed:
            remove_backup(b)
            kill_point("cleanup-removed")
        for k in list(result.kept_removed):
            if not _remove_kept(k):
                result.kept_removed.remove(k)
                result.kept_protected.append(k)
            kill_point("cleanup-removed")
    return result


def _remove_kept(kept: KeptDatabase) -> bool:
    """Remove a kept database; return False (keeping it) if a process has it open."""
    from pebble_migrate.restore import locked

    if kept.path.is_symlink() or not kept.path.is_dir():
        return False  # not a directory a restore made: never followed, never removed
    try:
        with locked(kept.path):
            shutil.rmtree(kept.path)
    except DatabaseInUse:
        return False
    fsync_dir(kept.path.parent)
    return True


@reports_filesystem_errors("backup retention")
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
        store.close_database(db)
