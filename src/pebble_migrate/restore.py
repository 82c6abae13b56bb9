"""Restore: verify a backup, build the copy beside the target, swap it in atomically.

At no instant is the target path missing or half-written: the copy is built and fsynced
under a staging name, then exchanged with the target in one `renameat2(RENAME_EXCHANGE)`.
A journal beside the target lets the next command finish or undo a restore killed midway.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pebble_migrate import store
from pebble_migrate.backup import (
    DATA,
    BackupError,
    BackupInfo,
    NotABackup,
    backup_dir_for,
    load_backup,
    process_alive,
    verify_backup,
)
from pebble_migrate.durable import copy_durably, exchange, fsync_dir, write_json_atomic
from pebble_migrate.errors import DatabaseInUse, InsufficientSpace, MigrateError, NotADatabase
from pebble_migrate.faults import kill_point
from pebble_migrate.state import State, StateStore
from pebble_migrate.units import utc_now

_IMMUTABLE = (".sst", ".blob")


class OtherDatabase(BackupError):
    """Raised when a backup was taken of a different database than the target."""

    def __init__(self, backup_id: str, theirs: str, ours: str) -> None:
        super().__init__(
            f"backup {backup_id} is of database {theirs}, but the target is database {ours}.",
            hint="Nothing was changed. If you really mean to replace it with another "
            "database's backup, add --other-database.",
        )


@dataclass(frozen=True)
class RestoreResult:
    """What a restore did."""

    backup: BackupInfo
    target: Path
    kept_as: Path | None
    replaced: bool
    state: State


def resolve(source: str, db_path: str | Path, backup_dir: str | Path | None = None) -> BackupInfo:
    """Return the backup a user named: a backup directory, an archive, or an id."""
    path = Path(source)
    if path.exists():
        return load_backup(path)
    root = backup_dir_for(db_path, backup_dir)
    for candidate in (root / source, root / f"{source}.tar.gz"):
        if candidate.exists():
            return load_backup(candidate)
    raise NotABackup(source, f"no such path, and no backup with that id in {root}")


def restore_backup(
    source: str | BackupInfo,
    target: str | Path,
    *,
    backup_dir: str | Path | None = None,
    other_database: bool = False,
    discard_current: bool = False,
    confirm: Callable[[str], bool] = lambda question: True,
) -> RestoreResult:
    """Replace the database at `target` with a verified copy of a backup."""
    dest = Path(target)
    recover(dest)
    info = source if isinstance(source, BackupInfo) else resolve(source, dest, backup_dir)
    current = _check_target(dest)
    if current is not None and not other_database:
        _check_same_database(info, current)
    with _locked(dest):
        if not info.archive:
            verify_backup(info)
        kill_point("restore-verified")
        question = _question(info, dest, current)
        if not confirm(question):
            from pebble_migrate.commands import Aborted

            raise Aborted()
        _check_space(info, dest)
        staging = _staging_path(dest)
        try:
            _build(info, staging)
            state = _open_check(staging, info)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        kept = _swap(staging, dest, discard_current)
    return RestoreResult(info, dest, kept, current is not None, state)


def _check_target(dest: Path) -> State | None:
    """Return the target database's state, None if there is no database there yet."""
    if dest.exists() and not dest.is_dir():
        raise NotADatabase(str(dest), "it is a file; restore needs a database directory path")
    if not dest.exists() or not any(dest.iterdir()):
        return None
    db = store.open_database(dest, read_only=True)
    try:
        with StateStore(db, str(dest)) as states:
            return states.read()
    finally:
        db.close()


def _check_same_database(info: BackupInfo, current: State) -> None:
    if info.database_id and current.database_id and info.database_id != current.database_id:
        raise OtherDatabase(info.id, info.database_id, current.database_id)


def _question(info: BackupInfo, dest: Path, current: State | None) -> str:
    what = f"backup {info.id} (version {info.version}, {info.status})"
    if current is None:
        return f"Restore {what} into {dest}?"
    return (
        f"Replace the database at {dest} (version {current.current_version}, "
        f"{current.status.value}) with {what}?"
    )


@contextlib.contextmanager
def _locked(dest: Path) -> Iterator[None]:
    """Hold the target's RocksDB LOCK so no process opens it during the swap."""
    lock = dest / "LOCK"
    if not lock.exists():
        yield
        return
    fd = os.open(lock, os.O_RDWR)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DatabaseInUse(str(dest)) from None
        yield
    finally:
        os.close(fd)


def _check_space(info: BackupInfo, dest: Path) -> None:
    needed = sum(f.size for f in _to_copy(info, dest))
    free = store.free_space(dest.parent)
    if free is not None and free < needed:
        raise InsufficientSpace(str(dest.parent), free, needed, f"restoring backup {info.id}")


def _same_device(info: BackupInfo, dest: Path) -> bool:
    parent = dest.parent if dest.parent.exists() else Path.cwd()
    return not info.archive and (info.path / DATA).stat().st_dev == parent.stat().st_dev


def _to_copy(info: BackupInfo, dest: Path) -> list[Any]:
    if not _same_device(info, dest):
        return list(info.files)
    return [f for f in info.files if not f.name.endswith(_IMMUTABLE)]


def _staging_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.restore-{os.getpid()}"


def _journal_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.restore-journal.json"


def _build(info: BackupInfo, staging: Path) -> None:
    """Build the restored copy: table files hard-linked (immutable), the rest copied."""
    staging.parent.mkdir(parents=True, exist_ok=True)
    if staging.exists():
        shutil.rmtree(staging)
    if info.archive:
        from pebble_migrate.archive import extract_archive

        extract_archive(info, staging)
        verify_backup(info, data_dir=staging)
    else:
        staging.mkdir()
        link = _same_device(info, staging)
        for f in info.files:
            source, target = info.path / DATA / f.name, staging / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if link and f.name.endswith(_IMMUTABLE):
                os.link(source, target)
            else:
                copy_durably(source, target)
            kill_point("restore-file")
    fsync_dir(staging)
    kill_point("restore-built")


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
        db.close()
    kill_point("restore-opened")
    return state


def _keep_name(dest: Path) -> Path:
    stamp = utc_now().strftime("%Y%m%dT%H%M%SZ")
    candidate, n = dest.parent / f"{dest.name}.pre-restore-{stamp}", 1
    while candidate.exists():
        n += 1
        candidate = dest.parent / f"{dest.name}.pre-restore-{stamp}-{n:02d}"
    return candidate


def _swap(staging: Path, dest: Path, discard: bool) -> Path | None:
    """Put the staged copy at `dest`; return where the replaced database was kept."""
    journal = _journal_path(dest)
    replacing = dest.exists()
    keep = None if discard or not replacing else _keep_name(dest)
    record = {
        "target": str(dest),
        "staging": str(staging),
        "staging_inode": staging.stat().st_ino,
        "keep_as": None if keep is None else str(keep),
        "replacing": replacing,
        "mode": "exchange",
    }
    write_json_atomic(journal, record)
    kill_point("restore-journal")
    if not replacing:
        staging.rename(dest)
    elif exchange(staging, dest):
        kill_point("restore-swapped")
    else:
        # No RENAME_EXCHANGE here: two renames, with the journal to finish or undo them.
        record["mode"] = "rename"
        write_json_atomic(journal, record)
        dest.rename(keep or staging.with_name(staging.name + "-old"))
        kill_point("restore-moved-away")
        staging.rename(dest)
    fsync_dir(dest.parent)
    kill_point("restore-in-place")
    _settle(record)
    journal.unlink()
    fsync_dir(dest.parent)
    return keep


def _settle(record: dict[str, Any]) -> None:
    """After the new copy is in place, keep or discard the replaced database."""
    staging = Path(record["staging"])
    old = staging if record["mode"] == "exchange" else staging.with_name(staging.name + "-old")
    keep = record["keep_as"]
    if not old.exists() or (keep is not None and Path(keep).exists() and old == Path(keep)):
        return
    if keep is None:
        shutil.rmtree(old)
    else:
        old.rename(keep)
        kill_point("restore-kept")


def recover(dest: Path) -> str | None:
    """Finish or undo a restore that was killed; return what was done, or None."""
    journal = _journal_path(dest)
    message = None
    if journal.exists():
        try:
            record = json.loads(journal.read_text())
        except (OSError, ValueError):
            record = None
        if record is not None:
            message = _recover(dest, record)
        journal.unlink(missing_ok=True)
        fsync_dir(journal.parent)
    for orphan in dest.parent.glob(f".{dest.name}.restore-*"):
        pid = orphan.name.rsplit("-", 1)[-1]
        if (
            orphan.is_dir()
            and pid.isdigit()
            and int(pid) != os.getpid()
            and not process_alive(int(pid))
        ):
            shutil.rmtree(orphan, ignore_errors=True)
    return message


def _recover(dest: Path, record: dict[str, Any]) -> str:
    staging = Path(record["staging"])
    swapped = dest.exists() and dest.stat().st_ino == record["staging_inode"]
    if swapped:
        _settle(record)
        return f"finished an interrupted restore into {dest}"
    if not dest.exists() and record["replacing"]:
        moved = Path(record["keep_as"] or staging.with_name(staging.name + "-old"))
        if moved.exists():
            moved.rename(dest)  # undo: the old database goes back
            shutil.rmtree(staging, ignore_errors=True)
            return f"undid an interrupted restore; {dest} is the database it was before"
        if staging.exists():
            staging.rename(dest)
            return f"finished an interrupted restore into {dest}"
    shutil.rmtree(staging, ignore_errors=True)
    return f"cleaned up an interrupted restore; {dest} is unchanged"
