"""Scan cursors: how far each resumable scan of a running migration has committed."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pebble_migrate.errors import CorruptStateError, MigrateError, UsageError
from pebble_migrate.migration import parse_id
from pebble_migrate.state import CURSOR_PREFIX

if TYPE_CHECKING:
    from pebble_migrate.state import StateStore

SCAN_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TOKEN = re.compile(r"^[0-9a-f]{32}$")
ACTIONS = ("apply", "rollback")


@dataclass
class ScanCursor:
    """Progress of one named scan: the last committed key, counts, and the token of its
    frozen view (None in records written before views carried one)."""

    name: str
    start: Any
    end: Any
    token: str | None
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
    partial: dict[str, Any] | None = None
    """In a rollback record of a migration whose `up` never finished: how far `up` got
    (what `ctx.partial` gives `down`), carried over from the apply record it replaced."""

    @property
    def key(self) -> bytes:
        """The state-family key this record lives under."""
        return record_key(self.migration_id, self.action)

    def committed_work(self) -> bool:
        """Whether the run committed anything: a chunk of a scan, or writes made through
        `ctx.db` (a record can exist with neither, when the run failed at its start)."""
        return self.loose > 0 or any(c.after is not None for c in self.scans.values())

    def reached(self) -> dict[str, Any]:
        """Return, per scan, the last key whose work was committed (None: none yet)."""
        return {name: c.after for name, c in self.scans.items()}

    def describe(self) -> str:
        """Return where the run stands, as `after b'user:42' (42 of ~100)` (prefixed with
        `scan 'index' ` when the open scan has a name of its own)."""
        open_scans = [c for c in self.scans.values() if not c.done and c.after is not None]
        if not open_scans:
            done = [c for c in self.scans.values() if c.done]
            return f"after {len(done)} finished scan(s)" if done else "from its start"
        c = open_scans[-1]
        total = f" of ~{c.total}" if c.total is not None else ""
        scan = f"scan {c.name!r} " if c.name != "default" else ""  # named when it matters
        return f"{scan}after {show_key(c.after)} ({c.count}{total})"


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
    if isinstance(key, bool):
        return {"t": key}
    if isinstance(key, int):
        return {"i": key}
    if isinstance(key, float):
        return {"f": key.hex()}
    raise UsageError(
        f"a scan reached a key of type {type(key).__name__} ({key!r:.60}); a resumable scan "
        "can record its position only at bytes, str, int, float or bool keys.",
        hint="Bound the scan (prefix=, or start=/end=) to keys of those types.",
    )


def decode_key(data: Any) -> Any:
    """Return the key that `encode_key` encoded."""
    if data is None:
        return None
    if not isinstance(data, dict) or len(data) != 1:
        raise TypeError(f"a key must be an object with one field, found {data!r:.60}")
    ((kind, value),) = data.items()
    if kind == "b" and isinstance(value, str):
        return base64.b64decode(value, validate=True)
    if kind == "s" and isinstance(value, str):
        return value
    if kind == "i" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "f" and isinstance(value, str):
        return float.fromhex(value)
    if kind == "t" and isinstance(value, bool):
        return value
    raise TypeError(f"unknown key encoding {data!r:.60}")


def show_key(key: Any, limit: int = 80) -> str:
    """Return a key as an operator reads it: b'user:42', or hex when not printable; a key
    longer than `limit` characters shown is cut, saying how long it is."""
    if isinstance(key, bytes):
        shown = repr(key) if all(32 <= b < 127 for b in key) else "0x" + key.hex()
        size = f"{len(key)} bytes"
    else:
        shown = repr(key)
        size = f"{len(shown)} characters"
    if len(shown) <= limit:
        return shown
    return f"{shown[:limit]}... ({size})"


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
                "token": c.token,
                "after": encode_key(c.after),
                "count": c.count,
                "total": c.total,
                "done": c.done,
            }
            for name, c in record.scans.items()
        },
        "partial": None
        if record.partial is None
        else {name: encode_key(key) for name, key in record.partial.items()},
    }


def decode_record(data: Any) -> RunRecord:
    """Return the RunRecord in its JSON form; raise CorruptStateError if malformed.

    Everything is checked (types, ids, scan names, tokens): the record comes from disk,
    and the names in it become paths.
    """
    try:
        migration_id = _text(data["migration_id"])
        parse_id(migration_id)
        action = _text(data["action"])
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r:.40}")
        scans = {_scan_name(name): _decode_cursor(name, c) for name, c in data["scans"].items()}
        partial = data.get("partial")
        return RunRecord(
            migration_id=migration_id,
            action=action,
            loose=_count(data["loose"]),
            scans=scans,
            partial=None
            if partial is None
            else {_scan_name(name): decode_key(key) for name, key in partial.items()},
        )
    except (AttributeError, KeyError, TypeError, ValueError, MigrateError) as exc:
        detail = exc.message if isinstance(exc, MigrateError) else f"{type(exc).__name__}: {exc}"
        raise CorruptStateError("cursor", detail) from None


def _decode_cursor(name: str, c: Any) -> ScanCursor:
    token = c.get("token")
    if token is not None and (not isinstance(token, str) or not _TOKEN.match(token)):
        raise ValueError(f"scan {name!r:.40} has a malformed view token")
    total = c["total"]
    done = c["done"]
    if not isinstance(done, bool):
        raise TypeError(f"scan {name!r:.40}: done must be true or false")
    return ScanCursor(
        name=name,
        start=decode_key(c["start"]),
        end=decode_key(c["end"]),
        token=token,
        after=decode_key(c["after"]),
        count=_count(c["count"]),
        total=None if total is None else _count(total),
        done=done,
    )


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, found {value!r:.40}")
    return value


def _scan_name(name: Any) -> str:
    if not isinstance(name, str) or not SCAN_NAME.match(name):
        raise ValueError(f"malformed scan name {name!r:.40}")
    return name


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise TypeError(f"expected a count, found {value!r:.40}")
    return value


def run_records(states: StateStore) -> dict[tuple[str, str], RunRecord]:
    """Return the committed run records (scan cursors) keyed by (migration id, action)."""
    records = {}
    for _, data in states.items(CURSOR_PREFIX):
        record = decode_record(data)
        records[(record.migration_id, record.action)] = record
    return records
