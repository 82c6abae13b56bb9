"""A disk that fills mid-migration: stop at the failed chunk, dirty, cursor kept, finish later.

Runs on a real tmpfs mounted for the test (root can mount one; elsewhere the test is
skipped with that reason, never by default).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pebble_migrate as pm
from pebble_migrate.commands import RunOptions
from pebble_migrate.executor import run_records
from pebble_migrate.state import StateStore
from pebble_migrate.store import open_database
from pebble_migrate.testing import contents, create_database
from tests.conftest import tmpfs


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "small", "64m") as mount:
        yield mount


def grow(ctx: Any) -> None:
    for key, _ in ctx.scan(prefix=b"k:"):
        ctx.put(key, ctx.get(key) + b"+" * 2000)


def test_disk_full_stops_dirty_keeps_cursor_and_finishes_after_space_is_freed(
    small_disk: Path,
) -> None:
    values = {b"k:%05d" % i: os.urandom(2000) for i in range(3000)}
    path = create_database(small_disk / "db", values)
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 8 * 1024 * 1024))
    registry = pm.Registry([pm.Migration(id="1700000000_grow", up=grow)])
    opts = RunOptions(handle_signals=False, check_space=False, policy=pm.ChunkPolicy(200))

    with pytest.raises(pm.MigrationFailed) as info:
        pm.up(path, registry, options=opts)
    error = info.value
    assert isinstance(error.cause, pm.DiskFullError)
    assert "is full (0 B free, about" in error.message and "needed)" in error.message
    assert "The status is now `dirty`" in (error.hint or "")

    db = open_database(path, read_only=True)
    try:
        with StateStore(db, str(path)) as states:
            state, records = states.read(), run_records(states)
    finally:
        db.close()
    assert state.status is pm.Status.DIRTY
    cursor = records[("1700000000_grow", "apply")].scans["default"]
    assert cursor.count > 0 and not cursor.done
    data = contents(path)["default"]
    changed = [k for k in values if data[k] != values[k]]
    assert changed == list(values)[: cursor.count]  # exactly the committed chunks

    filler.unlink()
    pm.force_clean(path)
    pm.up(path, registry, options=opts)
    assert contents(path)["default"] == {k: v + b"+" * 2000 for k, v in values.items()}


def test_startup_refuses_early_when_space_is_short(small_disk: Path) -> None:
    path = create_database(
        small_disk / "db", {b"k:%05d" % i: os.urandom(1000) for i in range(2000)}
    )
    (small_disk / "filler").write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 1024 * 1024))
    registry = pm.Registry([pm.Migration(id="1700000000_grow", up=grow)])
    before = contents(path, state=True)
    with pytest.raises(pm.InsufficientSpace) as info:
        pm.up(path, registry, options=RunOptions(handle_signals=False))
    assert "free" in info.value.message and "needed" in info.value.message
    assert contents(path, state=True) == before
