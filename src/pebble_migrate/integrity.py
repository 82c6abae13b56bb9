"""RocksDB's own checksums, read back: proving table files are intact before trusting them.

RocksDB verifies a block's checksum whenever it reads the block. rocksdict exposes no
"verify this file" call, so a file is checked by reading every block of it: an iterator
walks the key range the file covers (in every column family), which loads each of its data
blocks, and its `status()` reports the first checksum mismatch. Values are read too when the
database keeps blob files, so those are checked as well.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rocksdict

from pebble_migrate import store
from pebble_migrate.errors import CorruptionError, MigrateError

_TABLE = re.compile(r"^\d+\.(sst|blob)$")
_NAMED = re.compile(r"(\d+\.(?:sst|blob))")


@dataclass(frozen=True)
class Damage:
    """A table file RocksDB found damaged, and what it said."""

    file: str | None
    detail: str


def table_files(folder: Path) -> list[Path]:
    """Return the table files (`*.sst`, `*.blob`) directly in a database directory."""
    return sorted(p for p in folder.iterdir() if _TABLE.match(p.name) and p.is_file())


def check_tables(folder: Path, only: Iterable[str] | None = None) -> Damage | None:
    """Read the blocks of the table files of the database at `folder` (read-only, through
    a shadow, so nothing is written there); return the first damage found, or None.

    With `only` (file names), a raw-mode database reads just the key ranges of those files;
    otherwise, and always in pickle mode, every column family is read whole.
    """
    try:
        db = store.open_database(folder, read_only=True)
    except MigrateError as exc:  # a database that does not even open is damaged
        return Damage(damaged_file(exc.message), exc.message)
    try:
        ranges = _ranges(db, set(only)) if only is not None else None
        if ranges == []:
            return None
        blobs = any(p.name.endswith(".blob") for p in table_files(folder))
        for name in rocksdict.Rdict.list_cf(str(db.path())):
            cf = db if name == "default" else db.get_column_family(name)
            try:
                _read(cf, ranges, values=blobs, where=str(folder))
            finally:
                del cf
    except CorruptionError as exc:
        return Damage(damaged_file(exc.message), exc.message)
    finally:
        store.close_database(db)
    return None


def check_wal(folder: Path) -> Damage | None:
    """Open the database read-only with no damaged write-ahead-log record tolerated (RocksDB's
    default drops the log silently from the first damaged record on); return the damage."""
    try:
        db = store.open_database(folder, read_only=True, strict_wal=True)
    except MigrateError as exc:
        return Damage(damaged_file(exc.message), exc.message)
    store.close_database(db)
    return None


def damage_is_in_the_log(folder: Path) -> bool:
    """Whether a database that does not open would open with its damaged write-ahead-log
    records skipped: then the log is what is damaged."""
    try:
        db = store.open_database(folder, read_only=True, skip_wal_damage=True)
    except MigrateError:
        return False
    store.close_database(db)
    return True


def check_settings_files(folder: Path) -> Damage | None:
    """Check the small files a database is opened with: rocksdict's config must be a JSON
    object with its key mode, and each OPTIONS file must have RocksDB's sections. Damage to
    them may go unseen at open (rocksdict falls back to its defaults)."""
    config = folder / "rocksdict-config.json"
    if config.exists():
        try:
            data = json.loads(config.read_text())
        except (OSError, ValueError) as exc:
            return Damage(config.name, f"{config.name} is not valid JSON ({exc})")
        if not isinstance(data, dict) or not isinstance(data.get("raw_mode"), bool):
            return Damage(config.name, f"{config.name} does not say the key mode (raw_mode)")
    for options in sorted(folder.glob("OPTIONS-*")):
        try:
            text = options.read_text(errors="replace")
        except OSError as exc:
            return Damage(options.name, f"{options.name} cannot be read ({exc.strerror})")
        if not all(section in text for section in ("[Version]", "[DBOptions]", "[CFOptions")):
            return Damage(options.name, f"{options.name} is not a RocksDB options file")
    return None


_PATH = re.compile(r"(/[^:\n]*?/\d+\.(?:sst|blob))(?=\s|$)")


def damaged_path(message: str) -> str | None:
    """Return the full path of the table file a RocksDB error message names, if any."""
    found = _PATH.findall(message)
    return found[-1] if found else None


def damaged_file(message: str) -> str | None:
    """Return the table file a RocksDB error message names (`000123.sst`), if any."""
    found = _NAMED.findall(message)
    return found[-1] if found else None


def _ranges(db: rocksdict.Rdict, names: set[str]) -> list[tuple[Any, Any]] | None:
    """Return the merged [start, end] key ranges of the named files, or None for all.

    Only raw mode gives keys that can be sought; a pickle-mode database is read whole.
    """
    if not store.is_raw_mode(db):
        return None
    spans = sorted(
        (f["start_key"], f["end_key"])
        for f in db.live_files()
        if str(f["name"]).lstrip("/") in names
    )
    merged: list[tuple[Any, Any]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _read(cf: Any, ranges: list[tuple[Any, Any]] | None, *, values: bool, where: str) -> None:
    """Walk the ranges (or everything) with a raw iterator; raise on any damage."""
    it = cf.iter()
    try:
        for start, end in ranges if ranges is not None else [(None, None)]:
            it.seek_to_first() if start is None else it.seek(start)
            while it.valid():
                if end is not None and it.key() > end:
                    break
                if values:
                    it.value()
                it.next()
            it.status()
    except Exception as exc:  # noqa: BLE001 - rocksdict raises plain Exception
        raise store.translate(exc, where) from None
    finally:
        del it
