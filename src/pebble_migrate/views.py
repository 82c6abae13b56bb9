"""Frozen scan views: RocksDB checkpoints that a resumable scan reads instead of live data."""

from __future__ import annotations

import shutil
from pathlib import Path

import rocksdict

from pebble_migrate import store
from pebble_migrate.durable import fsync_dir
from pebble_migrate.errors import StateError


def work_dir(db_path: str | Path) -> Path:
    """Return the directory beside the database where pebble-migrate keeps working files."""
    return Path(str(db_path).rstrip("/") + ".pebble-migrate")


def view_path(db_path: str | Path, migration_id: str, action: str, scan: str) -> Path:
    """Return where the frozen view of one scan of one migration run lives."""
    return work_dir(db_path) / "scans" / migration_id / f"{action}-{scan}"


def create_view(db: rocksdict.Rdict, path: Path) -> None:
    """Take a checkpoint of `db` at `path` (hard links: cost does not grow with the data)."""
    if path.exists():
        shutil.rmtree(path)  # left by a run that died before recording it
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = rocksdict.Checkpoint(db)
    try:
        checkpoint.create_checkpoint(str(path))
    except Exception as exc:  # noqa: BLE001 - rocksdict raises plain Exception
        shutil.rmtree(path, ignore_errors=True)
        raise store.translate(exc, str(db.path())) from None
    finally:
        del checkpoint
    fsync_dir(path.parent)


def open_view(path: Path, scan: str, migration_id: str) -> rocksdict.Rdict:
    """Open a frozen view read-only; raise StateError if it has gone missing."""
    if not (path / "CURRENT").is_file():
        raise StateError(
            f"the frozen view of scan {scan!r} of {migration_id} is missing ({path}).",
            hint="Its cursor cannot be trusted without it. Run `pebble-migrate up --from-start` "
            "to start that migration over.",
        )
    return store.open_database(path, read_only=True)


def drop_views(db_path: str | Path, migration_id: str) -> None:
    """Remove the frozen views of every run of a migration."""
    shutil.rmtree(work_dir(db_path) / "scans" / migration_id, ignore_errors=True)


def sweep(db_path: str | Path, keep: set[str]) -> list[str]:
    """Remove the frozen views of migrations not in `keep`; return the ids removed."""
    root = work_dir(db_path) / "scans"
    if not root.is_dir():
        return []
    removed = []
    for child in sorted(root.iterdir()):
        if child.name not in keep:
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child.name)
    return removed
