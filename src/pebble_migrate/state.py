"""The state column family: status, applied set, history records and scan cursors."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import rocksdict

from pebble_migrate import store
from pebble_migrate.errors import CorruptStateError, MigrateError

FORMAT = 1
META_KEY = b"meta"
HISTORY_PREFIX = b"history/"
CURSOR_PREFIX = b"cursor/"


class Status(StrEnum):
    """The migration status recorded in the database."""

    CLEAN = "clean"
    MIGRATING = "migrating"
    DIRTY = "dirty"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class InProgress:
    """The migration a `migrating`, `rollback` or `dirty` status refers to."""

    id: str
    kind: str
    started_at: datetime
    resumable: bool = True
    note: str | None = None


@dataclass(frozen=True)
class State:
    """A decoded snapshot of the migration state. `read_state(db)` returns one."""

    initialized: bool
    status: Status
    current_version: int
    applied: frozenset[str]
    last_migration_at: datetime | None = None
    last_migration: str | None = None
    applied_at: Mapping[str, datetime] = field(default_factory=dict)
    in_progress: InProgress | None = None
    last_error: str | None = None
    database_id: str | None = None
    history_count: int = 0

    def evolve(self, **changes: Any) -> State:
        """Return a copy with some fields changed."""
        return replace(self, **changes)


UNINITIALIZED = State(
    initialized=False, status=Status.CLEAN, current_version=0, applied=frozenset()
)


@dataclass(frozen=True)
class HistoryRecord:
    """One entry of the append-only history."""

    seq: int
    id: str
    description: str
    kind: str
    started_at: datetime
    duration_s: float
    success: bool
    error: str | None = None
    note: str | None = None


def new_state(database_id: str | None = None) -> State:
    """Return the state of a database that has just been initialized at version 0."""
    return State(
        initialized=True,
        status=Status.CLEAN,
        current_version=0,
        applied=frozenset(),
        database_id=database_id or uuid.uuid4().hex,
    )


class StateStore:
    """Reads and stages writes of the state column family of one open database.

    It holds rocksdict column-family handles; call `release()` (or use it as a context
    manager) so that none outlives the call, or the app cannot close its database.
    """

    def __init__(self, db: rocksdict.Rdict, where: str) -> None:
        self.db = db
        self.where = where
        self.raw = store.is_raw_mode(db)
        self._cf: rocksdict.Rdict | None = None
        self._handle: Any = None
        self._sync = rocksdict.WriteOptions()
        self._sync.sync = True

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Drop every rocksdict handle this object holds."""
        self._cf = None
        self._handle = None

    # --- reading ---------------------------------------------------------------

    def _column(self) -> rocksdict.Rdict | None:
        if self._cf is None:
            try:
                self._cf = self.db.get_column_family(store.STATE_CF)
            except Exception as exc:  # noqa: BLE001 - rocksdict raises plain Exception
                if "does not exist" in str(exc):
                    return None
                raise store.translate(exc, self.where) from None
        return self._cf

    def get(self, key: bytes) -> Any:
        """Return the raw value stored under `key` in the state family, or None."""
        cf = self._column()
        if cf is None:
            return None
        try:
            return cf.get(key)
        except Exception as exc:  # noqa: BLE001 - rocksdict raises plain Exception
            raise store.translate(exc, self.where) from None

    def read(self) -> State:
        """Return the current state, or UNINITIALIZED if this database has none yet."""
        raw = self.get(META_KEY)
        if raw is None:
            return UNINITIALIZED
        return decode_state(_loads(raw, "meta"))

    def history(self, limit: int | None = None) -> list[HistoryRecord]:
        """Return history records oldest first; the newest `limit` of them when given."""
        cf = self._column()
        if cf is None:
            return []
        records: list[HistoryRecord] = []
        end = store.successor(HISTORY_PREFIX)
        if limit is None:
            for key, value in store.checked_items(cf, self.where, start=HISTORY_PREFIX, end=end):
                records.append(decode_history(_loads(value, key)))
            return records
        for key, value in self._newest(cf, end, limit):
            records.append(decode_history(_loads(value, key)))
        records.reverse()
        return records

    def _newest(self, cf: rocksdict.Rdict, end: Any, limit: int) -> Iterator[tuple[Any, Any]]:
        it = cf.iter()
        try:
            it.seek_for_prev(end)
            while limit > 0 and it.valid():
                key = it.key()
                if not key.startswith(HISTORY_PREFIX):
                    break
                yield key, it.value()
                limit -= 1
                it.prev()
            it.status()
        except MigrateError:
            raise
        except Exception as exc:  # noqa: BLE001 - rocksdict raises plain Exception
            raise store.translate(exc, self.where) from None
        finally:
            del it

    def items(self, prefix: bytes) -> list[tuple[bytes, Any]]:
        """Return the (key, decoded JSON) pairs stored under `prefix`."""
        cf = self._column()
        if cf is None:
            return []
        end = store.successor(prefix)
        return [
            (key, _loads(value, key))
            for key, value in store.checked_items(cf, self.where, start=prefix, end=end)
        ]

    # --- writing ---------------------------------------------------------------

    def batch(self) -> rocksdict.WriteBatch:
        """Return an empty write batch in the database's key mode."""
        return rocksdict.WriteBatch(raw_mode=self.raw)

    def handle(self) -> Any:
        """Return the state column-family handle, creating the family if needed."""
        if self._handle is None:
            if self._column() is None:
                try:
                    self.db.create_column_family(
                        store.STATE_CF, rocksdict.Options(raw_mode=self.raw)
                    )
                except Exception as exc:  # noqa: BLE001 - rocksdict raises plain Exception
                    raise store.translate(exc, self.where) from None
                self._cf = None
            self._handle = self.db.get_column_family_handle(store.STATE_CF)
        return self._handle

    def stage_state(self, batch: rocksdict.WriteBatch, state: State) -> None:
        """Add the write of `state` to `batch`."""
        batch.put(META_KEY, _dumps(encode_state(state)), self.handle())

    def stage_history(
        self, batch: rocksdict.WriteBatch, state: State, record: HistoryRecord
    ) -> State:
        """Add `record` (numbered after the state's last) to `batch`; return the new state."""
        seq = state.history_count + 1
        record = replace(record, seq=seq)
        batch.put(HISTORY_PREFIX + b"%012d" % seq, _dumps(encode_history(record)), self.handle())
        return state.evolve(history_count=seq)

    def stage_put(self, batch: rocksdict.WriteBatch, key: bytes, value: Any) -> None:
        """Add the write of a JSON record under `key` in the state family to `batch`."""
        batch.put(key, _dumps(value), self.handle())

    def stage_raw(self, batch: rocksdict.WriteBatch, key: bytes, value: bytes) -> None:
        """Add the write of raw bytes under `key` in the state family to `batch`."""
        batch.put(key, value, self.handle())

    def keys(self, prefix: bytes) -> list[bytes]:
        """Return the keys stored under `prefix` (values unread)."""
        cf = self._column()
        if cf is None:
            return []
        end = store.successor(prefix)
        return [key for key, _ in store.checked_items(cf, self.where, start=prefix, end=end)]

    def stage_delete(self, batch: rocksdict.WriteBatch, key: bytes) -> None:
        """Add the removal of `key` from the state family to `batch`."""
        batch.delete(key, self.handle())

    def commit(self, batch: rocksdict.WriteBatch, *, needed: int | None = None) -> None:
        """Write `batch` atomically and durably (fsync of the WAL)."""
        try:
            self.db.write(batch, self._sync)
        except Exception as exc:  # noqa: BLE001 - rocksdict raises plain Exception
            raise store.translate(exc, self.where, needed=needed) from None

    def write_state(self, state: State, *records: HistoryRecord) -> State:
        """Write `state` and history `records` in one synced batch; return the state written."""
        batch = self.batch()
        try:
            for record in records:
                state = self.stage_history(batch, state, record)
            self.stage_state(batch, state)
            self.commit(batch)
        finally:
            del batch
        return state


def read_state(db: rocksdict.Rdict) -> State:
    """Return the migration state of an open database, for health checks.

    `current_version`, `status` (a `Status`), `applied` and `last_migration_at`; a database
    pebble-migrate has never touched reads as version 0, clean, `initialized=False`.
    """
    with StateStore(db, str(db.path())) as states:
        return states.read()


# --- encoding ---------------------------------------------------------------------


def _dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _loads(raw: Any, key: Any) -> Any:
    name = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
    if not isinstance(raw, bytes):
        raise CorruptStateError(name, f"expected bytes, found {type(raw).__name__}")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptStateError(name, f"not valid JSON ({exc})") from None


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value).astimezone(UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def encode_state(state: State) -> dict[str, Any]:
    """Return the JSON form of a state record."""
    progress = state.in_progress
    return {
        "format": FORMAT,
        "database_id": state.database_id,
        "status": state.status.value,
        "current_version": state.current_version,
        "applied": {mid: _iso(state.applied_at.get(mid)) for mid in sorted(state.applied)},
        "last_migration": state.last_migration,
        "last_migration_at": _iso(state.last_migration_at),
        "in_progress": None
        if progress is None
        else {
            "id": progress.id,
            "kind": progress.kind,
            "started_at": _iso(progress.started_at),
            "resumable": progress.resumable,
            "note": progress.note,
        },
        "last_error": state.last_error,
        "history_count": state.history_count,
    }


def decode_state(data: Any) -> State:
    """Return the State in a JSON state record; raise CorruptStateError if malformed."""
    try:
        if data.get("format") != FORMAT:
            raise ValueError(f"unknown format {data.get('format')!r}")
        applied = data["applied"]
        progress = data["in_progress"]
        state = State(
            initialized=True,
            status=Status(data["status"]),
            current_version=_int(data["current_version"]),
            applied=frozenset(applied),
            applied_at={mid: t for mid, at in applied.items() if (t := _time(at)) is not None},
            last_migration=data["last_migration"],
            last_migration_at=_time(data["last_migration_at"]),
            in_progress=None
            if progress is None
            else InProgress(
                id=str(progress["id"]),
                kind=str(progress["kind"]),
                started_at=_time(progress["started_at"]) or datetime.now(UTC),
                resumable=bool(progress["resumable"]),
                note=progress.get("note"),
            ),
            last_error=data["last_error"],
            database_id=data["database_id"],
            history_count=_int(data["history_count"]),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CorruptStateError("meta", f"{type(exc).__name__}: {exc}") from None
    return state


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, found {value!r}")
    return value


def encode_history(record: HistoryRecord) -> dict[str, Any]:
    """Return the JSON form of a history record."""
    return {
        "seq": record.seq,
        "id": record.id,
        "description": record.description,
        "kind": record.kind,
        "started_at": _iso(record.started_at),
        "duration_s": round(record.duration_s, 6),
        "success": record.success,
        "error": record.error,
        "note": record.note,
    }


def decode_history(data: Any) -> HistoryRecord:
    """Return the HistoryRecord in a JSON history record."""
    try:
        return HistoryRecord(
            seq=_int(data["seq"]),
            id=str(data["id"]),
            description=str(data["description"]),
            kind=str(data["kind"]),
            started_at=_time(data["started_at"]) or datetime.now(UTC),
            duration_s=float(data["duration_s"]),
            success=bool(data["success"]),
            error=data.get("error"),
            note=data.get("note"),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CorruptStateError(f"history/{data!r:.40}", f"{type(exc).__name__}: {exc}") from None
