"""What the long runs of the reliability suite found, each pinned by a test.

(The fault-matrix finding, a failing directory sync while the database closes, is pinned
in tests/crash/test_faults.py, where the fault shim lives.)
"""

from __future__ import annotations

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
