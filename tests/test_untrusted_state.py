"""Issue 9's reproduced cases: edited state records, markup in data, history counts.

Everything read back from a database or a file is untrusted: a damaged record is a
CorruptStateError naming it and the way out, from every command, and anything shown is
shown as text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import rocksdict

from pebble_migrate.backup import create_backup
from pebble_migrate.state import HISTORY_PREFIX, META_KEY
from pebble_migrate.store import STATE_CF
from tests.conftest import Invoke, snapshot, write_migration

COMMANDS = (
    ["status"],
    ["status", "--check"],
    ["validate"],
    ["up"],
    ["up", "--dry-run"],
    ["down", "0", "--yes"],
    ["rerun", "1700000000_a", "--yes"],
    ["force-clean", "--yes"],
    ["repair", "--yes"],
)


@pytest.fixture
def applied(invoke: Invoke, db_path: Path, migrations_dir: Path) -> Path:
    write_migration(migrations_dir, "1700000000_a", "def up(ctx):\n    pass\n")
    assert invoke("up", "-d", str(db_path), "--no-backup").exit_code == 0
    return db_path


def _edit(path: Path, key: bytes, change: Any) -> None:
    db = rocksdict.Rdict(str(path))
    try:
        cf = db.get_column_family(STATE_CF)
        record = json.loads(cf[key])
        change(record)
        cf[key] = json.dumps(record).encode()
        del cf
    finally:
        db.close()


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("current_version", 10**30, "current_version: expected a count, found 1000000000"),
        ("current_version", 5 * 10**9, "current_version 5000000000 is beyond any version"),
        ("last_migration", 5, "last_migration: expected a migration id, found 5"),
        ("last_error", {"a": 1}, "last_error: expected text"),
        ("applied", {"../../etc": None}, "applied: '../../etc' is not a migration id"),
        ("applied", {"1700000000_a[/]": None}, "applied: '1700000000_a[/]' is not a"),
        ("status", "[/]", "'[/]' is not a valid Status"),
        ("history_count", -1, "history_count: expected a count"),
        ("in_progress", {"id": "x"}, "in_progress"),
    ],
)
def test_an_edited_state_record_is_named_by_every_command(
    invoke: Invoke, applied: Path, field: str, value: Any, named: str
) -> None:
    _edit(applied, META_KEY, lambda r: r.__setitem__(field, value))
    before = snapshot(applied)
    for command in COMMANDS:
        result = invoke(*command, "-d", str(applied))
        assert result.exit_code == 1, (command, result.output)
        assert "Error: the migration state record 'meta' is damaged" in result.stderr
        assert named in result.stderr, (command, result.stderr)
        assert "backup restore ID --force" in result.stderr
        assert "Traceback" not in result.stderr
    # History does not read `meta`: it stays readable, to investigate the damage with.
    assert invoke("history", "-d", str(applied)).exit_code == 0
    assert snapshot(applied) == before


def test_markup_in_a_history_kind_is_text(invoke: Invoke, applied: Path) -> None:
    _edit(applied, HISTORY_PREFIX + b"%012d" % 1, lambda r: r.__setitem__("kind", "[/]"))
    for command in (["history"], ["status"]):
        result = invoke(*command, "-d", str(applied))
        assert result.exit_code == 1
        assert "kind '[/]' is not one of" in result.stderr
        assert "MarkupError" not in result.stderr


def test_markup_in_a_history_note_is_shown_as_text(invoke: Invoke, applied: Path) -> None:
    _edit(applied, HISTORY_PREFIX + b"%012d" % 1, lambda r: r.__setitem__("note", "[/][bold]x"))
    result = invoke("history", "-d", str(applied))
    assert result.exit_code == 0, result.stderr
    assert "[/][bold]x" in result.stdout


def test_markup_in_backup_metadata_is_text(invoke: Invoke, applied: Path) -> None:
    info = create_backup(applied)
    meta = json.loads((info.path / "backup.json").read_text())
    meta["description"] = "[/] nightly [bold red]x"
    (info.path / "backup.json").write_text(json.dumps(meta))
    shown = invoke("backup", "list", "-d", str(applied))
    assert shown.exit_code == 0, shown.stderr
    assert "[/] nightly [bold red]x" in shown.stdout
    meta["id"] = "x[/]"
    (info.path / "backup.json").write_text(json.dumps(meta))
    for command in (["backup", "list"], ["backup", "verify", str(info.path)]):
        result = invoke(*command, "-d", str(applied))
        assert "MarkupError" not in result.output
        assert "Traceback" not in result.output


def test_history_never_overwrites_a_record(invoke: Invoke, applied: Path) -> None:
    _edit(applied, META_KEY, lambda r: r.__setitem__("history_count", 0))
    assert invoke("force-clean", "-d", str(applied), "--yes").exit_code == 0
    invoke("repair", "-d", str(applied), "--yes")
    history = json.loads(invoke("history", "-d", str(applied), "--json").stdout)["history"]
    assert history[0]["kind"] == "apply" and history[0]["id"] == "1700000000_a"
    seqs = [r["seq"] for r in history]
    assert seqs == sorted(set(seqs))
