"""Named kill points for crash tests: `PEBBLE_MIGRATE_KILL_AT=name:N` SIGKILLs the process.

The crash tests and `scripts/crashtest.py` set it in a child process to die at an exact
moment (just before a chunk commit, in the middle of a restore swap). Unset, a kill point
costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("PEBBLE_MIGRATE_KILL_AT", "")
_TARGETS: dict[str, int] = {}
for _part in filter(None, _SPEC.split(",")):
    _name, _, _count = _part.partition(":")
    _TARGETS[_name] = int(_count or "1")
_SEEN: dict[str, int] = {}


def kill_point(name: str) -> None:
    """Die here by SIGKILL if the environment asked for the Nth visit of `name` (or `any`)."""
    if not _TARGETS:
        return
    for key in (name, "any"):
        if key in _TARGETS:
            _SEEN[key] = _SEEN.get(key, 0) + 1
            if _SEEN[key] == _TARGETS[key]:
                os.kill(os.getpid(), signal.SIGKILL)


def visits() -> dict[str, int]:
    """Return how many times each armed kill point was passed (for tests)."""
    return dict(_SEEN)
