"""Where things live: the resolved database path and every path derived from it."""

from __future__ import annotations

import os
from pathlib import Path

WORK_DIR = ".pebble-migrate"
"""The directory inside the database that holds pebble-migrate's working files (the scans'
frozen views, the disk-full ballast). Inside, so a copy, a move or a backup of the
database carries them, and no two databases can ever share them."""


def resolve_database(path: str | Path) -> Path:
    """Return the one spelling of a database path that every derived path is built from.

    `~`, `.`, `./`, `..`, trailing slashes and symlinks are resolved, so the same database
    named from any working directory, or through a link, yields the same path. A path that
    does not exist yet (`up --create`, a restore into a missing path) resolves as far as
    it exists.
    """
    return Path(os.path.realpath(Path(path).expanduser()))


def work_dir(db_path: Path) -> Path:
    """Return the working directory inside the (resolved) database directory."""
    return db_path / WORK_DIR


def default_backup_dir(db_path: Path) -> Path:
    """Return `<db>.backups`, beside the (resolved) database directory."""
    return db_path.parent / f"{db_path.name}.backups"
