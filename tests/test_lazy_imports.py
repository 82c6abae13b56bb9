"""Start-up cost (issue 10): what `import pebble_migrate`, `--help` and `status` import.

Speed itself is measured in benchmarks/bench_startup.py; these tests check, in a fresh
child process each, the imports that made start-up slow, so a top-level import that brings
them back fails here. No timing assertions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pebble_migrate
from pebble_migrate import paths, registry, restore
from tests.conftest import write_migration

HEAVY_LIBRARY = {
    "pebble_migrate.backup",
    "pebble_migrate.catalog",
    "pebble_migrate.commands",
    "pebble_migrate.restore",
    "pebble_migrate.state",
    "pebble_migrate.startup",
    "pebble_migrate.validation",
    "pebble_migrate.maintenance",
}


def modules_after(code: str) -> set[str]:
    """Run `code` in a fresh interpreter; return the names in its sys.modules at the end."""
    child = textwrap.dedent(
        """
        import json, sys
        try:
        {code}
        except SystemExit:
            pass
        sys.stdout.flush()
        sys.stderr.write("\\nMODULES " + json.dumps(sorted(sys.modules)) + "\\n")
        """
    ).format(code=textwrap.indent(textwrap.dedent(code), "    "))
    # Not measured: coverage.py, started in every child under `make test`, imports modules
    # of its own (hashlib, uuid) that the application would not.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    result = subprocess.run(
        [sys.executable, "-c", child],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=env,
    )
    line = [ln for ln in result.stderr.splitlines() if ln.startswith("MODULES ")]
    assert line, result.stderr
    return set(json.loads(line[-1].removeprefix("MODULES ")))


def cli_modules(*args: str) -> set[str]:
    return modules_after(
        f"""
        sys.argv = ["pebble-migrate", *{list(args)!r}]
        from pebble_migrate.cli import main
        main()
        """
    )


def loaded(modules: set[str], *prefixes: str) -> set[str]:
    return {m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes)}


def test_import_pebble_migrate_imports_no_dependency_and_no_heavy_module() -> None:
    modules = modules_after("import pebble_migrate")
    assert not loaded(modules, "rocksdict", "rich", "click")
    assert not modules & HEAVY_LIBRARY
    assert not loaded(modules, "hashlib", "tarfile", "uuid")
    # The errors are there at once: an application catches them without importing more.
    assert "pebble_migrate.errors" in modules


def test_help_imports_neither_rocksdict_nor_rich_nor_the_library() -> None:
    modules = cli_modules("--help")
    assert "click" in modules  # it ran
    assert not loaded(modules, "rocksdict", "rich")
    assert not modules & HEAVY_LIBRARY
    # Every subcommand is registered, so `--help` lists them all without importing more.
    assert {"pebble_migrate.cli.backup", "pebble_migrate.cli.migrate"} <= modules


def test_status_imports_only_what_it_needs(tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    write_migration(migrations, "1700000000_first", "def up(ctx):\n    pass\n")
    write_migration(migrations, "1700100000_second", "def up(ctx):\n    pass\n")
    db = tmp_path / "db"
    from pebble_migrate.testing import create_database

    create_database(db, {b"k": b"v"})
    pebble_migrate.up(db, pebble_migrate.load_migrations(migrations), target="1700000000")
    modules = cli_modules("status", "-d", str(db), "-m", str(migrations))
    assert {"pebble_migrate.commands", "rocksdict", "pebble_migrate.cli.screen"} <= modules
    # No backup or restore code (nothing to recover), nothing that runs migrations, no
    # validation, and no rich: only a progress bar needs it.
    unneeded = {
        "pebble_migrate.backup",
        "pebble_migrate.restore",
        "pebble_migrate.catalog",
        "pebble_migrate.maintenance",
        "pebble_migrate.validation",
        "pebble_migrate.startup",
        "pebble_migrate.executor",
        "pebble_migrate.context",
        "pebble_migrate.views",
        "pebble_migrate.space",
        "tarfile",
        "tomllib",  # no pyproject.toml here to read
    }
    assert not modules & unneeded
    assert not loaded(modules, "rich")


def test_history_and_errors_print_without_rich(tmp_path: Path) -> None:
    db = tmp_path / "db"
    from pebble_migrate.testing import create_database

    create_database(db, {b"k": b"v"})
    assert not loaded(cli_modules("history", "-d", str(db)), "rich")
    # An error (here: no database at the path) is printed without rich too.
    assert not loaded(cli_modules("status", "-d", str(tmp_path / "absent")), "rich")


def test_every_public_name_resolves_to_its_module_attribute() -> None:
    names = set(pebble_migrate.__all__)
    assert len(names) == len(pebble_migrate.__all__)
    for name in sorted(names):
        value = getattr(pebble_migrate, name)
        if name == "default_registry":  # an instance: no __module__ and __name__ of its own
            assert value is registry.default_registry
            continue
        module = sys.modules[value.__module__]
        assert getattr(module, value.__name__) is value, name
    assert pebble_migrate.recover_interrupted_restore is restore.recover
    assert names <= set(dir(pebble_migrate))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = pebble_migrate.no_such_name  # type: ignore[attr-defined]
    with pytest.raises(ImportError):
        from pebble_migrate import no_such_name  # type: ignore[attr-defined]  # noqa: F401


def test_star_import_and_from_import_in_a_fresh_process() -> None:
    modules = modules_after(
        """
        from pebble_migrate import *
        import pebble_migrate
        from pebble_migrate import recover_interrupted_restore, up, RunOptions
        missing = [n for n in pebble_migrate.__all__ if n not in globals()]
        assert not missing, missing
        """
    )
    assert "pebble_migrate.restore" in modules


# --- the quick test that lets a command skip importing the restore code --------------


def test_restore_leftovers_sees_every_name_a_restore_leaves(tmp_path: Path) -> None:
    db = paths.resolve_database(tmp_path / "db")
    db.mkdir()
    (tmp_path / "db.backups").mkdir()
    (tmp_path / ".other.restore-journal.json").write_text("{}")
    assert not paths.restore_leftovers(db)
    journal = restore._journal_path(db)
    for left in (
        restore._staging_path(db),
        Path(f"{restore._staging_path(db)}-old"),
        journal,
        journal.with_name(f".{journal.name}.{os.getpid()}.tmp"),  # write_json_atomic's
    ):
        left.mkdir()
        assert paths.restore_leftovers(db), left.name
        left.rmdir()
    assert not paths.restore_leftovers(db)


def test_restore_leftovers_of_a_long_name_use_the_shortened_stem(tmp_path: Path) -> None:
    db = paths.resolve_database(tmp_path / ("d" * 240))
    db.mkdir()
    assert not paths.restore_leftovers(db)
    restore._journal_path(db).write_text("{}")
    assert paths.restore_leftovers(db)


def test_restore_leftovers_when_the_directory_cannot_be_read(tmp_path: Path) -> None:
    # recover() then decides, as it did before the quick test existed.
    assert paths.restore_leftovers(tmp_path / "missing" / "db")
