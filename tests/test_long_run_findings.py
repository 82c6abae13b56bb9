"""What the long runs of the reliability suite found, each pinned by a test.

(The fault-matrix finding, a failing directory sync while the database closes, is pinned
in tests/crash/test_faults.py, where the fault shim lives.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pebble_migrate.testing import create_database
from tests.conftest import Invoke, snapshot


@pytest.mark.parametrize("option", ["-d", "-m", "--backup-dir"])
def test_a_nul_in_a_path_option_is_a_usage_error_naming_it(
    tmp_path: Path, invoke: Invoke, option: str
) -> None:
    db = create_database(tmp_path / "app.db", {b"k": b"v"})
    before = snapshot(db)
    args = {"-d": str(db), "-m": str(tmp_path), "--backup-dir": str(tmp_path / "b")}
    args[option] = "a\x00b"

    refused = invoke("up", *[x for pair in args.items() for x in pair])

    assert refused.exit_code == 2
    assert "contains a NUL character" in refused.stderr
    assert option.split("/", maxsplit=1)[0] in refused.stderr or "--database" in refused.stderr
    assert snapshot(db) == before


def test_a_nul_in_a_pyproject_path_names_the_file_and_key(tmp_path: Path) -> None:
    db = create_database(tmp_path / "app.db", {b"k": b"v"})
    before = snapshot(db)
    (tmp_path / "pyproject.toml").write_text('[tool.pebble-migrate]\ndatabase = "app\\u0000.db"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_MIGRATE_")}

    refused = subprocess.run(
        [sys.executable, "-m", "pebble_migrate", "status"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip

    assert refused.returncode == 2
    assert "`database` in" in refused.stderr and "pyproject.toml" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert snapshot(db) == before


def test_the_library_refuses_a_nul_in_a_database_path() -> None:
    from pebble_migrate import UsageError
    from pebble_migrate.paths import resolve_database

    with pytest.raises(UsageError, match="contains a NUL character"):
        resolve_database("app\x00.db")


def _applied_then_state_family_dropped(tmp_path: Path, invoke: Invoke) -> tuple[Path, Path]:
    """A database with one migration applied, then left as a kill while RocksDB created
    the state's column family leaves it (the family missing from the newest OPTIONS)."""
    db = create_database(tmp_path / "app.db", {b"k": b"v"})
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "1700000001_a.py").write_text("def up(ctx):\n    ctx.put(b'a', b'1')\n")
    assert invoke("up", "-d", str(db), "-m", str(migrations)).exit_code == 0
    _drop_family_from_newest_options(db, "pebble_migrate")
    return db, migrations


def _drop_family_from_newest_options(db: Path, family: str) -> None:
    """Make the newest OPTIONS file what a kill inside RocksDB's column-family creation
    leaves: the family is in the MANIFEST, not in the OPTIONS file."""
    newest = max(db.glob("OPTIONS-*"), key=lambda p: int(p.name.split("-")[1]))
    kept, skipping = [], False
    for line in newest.read_text().splitlines(keepends=True):
        if line.startswith("["):
            skipping = f'"{family}"' in line
        if not skipping:
            kept.append(line)
    newest.write_text("".join(kept))


def test_a_family_missing_from_the_options_file_is_opened_and_mended(
    tmp_path: Path, invoke: Invoke
) -> None:
    """The 1,000-kill crash test found a database that neither the CLI nor the application
    could open after a kill while the state's column family was being created."""
    import rocksdict

    db, migrations = _applied_then_state_family_dropped(tmp_path, invoke)
    with pytest.raises(Exception, match="Column families not opened"):
        rocksdict.Rdict(str(db))  # what the application's own open meets

    shown = subprocess.run(
        [sys.executable, "-m", "pebble_migrate", "status", "--json", "-d", str(db),
         "-m", str(migrations)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    # Read-only, RocksDB would open without the family: the state would read as never
    # initialized, nothing applied. It is read, and the damage is said.
    assert json.loads(shown.stdout)["applied"] == ["1700000001_a"]
    assert "is missing from its OPTIONS file" in shown.stderr

    assert invoke("up", "-d", str(db), "-m", str(migrations)).exit_code == 0  # read-write
    reopened = rocksdict.Rdict(str(db))  # mended: the application opens it again
    try:
        assert reopened[b"a"] == b"1"
    finally:
        reopened.close()


def test_the_application_can_open_and_mend_it_through_open_database(
    tmp_path: Path, invoke: Invoke
) -> None:
    import rocksdict

    import pebble_migrate as pm

    db, _ = _applied_then_state_family_dropped(tmp_path, invoke)

    opened = pm.open_database(db)
    try:
        assert pm.read_state(opened).applied == {"1700000001_a"}
    finally:
        opened.close()
    rocksdict.Rdict(str(db)).close()  # mended


def test_open_database_creates_only_when_asked(tmp_path: Path) -> None:
    import pebble_migrate as pm

    with pytest.raises(pm.DatabaseNotFound):
        pm.open_database(tmp_path / "new.db")
    assert not (tmp_path / "new.db").exists()
    made = pm.open_database(tmp_path / "new.db", create=True)
    made.close()
    assert (tmp_path / "new.db" / "CURRENT").is_file()


def test_a_tilde_of_no_known_user_is_a_plain_name(tmp_path: Path, invoke: Invoke) -> None:
    """Found by the 100,000-example fuzz run: `-d ~0` raised RuntimeError."""
    shown = invoke("status", "-d", "~0", "-m", str(tmp_path))
    assert shown.exit_code == 1
    assert "~0" in shown.stderr and "Traceback" not in shown.stderr
