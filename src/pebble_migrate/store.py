"""Opening RocksDB safely, checked iteration, and translating rocksdict's errors."""

from __future__ import annotations

import errno
import gc
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import rocksdict

from pebble_migrate.errors import (
    CorruptionError,
    DatabaseInUse,
    DatabaseNotFound,
    DiskFullError,
    MigrateError,
    NotADatabase,
    StorageError,
    UsageError,
)

STATE_CF = "pebble_migrate"
"""The reserved column family that holds the migration state, out of the app's keyspace."""

_MANIFEST = re.compile(r"^MANIFEST-\d+$")
_ROCKSDB_FILE = re.compile(r"^(MANIFEST-\d+|OPTIONS-\d+|\d+\.(sst|log|blob)|IDENTITY)$")


def check_database_dir(path: Path) -> None:
    """Raise unless `path` is a directory holding a RocksDB database (CURRENT -> MANIFEST)."""
    if not path.exists():
        raise DatabaseNotFound(str(path))
    if not path.is_dir():
        raise NotADatabase(str(path), "it is a file, not a directory")
    current = path / "CURRENT"
    if not current.is_file():
        rocks = [p.name for p in path.iterdir() if _ROCKSDB_FILE.match(p.name)]
        if rocks:
            raise NotADatabase(str(path), "its CURRENT file is missing, so it looks damaged")
        if not any(path.iterdir()):
            raise NotADatabase(str(path), "the directory is empty", empty=True)
        raise NotADatabase(str(path), "it holds no RocksDB files (no CURRENT)")
    manifest = current.read_text(errors="replace").strip()
    if not _MANIFEST.match(manifest) or not (path / manifest).is_file():
        raise NotADatabase(str(path), f"CURRENT names {manifest!r}, which is not there")


def is_creatable(path: Path) -> bool:
    """Return whether a new database may be created at `path` (missing or an empty dir,
    under directories: not below a file)."""
    if blocking_file(path) is not None:
        return False
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def refuse_file_in_the_way(where: Path) -> None:
    """Raise a UsageError when a file stands where a parent directory of `where` would
    have to be, so no database could be created there."""
    in_the_way = blocking_file(where)
    if in_the_way is not None:
        raise UsageError(
            f"cannot create a database at {where}: {in_the_way} is a file, not a directory.",
            hint="Nothing was changed. Choose another path.",
        )


def blocking_file(path: Path) -> Path | None:
    """Return the file (not a directory) that stands where `path` or one of its parents
    would have to be a directory, if any."""
    for at in (path, *path.parents):
        if at.exists():
            return None if at.is_dir() else (at if at != path else None)
    return None


def open_database(
    path: str | Path,
    *,
    read_only: bool,
    create: bool = False,
    strict_wal: bool = False,
    skip_wal_damage: bool = False,
) -> rocksdict.Rdict:
    """Open the database at `path` the way rocksdict does by default, never creating one
    unless `create` is set and the path is missing or an empty directory."""
    where = Path(path)
    if create:
        refuse_file_in_the_way(where)
    if create and is_creatable(where):
        where.mkdir(parents=True, exist_ok=True)
        return _guarded(
            where, lambda: rocksdict.Rdict(str(where), rocksdict.Options(raw_mode=True))
        )
    check_database_dir(where)
    if read_only:
        return _open_read_only(where, strict_wal=strict_wal, skip_wal_damage=skip_wal_damage)
    # No Options: rocksdict then loads the database's own options, column families and
    # raw/pickle mode, so databases written by other programs open unchanged.
    access = rocksdict.AccessType.read_write()
    return _guarded(where, lambda: _open_default(where, where, access, writable=True))


def _open_default(
    where: Path, at: Path, access: rocksdict.AccessType, *, writable: bool
) -> rocksdict.Rdict:
    """Open `at` (the database, or its read-only shadow) with the database's own options,
    column families and key mode, as rocksdict does by default, with two differences.

    - The write-ahead log is replayed tolerating only an incomplete last record (what a
      crash during a write leaves), not a damaged record in the middle. RocksDB's default
      stops the replay at the first damaged record and drops the rest of the log without a
      word, and a read-write open then writes the shortened data back: the damage would be
      hidden for good. Here the open fails with the corruption instead.
    - Every column family the MANIFEST has is opened. A process killed while RocksDB
      creates a family can leave it missing from the newest OPTIONS file, from which
      rocksdict takes the families to open: a read-write open is then refused ("Column
      families not opened"), for the application too, and a read-only one would succeed
      without it, reading the state as never initialized. A read-write open here writes a
      complete OPTIONS file, which mends the database for every later open.
    """
    del writable  # the same for both; kept for the callers' clarity
    try:
        options, families = rocksdict.Options.load_latest(str(at))
        listed = rocksdict.Rdict.list_cf(str(at))
    except Exception:  # noqa: BLE001 - damaged files: the default open says what is wrong
        return rocksdict.Rdict(str(at), access_type=access)
    named = dict(families)
    missing = [name for name in listed if name not in named]
    if missing:
        log.warning(
            "%s: column family %s is missing from its OPTIONS file (a process was killed "
            "while creating it); opening it with every column family%s.",
            where,
            ", ".join(missing),
            ", which writes a complete OPTIONS file" if at == where else "",
        )
        raw = _configured_raw(at)
        for name in missing:
            named[name] = rocksdict.Options(raw_mode=raw)
    options.set_wal_recovery_mode(rocksdict.DBRecoveryMode.tolerate_corrupted_tail_records())
    return rocksdict.Rdict(str(at), options, column_families=named, access_type=access)


log = logging.getLogger("pebble_migrate")


def _shown(path: Path) -> str:
    """The database a (possibly shadow) path stands for, as the user knows it."""
    return _SHADOWS.get(str(path), str(path))


def close_database(db: rocksdict.Rdict, *, quiet: bool = False) -> None:
    """Close a database opened by `open_database`, and remove its read-only shadow.

    A failing close (a full disk while RocksDB syncs its directory or flushes on the way
    out) is only logged: everything this tool writes is committed by a synced batch before
    it closes, so a close can lose nothing that was done, and an error here would report a
    finished command as failed. `quiet` skips the warning (after an error already shown).
    """
    try:
        path = Path(str(db.path()))
    except Exception:  # noqa: BLE001 - DbClosedError: closed already (a failed write closes it)
        gc.collect()
        return
    try:
        db.close()
    except Exception as exc:  # noqa: BLE001 - rocksdict raises plain Exception
        gc.collect()  # a failed close still lets go of the LOCK once the object is gone
        if not quiet:
            log.warning(
                "closing %s reported: %s. Nothing to do: everything was committed before.",
                _shown(path),
                translate(exc, _shown(path)).message.rstrip("."),
            )
    finally:
        if _is_shadow(path):
            _SHADOWS.pop(str(path), None)
            shutil.rmtree(path, ignore_errors=True)


# --- read-only opens that write nothing -------------------------------------------

# rocksdict rewrites `rocksdict-config.json` (O_TRUNC) on every open, read-only ones too,
# which fails on a read-only volume and touches a database that a health check should
# only look at. So a read-only open goes through a shadow: a temporary directory of
# symlinks to the database's own RocksDB files (regular files only), with a copy of the
# config. RocksDB reads the real files through the links; rocksdict writes its config
# into the shadow, which is removed when the database is closed.

_SHADOW_PREFIX = "pebble-migrate-ro-"
_SHADOWED = re.compile(r"^(CURRENT|IDENTITY|MANIFEST-\d+|OPTIONS-\d+|\d+\.(sst|log|blob))$")
_CONFIG = "rocksdict-config.json"
_RETRIES = 3  # a writer may replace MANIFEST or delete a file between listing and opening


_SHADOWS: dict[str, str] = {}
"""Shadow directory -> the database it shows, to name the real files in RocksDB's errors."""


def _real_paths(text: str) -> str:
    for shadow, real in _SHADOWS.items():
        text = text.replace(shadow, real)
    return text


def _open_read_only(
    where: Path, *, strict_wal: bool = False, skip_wal_damage: bool = False
) -> rocksdict.Rdict:
    _sweep_shadows()
    access = rocksdict.AccessType.read_only(False)
    for attempt in range(_RETRIES):
        shadow = _shadow_of(where)

        def opener(at: Path = shadow) -> rocksdict.Rdict:
            if strict_wal or skip_wal_damage:
                # Only for a check: the options are the defaults plus the key mode, which
                # is all a read-only walk needs, and rocksdict writes them to the shadow.
                # Strict: no damaged log record tolerated; skip: every damaged one dropped.
                modes = rocksdict.DBRecoveryMode
                options = rocksdict.Options(raw_mode=_configured_raw(at))
                options.set_wal_recovery_mode(
                    modes.absolute_consistency()
                    if strict_wal
                    else modes.skip_any_corrupted_record()
                )
                return rocksdict.Rdict(str(at), options=options, access_type=access)
            return _open_default(where, at, access, writable=False)

        _SHADOWS[str(shadow)] = os.path.realpath(where)
        try:
            return _guarded(where, opener)
        except MigrateError as exc:
            _SHADOWS.pop(str(shadow), None)
            shutil.rmtree(shadow, ignore_errors=True)
            if attempt == _RETRIES - 1 or "No such file" not in exc.message:
                raise
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _configured_raw(shadow: Path) -> bool:
    """Return the key mode rocksdict recorded for a database (raw when it says nothing)."""
    import json

    try:
        config = json.loads((shadow / _CONFIG).read_text())
    except (OSError, ValueError):
        return True
    return bool(config.get("raw_mode", True)) if isinstance(config, dict) else True


def _shadow_of(where: Path) -> Path:
    """Return a new shadow directory of `where` (symlinks to its RocksDB files)."""
    shadow = Path(tempfile.mkdtemp(prefix=f"{_SHADOW_PREFIX}{os.getpid()}-"))
    real = os.path.realpath(where)
    try:
        for entry in os.scandir(real):
            if entry.is_file(follow_symlinks=False) and _SHADOWED.match(entry.name):
                os.symlink(os.path.join(real, entry.name), shadow / entry.name)
        config = where / _CONFIG
        if config.is_file() and not config.is_symlink():
            shutil.copyfile(config, shadow / _CONFIG)
    except OSError as exc:
        shutil.rmtree(shadow, ignore_errors=True)
        raise StorageError(
            f"cannot prepare a read-only view of {where} in {shadow.parent}: {exc.strerror}.",
            hint="A read-only open needs a little room in the temporary directory "
            "($TMPDIR); nothing was changed.",
        ) from None
    return shadow


def _is_shadow(path: Path) -> bool:
    return path.parent == Path(tempfile.gettempdir()) and path.name.startswith(_SHADOW_PREFIX)


def _sweep_shadows() -> None:
    """Remove shadows left by processes that are gone (this one's go when they close)."""
    root = Path(tempfile.gettempdir())
    try:
        entries = list(root.glob(f"{_SHADOW_PREFIX}*"))
    except OSError:
        return
    for item in entries:
        pid = item.name.removeprefix(_SHADOW_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)) and item.is_dir() and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _guarded(path: Path, opener: Callable[[], rocksdict.Rdict]) -> rocksdict.Rdict:
    try:
        db: rocksdict.Rdict = opener()
    except Exception as exc:  # noqa: BLE001 - rocksdict raises plain Exception
        raise translate(exc, path) from None
    return db


def translate(  # noqa: PLR0911 - one return per kind of RocksDB error
    exc: BaseException, path: str | Path, *, needed: int | None = None
) -> MigrateError:
    """Return our error for an exception raised by rocksdict."""
    if isinstance(exc, MigrateError):
        return exc
    text = _real_paths(str(exc))
    where = str(path)
    # RocksDB's own words for a LOCK held elsewhere (another process, or this one), not
    # merely "LOCK" somewhere in a path such as /data/BLOCKS.
    if "IO error" in text and ("While lock file:" in text or "lock hold by current" in text):
        return DatabaseInUse(where)
    if "No space left" in text or getattr(exc, "errno", None) == errno.ENOSPC:
        return DiskFullError(where, text, free_space(Path(where)), needed)
    if text.startswith("Corruption:"):
        return CorruptionError(
            f"RocksDB reports corrupt data in {where}: {text.removeprefix('Corruption: ')}",
            hint="Nothing more was written. Restore a backup "
            "(`pebble-migrate backup list`, `pebble-migrate backup restore ID --force`).",
        )
    if "does not match existing comparator" in text:
        return _settings_damaged(where, text)
    if isinstance(exc, rocksdict.DbClosedError):
        return StorageError(
            f"the database at {where} was closed while pebble-migrate was using it.",
            hint="Keep the database open until the call returns.",
        )
    return StorageError(f"RocksDB error on {where}: {text}", hint=_storage_hint(text, exc))


def _storage_hint(text: str, exc: BaseException) -> str:
    """What to do about an I/O error RocksDB reported (its message carries the OS's)."""
    code = getattr(exc, "errno", None)
    if "Read-only file system" in text or code == errno.EROFS:
        return (
            "The filesystem holding the database is read-only: remount it read-write, or "
            "copy the database somewhere writable, then run the command again. Nothing was "
            "changed; status, history and validate work on it as it is."
        )
    if "Permission denied" in text or code == errno.EACCES:
        return (
            "The user running pebble-migrate cannot write there: check the owner and the "
            "permissions of the database directory and its files, then run the command again."
        )
    return (
        "Check the path, its permissions and the disk (the kernel log says more about I/O "
        "errors), then run the command again; what was committed before the error is kept, "
        "and `pebble-migrate status` says where things stand."
    )


def _settings_damaged(where: str, text: str) -> MigrateError:
    files = sorted(p.name for p in Path(where).glob("OPTIONS-*"))
    named = ", ".join([*files, "rocksdict-config.json"])
    return StorageError(
        f"RocksDB cannot open {where} with the options it finds: {text}.",
        hint=f"Its settings files ({named}) may be damaged. Nothing was changed. Restore a "
        "backup (`pebble-migrate backup list`, `pebble-migrate backup restore ID --force`).",
    )


def free_space(path: Path) -> int | None:
    """Return the free bytes on the filesystem holding `path` (or its nearest parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def directory_size(path: Path) -> int:
    """Return the total size in bytes of the regular files under `path`, each inode once
    (the scans' frozen views hard-link the database's own table files)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for item in path.rglob("*"):
        try:
            st = item.lstat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def is_raw_mode(db: rocksdict.Rdict) -> bool:
    """Return whether `db` was opened in raw (bytes-only) mode rather than pickle mode."""
    try:
        db.get("pebble-migrate raw-mode probe")
    except KeyError as exc:
        if "raw mode" in str(exc):
            return True
        raise  # pragma: no cover - rocksdict's get raises KeyError only for a str key in raw mode
    return False


def successor(prefix: Any) -> Any:
    """Return the smallest key greater than every key starting with `prefix` (None: no bound).

    Works for bytes keys and, in pickle-mode databases, for str keys.
    """
    if isinstance(prefix, str):
        top = chr(0x10FFFF)
        trimmed_text = prefix.rstrip(top)
        if not trimmed_text:
            return None
        return trimmed_text[:-1] + chr(ord(trimmed_text[-1]) + 1)
    trimmed = bytes(prefix).rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def checked_items(
    source: Any, where: str, *, start: Any = None, end: Any = None
) -> Iterator[tuple[Any, Any]]:
    """Yield (key, value) in [start, end) from an Rdict, Snapshot or column family, and
    raise CorruptionError if RocksDB stopped early, which its own iterators do silently.

    Uses the fast `items()` walk, then proves it reached the real last key of the range
    with one checked seek. Only call it on a view that cannot change underneath (a
    snapshot, a read-only or checkpoint open), or concurrent writes look like truncation.
    """
    last: Any = None
    seen = False
    items = source.items(from_key=start) if start is not None else source.items()
    try:
        for key, value in items:
            if end is not None and not key < end:
                break
            last, seen = key, True
            yield key, value
    except TypeError:
        pass  # pickle mode: keys of another type sort after this range
    finally:
        del items
    verify_scan_end(source, where, last if seen else None, start, end)


def verify_scan_end(source: Any, where: str, last: Any, start: Any, end: Any) -> None:
    """Raise CorruptionError unless `last` is the real last key of [start, end) in `source`
    (None: the range is empty). RocksDB's items() stops early, silently, on a bad block."""
    it = source.iter()
    try:
        true_last = _last_key_before(it, start, end)
        if true_last is _NOTHING or (last is not None and _same(true_last, last)):
            return
        # items() stopped before the range's real last key: walk on to get RocksDB's error.
        if last is None:
            it.seek_to_first() if start is None else it.seek(start)
        else:
            it.seek(last)
        while it.valid():
            it.next()
        it.status()
        raise CorruptionError(
            f"a scan of {where} stopped early after key {last!r} with no error reported; "
            "the data may be damaged.",
            hint="Nothing was changed by this scan. Check the disk, then restore a backup.",
        )
    except MigrateError:
        raise
    except Exception as exc:  # noqa: BLE001 - rocksdict raises plain Exception
        raise translate(exc, where) from None
    finally:
        del it


_NOTHING = object()


def _last_key_before(it: Any, start: Any, end: Any) -> Any:
    if end is None:
        it.seek_to_last()
    else:
        it.seek_for_prev(end)
        if it.valid() and _same(it.key(), end):
            it.prev()
    if not it.valid():
        it.status()
        return _NOTHING
    key = it.key()
    try:
        if start is not None and key < start:
            return _NOTHING
    except TypeError:
        return _NOTHING
    return key


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def is_empty(db: rocksdict.Rdict, where: str) -> bool:
    """Return whether the app's keyspace (default and app column families) holds no key."""
    for name in rocksdict.Rdict.list_cf(str(db.path())):
        if name == STATE_CF:
            continue
        cf = db if name == "default" else db.get_column_family(name)
        it = cf.iter()
        try:
            # Keys only: reading values would unpickle them in a pickle-mode database.
            it.seek_to_first()
            if it.valid():
                return False
            it.status()
        except Exception as exc:  # noqa: BLE001 - rocksdict raises plain Exception
            raise translate(exc, where) from None
        finally:
            del it, cf
    return True
