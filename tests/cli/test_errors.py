"""Every bad input: one clear `Error:` message, the documented exit code, nothing changed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import rocksdict

from pebble_migrate.store import STATE_CF
from pebble_migrate.testing import create_database
from tests.conftest import Invoke, snapshot, write_migration

OK = "def up(ctx):\n    ctx.put(b'ok', b'1')\n\ndef down(ctx):\n    ctx.delete(b'ok')\n"


def _listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture
def project(tmp_path: Path, migrations_dir: Path) -> Path:
    write_migration(migrations_dir, "1700000000_first", OK)
    create_database(tmp_path / "db", {b"seed": b"1"})
    return tmp_path


def _fails(result: object, code: int, *needles: str) -> None:
    stderr = result.stderr  # type: ignore[attr-defined]
    assert result.exit_code == code, stderr  # type: ignore[attr-defined]
    assert stderr.startswith("Error: ") or "\nError: " in stderr
    for needle in needles:
        assert needle in stderr
    assert "Traceback" not in stderr


def test_missing_database_for_read_only_command_creates_nothing(
    invoke: Invoke, project: Path
) -> None:
    for command in (["status"], ["history"], ["validate"], ["backup", "list"]):
        result = invoke(*command, "-d", "nope")
        if command == ["backup", "list"]:
            continue  # listing backups of a missing database is simply empty
        _fails(result, 1, f"no database at {project.resolve() / 'nope'}", "-d/--database")
    assert not (project / "nope").exists()


def test_no_database_given(invoke: Invoke, project: Path) -> None:
    _fails(invoke("status"), 2, "no database given", "PEBBLE_MIGRATE_DATABASE")


def test_path_is_a_file(invoke: Invoke, project: Path) -> None:
    (project / "afile").write_text("hello")
    _fails(invoke("up", "-d", "afile"), 1, "afile is not a usable RocksDB database", "is a file")
    assert (project / "afile").read_text() == "hello"


@pytest.mark.parametrize("damage", ["empty", "no_current", "bad_current"])
def test_damaged_or_empty_directory_is_not_treated_as_fresh(
    invoke: Invoke, project: Path, damage: str
) -> None:
    target = project / "damaged"
    if damage == "empty":
        target.mkdir()
    else:
        create_database(target, {b"k": b"v"})
        if damage == "no_current":
            (target / "CURRENT").unlink()
        else:
            (target / "CURRENT").write_text("MANIFEST-999999\n")
    before = _listing(target)
    for command in (["status"], ["up"], ["force-clean", "--yes"]):
        result = invoke(*command, "-d", "damaged")
        _fails(result, 1, "is not a usable RocksDB database")
    assert _listing(target) == before


@pytest.fixture
def holder(project: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that has the database open."""
    code = (
        "import rocksdict, sys\n"
        f"db = rocksdict.Rdict({str(project / 'db')!r})\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "db.close()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield proc
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(timeout=30)


def test_database_in_use_by_another_process(
    invoke: Invoke, project: Path, holder: subprocess.Popen[str]
) -> None:
    before = snapshot(project / "db")  # read-only open works while it is held
    _fails(invoke("up", "-d", "db"), 5, "in use by another process")
    _fails(invoke("force-clean", "-d", "db", "--yes"), 5, "in use")
    assert invoke("status", "-d", "db").exit_code == 0  # read-only commands still work
    assert snapshot(project / "db") == before


@pytest.mark.parametrize(
    ("name", "body", "needles"),
    [
        ("1700100000_syntax", "def up(ctx):\n    x = (\n", ["1700100000_syntax.py:2", "syntax"]),
        (
            "1700100000_imports",
            "'''Doc.'''\n\nimport no_such_module_xyz\n",
            ["1700100000_imports.py:3", "ModuleNotFoundError", "no_such_module_xyz"],
        ),
        ("1700100000_noup", "def down(ctx):\n    pass\n", ["no `up(ctx)` function"]),
        ("not_an_id", OK, ["invalid migration id 'not_an_id'"]),
        (
            "1700000000_same_version",
            OK,
            ["duplicate migration version", "1700000000_first", "1700000000_same_version"],
        ),
        (
            "1700100000_cycle_a",
            "dependencies = ['1700200000_cycle_b']\n" + OK,
            ["dependency cycle", "1700100000_cycle_a", "1700200000_cycle_b"],
        ),
        (
            "1700100000_unknown",
            "dependencies = ['1600000000_ghost']\n" + OK,
            ["depends on unknown id 1600000000_ghost"],
        ),
    ],
)
def test_bad_migration_files(
    invoke: Invoke, project: Path, name: str, body: str, needles: list[str]
) -> None:
    write_migration(project / "migrations", name, body)
    if "cycle" in name:
        write_migration(
            project / "migrations",
            "1700200000_cycle_b",
            "dependencies = ['1700100000_cycle_a']\n" + OK,
        )
    before = snapshot(project / "db")
    for command in (["up"], ["status"], ["validate"]):
        _fails(invoke(*command, "-d", "db"), 1, *needles)
    assert snapshot(project / "db") == before


def test_down_through_migration_without_down(invoke: Invoke, project: Path) -> None:
    write_migration(project / "migrations", "1700100000_oneway", "def up(ctx):\n    pass\n")
    invoke("up", "-d", "db")
    before = snapshot(project / "db")
    _fails(
        invoke("down", "0", "-d", "db", "--yes"),
        1,
        "cannot roll back 1700100000_oneway",
        "no `down` defined",
    )
    assert snapshot(project / "db") == before


@pytest.mark.parametrize("args", [["down", "123"], ["up", "1800000000"], ["rerun", "nope"]])
def test_unknown_version_or_id(invoke: Invoke, project: Path, args: list[str]) -> None:
    invoke("up", "-d", "db")
    before = snapshot(project / "db")
    _fails(
        invoke(*args, "-d", "db", "--yes"),
        1,
        "no migration has version or id",
        "pebble-migrate status",
    )
    assert snapshot(project / "db") == before


def test_corrupt_state_record(invoke: Invoke, project: Path) -> None:
    invoke("up", "-d", "db")
    db = rocksdict.Rdict(str(project / "db"))
    cf = db.get_column_family(STATE_CF)
    cf[b"meta"] = b"\x00garbage"
    del cf
    db.close()
    before = snapshot(project / "db")
    for command in (["status"], ["up"], ["down", "0", "--yes"], ["force-clean", "--yes"]):
        _fails(invoke(*command, "-d", "db"), 1, "state record 'meta' is damaged", "backup restore")
    assert snapshot(project / "db") == before


def test_not_clean_state_blocks_up_down_rerun(invoke: Invoke, project: Path) -> None:
    write_migration(
        project / "migrations", "1700100000_boom", "def up(ctx):\n    raise OSError('x')\n"
    )
    assert invoke("up", "-d", "db").exit_code == 6
    before = snapshot(project / "db")
    for command in (["up"], ["rerun", "1700000000_first", "--yes"]):
        _fails(invoke(*command, "-d", "db"), 4, "dirty", "1700100000_boom", "force-clean")
    assert snapshot(project / "db") == before


def test_json_errors_keep_stdout_machine_readable(invoke: Invoke, project: Path) -> None:
    import json

    result = invoke("status", "-d", "nope", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"]["type"] == "DatabaseNotFound"
    assert f"Error: no database at {project.resolve() / 'nope'}" in result.stderr
