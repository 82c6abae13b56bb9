"""Restore: verify a backup, build the copy beside the target, swap it in atomically.

At no instant is the target path missing or half-written: the copy is built and fsynced
under a staging name, then exchanged with the target in one `renameat2(RENAME_EXCHANGE)`.
Where that is unavailable, two renames are used, and a journal beside the target lets the
next command finish or undo a restore killed between them (or anywhere else).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pebble_migrate import store
from pebble_migrate.backup import (
    ARCHIVE_SUFFIX,
    DATA,
    BackupError,
    BackupFile,
    BackupInfo,
    NotABackup,
    backup_dir_for,
    disk_error,
    load_backup,
    process_alive,
    same_filesystem,
    verify_backup,
)
from pebble_migrate.durable import clone_or_copy, exchange, fsync_dir, write_json_atomic
from pebble_migrate.errors import (
    DatabaseInUse,
    DatabaseNotFound,
    InsufficientSpace,
    MigrateError,
    NotADatabase,
    reports_filesystem_errors,
)
from pebble_migrate.faults import kill_point
from pebble_migrate.paths import RESTORE_ROOM, resolve_database, stem
from pebble_migrate.state import State, StateStore
from pebble_migrate.units import utc_now

log = logging.getLogger("pebble_migrate")
_IMMUTABLE = (".sst", ".blob")
_ROCKSDB_NAME = re.compile(
    r"^(CURRENT|IDENTITY|LOCK|LOG(\.old\..*)?|MANIFEST-\d+|OPTIONS-\d+|\d+\.(sst|log|blob))$"
)
_FLOCK = "hhqqi4x"  # struct flock: type, whence, start, len, pid (and padding)
_JOURNAL_KEYS = ("target", "staging", "staging_inode", "keep_as", "replacing", "mode")


class OtherDatabase(BackupError):
    """Raised when a backup was taken of a different database than the target."""

    def __init__(self, backup_id: str, theirs: str | None, ours: str) -> None:
        if theirs is None:
            said = (
                f"backup {backup_id} does not say which database it is of (it holds no "
                f"migration state), and the target is database {ours}."
            )
            hint = (
                "Nothing was changed. If it is a backup of this database (taken before its "
                "first `up`), or you mean to replace it anyway, add --other-database."
            )
        else:
            said = f"backup {backup_id} is of database {theirs}, but the target is database {ours}."
            hint = (
                "Nothing was changed. If you really mean to replace it with another "
                "database's backup, add --other-database."
            )
        super().__init__(said, hint=hint)


@dataclass(frozen=True)
class RestoreResult:
    """What a restore did."""

    backup: BackupInfo
    target: Path
    kept_as: Path | None
    replaced: bool
    state: State
    recovered: str | None = None


@dataclass(frozen=True)
class _Target:
    """What is at the target path before the restore."""

    replacing: bool  # a non-empty directory is there
    state: State | None  # its migration state, when it opens
    damaged: str | None = None  # why it does not open, when it is a damaged database


def resolve(source: str, db_path: str | Path, backup_dir: str | Path | None = None) -> BackupInfo:
    """Return the backup a user named: a backup directory, an archive, or an id."""
    path = Path(source)
    if path.exists():
        # A path the operator typed may go through a symlink; what is inside it may not.
        return load_backup(Path(os.path.realpath(path)))
    root = backup_dir_for(db_path, backup_dir)
    if "/" not in source and source not in ("", ".", ".."):
        refused: NotABackup | None = None
        for candidate in (root / source, root / f"{source}{ARCHIVE_SUFFIX}"):
            if candidate.exists():
                try:
                    return load_backup(candidate)
                except NotABackup as exc:  # a half-removed directory beside its archive
                    refused = refused or exc
        if refused is not None:
            raise refused
    raise NotABackup(source, f"no such path, and no backup with that id in {root}")


@reports_filesystem_errors("backup restore")
def restore_backup(
    source: str | BackupInfo,
    target: str | Path,
    *,
    backup_dir: str | Path | None = None,
    other_database: bool = False,
    discard_current: bool = False,
    confirm: Callable[[str], bool] = lambda question: True,
) -> RestoreResult:
    """Replace the database at `target` with a verified copy of a backup.

    Refuses (changing nothing) a backup that is not one or is damaged, a backup of another
    database unless `other_database`, a target that is a file or in use, and a lack of
    free space. The replaced database is kept as `<target>.pre-restore-<time>` unless
    `discard_current`. A path that does not exist is restored into (emergency recovery).
    """
    # Resolved, so the journal names real places whatever directory recovery runs from, and
    # a database reached through a symlink is replaced where it lives (the link stays).
    dest = resolve_database(target)
    recovered = recover(dest)
    info = source if isinstance(source, BackupInfo) else resolve(source, dest, backup_dir)
    current = _inspect_target(dest)
    ours = current.state.database_id if current.state is not None else None
    if ours is not None and not other_database:
        _check_same_database(info, ours)
    kill_point("restore-checked")
    with locked(dest):
        _check_space(info, dest)
        # Sums that match prove these are the bytes RocksDB checked when the backup was
        # made; a backup made before that check existed is checked now. An archive is read
        # through first (headers and sums, writing nothing), so a member that is not
        # recorded, or larger than recorded, is refused before a byte is extracted.
        verify_backup(info, tables=not info.tables_checked)
        kill_point("restore-verified")
        if not confirm(_question(info, dest, current)):
            from pebble_migrate.commands import Aborted

            raise Aborted()
        staging = _staging_path(dest)
        try:
            _build(info, staging, _file_mode(dest), owner_of(dest))
            state = _open_check(staging, info)
            if ours is not None and not other_database and state.database_id != ours:
                raise OtherDatabase(info.id, state.database_id, ours)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise disk_error(exc, dest.parent, _needed(info, dest)) from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        kept = _swap(staging, dest, discard_current)
    return RestoreResult(info, dest, kept, current.replacing, state, recovered)


def _inspect_target(dest: Path) -> _Target:
    """Return what the restore would replace; refuse a file or a non-database directory."""
    if dest.exists() and not dest.is_dir():
        raise NotADatabase(str(dest), "it is a file; restore needs a database directory path")
    if not dest.exists() or not any(dest.iterdir()):
        return _Target(replacing=False, state=None)
    # A read-only open takes no lock (restore_backup's `locked` refuses a database in use),
    # so any error from it, even one whose text names a LOCK, is judged by the files here.
    try:
        db = store.open_database(dest, read_only=True)
    # Only if the directory is removed between the listing above and this open (a race).
    except DatabaseNotFound:  # pragma: no cover - a race no test can time
        return _Target(replacing=False, state=None)
    except MigrateError as exc:
        if not any(_ROCKSDB_NAME.match(p.name) for p in dest.iterdir()):
            raise NotADatabase(
                str(dest),
                "it is a directory holding no RocksDB files, and restore replaces only a database",
            ) from None
        # A damaged database is what a restore is for: it is replaced (and kept aside).
        return _Target(replacing=True, state=None, damaged=exc.message)
    try:
        with StateStore(db, str(dest)) as states:
            return _Target(replacing=True, state=states.read())
    except MigrateError as exc:
        return _Target(replacing=True, state=None, damaged=exc.message)
    finally:
        store.close_database(db)


def _check_same_database(info: BackupInfo, ours: str) -> None:
    """Refuse early a backup whose metadata names another database. One that names none
    is judged after it is built, by the database id in its own state."""
    if info.database_id is not None and info.database_id != ours:
        raise OtherDatabase(info.id, info.database_id, ours)


def _question(info: BackupInfo, dest: Path, current: _Target) -> str:
    what = f"backup {info.id} (version {info.version}, {info.status})"
    if not current.replacing:
        return f"Restore {what} into {dest}?"
    if current.state is None:
        return f"Replace the damaged database at {dest} ({current.damaged}) with {what}?"
    return (
        f"Replace the database at {dest} (version {current.state.current_version}, "
        f"{current.state.status.value}) with {what}?"
    )


# --- the database lock --------------------------------------------------------------

# File descriptors on a LOCK that this very process holds through RocksDB. Closing any
# descriptor of a file drops every POSIX lock the process has on it, so they stay open.
_KEEP_OPEN: list[int] = []


@contextlib.contextmanager
def locked(dest: Path) -> Iterator[None]:
    """Hold the target's RocksDB LOCK so no process opens it during the build and swap."""
    lock = dest / "LOCK"
    if not lock.is_file():
        yield
        return
    fd = os.open(lock, os.O_RDWR)
    try:
        holder = _try_lock(fd)
        if holder is not None:
            if holder == os.getpid():
                _KEEP_OPEN.append(fd)
                fd = -1
            raise DatabaseInUse(str(dest))
        yield
    finally:
        if fd >= 0:
            os.close(fd)


def _try_lock(fd: int) -> int | None:
    """Take an exclusive lock on the whole file; return None, or the holder's pid (0 if
    unknown) when another lock is in the way.

    Open-file-description locks conflict with RocksDB's POSIX lock even when this same
    process holds it, which a plain lockf would silently share.
    """
    ofd_set = getattr(fcntl, "F_OFD_SETLK", None)
    ofd_get = getattr(fcntl, "F_OFD_GETLK", None)
    if ofd_set is None or ofd_get is None:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return 0
        return None
    request = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    try:
        fcntl.fcntl(fd, ofd_set, request)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        probe = fcntl.fcntl(fd, ofd_get, request)
        kind, _, _, _, pid = struct.unpack(_FLOCK, probe)
        return 0 if kind == fcntl.F_UNLCK or pid < 0 else pid
    return None


# --- building the copy --------------------------------------------------------------


def _to_copy(info: BackupInfo, dest: Path) -> list[BackupFile]:
    """The files a restore writes anew (table files on the same filesystem are linked)."""
    if info.archive or not same_filesystem(info.path, dest.parent):
        return list(info.files)
    return [f for f in info.files if not f.name.endswith(_IMMUTABLE)]


def _needed(info: BackupInfo, dest: Path) -> int:
    return sum(f.size for f in _to_copy(info, dest)) + 1024 * 1024


def _check_space(info: BackupInfo, dest: Path) -> None:
    needed = _needed(info, dest)
    free = store.free_space(dest.parent)
    if free is not None and free < needed:
        raise InsufficientSpace(str(dest.parent), free, needed, f"restoring backup {info.id}")


_ROOM = RESTORE_ROOM  # the longest name derived below: `..<stem>.restore-journal.json.<pid>.tmp`


def _stem(dest: Path) -> str:
    return stem(dest, _ROOM)


def _staging_path(dest: Path) -> Path:
    return dest.parent / f".{_stem(dest)}.restore-{os.getpid()}"


def _journal_path(dest: Path) -> Path:
    return dest.parent / f".{_stem(dest)}.restore-journal.json"


def _file_mode(dest: Path) -> int:
    """Return the permission bits of the database's own files (its CURRENT), the widest
    that a restored file may get."""
    try:
        return stat.S_IMODE((dest / "CURRENT").stat().st_mode) & 0o666
    except OSError:
        return 0o644


def _build(info: BackupInfo, staging: Path, mode: int, owner: tuple[int, int]) -> None:
    """Build the restored copy: table files hard-linked (immutable), the rest copied as
    regular files whose permissions are never wider than the source's or the database's
    own (`mode`)."""
    staging.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(staging):
        shutil.rmtree(staging)
    if info.archive:
        from pebble_migrate.archive import extract_archive

        extract_archive(info, staging, mode)
    else:
        staging.mkdir(mode=dir_mode(mode))
        # A link backup's table files are linked back (RocksDB never changes them); a copy
        # backup's are cloned or copied, so that it stays independent of the database.
        link = info.mode == "link" and same_filesystem(info.path, staging)
        for f in info.files:
            source, target = info.path / DATA / f.name, staging / f.name
            target.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode(mode))
            table = f.name.endswith(_IMMUTABLE)
            if table and link and _safe_to_link(source, owner) and _linked(source, target):
                pass
            elif table and info.mode != "link":
                _clone_regular(source, target, mode)
            else:
                _copy_regular(source, target, mode)
            kill_point("restore-file")
    _give_to(staging, owner)
    fsync_dir(staging)
    fsync_dir(staging.parent)
    kill_point("restore-built")


def dir_mode(file_mode: int) -> int:
    """Return the mode for a directory of files with `file_mode` (searchable where read)."""
    readable = file_mode & 0o044
    return 0o700 | readable | (readable >> 2)


def _copy_regular(source: Path, target: Path, mode: int) -> None:
    """Copy a regular file (never through a link) with permissions no wider than its own
    and `mode`, and fsync it."""
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as src:
        st = os.fstat(src.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise BackupError(f"{source} is not a regular file; nothing was changed.")
        out_fd = os.open(
            target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IMODE(st.st_mode) & mode
        )
        with os.fdopen(out_fd, "wb") as out:
            shutil.copyfileobj(src, out, 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())


def owner_of(dest: Path) -> tuple[int, int]:
    """Return the (uid, gid) the restored database should belong to: the database's own
    when one is replaced (a restore often runs as root), else its parent directory's."""
    for candidate in (dest, dest.parent):
        with contextlib.suppress(OSError):
            st = candidate.stat()
            return st.st_uid, st.st_gid
    return os.geteuid(), os.getegid()


def _safe_to_link(source: Path, owner: tuple[int, int]) -> bool:
    """Whether a backup's table file may become a file of the database itself: a regular
    file owned by the database's owner that no one else may write. Anything else is copied,
    so no other user keeps a way to write into the database."""
    st = source.lstat()
    return stat.S_ISREG(st.st_mode) and st.st_uid == owner[0] and not st.st_mode & 0o022


def _clone_regular(source: Path, target: Path, mode: int) -> None:
    """Clone (reflink) or copy a regular file, never through a link, with safe permissions."""
    st = source.lstat()
    if not stat.S_ISREG(st.st_mode):
        raise BackupError(f"{source} is not a regular file; nothing was changed.")
    clone_or_copy(source, target, stat.S_IMODE(st.st_mode) & mode)


def _give_to(staging: Path, owner: tuple[int, int]) -> None:
    """Make the restored copy belong to the database's owner (a restore often runs as
    root; the application, which must open it read-write, usually does not)."""
    if os.geteuid() != 0:
        return
    for path in [staging, *staging.rglob("*")]:
        st = path.lstat()
        # A linked table file is already the owner's (see _safe_to_link); copies are new.
        if (st.st_uid, st.st_gid) != owner and (path.is_dir() or st.st_nlink == 1):
            os.lchown(path, *owner)


def _linked(source: Path, target: Path) -> bool:
    """Hard-link a table file (RocksDB never changes one); False where links are refused
    (another owner's file under protected_hardlinks, a filesystem without links)."""
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        return False
    return True


def _open_check(staging: Path, info: BackupInfo) -> State:
    try:
        db = store.open_database(staging, read_only=True)
    except MigrateError as exc:
        raise BackupError(
            f"backup {info.id} does not open as a database: {exc.message}",
            hint="Nothing was changed. Restore an older backup (`pebble-migrate backup list`).",
        ) from None
    try:
        with StateStore(db, str(staging)) as states:
            state = states.read()
    finally:
        store.close_database(db)
    kill_point("restore-opened")
    return state


# --- the swap -----------------------------------------------------------------------


def _keep_name(dest: Path) -> Path:
    stamp = utc_now().strftime("%Y%m%dT%H%M%SZ")
    base = f"{_stem(dest)}{KEPT_INFIX}{stamp}"
    candidate, n = dest.parent / base, 1
    while os.path.lexists(candidate):
        n += 1
        candidate = dest.parent / f"{base}-{n:02d}"
    return candidate


KEPT_INFIX = ".pre-restore-"


def kept_pattern(dest: Path) -> re.Pattern[str]:
    """Return the pattern of the names under which restores kept replaced databases."""
    return re.compile(rf"^{re.escape(_stem(dest) + KEPT_INFIX)}(\d{{8}}T\d{{6}}Z)(-\d{{2,}})?$")


def _moved_aside(record: dict[str, Any]) -> Path:
    """Where the two-renames fallback moves the replaced database first."""
    keep = record["keep_as"]
    return Path(keep) if keep is not None else Path(record["staging"] + "-old")


def _swap(staging: Path, dest: Path, discard: bool) -> Path | None:
    """Put the staged copy at `dest`; return where the replaced database was kept."""
    journal = _journal_path(dest)
    # An empty directory is replaced by the plain rename (which is atomic over it).
    replacing = dest.exists() and any(dest.iterdir())
    keep = None if discard or not replacing else _keep_name(dest)
    record: dict[str, Any] = {
        "target": str(dest),
        "staging": str(staging),
        "staging_inode": staging.stat().st_ino,
        "keep_as": None if keep is None else str(keep),
        "replacing": replacing,
        "mode": "exchange",
        "pid": os.getpid(),
    }
    try:
        write_json_atomic(journal, record)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    kill_point("restore-journal")
    try:
        if not replacing:
            staging.rename(dest)
        elif exchange(staging, dest):
            kill_point("restore-swapped")
        else:
            # No RENAME_EXCHANGE here: two renames, with the journal to finish or undo them.
            record["mode"] = "rename"
            write_json_atomic(journal, record)
            kill_point("restore-journal-rename")
            dest.rename(_moved_aside(record))
            kill_point("restore-moved-away")
            staging.rename(dest)
        fsync_dir(dest.parent)
        kill_point("restore-in-place")
        _settle(record)
        kill_point("restore-settled")
    except Exception as exc:
        # Leave the target as it was or as restored, never in between.
        with contextlib.suppress(Exception):
            _recover(dest, record)
            journal.unlink(missing_ok=True)
            fsync_dir(dest.parent)
        if isinstance(exc, OSError):
            raise _swap_error(exc, dest) from None
        # Every step above fails only with OSError; anything else (MemoryError) is kept.
        raise  # pragma: no cover - no input makes the steps above raise a non-OSError
    try:
        journal.unlink()
        kill_point("restore-journal-removed")
        fsync_dir(dest.parent)
    except OSError as exc:
        # The restore is done; a journal left behind is settled (finished) by the next
        # command, which finds the copy in place.
        log.warning(
            "the restore is done, but its journal stays (%s); the next command settles it", exc
        )
    return keep


def _swap_error(exc: OSError, dest: Path) -> MigrateError:
    """Return our error for a rename that the filesystem refused."""
    if exc.errno in (errno.EBUSY, errno.EXDEV):
        return BackupError(
            f"cannot swap a restored copy into {dest}: it is a mount point or on another "
            f"filesystem than its parent directory ({exc.strerror}).",
            hint=f"Nothing was changed. Restore into a directory inside it instead (for "
            f"example {dest / 'db'}) and point the application there.",
        )
    return store.translate(exc, dest)


def _settle(record: dict[str, Any]) -> None:
    """After the new copy is in place, keep or discard the replaced database."""
    staging = Path(record["staging"])
    old = staging if record["mode"] == "exchange" else _moved_aside(record)
    keep = record["keep_as"]
    if not os.path.lexists(old) or not record["replacing"]:
        return
    if old.is_symlink():
        old.unlink()  # not a directory a restore made: the link goes, never its target
    elif keep is None:
        shutil.rmtree(old)
    elif old != Path(keep):
        old.rename(keep)
        kill_point("restore-kept")
    fsync_dir(old.parent)


# --- recovery -----------------------------------------------------------------------


@reports_filesystem_errors("settling an interrupted restore")
def recover(dest: str | Path) -> str | None:
    """Finish or undo a restore into `dest` that was killed; return what was done, or None.

    Every command that opens `dest` may call it first. It refuses (BackupError) while the
    restore that wrote the journal is still running.
    """
    dest = resolve_database(dest)
    journal = _journal_path(dest)
    message = None
    if os.path.lexists(journal):
        record = _read_journal(journal, dest)
        pid = record.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and process_alive(pid):
            raise BackupError(
                f"a restore into {dest} is running (process {pid}).",
                hint="Wait for it to finish, then try again; nothing was changed.",
            )
        try:
            message = _recover(dest, record)
            journal.unlink(missing_ok=True)
            fsync_dir(journal.parent)
        except OSError as exc:
            raise BackupError(
                f"an interrupted restore into {dest} must be settled first, and that failed: "
                f"{exc.strerror} ({exc.filename}).",
                hint="Nothing was changed. On a read-only volume, mount it read-write and run "
                "any command again (it settles the restore), or see the journal "
                f"{journal} and settle it by hand.",
            ) from None
    with contextlib.suppress(OSError):
        _sweep_orphans(dest)
    return message


def _read_journal(journal: Path, dest: Path) -> dict[str, Any]:
    """Return the journal's record, checked field by field: its paths must be the names a
    restore into `dest` gives (the staging copy, the kept database), so a journal that was
    edited or planted can never make recovery move or delete anything else."""
    try:
        st = journal.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > 64 * 1024:
            raise ValueError("it is not a small regular file")
        record = json.loads(journal.read_text())
        if not isinstance(record, dict) or any(k not in record for k in _JOURNAL_KEYS):
            raise ValueError("fields are missing")
        _check_journal(record, dest)
    except (OSError, ValueError, TypeError) as exc:
        raise BackupError(
            f"the restore journal {journal} is unreadable or not one a restore wrote ({exc}).",
            hint=f"An interrupted restore left it; nothing was changed. Check by hand which of "
            f"{dest} and the .{_stem(dest)}.restore-* directories beside it holds the database "
            "you want, then delete the journal.",
        ) from None
    return record


def _check_journal(record: dict[str, Any], dest: Path) -> None:
    staging = record["staging"]
    if not isinstance(staging, str) or not re.fullmatch(
        rf"\.{re.escape(_stem(dest))}\.restore-\d+", Path(staging).name
    ):
        raise ValueError(f"its staging copy {staging!r:.80} is not a name a restore gives")
    keep = record["keep_as"]
    if keep is not None and (
        not isinstance(keep, str) or not kept_pattern(dest).match(Path(keep).name)
    ):
        raise ValueError(f"its kept database {keep!r:.80} is not a name a restore gives")
    if not isinstance(record["staging_inode"], int) or isinstance(record["staging_inode"], bool):
        raise TypeError("staging_inode is not a number")
    if not isinstance(record["replacing"], bool):
        raise TypeError("replacing is not true or false")
    if record["mode"] not in ("exchange", "rename"):
        raise ValueError(f"mode {record['mode']!r:.40} is unknown")
    pid = record.get("pid")
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool)):
        raise TypeError("pid is not a number")


def _sweep_orphans(dest: Path) -> None:
    """Remove staging copies and journal temp files left by dead restore processes."""
    if not dest.parent.is_dir():
        return
    name = re.escape(_stem(dest))
    staging = re.compile(rf"^\.{name}\.restore-(\d+)(-old)?$")
    temp = re.compile(rf"^\.\.{name}\.restore-journal\.json\.(\d+)\.tmp$")
    for item in dest.parent.iterdir():
        match = staging.match(item.name) or temp.match(item.name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and process_alive(pid):
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)


def _recover(dest: Path, record: dict[str, Any]) -> str:
    record = _beside(dest, record)
    staging = Path(record["staging"])
    swapped = dest.exists() and dest.stat().st_ino == record["staging_inode"]
    if swapped:
        _settle(record)
        fsync_dir(dest.parent)
        return f"finished an interrupted restore into {dest}"
    if not dest.exists() and record["replacing"]:
        moved = _moved_aside(record)
        if moved.exists():
            moved.rename(dest)  # undo: the old database goes back
            fsync_dir(dest.parent)
            shutil.rmtree(staging, ignore_errors=True)
            return f"undid an interrupted restore; {dest} is the database it was before"
        if staging.exists():
            staging.rename(dest)
            fsync_dir(dest.parent)
            return f"finished an interrupted restore into {dest}"
    if record["replacing"] and record.get("mode") == "rename" and _moved_aside(record).exists():
        # The old database was moved aside and something has since created a new one at
        # the target (an application opening the path creates an empty database). Which
        # one is wanted is not ours to guess, so nothing is deleted.
        raise BackupError(
            f"an interrupted restore moved the database at {dest} to {_moved_aside(record)}, "
            f"and a new database has appeared at {dest} since.",
            hint=f"Nothing was changed. The restored copy is {staging}. Put the one you want "
            f"at {dest}, then delete {_journal_path(dest)}.",
        )
    if not dest.exists() and record["replacing"]:
        raise BackupError(
            f"an interrupted restore into {dest} left neither the database it replaced nor "
            "the restored copy where its journal says.",
            hint=f"Nothing was deleted. Look beside {dest} for .{dest.name}.restore-* and "
            f"{dest.name}.pre-restore-* directories, put the database you want at {dest}, "
            f"then delete {_journal_path(dest)}.",
        )
    shutil.rmtree(staging, ignore_errors=True)
    return f"cleaned up an interrupted restore; {dest} is unchanged"


def _beside(dest: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Return the journal record with its paths placed beside `dest`.

    The staging copy and the kept database are always siblings of the target; naming them
    by base name makes an old journal written with relative paths safe to settle from any
    working directory.
    """
    fixed = dict(record)
    fixed["target"] = str(dest)
    fixed["staging"] = str(dest.parent / Path(record["staging"]).name)
    if record["keep_as"] is not None:
        fixed["keep_as"] = str(dest.parent / Path(record["keep_as"]).name)
    return fixed
