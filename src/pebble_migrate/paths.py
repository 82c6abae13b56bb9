"""Where things live: the resolved database path and every path derived from it."""

from __future__ import annotations

import os
from pathlib import Path

from pebble_migrate.errors import UsageError

WORK_DIR = ".pebble-migrate"
"""The directory inside the database that holds pebble-migrate's working files (the scans'
frozen views, the disk-full ballast). Inside, so a copy, a move or a backup of the
database carries them, and no two databases can ever share them."""

NAME_MAX = 255
"""The longest file name the filesystems we run on accept (ext4, xfs, btrfs, tmpfs)."""

RESTORE_ROOM = 40
"""What the names a restore gives its files beside the database add to the database's
name: the longest is `..<stem>.restore-journal.json.<pid>.tmp`."""


def resolve_database(path: str | Path) -> Path:
    """Return the one spelling of a database path that every derived path is built from.

    `~`, `.`, `./`, `..`, trailing slashes and symlinks are resolved, so the same database
    named from any working directory, or through a link, yields the same path. A path that
    does not exist yet (`up --create`, a restore into a missing path) resolves as far as
    it exists.
    """
    if "\0" in str(path):
        raise UsageError(
            f"the database path {str(path)!r:.80} contains a NUL character, which no file "
            "name can hold.",
            hint="Nothing was changed. Pass the path without it.",
        )
    # os.path.expanduser leaves `~nosuchuser` as it is (as a shell does); Path.expanduser
    # raises RuntimeError for it.
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def work_dir(db_path: Path) -> Path:
    """Return the working directory inside the (resolved) database directory."""
    return db_path / WORK_DIR


def stem(db_path: Path, room: int) -> str:
    """Return the database's name, or, when it leaves fewer than `room` bytes of a file
    name, the name cut short with an 8-digit hash of the whole name (unique and stable)."""
    name = db_path.name
    if len(os.fsencode(name)) + room <= NAME_MAX:
        return name
    import hashlib

    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:8]
    cut = os.fsencode(name)[: max(NAME_MAX - room - 9, 1)].decode(errors="ignore")
    return f"{cut}~{digest}"


def sibling(db_path: Path, suffix: str, *, prefix: str = "", room: int = 0) -> Path:
    """Return `<prefix><name><suffix>` beside the database, the name shortened (see `stem`)
    when the whole would not fit in a file name (`room`: at least that much is kept free)."""
    need = max(room, len(os.fsencode(prefix + suffix)))
    return db_path.parent / f"{prefix}{stem(db_path, need)}{suffix}"


def default_backup_dir(db_path: Path) -> Path:
    """Return `<db>.backups`, beside the (resolved) database directory."""
    return sibling(db_path, ".backups")


def restore_leftovers(db_path: Path) -> bool:
    """Whether anything a restore into the (resolved) database may leave beside it is
    there: its journal, its staging copy, the journal's temporary files, all named
    `.<stem>.restore...` or `..<stem>.restore...` (see `restore`). Only then does a command
    need `restore.recover` (and the backup code it imports). True when the directory cannot
    be read, so that `recover` decides as it always did."""
    marks = (f".{stem(db_path, RESTORE_ROOM)}.restore", f"..{stem(db_path, RESTORE_ROOM)}.restore")
    try:
        return any(name.startswith(marks) for name in os.listdir(db_path.parent))
    except OSError:
        return True
