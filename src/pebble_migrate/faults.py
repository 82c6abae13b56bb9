"""Named kill points for crash tests: `PEBBLE_MIGRATE_KILL_AT=name:N` SIGKILLs the process.

The crash tests and `scripts/crashtest.py` set it in a child process to die at an exact
moment (just before a chunk commit, in the middle of a restore swap). With
`PEBBLE_MIGRATE_KILL_COUNT=FILE` the process instead counts every point it passes and
writes the counts (JSON) to FILE when it exits, so a sweep knows how often each point is
reached. Unset, a kill point costs one dictionary lookup.
"""

from __future__ import annotations

import atexit
import json
import os
import signal

POINTS = {
    # migrations
    "step-begin": "the state write that starts a step",
    "scan-marked": "a scan's view marker committed, before its checkpoint is taken",
    "scan-view-taken": "a scan's frozen view taken, before its first chunk",
    "chunk-before-commit": "a scan chunk staged, before its synced write",
    "chunk-after-commit": "a scan chunk written",
    "final-before-validate": "a migration's last writes committed, before its validate",
    "final-before-commit": "a migration finished, before the write that records it",
    "final-after-commit": "a migration recorded",
    "failure-before-record": "a migration failed, before the failure is recorded",
    "interrupt-before-record": "a migration stopped by a signal, before that is recorded",
    "discard-before-commit": "up --from-start, before the progress is discarded",
    "startup-before-run": "the start-up check done, before its migrations run",
    # the state, by hand
    "force-clean-before-write": "force-clean decided, before its write",
    "repair-before-write": "repair decided, before its write",
    # backups
    "backup-checkpoint": "a backup's checkpoint taken",
    "backup-checked": "a backup's table files checked and summed",
    "backup-copied": "one table file of a copy backup replaced by its copy",
    "json-written": "a JSON file written to its temporary name, before the rename",
    "backup-renamed": "a backup renamed into place",
    "archive-written": "an archive written to its temporary name, before the rename",
    "backup-meta-removed": "a backup's backup.json removed, before its files",
    "cleanup-removed": "cleanup removed one backup or kept database",
    # restores
    "restore-checked": "a restore's target and backup looked at",
    "restore-verified": "the backup verified",
    "restore-file": "one file of the restored copy written",
    "restore-built": "the restored copy built and fsynced",
    "restore-opened": "the restored copy opened as a check",
    "restore-journal": "the restore journal written",
    "restore-journal-rename": "the journal switched to the two-renames fallback",
    "restore-moved-away": "the old database moved aside (two renames)",
    "restore-swapped": "the copy and the database exchanged",
    "restore-in-place": "the restored copy in place",
    "restore-kept": "the old database renamed to .pre-restore-<time>",
    "restore-settled": "the old database kept or discarded",
    "restore-journal-removed": "the journal removed",
}
"""Every kill point, with where it is. The sweep checks each one is reached."""

_SPEC = os.environ.get("PEBBLE_MIGRATE_KILL_AT", "")
_TARGETS: dict[str, int] = {}
for _part in filter(None, _SPEC.split(",")):
    _name, _, _count = _part.partition(":")
    _TARGETS[_name] = int(_count or "1")
_SEEN: dict[str, int] = {}
_COUNT_FILE = os.environ.get("PEBBLE_MIGRATE_KILL_COUNT", "")


def kill_point(name: str) -> None:
    """Die here by SIGKILL if the environment asked for the Nth visit of `name` (or `any`)."""
    if _COUNT_FILE:
        _SEEN[name] = _SEEN.get(name, 0) + 1
        return
    if not _TARGETS:
        return
    for key in (name, "any"):
        if key in _TARGETS:
            _SEEN[key] = _SEEN.get(key, 0) + 1
            if _SEEN[key] == _TARGETS[key]:
                os.kill(os.getpid(), signal.SIGKILL)


def visits() -> dict[str, int]:
    """Return how many times each armed (or, when counting, every) point was passed."""
    return dict(_SEEN)


def _write_counts() -> None:
    with open(_COUNT_FILE, "w") as handle:
        json.dump(_SEEN, handle)


if _COUNT_FILE:
    atexit.register(_write_counts)
