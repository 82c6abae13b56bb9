"""Helpers for testing migrations against real RocksDB directories (our tests use them too)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import rocksdict

from pebble_migrate import store
from pebble_migrate.commands import RunOptions, up
from pebble_migrate.migration import Migration
from pebble_migrate.registry import Registry

Contents = dict[str, dict[Any, Any]]


def create_database(
    path: str | Path, items: Mapping[Any, Any] | Iterable[tuple[Any, Any]] = (), *, raw: bool = True
) -> Path:
    """Create a RocksDB database at `path` holding `items`; return the path."""
    where = Path(path)
    db = rocksdict.Rdict(str(where), rocksdict.Options(raw_mode=raw))
    try:
        pairs = items.items() if isinstance(items, Mapping) else items
        batch = rocksdict.WriteBatch(raw_mode=raw)
        for key, value in pairs:
            batch.put(key, value)
        db.write(batch)
        del batch
    finally:
        store.close_database(db)
    return where


def contents(path: str | Path, *, state: bool = False) -> Contents:
    """Return every key and value, per column family, read through a checked scan.

    The state family is left out unless `state` is set, so the result is what the
    application sees.
    """
    where = Path(path)
    db = store.open_database(where, read_only=True)
    try:
        result: Contents = {}
        for name in rocksdict.Rdict.list_cf(str(where)):
            if name == store.STATE_CF and not state:
                continue
            cf = db if name == "default" else db.get_column_family(name)
            try:
                result[name] = dict(store.checked_items(cf, str(where)))
            finally:
                del cf
        return result
    finally:
        store.close_database(db)


def apply_migrations(path: str | Path, registry: Registry, target: str | None = None) -> None:
    """Apply pending migrations to the database at `path` (no prompts, no signal handling)."""
    up(path, registry, target=target, options=RunOptions(handle_signals=False))


def run_migration(
    migration: Migration, items: Mapping[Any, Any], *, raw: bool = True
) -> dict[Any, Any]:
    """Run one migration over a fresh database holding `items`; return the data after it."""
    with tempfile.TemporaryDirectory(prefix="pebble-migrate-test-") as tmp:
        path = Path(tmp) / "db"
        create_database(path, items, raw=raw)
        apply_migrations(path, Registry([migration]))
        return contents(path)["default"]
