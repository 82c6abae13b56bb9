"""Free-space checks made before any write, so a job fails early with the numbers."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from pebble_migrate import store
from pebble_migrate.errors import InsufficientSpace
from pebble_migrate.paths import work_dir


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


BALLAST_BYTES = 4 * 1024 * 1024


class Ballast:
    """A reserve file in the database's working directory, given up when the disk fills
    mid-migration.

    RocksDB stops accepting writes on a handle after a write fails for lack of space; the
    ballast makes sure there is room to reopen the database and record the failure.
    """

    def __init__(self, db_path: Path, size: int = BALLAST_BYTES) -> None:
        self.db_path = db_path
        self.path = work_dir(db_path) / "ballast"
        self.size = size

    def ensure(self) -> None:
        """Create the ballast if it is missing (best effort: a full disk is caught later).

        Raise StateError, before anything is written, if the working directory is a
        symlink: nothing of ours is written through a link out of the database.
        """
        from pebble_migrate.views import require_work_dir

        try:
            require_work_dir(self.db_path)
        except OSError:
            return
        if os.path.lexists(self.path):
            return
        try:
            with self.path.open("xb") as handle:
                os.posix_fallocate(handle.fileno(), 0, self.size)
        except OSError:
            self.release()

    def release(self) -> None:
        """Delete the ballast, freeing its space."""
        with contextlib.suppress(OSError):
            self.path.unlink()
