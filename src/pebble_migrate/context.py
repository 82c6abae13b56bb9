"""What a migration sees: batched put/delete/get, resumable scans, progress."""

from __future__ import annotations

import inspect
import logging
import time
import weakref
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import rocksdict

from pebble_migrate import store, views
from pebble_migrate.counting import KeyCount
from pebble_migrate.cursor import SCAN_NAME, RunRecord, ScanCursor, encode_record, show_key
from pebble_migrate.errors import CodeChanged, MigrateError, UsageError
from pebble_migrate.events import Event
from pebble_migrate.faults import kill_point
from pebble_migrate.signals import HardStop

if TYPE_CHECKING:
    from pebble_migrate.migration import Migration
    from pebble_migrate.signals import SignalGuard
    from pebble_migrate.state import StateStore

_DELETED = object()
_NONE = object()
PROGRESS_EVERY_S = 0.25


@dataclass(frozen=True)
class ChunkPolicy:
    """When a scan commits: after this many records or bytes, whichever comes first."""

    records: int = 10_000
    bytes: int = 4 * 1024 * 1024


class Run(Protocol):
    """What the executor provides to a context while a migration runs."""

    states: StateStore
    db_path: Path
    database_id: str | None
    policy: ChunkPolicy
    guard: SignalGuard

    def interrupted(self) -> int:
        """Return the first signal received (0 if none)."""

    def stop(self, record: RunRecord, at: str) -> MigrateError:
        """Return the error that stops this migration after a committed chunk."""

    def report(self, event: Event) -> None:
        """Pass an event on to the reporter."""

    def direct_write(self) -> None:
        """Record, durably and before it happens, that the migration wrote past ctx."""


class MigrationContext:
    """Handed to `up`, `down` and `validate`.

    `put`/`delete` go into a batch committed atomically with the state change that records
    the migration (or, inside `scan`, with the scan's cursor, chunk by chunk); `get` sees
    those pending writes; `db` is the open rocksdict.Rdict for anything else.

    `partial` is None, except in the `down` of a migration whose `up` never finished: then
    it maps each scan of `up` to the last key whose work was committed (None if none was),
    so `down` can leave alone the data `up` never reached.
    """

    partial: dict[str, Any] | None = None

    def __init__(
        self,
        db: rocksdict.Rdict,
        migration: Migration,
        *,
        run: Run | None,
        record: RunRecord | None = None,
        logger: logging.Logger | None = None,
        where: str | None = None,
    ) -> None:
        self.migration = migration
        self._where = where or str(db.path())
        self.log = logger or logging.getLogger("pebble_migrate.migration")
        self._rdict = db
        self._run = run
        self.db: Any = TrackedDb(db, self._direct_write)
        self._record = record or RunRecord(migration.id, "apply")
        self._unfinished = {name for name, c in self._record.scans.items() if not c.done}
        self._raw_mode: bool | None = None
        self._skip_loose = self._record.loose if run is not None else 0
        self._loose = self._record.loose
        self._batch: rocksdict.WriteBatch | None = None
        self._pending: dict[Any, Any] = {}
        self._scanning = 0
        self._used_names: set[str] = set()
        # Weak: a loop left with `break` drops the last reference, which closes the scan at
        # once (marking it finished) instead of whenever the migration ends.
        self._scans: list[weakref.ref[Generator[tuple[Any, Any], None, None]]] = []
        self._left: tuple[str, Any, Any] | None = None
        """The scan last left early: its name, the key it was at, the last committed key."""
        self._direct = False
        self._last_progress = 0.0
        self._counter: KeyCount | None = None
        self.failure: BaseException | None = None
        """The first stop, corruption or storage error raised to the migration; it fails
        the run even if the migration's code caught it and carried on."""

    def _raw(self) -> bool:
        """Whether the database is in raw mode (bytes keys only)."""
        if self._raw_mode is None:
            run = self._run
            self._raw_mode = run.states.raw if run is not None else store.is_raw_mode(self._rdict)
        return self._raw_mode

    def _noted(self, exc: BaseException) -> BaseException:
        """Remember `exc` as what stopped the run (the first one wins); return it."""
        if self.failure is None:
            self.failure = exc
        return exc

    # --- writes ----------------------------------------------------------------

    def put(self, key: Any, value: Any) -> None:
        """Stage `key = value`; committed with the next chunk or with the migration."""
        if self._scanning:
            self._batch.put(key, value)  # type: ignore[union-attr]
        elif self._skip_replayed():
            return
        else:
            self._writable().put(key, value)
        self._pending[key] = value

    def delete(self, key: Any) -> None:
        """Stage the removal of `key`; committed like `put`."""
        if self._scanning:
            self._batch.delete(key)  # type: ignore[union-attr]
        elif self._skip_replayed():
            return
        else:
            self._writable().delete(key)
        self._pending[key] = _DELETED

    def get(self, key: Any, default: Any = None) -> Any:
        """Return the value of `key`, seeing this migration's uncommitted writes."""
        value = self._pending.get(key, _NONE)
        if value is not _NONE:
            return default if value is _DELETED else value
        try:
            return self._rdict.get(key, default)
        except Exception as exc:
            if isinstance(exc, TypeError | KeyError):
                raise  # a key of the wrong type: the migration's own mistake, as in rocksdict
            raise self._noted(store.translate(exc, self._where)) from None

    def _writable(self) -> rocksdict.WriteBatch:
        if self._run is None:
            raise UsageError("validate() must not write; it only checks the data.")
        if self._batch is None:
            self._batch = self._run.states.batch()
        self._loose += 1  # only writes outside a scan get here
        return self._batch

    def _skip_replayed(self) -> bool:
        # On resume the code before and between scans runs again; its first `loose` writes
        # were committed by the earlier run, so they are not staged twice.
        if self._skip_loose > 0:
            self._skip_loose -= 1
            return True
        return False

    def _direct_write(self) -> None:
        if self._run is None:
            raise UsageError("validate() must not write; it only checks the data.")
        if not self._direct:
            self._direct = True
            self._run.direct_write()

    # --- progress --------------------------------------------------------------

    def progress(self, done: int, total: int | None = None) -> None:
        """Report progress of a migration that does not use `scan`; also a safe stop point."""
        self._check_stop()
        now = time.monotonic()
        if self._run is not None and now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            self._emit_progress("", done, total)

    def _emit_progress(self, scan: str, done: int, total: int | None) -> None:
        assert self._run is not None
        action = self._record.action
        label = self.migration.id + (" (rollback)" if action == "rollback" else "")
        self._run.report(
            Event(
                "progress",
                f"{label}: {done}" + (f" of ~{total}" if total else ""),
                self.migration.id,
                {"scan": scan, "done": done, "total": total, "action": action, "label": label},
            )
        )

    def _check_stop(self) -> None:
        if self._run is not None and self._run.interrupted():
            raise self._noted(self._run.stop(self._record, "before its work was committed"))

    # --- scans -----------------------------------------------------------------

    def scan(
        self,
        prefix: Any = None,
        *,
        start: Any = None,
        end: Any = None,
        name: str = "default",
    ) -> Iterator[tuple[Any, Any]]:
        """Iterate (key, value) over a prefix or [start, end), resumably.

        The scan reads a frozen view taken when it first started, so it never sees its
        own writes; `put`/`delete` made in the loop are committed every chunk together with
        the scan's position, so a killed run resumes after the last committed key and
        processes each key exactly once. Give several scans in one migration distinct names.
        """
        try:
            return self._open_scan(prefix, start, end, name)
        except BaseException as exc:  # noqa: BLE001 - noted, then raised again
            raise self._noted(exc) from None

    def _open_scan(self, prefix: Any, start: Any, end: Any, name: str) -> Iterator[tuple[Any, Any]]:
        if prefix is not None and (start is not None or end is not None):
            raise UsageError("ctx.scan() takes either prefix= or start=/end=, not both.")
        if prefix is not None:
            start, end = prefix, store.successor(prefix)
            if end is None and not self._raw():
                raise UsageError(f"prefix {prefix!r:.40} has no end in a pickle-mode database.")
        if not self._raw():
            start, end = _pickle_bounds(start, end)
        if not isinstance(name, str) or not SCAN_NAME.match(name):
            raise UsageError(f"scan name {name!r} must be 1-64 letters, digits, '_', '.', '-'.")
        if name in self._used_names:
            raise UsageError(
                f"scan {name!r} was started twice in {self.migration.id}; "
                "give each scan its own name= so each can resume."
            )
        if self._run is None:
            scan = self._snapshot_scan(start, end)
        else:
            self._refuse_nesting(name)
            self._used_names.add(name)
            cursor = self._prepare_scan(name, start, end)
            if cursor is None:
                return iter(())
            scan = self._walk(cursor)
        self._used_names.add(name)
        self._scans.append(weakref.ref(scan))
        return scan

    def _refuse_nesting(self, name: str) -> None:
        """Raise if another resumable scan is still open: their commits would interleave."""
        for ref in self._scans:
            other = ref()
            if other is not None and inspect.getgeneratorstate(other) != inspect.GEN_CLOSED:
                raise UsageError(
                    f"scan {name!r} started while another scan of {self.migration.id} is still "
                    "open; scans cannot be nested or interleaved.",
                    hint="Finish one loop before starting the next (leave a loop early with "
                    "`break`); to combine ranges, read the other data with ctx.get.",
                )

    def _snapshot_scan(self, start: Any, end: Any) -> Generator[tuple[Any, Any], None, None]:
        snapshot = self._rdict.snapshot()
        try:
            yield from store.checked_items(snapshot, self._where, start=start, end=end)
        finally:
            del snapshot

    def _prepare_scan(self, name: str, start: Any, end: Any) -> ScanCursor | None:
        """Return the cursor to walk (new or resumed), or None if the scan already finished.

        Raise CodeChanged, before anything is committed, when the code no longer matches
        the run it continues: a scan over another range, or a new scan while one that an
        earlier run started is still unfinished (renamed, reordered, or dropped).
        """
        cursor = self._record.scans.get(name)
        mid = self.migration.id
        if cursor is not None and (cursor.start, cursor.end) != (start, end):
            raise CodeChanged(mid, f"scan {name!r} covers a different range than when it stopped")
        if cursor is None:
            waiting = sorted(self._unfinished - self._used_names)
            if waiting:
                raise CodeChanged(
                    mid,
                    f"scan {name!r} starts while scan {waiting[0]!r}, which the run that "
                    "stopped began, is unfinished (a renamed, reordered or removed scan would "
                    "process its committed keys again)",
                )
        if cursor is not None and cursor.done:
            return None
        return cursor if cursor is not None else self._start_scan(name, start, end)

    def _start_scan(self, name: str, start: Any, end: Any) -> ScanCursor:
        run = self._run
        assert run is not None
        action = self._record.action
        path = views.view_path(run.db_path, self.migration.id, action, name)
        # Commit what came before, with the view's marker, so the frozen view includes this
        # migration's own earlier writes and proves whose it is. The cursor joins the run
        # record only once its view exists; a run killed before the scan's first chunk
        # simply starts this scan again on a fresh view.
        token = views.new_token()
        if self._batch is None:
            self._batch = run.states.batch()
        run.states.stage_raw(
            self._batch, views.marker_key(self.migration.id, action, name), token.encode()
        )
        self._commit()
        kill_point("scan-marked")
        views.create_view(self._rdict, run.db_path, path)
        kill_point("scan-view-taken")
        cursor = ScanCursor(name=name, start=start, end=end, token=token)
        self._record.scans[name] = cursor
        return cursor

    def _walk(  # noqa: PLR0912, PLR0915 - the hot loop stays in one frame, for speed
        self, cursor: ScanCursor
    ) -> Generator[tuple[Any, Any], None, None]:
        # The hot loop. Per key: a bounds test (none in raw mode, where RocksDB bounds the
        # iterator), one identity test, a counter and one comparison. The signal flag, the
        # record count and the batch size are looked at together once `since` reaches
        # `check`, which moves in steps of 64 keys, or at once when a signal arrived.
        run = self._run
        assert run is not None
        guard = run.guard
        records, size = run.policy.records, run.policy.bytes
        after = cursor.after
        try:
            view, path = views.open_view(
                run.db_path,
                self.migration.id,
                self._record.action,
                cursor.name,
                cursor.token,
                run.database_id,
            )
        except BaseException as exc:  # noqa: BLE001 - noted, then raised again
            raise self._noted(exc) from None
        counter = self._count(cursor, view, path)
        items, end = _range_items(
            view, cursor.start if after is None else after, cursor.end, raw=run.states.raw
        )
        if self._batch is None:
            self._batch = run.states.batch()
        prev: Any = _NONE
        done, since, check = cursor.count, 0, min(64, records)
        self._scanning += 1
        scanning = True
        try:
            for key, value in items:
                if end is not None:
                    try:
                        if not key < end:
                            break
                    except TypeError:
                        break  # pickle mode: keys of another type sort after this range
                if prev is not _NONE:
                    since += 1
                    if since >= check or guard.first:
                        if guard.first or since >= records or self._batch.size_in_bytes() >= size:
                            done, since = done + since, 0
                            self._end_chunk(cursor, prev, done)
                        else:
                            self._tick(cursor, done + since)
                        check = min(since + 64, records)
                elif after is not None and key == after:
                    continue  # processed and committed by the run that stopped
                prev = key
                yield key, value
            last = prev if prev is not _NONE else after
            store.verify_scan_end(view, str(path), last, cursor.start, cursor.end)
            self._scanning -= 1
            scanning = False
            self._finish_scan(cursor, prev, done + since + 1)
        except GeneratorExit:
            # The loop was left early (break, or an exception of the migration's own): the
            # last key handed out counts as processed; its writes go with the next commit.
            # (It is thrown in at the yield, so `prev` is that key.)
            self._left = (cursor.name, prev, cursor.after)
            cursor.after, cursor.count = prev, done + since + 1
            cursor.done = True
            raise
        except BaseException as exc:  # noqa: BLE001 - noted, then raised again
            # A stop, a damaged block, a failed commit: nothing more of this run is
            # committed, and the run fails even if the migration catches this.
            raise self._noted(exc) from None
        finally:
            if scanning:
                self._scanning -= 1
            del items
            if counter is not None:
                counter.close()
            store.close_database(view)

    def _end_chunk(self, cursor: ScanCursor, prev: Any, done: int) -> None:
        """Commit the chunk that ends with key `prev`; stop here if a signal came."""
        run = self._run
        assert run is not None
        cursor.after, cursor.count = prev, done
        self._commit()
        if run.guard.first:
            raise run.stop(self._record, f"at {show_key(prev)}")
        self._maybe_progress(cursor)

    def _finish_scan(self, cursor: ScanCursor, prev: Any, done: int) -> None:
        """Commit the last chunk and mark the scan finished."""
        if prev is not _NONE:
            cursor.after, cursor.count = prev, done
        cursor.done = True
        self._commit()
        self._maybe_progress(cursor, force=True)

    def _count(self, cursor: ScanCursor, view: rocksdict.Rdict, path: Path) -> KeyCount | None:
        """Start counting the keys of a new scan, for progress totals."""
        if cursor.after is not None or cursor.count:
            return None
        counter = KeyCount.start(view, str(path), cursor.start, cursor.end)
        cursor.total = counter.total
        self._counter = counter
        return counter

    def _tick(self, cursor: ScanCursor, count: int) -> None:
        """Between commits, every 64 keys: report progress once PROGRESS_EVERY_S has passed,
        so a person watching sees it move even when chunks are large or slow."""
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            if cursor.total is None and self._counter is not None:
                cursor.total = self._counter.poll()
            self._emit_progress(cursor.name, count, cursor.total)

    def _maybe_progress(self, cursor: ScanCursor, force: bool = False) -> None:
        if cursor.total is None and self._counter is not None:
            cursor.total = self._counter.poll()
        now = time.monotonic()
        if force or now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            self._emit_progress(cursor.name, cursor.count, cursor.total)

    # --- commits ---------------------------------------------------------------

    def _commit(self) -> None:
        """Write the pending batch and the run record in one synced RocksDB write."""
        run = self._run
        assert run is not None
        if run.guard.second:
            # A second signal landed in the migration's own code, which may have caught it:
            # nothing more is committed, whatever the code did next.
            raise HardStop(run.guard.second)
        batch = self._batch if self._batch is not None else run.states.batch()
        self._record.loose = self._loose
        run.states.stage_put(batch, self._record.key, encode_record(self._record))
        try:
            kill_point("chunk-before-commit")
            run.states.commit(batch, needed=2 * batch.size_in_bytes())
            kill_point("chunk-after-commit")
        finally:
            del batch
        self._batch = run.states.batch() if self._scanning else None
        self._pending.clear()

    def commit_work(self) -> None:
        """Commit the pending writes with the run record (the migration's code has ended)."""
        self._commit()

    def take_batch(self) -> rocksdict.WriteBatch:
        """Return the pending writes (for the executor's final commit) and forget them."""
        batch = self._batch if self._batch is not None else self._run_states().batch()
        self._batch = None
        self._pending.clear()
        return batch

    def _run_states(self) -> StateStore:
        assert self._run is not None
        return self._run.states

    @property
    def record(self) -> RunRecord:
        """The run record as this context has advanced it."""
        self._record.loose = self._loose
        return self._record

    @property
    def wrote_directly(self) -> bool:
        """Whether the migration wrote through `ctx.db`."""
        return self._direct

    def check_finished(self) -> None:
        """Raise unless the migration's work is complete: raise the stop, corruption or
        storage error it was given (even if its code caught it), or say which scan did not
        reach its end. Scans still open count as left early, as with `break`."""
        self._close_scans()
        if self.failure is not None:
            raise self.failure
        unfinished = sorted(name for name, c in self._record.scans.items() if not c.done)
        if unfinished:
            names = ", ".join(repr(n) for n in unfinished)
            raise UsageError(
                f"{self.migration.id} returned before its scan(s) {names} reached the end: "
                "a scan that is opened must be iterated (to its end, or left with `break`), "
                "and a scan started by an earlier run must be opened again.",
                hint="Its finished chunks are kept. Fix the migration, then continue it.",
            )

    def _close_scans(self) -> None:
        for ref in self._scans:
            scan = ref()
            if scan is not None:
                scan.close()
        self._scans.clear()

    def position(self) -> str | None:
        """Say where the migration's code was, when it raised inside a resumable scan: the
        key it was processing, the scan, and the last key committed (resume starts after
        it). None when no scan was open at a key.

        Read from the suspended scan generator itself, so the hot loop pays nothing for it.
        """
        # A loop already closed: unwound by the error (the usual way here), or left by a
        # `break` before the error came. Either way the scan stopped at that key.
        left: tuple[str, Any, Any] | None = self._left
        at = "stopped at key"
        for ref in reversed(self._scans):
            scan = ref()
            if scan is None or inspect.getgeneratorstate(scan) != inspect.GEN_SUSPENDED:
                continue
            found = scan.gi_frame.f_locals  # a loop still open (its iterator kept alive)
            cursor, key = found.get("cursor"), found.get("prev", _NONE)
            if isinstance(cursor, ScanCursor) and key is not _NONE:
                left, at = (cursor.name, key, cursor.after), "at key"
                break
        if left is None or left[1] is _NONE:
            return None
        name, key, committed = left
        return f"scan {name!r} {at} {show_key(key)}; last committed key: " + (
            "none yet" if committed is None else show_key(committed)
        )

    def release(self) -> None:
        """Close open scans and drop every rocksdict object held, so the db can be closed."""
        self._close_scans()
        self._batch = None
        self._pending.clear()
        self.db = None
        self._rdict = None  # type: ignore[assignment]


def validation_problems(
    db: rocksdict.Rdict, migration: Migration, where: str | None = None
) -> list[str]:
    """Run `migration.validate` over `db` (read-only); return its problems (none: valid).

    `validate` reports failure by returning False or a non-empty list of problems, or by
    raising (SystemExit included; an interruption is raised on).
    """
    if migration.validate is None:
        return []
    ctx = MigrationContext(db, migration, run=None, where=where)
    try:
        result = migration.validate(ctx)
    except MigrateError as exc:
        return [exc.message]
    except (KeyboardInterrupt, HardStop):
        raise  # an interruption, not an answer
    except SystemExit as exc:
        return [f"validate() called sys.exit({exc.code!r})"]
    except BaseException as exc:  # noqa: BLE001 - user code may raise anything
        return [f"{type(exc).__name__}: {exc}"]
    finally:
        ctx.release()
    return _problems_in(result)


def _problems_in(result: Any) -> list[str]:
    if inspect.iscoroutine(result) or inspect.isgenerator(result):
        result.close()
        return [f"validate() returned a {type(result).__name__} instead of running"]
    if result is False:
        return ["validate() returned False"]
    if isinstance(result, list | tuple):
        return [_problem(p) for p in result]
    return []


def _problem(item: Any) -> str:
    """A problem as shown: text as it is; a key (bytes) printable and shortened, so a
    check can return the keys it found wrong."""
    if isinstance(item, bytes | bytearray):
        return f"key {show_key(bytes(item))}"
    return str(item)


def _pickle_bounds(start: Any, end: Any) -> tuple[Any, Any]:
    """Return the bounds of a scan of a pickle-mode database, or raise UsageError.

    rocksdict orders pickle-mode keys by type first (bytes, str, int, float, bool) and
    negative floats after positive ones, so only bytes and str bounds name a range on
    disk; a range is kept within its bounds' type.
    """
    if start is None and end is None:
        return start, end
    kinds = {type(b) for b in (start, end) if b is not None}
    if len(kinds) != 1 or not kinds <= {bytes, str}:
        shown = ", ".join(sorted(k.__name__ for k in kinds))
        raise UsageError(
            f"scan bounds of type {shown} are not supported in a pickle-mode database: "
            "there, start= and end= must both be bytes or both be str.",
            hint="Scan without bounds and skip the keys you do not want.",
        )
    if end is None:
        raise UsageError(
            "in a pickle-mode database a scan with start= needs end= (or use prefix=): "
            "keys of other types follow the range on disk."
        )
    return (start if start is not None else type(end)()), end


def _range_items(view: rocksdict.Rdict, begin: Any, end: Any, *, raw: bool) -> tuple[Any, Any]:
    """Return an items() walk from `begin`, and the end bound left for Python to test.

    In raw mode RocksDB stops at `end` itself (an upper bound on the iterator); rocksdict
    does not encode bounds in pickle mode, so there the loop compares keys.
    """
    if raw and end is not None:
        bounded = rocksdict.ReadOptions()
        bounded.set_iterate_upper_bound(end)
        items = (
            view.items(from_key=begin, read_opt=bounded)
            if begin is not None
            else (view.items(read_opt=bounded))
        )
        return items, None
    return (view.items() if begin is None else view.items(from_key=begin)), end


class TrackedDb:
    """The open rocksdict.Rdict as `ctx.db`: every method of it, and before the first
    direct write, a durable note that the migration can no longer be resumed safely."""

    _WRITES = frozenset(
        {
            "put",
            "delete",
            "write",
            "delete_range",
            "put_entity",
            "ingest_external_file",
            "create_column_family",
            "drop_column_family",
        }
    )

    def __init__(self, rdict: rocksdict.Rdict, on_write: Callable[[], None]) -> None:
        object.__setattr__(self, "_rdict", rdict)
        object.__setattr__(self, "_on_write", on_write)

    def __getattr__(self, name: str) -> Any:
        if name in self._WRITES:
            self._on_write()
        value = getattr(self._rdict, name)
        if name == "get_column_family":
            on_write = self._on_write

            def column(cf_name: str) -> TrackedDb:
                return TrackedDb(value(cf_name), on_write)

            return column
        return value

    def __getitem__(self, key: Any) -> Any:
        return self._rdict[key]

    def __contains__(self, key: Any) -> bool:
        return key in self._rdict

    def __setitem__(self, key: Any, value: Any) -> None:
        self._on_write()
        self._rdict[key] = value

    def __delitem__(self, key: Any) -> None:
        self._on_write()
        del self._rdict[key]

    def unwrap(self) -> rocksdict.Rdict:
        """Return the bare Rdict (counts as a direct write: the run stops being resumable)."""
        self._on_write()
        rdict: rocksdict.Rdict = self._rdict
        return rdict
