"""Frozen scan views: RocksDB checkpoints that a resumable scan reads instead of live data.

A view lives inside the database directory (`<db>/.pebble-migrate/scans/<id>/<action>-<scan>`),
so it goes wherever the database goes: another working directory, a symlink, `cp -a`, a
backup. It is found by a path derived from the resolved database path and the names in the
run record, never by a stored path, and it proves which scan it belongs to before it is
read: the checkpoint holds a marker (`view/<id>/<action>/<scan>` in the state family) whose
random token the scan's cursor also records.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Any

import rocksdict

from pebble_migrate import store
from pebble_migrate.durable import fsync_dir
from pebble_migrate.errors import MigrateError, NotCleanError, StateError
from pebble_migrate.paths import work_dir

VIEW_PREFIX = b"view/"


def scans_dir(db_path: Path) -> Path:
    """Return the directory that holds the views of every running migration."""
    return work_dir(db_path) / "scans"


def view_path(db_path: Path, migration_id: str, action: str, scan: str) -> Path:
    """Return where the frozen view of one scan of one migration run lives."""
    return scans_dir(db_path) / migration_id / f"{action}-{scan}"


def marker_key(migration_id: str, action: str, scan: str) -> bytes:
    """Return the state-family key whose value identifies a scan's view."""
    return VIEW_PREFIX + f"{migration_id}/{action}/{scan}".encode()


def new_token() -> str:
    """Return a fresh random token naming one view."""
    import secrets  # here, not at the top: `status` imports this module and needs none

    return secrets.token_hex(16)


def create_view(db: rocksdict.Rdict, db_path: Path, path: Path) -> None:
    """Take a checkpoint of `db` at `path` (hard links: cost does not grow with the data)."""
    _require_real_dirs(db_path, path.parent, create=True)
    for left in (path, path.with_name(path.name + ".tmp")):
        if os.path.lexists(left):
            # Left by a run that died before recording it, or while RocksDB was taking
            # the checkpoint (it builds `<path>.tmp`, then renames it).
            _remove(db_path, left)
    checkpoint = rocksdict.Checkpoint(db)
    try:
        checkpoint.create_checkpoint(str(path))
    except Exception as exc:  # noqa: BLE001 - rocksdict raises plain Exception
        shutil.rmtree(path, ignore_errors=True)
        raise store.translate(exc, str(db_path)) from None
    finally:
        del checkpoint
    fsync_dir(path.parent)


def open_view(
    db_path: Path, migration_id: str, action: str, scan: str, token: str | None, database_id: Any
) -> tuple[rocksdict.Rdict, Path]:
    """Open a scan's frozen view read-only, after proving it is the one its cursor names.

    Raise ViewMissing if it is gone, damaged, not a plain directory inside the database, or
    holds another scan's or another database's marker.
    """
    path = view_path(db_path, migration_id, action, scan)
    why = _why_unusable(db_path, path)
    if why is not None:
        raise ViewMissing(migration_id, scan, why)
    if token is None:
        raise ViewMissing(migration_id, scan, "its cursor was written by an older version")
    try:
        view = store.open_database(path, read_only=True)
    except MigrateError as exc:
        raise ViewMissing(migration_id, scan, f"it does not open: {exc.message}") from None
    try:
        found, owner = _identity(view, path, migration_id, action, scan)
    except MigrateError as exc:
        store.close_database(view)
        raise ViewMissing(migration_id, scan, f"it cannot be read: {exc.message}") from None
    except BaseException:  # pragma: no cover - only a Ctrl-C landing inside the read gets here
        store.close_database(view)
        raise
    if found != token or owner != database_id:
        store.close_database(view)
        raise ViewMissing(migration_id, scan, "it belongs to another run or another database")
    return view, path


def _why_unusable(db_path: Path, path: Path) -> str | None:
    try:
        _require_real_dirs(db_path, path, create=False)
    except StateError as exc:
        return exc.message
    if not (path / "CURRENT").is_file():
        return f"{path} is missing"
    for entry in os.scandir(path):
        if not entry.is_file(follow_symlinks=False):
            return f"{entry.path} is not a regular file"
    return None


def _identity(
    view: rocksdict.Rdict, path: Path, migration_id: str, action: str, scan: str
) -> tuple[Any, Any]:
    """Return (the scan's marker token, the database id) recorded inside a view."""
    from pebble_migrate.state import StateStore

    with StateStore(view, str(path)) as states:
        token = states.get(marker_key(migration_id, action, scan))
        meta = states.get(b"meta")
    text = token.decode(errors="replace") if isinstance(token, bytes) else None
    owner = None
    if isinstance(meta, bytes):
        import json

        try:
            data = json.loads(meta)
        except ValueError:
            data = None
        owner = data.get("database_id") if isinstance(data, dict) else None
    return text, owner


class ViewMissing(NotCleanError):
    """Raised when a scan's frozen view is missing or is not the one its cursor recorded."""

    def __init__(self, migration_id: str, scan: str, why: str) -> None:
        self.migration_id = migration_id
        super().__init__(
            f"cannot resume scan {scan!r} of {migration_id} exactly: its frozen view "
            f"is unusable ({why}).",
            hint="Nothing was changed by this run.",
        )


def require_work_dir(db_path: Path) -> Path:
    """Return the database's working directory, made if missing; raise StateError if it
    (or anything on the way) is a symlink or not a directory."""
    folder = work_dir(db_path)
    _require_real_dirs(db_path, folder, create=True)
    return folder


def drop_views(db_path: Path, migration_id: str) -> None:
    """Remove the frozen views of every run of a migration."""
    folder = scans_dir(db_path) / migration_id
    if os.path.lexists(folder):
        _remove(db_path, folder)


def sweep(db_path: Path, keep: set[str]) -> list[str]:
    """Remove the frozen views of migrations not in `keep`; return the names removed."""
    root = scans_dir(db_path)
    try:
        _require_real_dirs(db_path, root, create=False)
    except StateError:
        return []
    if not root.is_dir():
        return []
    removed = []
    for child in sorted(root.iterdir()):
        if child.name not in keep:
            _remove(db_path, child)
            removed.append(child.name)
    return removed


def _remove(db_path: Path, path: Path) -> None:
    """Delete a file, link or directory tree of ours (a link is removed, never followed)."""
    _require_real_dirs(db_path, path.parent, create=False)
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _require_real_dirs(db_path: Path, path: Path, *, create: bool) -> None:
    """Raise StateError if a directory between the database and `path` is a symlink or not
    a directory; with `create`, make the missing ones (mode 0700)."""
    relative = path.relative_to(db_path)
    current = db_path
    for part in relative.parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            if not create:
                return
            current.mkdir(mode=0o700)
            continue
        if not stat.S_ISDIR(mode):
            kind = "a symlink" if stat.S_ISLNK(mode) else "not a directory"
            raise StateError(
                f"{current} is {kind}; pebble-migrate keeps its working files there and "
                "does not follow links out of the database.",
                hint=f"Remove {current} (it holds only working files), then try again.",
            )
