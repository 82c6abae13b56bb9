"""Free-space checks made before any write, so a job fails early with the numbers."""

from __future__ import annotations

from pathlib import Path

from pebble_migrate import store
from pebble_migrate.errors import InsufficientSpace


def check_space(db_path: Path, multiplier: float) -> None:
    """Raise InsufficientSpace unless free space is at least the database size x multiplier.

    A migration rewrites data while the pre-migration checkpoint (and the scans' frozen
    views) keep the old table files alive, so it may need room for a second copy of what
    it rewrites; 2.0 covers rewriting everything.
    """
    size = store.directory_size(db_path)
    needed = int(size * multiplier)
    free = store.free_space(db_path)
    if free is not None and free < needed:
        raise InsufficientSpace(str(db_path), free, needed, "the migrations")
