"""Scan cursors: how far each resumable scan of a running migration has committed."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from pebble_migrate.errors import CorruptStateError
from pebble_migrate.state import CURSOR_PREFIX


@dataclass
class ScanCursor:
    """Progress of one named scan: the last committed key, counts, and its frozen view."""

    name: str
    start: Any
    end: Any
    view: str
    after: Any = None
    count: int = 0
    total: int | None = None
    done: bool = False


@dataclass
class RunRecord:
    """Everything a migration run has committed so far, stored beside its data."""

    migration_id: str
    action: str
    loose: int = 0
    scans: dict[str, ScanCursor] = field(default_factory=dict)

    @property
    def key(self) -> bytes:
        """The state-family key this record lives under."""
        return record_key(self.migration_id, self.action)

    def reached(self) -> dict[str, Any]:
        """Return, per scan, the last key whose work was committed (None: none yet)."""
        return {name: c.after for name, c in self.scans.items()}

    def describe(self) -> str:
        """Return where the run stands, as `after b'user:42' (42 of ~100)`."""
        open_scans = [c for c in self.scans.values() if not c.done and c.after is not None]
        if not open_scans:
            done = [c for c in self.scans.values() if c.done]
            return f"after {len(done)} finished scan(s)" if done else "from its start"
        c = open_scans[-1]
        total = f" of ~{c.total}" if c.total is not None else ""
        return f"after {show_key(c.after)} ({c.count}{total})"


def record_key(migration_id: str, action: str) -> bytes:
    """Return the state-family key of a migration's run record."""
    return CURSOR_PREFIX + f"{migration_id}/{action}".encode()


def encode_key(key: Any) -> Any:
    """Return a JSON-safe form of a database key (bytes, str or int)."""
    if key is None:
        return None
    if isinstance(key, bytes):
        return {"b": base64.b64encode(key).decode()}
    if isinstance(key, str):
        return {"s": key}
    if isinstance(key, int) and not isinstance(key, bool):
        return {"i": key}
    raise TypeError(f"scan keys must be bytes, str or int, not {type(key).__name__}")


def decode_key(data: Any) -> Any:
    """Return the key that `encode_key` encoded."""
    if data is None:
        return None
    if "b" in data:
        return base64.b64decode(data["b"])
    if "s" in data:
        return str(data["s"])
    return int(data["i"])


def show_key(key: Any) -> str:
    """Return a key as an operator reads it: b'user:42', or hex when not printable."""
    if isinstance(key, bytes):
        if all(32 <= b < 127 for b in key):
            return repr(key)
        return "0x" + key.hex()
    return repr(key)


def encode_record(record: RunRecord) -> dict[str, Any]:
    """Return the JSON form of a run record."""
    return {
        "migration_id": record.migration_id,
        "action": record.action,
        "loose": record.loose,
        "scans": {
            name: {
                "start": encode_key(c.start),
                "end": encode_key(c.end),
                "view": c.view,
                "after": encode_key(c.after),
                "count": c.count,
                "total": c.total,
                "done": c.done,
            }
            for name, c in record.scans.items()
        },
    }


def decode_record(data: Any) -> RunRecord:
    """Return the RunRecord in its JSON form; raise CorruptStateError if malformed."""
    try:
        scans = {
            name: ScanCursor(
                name=name,
                start=decode_key(c["start"]),
                end=decode_key(c["end"]),
                view=str(c["view"]),
                after=decode_key(c["after"]),
                count=int(c["count"]),
                total=None if c["total"] is None else int(c["total"]),
                done=bool(c["done"]),
            )
            for name, c in data["scans"].items()
        }
        return RunRecord(
            migration_id=str(data["migration_id"]),
            action=str(data["action"]),
            loose=int(data["loose"]),
            scans=scans,
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CorruptStateError("cursor", f"{type(exc).__name__}: {exc}") from None
