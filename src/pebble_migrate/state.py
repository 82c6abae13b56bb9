"""The state column family: status, applied set, history records and scan cursors."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import rocksdict

from pebble_migrate import store
from pebble_migrate.errors import CorruptStateError, MigrateError, NewerStateFormat, StateError

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
                records.append(decode_history(_loads(value, key), _name(key)))
            return records
        for key, value in self._newest(cf, end, limit):
            records.append(decode_history(_loads(value, key), _name(key)))
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
        batch.put(META_KEY, _dumps(_readable(encode_state(state), decode_state)), self.handle())

    def stage_history(
        self, batch: rocksdict.WriteBatch, state: State, record: HistoryRecord
    ) -> State:
        """Add `record` (numbered after the last) to `batch`; return the new state.

        History is append-only: the number follows both the count in `meta` and the last
        record on disk, so a count that went backwards (an edited or restored `meta`) can
        never make a new record replace an old one.
        """
        seq = max(state.history_count, self._last_seq()) + 1
        record = replace(record, seq=seq)
        encoded = _readable(encode_history(record), decode_history)
        batch.put(HISTORY_PREFIX + b"%012d" % seq, _dumps(encoded), self.handle())
        return state.evolve(history_count=seq)

    def _last_seq(self) -> int:
        """Return the number of the last history record on disk (0: none)."""
        cf = self._column()
        if cf is None:
            return 0
        for key, _ in self._newest(cf, store.successor(HISTORY_PREFIX), 1):
            digits = key[len(HISTORY_PREFIX) :]
            return int(digits) if digits.isdigit() else 0
        return 0

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


def _readable(encoded: dict[str, Any], decode: Callable[[Any], Any]) -> dict[str, Any]:
    """Return `encoded` once its decoder has read it back: a record this tool could not
    read would lock every command out of the database, so it is refused before it is
    written (a StateError, nothing committed) rather than found damaged afterwards."""
    try:
        decode(encoded)
    except CorruptStateError as exc:
        raise StateError(
            f"refusing to write a state record that could not be read back: {exc.message}",
            hint="Nothing was written by this step. This is a bug in pebble-migrate: please "
            "report it with the message above.",
        ) from None
    return encoded


def _shortened(text: str | None, limit: int) -> str | None:
    """`text` cut to at most `limit` characters, saying how long it was (errors and
    docstrings can be any length; the records that keep them are bounded)."""
    return None if text is None else _cut(text, limit)


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    tail = f" ... [shortened: {len(text):,} characters]"
    return text[: limit - len(tail)] + tail


WRITTEN_TEXT_MAX = 10_000
"""The longest error or note a record keeps (the reader accepts up to `_TEXT_MAX`)."""
WRITTEN_DESCRIPTION_MAX = 2_000
"""The longest description a history record keeps (the reader accepts up to 10,000)."""


def _dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _name(key: Any) -> str:
    return key.decode(errors="replace") if isinstance(key, bytes) else str(key)


def _loads(raw: Any, key: Any) -> Any:
    name = _name(key)
    if not isinstance(raw, bytes):
        raise CorruptStateError(name, f"expected bytes, found {type(raw).__name__}")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # also a too-long number, too deep nesting
        raise CorruptStateError(name, f"not valid JSON ({exc})") from None


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise TypeError(f"expected a time, found {value!r:.60}")
    try:
        return datetime.fromisoformat(value).astimezone(UTC)
    except OverflowError:  # a time near year 1 or 9999 that has no UTC equivalent
        raise ValueError(f"time {value!r} is out of range") from None


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
            "note": _shortened(progress.note, WRITTEN_TEXT_MAX),
        },
        "last_error": _shortened(state.last_error, WRITTEN_TEXT_MAX),
        "history_count": state.history_count,
    }


def decode_state(data: Any) -> State:
    """Return the State in a JSON state record; raise CorruptStateError if malformed.

    The record comes from disk, so every field is checked for its type and range: ids are
    real migration ids, times are times, texts are bounded. A record written by a newer
    version of the tool is told apart (NewerStateFormat).
    """
    try:
        if not isinstance(data, dict):
            raise TypeError(f"expected an object, found {type(data).__name__}")
        fmt = data.get("format")
        if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > FORMAT:
            raise NewerStateFormat(fmt)
        if fmt != FORMAT:
            raise ValueError(f"unknown format {fmt!r:.40}")
        applied = _applied(data["applied"])
        state = State(
            initialized=True,
            status=Status(_text(data["status"], "status", 16)),
            current_version=_version_number(data["current_version"]),
            applied=frozenset(applied),
            applied_at={mid: t for mid, t in applied.items() if t is not None},
            last_migration=_opt_id(data["last_migration"], "last_migration"),
            last_migration_at=_time(data["last_migration_at"]),
            in_progress=_progress(data["in_progress"]),
            last_error=_opt_text(data["last_error"], "last_error"),
            database_id=_database_id(data["database_id"]),
            history_count=_count(data["history_count"], "history_count"),
        )
    except NewerStateFormat:
        raise
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CorruptStateError("meta", _why(exc)) from None
    return state


def _why(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"the field {exc.args[0]!r} is missing"
    return str(exc)


def _applied(value: Any) -> dict[str, datetime | None]:
    if not isinstance(value, dict):
        raise TypeError(f"applied: expected an object, found {type(value).__name__}")
    return {_id(mid, "applied"): _time(at) for mid, at in value.items()}


def _progress(value: Any) -> InProgress | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"in_progress: expected an object, found {type(value).__name__}")
    missing = [f"in_progress.{k}" for k in ("id", "kind", "resumable") if k not in value]
    if missing:
        raise KeyError(missing[0])
    kind = _text(value["kind"], "in_progress.kind", 16)
    if kind not in ("apply", "rerun", "rollback"):
        raise ValueError(f"in_progress.kind {kind!r} is not apply, rerun or rollback")
    resumable = value["resumable"]
    if not isinstance(resumable, bool):
        raise TypeError(f"in_progress.resumable: expected true or false, found {resumable!r:.40}")
    return InProgress(
        id=_id(value["id"], "in_progress.id"),
        kind=kind,
        started_at=_time(value["started_at"]) or datetime.now(UTC),
        resumable=resumable,
        note=_opt_text(value.get("note"), "in_progress.note"),
    )


def _id(value: Any, field_name: str) -> str:
    from pebble_migrate.migration import parse_id

    if not isinstance(value, str):
        raise TypeError(f"{field_name}: expected a migration id, found {value!r:.60}")
    try:
        parse_id(value)
    except MigrateError:
        raise ValueError(f"{field_name}: {value!r:.60} is not a migration id") from None
    return value


def _opt_id(value: Any, field_name: str) -> str | None:
    return None if value is None else _id(value, field_name)


_TEXT_MAX = 100_000


def _text(value: Any, field_name: str, limit: int = _TEXT_MAX) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{field_name}: expected text, found {value!r:.60}")
    if len(value) > limit:
        raise ValueError(f"{field_name}: {len(value)} characters, more than {limit}")
    return value


def _opt_text(value: Any, field_name: str) -> str | None:
    return None if value is None else _prose(value, field_name)


def _prose(value: Any, field_name: str, limit: int = _TEXT_MAX) -> str:
    """Free text (an error, a note, a description): one too long is shortened, not
    refused. Its length harms nothing once read, and refusing it would lock every
    command out of the database (records written before writers bounded their texts)."""
    if not isinstance(value, str):
        raise TypeError(f"{field_name}: expected text, found {value!r:.60}")
    return _cut(value, limit)


def _database_id(value: Any) -> str | None:
    if value is None:
        return None
    text = _text(value, "database_id", 64)
    if not text or not text.isascii() or not text.replace("-", "").isalnum():
        raise ValueError(f"database_id {text!r:.60} is not an id")
    return text


def _version_number(value: Any) -> int:
    from pebble_migrate.migration import MAX_VERSION

    number = _count(value, "current_version")
    if number > MAX_VERSION:  # a wrong version below it is for `repair` to put right
        shown = str(number) if number < 10**20 else f"{str(number)[:20]}..."
        raise ValueError(f"current_version {shown} is beyond any version (the year 2100)")
    return number


def _count(value: Any, field_name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise TypeError(f"{field_name}: expected a count, found {value!r:.60}")
    return value


def encode_history(record: HistoryRecord) -> dict[str, Any]:
    """Return the JSON form of a history record."""
    return {
        "seq": record.seq,
        "id": record.id,
        "description": _shortened(record.description, WRITTEN_DESCRIPTION_MAX),
        "kind": record.kind,
        "started_at": _iso(record.started_at),
        "duration_s": round(record.duration_s, 6),
        "success": record.success,
        "error": _shortened(record.error, WRITTEN_TEXT_MAX),
        "note": _shortened(record.note, WRITTEN_TEXT_MAX),
    }


HISTORY_KINDS = ("apply", "rerun", "rollback", "force-clean", "repair", "stamp")


def decode_history(data: Any, key: str = "history") -> HistoryRecord:
    """Return the HistoryRecord in a JSON history record; raise CorruptStateError."""
    try:
        if not isinstance(data, dict):
            raise TypeError(f"expected an object, found {type(data).__name__}")
        mid = _text(data["id"], "id", 200)
        if mid != "-":
            _id(mid, "id")
        kind = _text(data["kind"], "kind", 32)
        if kind not in HISTORY_KINDS:
            raise ValueError(f"kind {kind!r:.40} is not one of {', '.join(HISTORY_KINDS)}")
        duration = data["duration_s"]
        if not isinstance(duration, int | float) or isinstance(duration, bool):
            raise TypeError(f"duration_s: expected a number, found {duration!r:.40}")
        success = data["success"]
        if not isinstance(success, bool):
            raise TypeError(f"success: expected true or false, found {success!r:.40}")
        return HistoryRecord(
            seq=_count(data["seq"], "seq"),
            id=mid,
            description=_prose(data["description"], "description", 10_000),
            kind=kind,
            started_at=_time(data["started_at"]) or datetime.now(UTC),
            duration_s=float(duration),
            success=success,
            error=_opt_text(data.get("error"), "error"),
            note=_opt_text(data.get("note"), "note"),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CorruptStateError(key, _why(exc)) from None
