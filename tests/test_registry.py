"""The Registry, the `migration` decorator, and loading migration files from a directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from pebble_migrate import registry as registry_module
from pebble_migrate.errors import (
    DependencyCycle,
    DuplicateMigration,
    InvalidMigrationId,
    MigrationLoadError,
    UnknownDependency,
    UsageError,
)
from pebble_migrate.migration import Migration
from pebble_migrate.registry import Registry, load_file, load_migrations, register
from tests.conftest import migration, registry_of, write_migration

A = "1700000000_a"
B = "1700100000_b"
C = "1700050000_c"
D = "1700200000_d"

FIX_HINT = "Fix the file and run the command again; nothing was changed."


# --- Registry ----------------------------------------------------------------------


def test_registry_holds_migrations() -> None:
    a, b, c, d = migration(A), migration(B), migration(C, B), migration(D, A)
    reg = registry_of(d, c, b, a)
    assert len(reg) == 4
    assert A in reg
    assert "1700000001_other" not in reg
    assert 1700000000 not in reg
    assert reg.get(C) is c
    assert reg.get("1700000001_other") is None
    assert reg.all() == [d, c, b, a]  # registration order
    assert [m.id for m in reg.ordered()] == [A, B, C, D]
    assert [m.id for m in reg] == [A, B, C, D]
    assert reg.latest_version == 1700200000
    assert reg.check() is None


def test_empty_registry() -> None:
    reg = Registry()
    assert len(reg) == 0
    assert list(reg) == []
    assert reg.latest_version == 0
    assert reg.check() is None


def test_register_returns_the_migration() -> None:
    reg = Registry()
    m = migration(A)
    assert reg.register(m) is m
    assert reg.get(A) is m


def test_register_duplicate_id() -> None:
    reg = registry_of(migration(A))
    with pytest.raises(DuplicateMigration) as info:
        reg.register(migration(A, description="another"))
    assert info.value.ids == (A, A)
    assert info.value.message == f"duplicate migration id: {A}, {A}."
    assert "Give each migration its own timestamp" in str(info.value)
    assert reg.get(A).description == "a"  # type: ignore[union-attr]
    assert len(reg) == 1


def test_constructor_rejects_duplicate_ids() -> None:
    with pytest.raises(DuplicateMigration):
        Registry([migration(A), migration(B), migration(A)])


def test_duplicate_version_is_caught_by_check() -> None:
    reg = registry_of(migration("1700000000_one"), migration("1700000000_two"))
    with pytest.raises(DuplicateMigration) as info:
        reg.check()
    assert info.value.message == "duplicate migration version: 1700000000_one, 1700000000_two."
    with pytest.raises(DuplicateMigration):
        reg.ordered()


def test_register_rejects_non_migrations() -> None:
    reg = Registry()
    with pytest.raises(TypeError) as info:
        reg.register("1700000000_a")  # type: ignore[arg-type]
    assert "expected a pebble_migrate.Migration, got str" in str(info.value)
    assert len(reg) == 0


def test_check_and_ordered_report_unknown_dependencies_and_cycles() -> None:
    reg = registry_of(migration(A), migration(B, "1700000999_missing"))
    with pytest.raises(UnknownDependency) as info:
        reg.check()
    assert f"migration {B} depends on unknown id 1700000999_missing." in str(info.value)
    cyclic = registry_of(migration(A, B), migration(B, A))
    with pytest.raises(DependencyCycle) as cycle:
        list(cyclic)
    assert f"{A} -> {B} -> {A}" in str(cycle.value)


def test_module_level_register_uses_the_default_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = Registry()
    monkeypatch.setattr(registry_module, "default_registry", fresh)
    m = migration(A)
    assert register(m) is m
    assert fresh.get(A) is m
    with pytest.raises(DuplicateMigration):
        register(migration(A))


# --- the `migration` decorator -----------------------------------------------------------


def test_decorator_registers_and_returns_the_function() -> None:
    reg = Registry()

    def undo(ctx: Any) -> None: ...

    def check(ctx: Any) -> bool:
        return True

    @reg.migration(
        C,
        description="Copy things",
        down=undo,
        validate=check,
        rerunnable=True,
        dependencies=[B],
    )
    def up(ctx: Any) -> str:
        return "ran"

    assert up(None) == "ran"  # the function itself is returned unchanged
    m = reg.get(C)
    assert m is not None
    assert m.up is up
    assert m.down is undo
    assert m.validate is check
    assert m.rerunnable is True
    assert m.dependencies == (B,)
    assert m.description == "Copy things"
    assert m.version == 1700050000


def test_decorator_description_from_docstring_first_line() -> None:
    reg = Registry()

    @reg.migration(A)
    def up(ctx: Any) -> None:
        """Add an index on users.email.

        A longer explanation that is not part of the description.
        """

    assert reg.get(A).description == "Add an index on users.email."  # type: ignore[union-attr]


def test_decorator_explicit_description_beats_docstring() -> None:
    reg = Registry()

    @reg.migration(A, description="Explicit")
    def up(ctx: Any) -> None:
        """From the docstring."""

    assert reg.get(A).description == "Explicit"  # type: ignore[union-attr]


def test_decorator_description_defaults_from_the_id() -> None:
    reg = Registry()

    @reg.migration("1700000000_backfill_user_emails")
    def up(ctx: Any) -> None:
        pass

    m = reg.get("1700000000_backfill_user_emails")
    assert m is not None
    assert m.description == "backfill user emails"
    assert m.down is None
    assert m.validate is None
    assert m.rerunnable is False
    assert m.dependencies == ()


def test_description_from_a_hyphenated_name_has_spaces_too() -> None:
    m = Migration(id="1754917200_test-migration", up=lambda ctx: None)
    assert m.description == "test migration"


def test_decorator_duplicate_id() -> None:
    reg = Registry()

    @reg.migration(A)
    def first(ctx: Any) -> None: ...

    with pytest.raises(DuplicateMigration) as info:

        @reg.migration(A)
        def second(ctx: Any) -> None: ...

    assert f"duplicate migration id: {A}, {A}." in str(info.value)
    assert reg.get(A).up is first  # type: ignore[union-attr]


def test_decorator_bad_id() -> None:
    reg = Registry()
    with pytest.raises(InvalidMigrationId) as info:

        @reg.migration("add_index")
        def up(ctx: Any) -> None: ...

    assert "invalid migration id 'add_index'" in str(info.value)
    assert "Ids look like 1700000000_add_indexes" in str(info.value)
    assert len(reg) == 0


# --- load_migrations: what a file provides ------------------------------------------------


def test_load_minimal_file(migrations_dir: Path) -> None:
    path = write_migration(
        migrations_dir,
        "1700000000_add_user_index",
        """
        def up(ctx):
            return ("up", ctx)
        """,
    )
    reg = load_migrations(migrations_dir)
    assert len(reg) == 1
    m = reg.get("1700000000_add_user_index")
    assert m is not None
    assert m.version == 1700000000
    assert m.source == str(path)
    assert m.description == "add user index"
    assert m.up("ctx") == ("up", "ctx")
    assert m.down is None
    assert m.validate is None
    assert m.rerunnable is False
    assert m.dependencies == ()


def test_load_accepts_a_string_path(migrations_dir: Path) -> None:
    write_migration(migrations_dir, A, "def up(ctx): pass\n")
    assert [m.id for m in load_migrations(str(migrations_dir))] == [A]


def test_load_full_file(migrations_dir: Path) -> None:
    write_migration(migrations_dir, A, "def up(ctx): pass\n")
    write_migration(
        migrations_dir,
        B,
        '''
        """The docstring is not used when `description` is set."""

        description = "Backfill emails"
        rerunnable = True
        dependencies = ["1700000000_a"]


        def up(ctx):
            return "up"


        def down(ctx):
            return "down"


        def validate(ctx):
            return ["problem"]
        ''',
    )
    m = load_migrations(migrations_dir).get(B)
    assert m is not None
    assert m.description == "Backfill emails"
    assert m.rerunnable is True
    assert m.dependencies == (A,)
    assert m.down is not None
    assert m.down(None) == "down"
    assert m.validate is not None
    assert m.validate(None) == ["problem"]
    assert m.up(None) == "up"
    assert m.reversible


def test_description_from_the_docstring_first_line(migrations_dir: Path) -> None:
    write_migration(
        migrations_dir,
        A,
        '''
        """
        Index users by email.

        More detail that is not part of the description.
        """

        def up(ctx):
            pass
        ''',
    )
    assert load_migrations(migrations_dir).get(A).description == "Index users by email."  # type: ignore[union-attr]


def test_empty_description_falls_back_to_the_docstring(migrations_dir: Path) -> None:
    write_migration(
        migrations_dir,
        A,
        '''
        """From the docstring."""

        description = ""

        def up(ctx):
            pass
        ''',
    )
    assert load_migrations(migrations_dir).get(A).description == "From the docstring."  # type: ignore[union-attr]


def test_dependencies_as_a_tuple(migrations_dir: Path) -> None:
    write_migration(migrations_dir, A, "def up(ctx): pass\n")
    write_migration(migrations_dir, D, "def up(ctx): pass\n")
    write_migration(
        migrations_dir, B, 'dependencies = ("1700000000_a", "1700200000_d")\ndef up(ctx): pass\n'
    )
    reg = load_migrations(migrations_dir)
    assert reg.get(B).dependencies == (A, D)  # type: ignore[union-attr]
    assert [m.id for m in reg.ordered()] == [A, D, B]


def test_spec_example_from_files(migrations_dir: Path) -> None:
    write_migration(migrations_dir, A, "def up(ctx): pass\n")
    write_migration(migrations_dir, B, "def up(ctx): pass\n")
    write_migration(migrations_dir, C, 'dependencies = ["1700100000_b"]\ndef up(ctx): pass\n')
    write_migration(migrations_dir, D, 'dependencies = ["1700000000_a"]\ndef up(ctx): pass\n')
    reg = load_migrations(migrations_dir)
    reg.check()
    assert [m.id for m in reg] == [A, B, C, D]
    assert [m.id for m in reg.all()] == sorted([A, B, C, D])  # loaded in file-name order


def test_underscore_files_and_non_python_files_are_ignored(migrations_dir: Path) -> None:
    write_migration(migrations_dir, A, "def up(ctx): pass\n")
    (migrations_dir / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (migrations_dir / "_helpers.py").write_text("raise RuntimeError('must not be imported')\n")
    (migrations_dir / "_1700000001_draft.py").write_text("def up(ctx): pass\n")
    (migrations_dir / "README.md").write_text("# notes\n")
    (migrations_dir / "1700000002_x.sql").write_text("select 1;\n")
    (migrations_dir / "1700000003_x.py.bak").write_text("def up(ctx): pass\n")
    reg = load_migrations(migrations_dir)
    assert [m.id for m in reg] == [A]


def test_empty_directory_gives_an_empty_registry(migrations_dir: Path) -> None:
    reg = load_migrations(migrations_dir)
    assert len(reg) == 0
    assert reg.latest_version == 0


def test_edited_file_is_reloaded_even_with_the_same_size_and_mtime(
    migrations_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With bytecode caching on (the default outside this test run), a stale .pyc in
    # migrations/__pycache__ would win if size and mtime match, e.g. after a restore.
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    path = write_migration(migrations_dir, A, "def up(ctx):\n    return 'old'\n")
    os.utime(path, (1700000000, 1700000000))
    assert load_migrations(migrations_dir).get(A).up(None) == "old"  # type: ignore[union-attr]
    path.write_text("def up(ctx):\n    return 'new'\n")
    os.utime(path, (1700000000, 1700000000))
    assert load_migrations(migrations_dir).get(A).up(None) == "new"  # type: ignore[union-attr]


# --- load_migrations: errors -------------------------------------------------------------


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(UsageError) as info:
        load_migrations(missing)
    text = str(info.value)
    assert f"migrations directory {missing} does not exist." in text
    assert "-m/--migrations" in text
    assert "PEBBLE_MIGRATE_MIGRATIONS" in text
    assert "pebble-migrate create NAME" in text


def test_a_file_is_not_a_migrations_directory(tmp_path: Path) -> None:
    path = tmp_path / "file.py"
    path.write_text("")
    with pytest.raises(UsageError) as info:
        load_migrations(path)
    assert f"migrations directory {path} does not exist." in str(info.value)


def test_syntax_error_reports_file_and_line(migrations_dir: Path) -> None:
    path = write_migration(
        migrations_dir,
        A,
        """
        def up(ctx):
            pass

        def down(ctx)
            pass
        """,
    )
    with pytest.raises(MigrationLoadError) as info:
        load_migrations(migrations_dir)
    assert info.value.path == str(path)
    assert info.value.line == 4
    text = str(info.value)
    assert text.startswith(f"cannot load migration {path}:4: syntax error: ")
    assert FIX_HINT in text
    assert f"pebble_migrate_loaded.m{A}" not in sys.modules


def test_indentation_error_reports_file_and_line(migrations_dir: Path) -> None:
    path = write_migration(migrations_dir, A, "def up(ctx):\n    pass\n  x = 1\n")
    with pytest.raises(MigrationLoadError) as info:
        load_migrations(migrations_dir)
    assert info.value.line == 3
    assert f"{path}:3: syntax error" in str(info.value)


def test_import_error_reports_file_and_line(migrations_dir: Path) -> None:
    path = write_migration(
        migrations_dir,
        A,
        """
        import os

        import nonexistent_module_xyz

        def up(ctx):
            pass
        """,
    )
    with pytest.raises(MigrationLoadError) as info:
        load_migrations(migrations_dir)
    assert info.value.path == str(path)
    assert info.value.line == 3
    text = str(info.value)
    assert (
        f"cannot load migration {path}:3: ModuleNotFoundError: "
        "No module named 'nonexistent_module_xyz'." in text
    )
    assert FIX_HINT in text
    assert f"pebble_migrate_loaded.m{A}" not in sys.modules


def test_error_raised_in_a_function_called_at_import_reports_the_innermost_line(
    migrations_dir: Path,
) -> None:
    path = write_migration(
        migrations_dir,
        A,
        """
        def helper():
            return {}["missing"]

        TABLE = helper()

        def up(ctx):
            pass
        """,
    )
    with pytest.raises(MigrationLoadError) as info:
        load_migrations(migrations_dir)
    assert info.value.line == 2
    assert f"{path}:2: KeyError: 'missing'" in str(info.value)


def test_one_bad_file_fails_the_whole_load(migrations_dir: Path) -> None:
    write_migration(migrations_dir, A, "def up(ctx): pass\n")
    bad = write_migration(migrations_dir, B, "raise RuntimeError('boom')\n")
    with pytest.raises(MigrationLoadError) as info:
        load_migrations(migrations_dir)
    assert f"cannot load migration {bad}:1: RuntimeError: boom." in str(info.value)


@pytest.mark.parametrize(
    "body",
    [
        "def down(ctx): pass\n",
        "up = 42\n",
        "up = None\n",
        "",
    ],
)
def test_no_up_function(migrations_dir: Path, body: str) -> None:
    path = write_migration(migrations_dir, A, body)
    with pytest.raises(MigrationLoadError) as info:
        load_migrations(migrations_dir)
    assert info.value.message == f"cannot load migration {path}: no `up(ctx)` function defined."
    assert info.value.line is None
    assert FIX_HINT in str(info.value)


@pytest.mark.parametrize(
    "stem",
    ["add_index", "1700000000-add", "01700000000_a", "946684799_too_old", "1700000000_", "17_x"],
)
def test_bad_id_in_file_name(migrations_dir: Path, stem: str) -> None:
    marker = migrations_dir.parent / "imported"
    path = write_migration(
        migrations_dir,
        stem,
        f"""
        open({str(marker)!r}, "w").close()

        def up(ctx):
            pass
        """,
    )
    with pytest.raises(InvalidMigrationId) as info:
        load_migrations(migrations_dir)
    text = str(info.value)
    assert f"invalid migration id {stem!r} ({path})" in text
    assert "Ids look like 1700000000_add_indexes" in text
    assert not marker.exists(), "a file with a bad name must not be executed"


@pytest.mark.parametrize("value", ['"yes"', "1", "None", "[True]"])
def test_rerunnable_must_be_a_bool(migrations_dir: Path, value: str) -> None:
    path = write_migration(migrations_dir, A, f"rerunnable = {value}\ndef up(ctx): pass\n")
    with pytest.raises(MigrationLoadError) as info:
        load_migrations(migrations_dir)
    assert info.value.message == (
        f"cannot load migration {path}: `rerunnable` must be True or False."
    )


@pytest.mark.parametrize(
    "value", ['"1700000000_base"', '{"1700000000_base"}', "None", "1700000000", "{'a': 1}"]
)
def test_dependencies_must_be_a_list(migrations_dir: Path, value: str) -> None:
    path = write_migration(migrations_dir, B, f"dependencies = {value}\ndef up(ctx): pass\n")
    with pytest.raises(MigrationLoadError) as info:
        load_migrations(migrations_dir)
    assert info.value.message == (
        f"cannot load migration {path}: `dependencies` must be a list of migration ids."
    )


def test_dependencies_must_hold_id_strings(migrations_dir: Path) -> None:
    path = write_migration(
        migrations_dir, B, 'dependencies = ["1700000000_a", 1700000000]\ndef up(ctx): pass\n'
    )
    with pytest.raises(MigrationLoadError) as info:
        load_migrations(migrations_dir)
    text = str(info.value)
    assert f"cannot load migration {path}: " in text
    assert "dependency 1700000000 is not an id string" in text
    assert FIX_HINT in text


def test_description_must_be_a_string(migrations_dir: Path) -> None:
    path = write_migration(migrations_dir, A, "description = 42\ndef up(ctx): pass\n")
    with pytest.raises(MigrationLoadError) as info:
        load_migrations(migrations_dir)
    assert info.value.message == f"cannot load migration {path}: `description` must be a string."


@pytest.mark.parametrize("name", ["down", "validate"])
def test_down_and_validate_must_be_functions(migrations_dir: Path, name: str) -> None:
    path = write_migration(migrations_dir, A, f"{name} = 'later'\ndef up(ctx): pass\n")
    with pytest.raises(MigrationLoadError) as info:
        load_migrations(migrations_dir)
    assert info.value.message == f"cannot load migration {path}: `{name}` must be a function."


def test_self_dependency_in_a_file(migrations_dir: Path) -> None:
    write_migration(migrations_dir, A, f"dependencies = [{A!r}]\ndef up(ctx): pass\n")
    with pytest.raises(DependencyCycle) as info:
        load_migrations(migrations_dir)
    assert f"dependency cycle: {A} -> {A}." in str(info.value)


def test_unknown_dependency_across_files(migrations_dir: Path) -> None:
    write_migration(migrations_dir, A, "def up(ctx): pass\n")
    write_migration(
        migrations_dir, B, 'dependencies = ["1700000000_a", "1700000001_typo"]\ndef up(ctx): pass\n'
    )
    reg = load_migrations(migrations_dir)
    with pytest.raises(UnknownDependency) as info:
        reg.check()
    assert info.value.migration_id == B
    assert info.value.missing == ("1700000001_typo",)
    assert f"migration {B} depends on unknown id 1700000001_typo." in str(info.value)
    assert "Fix the id in its `dependencies`" in str(info.value)


def test_cycle_across_files(migrations_dir: Path) -> None:
    write_migration(migrations_dir, A, f"dependencies = [{C!r}]\ndef up(ctx): pass\n")
    write_migration(migrations_dir, B, f"dependencies = [{A!r}]\ndef up(ctx): pass\n")
    write_migration(migrations_dir, C, f"dependencies = [{B!r}]\ndef up(ctx): pass\n")
    write_migration(migrations_dir, D, "def up(ctx): pass\n")
    reg = load_migrations(migrations_dir)
    with pytest.raises(DependencyCycle) as info:
        reg.check()
    assert info.value.ids == (A, C, B, A)
    assert f"dependency cycle: {A} -> {C} -> {B} -> {A}." in str(info.value)
    assert D not in str(info.value)


def test_load_file_directly(migrations_dir: Path) -> None:
    path = write_migration(migrations_dir, A, '"""Doc."""\ndef up(ctx): pass\n')
    m = load_file(path)
    assert isinstance(m, Migration)
    assert m.id == A
    assert m.description == "Doc."
    assert m.source == str(path)


def test_loaded_functions_run_against_a_context(migrations_dir: Path) -> None:
    write_migration(
        migrations_dir,
        A,
        """
        def up(ctx):
            ctx.put(b"k", b"v")
        """,
    )
    seen: list[tuple[bytes, bytes]] = []

    class Ctx:
        def put(self, key: bytes, value: bytes) -> None:
            seen.append((key, value))

    load_migrations(migrations_dir).get(A).up(Ctx())  # type: ignore[union-attr]
    assert seen == [(b"k", b"v")]
