"""The state column family: records, history, corruption, and what read_state costs."""

from __future__ import annotations

from pathlib import Path

import pytest
import rocksdict

from pebble_migrate import CorruptStateError, NewerStateFormat, Status, read_state
from pebble_migrate.commands import history, up
from pebble_migrate.state import HISTORY_PREFIX, META_KEY, HistoryRecord, StateStore, new_state
from pebble_migrate.store import STATE_CF
from pebble_migrate.testing import contents, create_database
from pebble_migrate.units import utc_now
from tests.conftest import migration, put_items, registry_of


def _open(path: Path) -> rocksdict.Rdict:
    return rocksdict.Rdict(str(path))


def test_read_state_of_untouched_database_is_uninitialized(db_path: Path) -> None:
    db = _open(db_path)
    try:
        state = read_state(db)
    finally:
        db.close()
    assert state.initialized is False
    assert state.current_version == 0
    assert state.status is Status.CLEAN
    assert state.applied == frozenset()
    assert state.last_migration_at is None
    assert STATE_CF not in rocksdict.Rdict.list_cf(str(db_path))  # reading created nothing


def test_read_state_after_up(db_path: Path) -> None:
    reg = registry_of(
        migration("1700000000_a", up=put_items({b"a": b"1"})),
        migration("1700100000_b", "1700000000_a"),
    )
    up(db_path, reg)
    db = _open(db_path)
    try:
        state = read_state(db)
    finally:
        db.close()
    assert state.current_version == 1700100000
    assert state.status == "clean"  # Status is a string enum with lowercase values
    assert state.applied == {"1700000000_a", "1700100000_b"}
    assert state.last_migration_at is not None
    assert state.database_id and len(state.database_id) == 32


def test_state_is_invisible_to_the_application_keyspace(db_path: Path) -> None:
    up(db_path, registry_of(migration("1700000000_a", up=put_items({b"a": b"1"}))))
    db = _open(db_path)
    try:
        keys = list(db.keys())
    finally:
        db.close()
    assert keys == [b"a", b"seed"]
    assert contents(db_path) == {"default": {b"a": b"1", b"seed": b"1"}}


def _write_history(path: Path, n: int) -> None:
    db = _open(path)
    states = StateStore(db, str(path))
    try:
        state = states.write_state(new_state())
        now = utc_now()
        batch = states.batch()
        for i in range(n):
            record = HistoryRecord(0, f"1700000000_m{i}", "d", "apply", now, 0.1, True)
            state = states.stage_history(batch, state, record)
        states.stage_state(batch, state)
        states.commit(batch)
        del batch
    finally:
        states.release()
        db.close()


@pytest.mark.parametrize("n", [10, 10_000])
def test_read_state_does_not_read_history(tmp_path: Path, n: int) -> None:
    """read_state costs the same with 10 or 10,000 records: it never touches them.

    Proof without a stopwatch: with every history record corrupted, read_state still works,
    while reading the history fails.
    """
    path = create_database(tmp_path / "db", {b"k": b"v"})
    _write_history(path, n)
    db = _open(path)
    try:
        cf = db.get_column_family(STATE_CF)
        for i in range(1, n + 1):
            cf[HISTORY_PREFIX + b"%012d" % i] = b"{not json"
        del cf
        state = read_state(db)
    finally:
        db.close()
    assert state.history_count == n
    with pytest.raises(CorruptStateError):
        history(path)


def test_history_limit_reads_newest(tmp_path: Path) -> None:
    path = create_database(tmp_path / "db", {b"k": b"v"})
    _write_history(path, 50)
    records = history(path, limit=3)
    assert [r.seq for r in records] == [48, 49, 50]
    assert [r.seq for r in history(path)] == list(range(1, 51))


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"format": "1"}', "unknown format"),
        (b'{"format": 1, "status": "weird"}', "the field 'applied' is missing"),
        (b'{"format": 1, "status": "clean", "applied": {}}', "the field 'current_version'"),
    ],
)
def test_corrupt_state_record_is_reported_not_guessed(
    db_path: Path, raw: bytes, needle: str
) -> None:
    up(db_path, registry_of(migration("1700000000_a")))
    db = _open(db_path)
    try:
        cf = db.get_column_family(STATE_CF)
        cf[META_KEY] = raw
        del cf
        with pytest.raises(CorruptStateError) as info:
            read_state(db)
    finally:
        db.close()
    assert needle in str(info.value)
    assert "backup restore" in str(info.value)


def test_state_from_a_newer_version_says_upgrade(db_path: Path) -> None:
    up(db_path, registry_of(migration("1700000000_a")))
    db = _open(db_path)
    try:
        cf = db.get_column_family(STATE_CF)
        cf[META_KEY] = b'{"format": 99}'
        del cf
        with pytest.raises(NewerStateFormat) as info:
            read_state(db)
    finally:
        db.close()
    assert "written by a newer pebble-migrate (format 99" in str(info.value)
    assert "Upgrade pebble-migrate" in str(info.value)


def test_pickle_mode_database_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "pickled"
    db = rocksdict.Rdict(str(path))  # rocksdict's default: pickle mode
    db["name"] = "ada"
    db[b"raw"] = b"bytes"
    db.close()
    up(path, registry_of(migration("1700000000_a", up=put_items({b"added": b"yes"}))))
    db = rocksdict.Rdict(str(path))
    try:
        assert db["name"] == "ada"
        assert db[b"added"] == b"yes"
        assert read_state(db).applied == {"1700000000_a"}
    finally:
        db.close()
