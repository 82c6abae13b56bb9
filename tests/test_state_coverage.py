"""The state column family's edges: storage faults and every malformed field of a record.

Covers what `pebble_migrate.state` does when RocksDB fails under it (a database closed
during a call, a table file with a bad checksum, a directory moved away, a read-only
open asked to write), reading a database that has no state family yet, and each check
`decode_state` and `decode_history` make on a record read back from disk: the error names
the record and the field, and nothing is guessed. All against real databases.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import rocksdict

from pebble_migrate import CorruptStateError, read_state
from pebble_migrate.commands import history, up
from pebble_migrate.errors import CorruptionError, StorageError
from pebble_migrate.state import (
    CURSOR_PREFIX,
    HISTORY_PREFIX,
    META_KEY,
    HistoryRecord,
    StateStore,
    new_state,
)
from pebble_migrate.store import STATE_CF, close_database, open_database
from pebble_migrate.testing import contents
from pebble_migrate.units import utc_now
from tests.conftest import Invoke, migration, registry_of, snapshot

FIRST = HISTORY_PREFIX + b"%012d" % 1


@pytest.fixture
def applied(db_path: Path) -> Path:
    """A database with one migration applied (state record and one history record)."""
    up(db_path, registry_of(migration("1700000000_a")))
    return db_path


def _edit(path: Path, key: bytes, change: Callable[[Any], Any]) -> None:
    """Replace the JSON record under `key` in the state family by `change(record)`."""
    db = rocksdict.Rdict(str(path))
    try:
        cf = db.get_column_family(STATE_CF)
        raw = cf[key]
        assert isinstance(raw, bytes)
        cf[key] = json.dumps(change(json.loads(raw))).encode()
        del cf
    finally:
        db.close()


def _setting(field: str, value: Any) -> Callable[[Any], Any]:
    def change(record: Any) -> Any:
        record[field] = value
        return record

    return change


def _read_state(path: Path) -> Any:
    db = rocksdict.Rdict(str(path))
    try:
        return read_state(db)
    finally:
        db.close()


def _record(mid: str = "1700000000_a") -> HistoryRecord:
    return HistoryRecord(0, mid, "d", "apply", utc_now(), 0.5, True)


# --- a database without a state family --------------------------------------------


def test_a_database_never_migrated_has_no_history_keys_or_cursors(db_path: Path) -> None:
    db = open_database(db_path, read_only=True)
    try:
        with StateStore(db, str(db_path)) as states:
            assert states.history() == []
            assert states.history(limit=3) == []
            assert states.keys(CURSOR_PREFIX) == []
            assert states.items(CURSOR_PREFIX) == []
    finally:
        close_database(db)
    assert STATE_CF not in rocksdict.Rdict.list_cf(str(db_path))  # reading created nothing


def test_the_first_history_record_of_a_new_state_family_is_number_one(db_path: Path) -> None:
    db = open_database(db_path, read_only=False)
    try:
        with StateStore(db, str(db_path)) as states:
            written = states.write_state(new_state(), _record(), _record("1700000001_b"))
            assert written.history_count == 2
            assert [(r.seq, r.id) for r in states.history()] == [
                (1, "1700000000_a"),
                (2, "1700000001_b"),
            ]
    finally:
        close_database(db)
    assert _read_state(db_path).history_count == 2


def test_a_state_without_a_database_id_reads_back_without_one(db_path: Path) -> None:
    db = open_database(db_path, read_only=False)
    try:
        with StateStore(db, str(db_path)) as states:
            states.write_state(new_state().evolve(database_id=None))
    finally:
        close_database(db)
    state = _read_state(db_path)
    assert state.initialized is True
    assert state.database_id is None


# --- RocksDB failing under the state store ----------------------------------------


def test_a_database_closed_during_a_call_is_named_not_a_rocksdict_error(db_path: Path) -> None:
    db = rocksdict.Rdict(str(db_path))
    states = StateStore(db, str(db_path))
    db.close()
    with pytest.raises(StorageError) as info:
        states.read()
    assert f"the database at {db_path} was closed while pebble-migrate" in str(info.value)
    assert "Keep the database open until the call returns" in str(info.value)


def _damage_state_table(path: Path) -> None:
    """Flush the state family to table files, then flip bytes in the first block of each
    table that holds the state record (the history records are in the same block)."""
    db = rocksdict.Rdict(str(path))
    try:
        cf = db.get_column_family(STATE_CF)
        cf.flush()
        del cf
        tables = [
            path / str(f["name"]).lstrip("/")
            for f in db.live_files()
            if f["start_key"] <= META_KEY <= f["end_key"]
        ]
    finally:
        db.close()
    assert tables
    for table in tables:
        data = bytearray(table.read_bytes())
        for i in range(16, 96):
            data[i] ^= 0xFF
        table.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "reading",
    [
        pytest.param(lambda s: s.read(), id="state record"),
        pytest.param(lambda s: s.history(limit=1), id="newest history"),
    ],
)
def test_a_bad_checksum_in_the_state_table_is_a_corruption_error(
    applied: Path, reading: Callable[[StateStore], Any]
) -> None:
    _damage_state_table(applied)
    db = open_database(applied, read_only=True)
    try:
        with StateStore(db, str(applied)) as states, pytest.raises(CorruptionError) as info:
            reading(states)
    finally:
        close_database(db)
    assert f"RocksDB reports corrupt data in {applied}" in str(info.value)
    assert "block checksum mismatch" in str(info.value)
    assert "backup restore ID --force" in str(info.value)


def test_creating_the_state_family_in_a_moved_directory_fails_naming_it(
    tmp_path: Path, db_path: Path
) -> None:
    moved = tmp_path / "moved"
    db = open_database(db_path, read_only=False)
    try:
        states = StateStore(db, str(db_path))
        os.rename(db_path, moved)
        with pytest.raises(StorageError) as info:
            states.handle()
        states.release()
    finally:
        close_database(db)
    assert f"RocksDB error on {db_path}: No such file or directory" in str(info.value)
    assert STATE_CF not in rocksdict.Rdict.list_cf(str(moved))
    assert contents(moved) == {"default": {b"seed": b"1"}}


def test_writing_state_through_a_read_only_open_fails_and_changes_nothing(
    applied: Path,
) -> None:
    before = snapshot(applied)
    db = open_database(applied, read_only=True)
    try:
        with StateStore(db, str(applied)) as states:
            state = states.read()
            with pytest.raises(StorageError) as info:
                states.write_state(state.evolve(current_version=0), _record())
    finally:
        close_database(db)
    assert f"RocksDB error on {applied}: Not implemented" in str(info.value)
    assert "read only mode" in str(info.value)
    assert snapshot(applied) == before


# --- malformed state records ------------------------------------------------------


def test_a_state_record_that_is_not_bytes_is_damaged(tmp_path: Path) -> None:
    path = tmp_path / "pickled"
    db = rocksdict.Rdict(str(path))  # rocksdict's default: pickle mode, any value type
    db["name"] = "ada"
    db.close()
    up(path, registry_of(migration("1700000000_a")))
    db = rocksdict.Rdict(str(path))
    try:
        cf = db.get_column_family(STATE_CF)
        cf[META_KEY] = "a str, not the JSON bytes"
        del cf
        with pytest.raises(CorruptStateError) as info:
            read_state(db)
    finally:
        db.close()
    assert "the migration state record 'meta' is damaged: expected bytes, found str" in str(
        info.value
    )


PROGRESS = {"id": "1700000000_a", "kind": "apply", "resumable": True, "started_at": None}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        pytest.param(lambda r: [r], "expected an object, found list", id="not an object"),
        pytest.param(
            _setting("applied", ["1700000000_a"]),
            "applied: expected an object, found list",
            id="applied a list",
        ),
        pytest.param(
            _setting("last_migration_at", 1700000000),
            "expected a time, found 1700000000",
            id="time a number",
        ),
        pytest.param(
            _setting("last_migration_at", "2026-01-01T00:00:00" + "0" * 60),
            "expected a time, found '2026-01-01T00:00:00000",
            id="time too long",
        ),
        pytest.param(
            _setting("applied", {"1700000000_a": "0001-01-01T00:00:00+01:00"}),
            "time '0001-01-01T00:00:00+01:00' is out of range",
            id="time before year 1 in UTC",
        ),
        pytest.param(
            _setting("in_progress", "1700000000_a"),
            "in_progress: expected an object, found str",
            id="in_progress text",
        ),
        pytest.param(
            _setting("in_progress", {**PROGRESS, "kind": "sideways"}),
            "in_progress.kind 'sideways' is not apply, rerun or rollback",
            id="in_progress kind",
        ),
        pytest.param(
            _setting("in_progress", {**PROGRESS, "resumable": "yes"}),
            "in_progress.resumable: expected true or false, found 'yes'",
            id="in_progress resumable",
        ),
        pytest.param(
            _setting("status", "clean" * 4),
            "status: 20 characters, more than 16",
            id="status too long",
        ),
        pytest.param(
            _setting("database_id", "../etc/passwd"),
            "database_id '../etc/passwd' is not an id",
            id="database_id a path",
        ),
        pytest.param(_setting("database_id", ""), "database_id '' is not an id", id="id empty"),
    ],
)
def test_a_malformed_state_record_names_the_field(
    applied: Path, change: Callable[[Any], Any], named: str
) -> None:
    _edit(applied, META_KEY, change)
    with pytest.raises(CorruptStateError) as info:
        _read_state(applied)
    assert str(info.value).startswith(f"the migration state record 'meta' is damaged: {named}")
    assert "backup restore ID --force" in str(info.value)


def test_an_over_long_error_in_a_record_is_read_shortened_not_refused(applied: Path) -> None:
    # What a version that did not bound its texts could leave: refusing it would lock
    # every command out of the database over the length of an error message.
    _edit(applied, META_KEY, _setting("last_error", "x" * 200_000))
    state = _read_state(applied)
    assert state.last_error is not None and len(state.last_error) == 100_000
    assert state.last_error.endswith("... [shortened: 200,000 characters]")


def test_a_record_that_could_not_be_read_back_is_refused_before_it_is_written(
    applied: Path,
) -> None:
    from pebble_migrate.errors import StateError

    before = snapshot(applied)
    db = open_database(applied, read_only=False)
    try:
        with StateStore(db, str(applied)) as states:
            state = states.read()
            with pytest.raises(StateError, match=r"could not be read back: .*last_migration"):
                states.write_state(state.evolve(last_migration="not an id"))
            with pytest.raises(StateError, match=r"could not be read back: .*kind"):
                states.write_state(state, dataclasses.replace(_record(), kind="sideways"))
    finally:
        close_database(db)
    assert snapshot(applied) == before


def test_a_malformed_state_record_is_refused_by_the_cli_with_nothing_changed(
    invoke: Invoke, applied: Path
) -> None:
    _edit(applied, META_KEY, _setting("in_progress", {**PROGRESS, "kind": "[/]"}))
    before = snapshot(applied)
    result = invoke("status", "-d", str(applied))
    assert result.exit_code == 1
    assert "in_progress.kind '[/]' is not apply, rerun or rollback" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(applied) == before


# --- malformed history records ----------------------------------------------------


@pytest.mark.parametrize(
    ("change", "named"),
    [
        pytest.param(lambda r: [r], "expected an object, found list", id="not an object"),
        pytest.param(
            _setting("duration_s", "fast"),
            "duration_s: expected a number, found 'fast'",
            id="duration text",
        ),
        pytest.param(
            _setting("duration_s", True),
            "duration_s: expected a number, found True",
            id="duration a boolean",
        ),
        pytest.param(
            _setting("success", "yes"),
            "success: expected true or false, found 'yes'",
            id="success text",
        ),
    ],
)
def test_a_malformed_history_record_names_its_key_and_field(
    applied: Path, change: Callable[[Any], Any], named: str
) -> None:
    _edit(applied, FIRST, change)
    for limit in (None, 1):
        with pytest.raises(CorruptStateError) as info:
            history(applied, limit=limit)
        assert str(info.value).startswith(
            f"the migration state record 'history/000000000001' is damaged: {named}"
        )
    assert _read_state(applied).applied == {"1700000000_a"}  # `meta` stays readable


def test_a_repair_of_the_version_is_recorded_without_a_migration_id(
    invoke: Invoke, applied: Path
) -> None:
    _edit(applied, META_KEY, _setting("current_version", 0))
    result = invoke("repair", "-d", str(applied), "--yes")
    assert result.exit_code == 0, result.stderr
    shown = invoke("history", "-d", str(applied), "--json")
    assert shown.exit_code == 0, shown.stderr
    records = json.loads(shown.stdout)["history"]
    assert [(r["id"], r["kind"]) for r in records] == [("1700000000_a", "apply"), ("-", "repair")]
    assert records[1]["description"] == "version 0 -> 1700000000"
    assert _read_state(applied).current_version == 1700000000
