"""Counting the keys a scan will visit, for progress totals, off the hot path.

Small ranges are counted on the spot. Larger ones are counted by a child process reading
the same frozen view, so on a machine with a spare core the count costs the migration
nothing; until it reports, progress shows counts and rates without a total.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import rocksdict

from pebble_migrate.cursor import decode_key, encode_key

if TYPE_CHECKING:
    import subprocess

INLINE_LIMIT = 50_000


def count_keys(db: Any, start: Any, end: Any) -> int:
    """Return the number of keys in [start, end) (an estimate's input, not a checked scan)."""
    count = 0
    keys = db.keys() if start is None else db.keys(from_key=start)
    try:
        for key in keys:
            if end is not None and not key < end:
                break
            count += 1
    except TypeError:
        pass  # pickle mode: keys of another type sort after this range
    finally:
        del keys
    return count


class KeyCount:
    """A count that is known now, or will be once the counting child finishes."""

    def __init__(self, total: int | None = None, child: subprocess.Popen[str] | None = None):
        self.total = total
        self._child = child

    @classmethod
    def start(cls, view: rocksdict.Rdict, view_path: str, start: Any, end: Any) -> KeyCount:
        """Count inline when the view is small, else start a child process to count."""
        estimate = view.property_int_value("rocksdb.estimate-num-keys") or 0
        if estimate <= INLINE_LIMIT:
            return cls(count_keys(view, start, end))
        import subprocess  # only for a large count: `status` imports this module too

        bounds = json.dumps([encode_key(start), encode_key(end)])
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "pebble_migrate.counting", view_path, bounds],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError:
            return cls()  # no interpreter to start (a frozen app): progress without a total
        return cls(child=child)

    def poll(self) -> int | None:
        """Return the total if known by now."""
        child = self._child
        if self.total is None and child is not None and child.poll() is not None:
            out = child.stdout.read() if child.stdout is not None else ""
            self._finish()
            self.total = int(out) if out.strip().isdigit() else None
        return self.total

    def close(self) -> None:
        """Stop the counting child if it is still running."""
        if self._child is not None and self._child.poll() is None:
            self._child.kill()
        self._finish()

    def _finish(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.wait()
            if child.stdout is not None:
                child.stdout.close()


def _main(argv: list[str]) -> None:
    view_path, bounds = argv
    start, end = (decode_key(b) for b in json.loads(bounds))
    db = rocksdict.Rdict(view_path, access_type=rocksdict.AccessType.read_only(False))
    try:
        print(count_keys(db, start, end))
    finally:
        db.close()


if __name__ == "__main__":
    _main(sys.argv[1:])
