"""The Migration model and migration id parsing: `<unix_timestamp>_<description>`."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from pebble_migrate.errors import DependencyCycle, InvalidMigrationId, MigrateError, RegistryError
from pebble_migrate.migration import MAX_VERSION, MIN_VERSION, Migration, is_valid_name, parse_id
from tests.conftest import noop

HINT = "Ids look like 1700000000_add_indexes"


def assert_invalid_id(exc: InvalidMigrationId, bad: str, reason: str) -> None:
    """The message names the bad id and the reason; the hint says what an id looks like."""
    text = str(exc)
    assert f"invalid migration id {bad!r}" in text
    assert reason in exc.message
    assert HINT in text
    assert "946684800 and 4102444800" in text
    assert "`pebble-migrate create NAME` writes one for you" in text


# --- parse_id: valid ids ---------------------------------------------------------


@pytest.mark.parametrize(
    ("migration_id", "version"),
    [
        ("1700000000_add_indexes", 1700000000),
        ("1700000000_x", 1700000000),
        ("1700000000_X", 1700000000),
        ("1700000000_7", 1700000000),
        ("1700000000_A_b_C_123", 1700000000),
        ("1700000000__leading_underscore", 1700000000),
        ("1700000000_trailing_", 1700000000),
        ("1700000000_2024_backfill", 1700000000),
    ],
)
def test_parse_id_returns_the_timestamp(migration_id: str, version: int) -> None:
    assert parse_id(migration_id) == version


def test_parse_id_accepts_the_inclusive_bounds() -> None:
    assert MIN_VERSION == 946684800
    assert MAX_VERSION == 4102444800
    assert parse_id("946684800_first_second_of_2000") == 946684800
    assert parse_id("4102444800_first_second_of_2100") == 4102444800


# --- parse_id: invalid ids ---------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "add_indexes",
        "1700000000",
        "1700000000_",
        "1700000000-add",
        "1700000000 add",
        "_1700000000_add",
        "1700000000_add.indexes",
        "1700000000_add indexes",
        "1700000000_add/indexes",
        "1700000000_café",
        "v1700000000_add",
        "17000000OO_add",
        "-1700000000_add",
        "+1700000000_add",
        " 1700000000_add",
        "1700000000_add ",
        "1700000000_add.py",
    ],
)
def test_parse_id_rejects_bad_shapes(bad: str) -> None:
    with pytest.raises(InvalidMigrationId) as info:
        parse_id(bad)
    assert info.value.migration_id == bad
    assert_invalid_id(
        info.value,
        bad,
        "expected <unix_timestamp>_<description> (letters, digits, underscores, hyphens)",
    )


@pytest.mark.parametrize("bad", ["1700000000_add\n", "1700000000_add\r\n", "1700000000\n_add"])
def test_parse_id_rejects_a_trailing_or_embedded_newline(bad: str) -> None:
    # `$` in a regular expression also matches just before a final "\n".
    with pytest.raises(InvalidMigrationId) as info:
        parse_id(bad)
    assert_invalid_id(
        info.value,
        bad,
        "expected <unix_timestamp>_<description> (letters, digits, underscores, hyphens)",
    )


@pytest.mark.parametrize("bad", ["01700000000_add", "0946684800_add", "0_add", "00_add"])
def test_parse_id_rejects_a_leading_zero(bad: str) -> None:
    with pytest.raises(InvalidMigrationId) as info:
        parse_id(bad)
    assert_invalid_id(info.value, bad, "the timestamp has a leading zero")


@pytest.mark.parametrize(
    ("bad", "version"),
    [
        ("946684799_just_before_2000", 946684799),
        ("4102444801_just_after_2100", 4102444801),
        ("1_tiny", 1),
        ("170000000_nine_digits", 170000000),
        ("99999999999_eleven_digits", 99999999999),
    ],
)
def test_parse_id_rejects_timestamps_outside_the_range(bad: str, version: int) -> None:
    with pytest.raises(InvalidMigrationId) as info:
        parse_id(bad)
    assert_invalid_id(
        info.value,
        bad,
        f"timestamp {version} is outside 946684800..4102444800 (years 2000 to 2100)",
    )


def test_parse_id_rejects_a_huge_timestamp_as_an_invalid_id() -> None:
    # int() refuses strings of more than 4300 digits with a bare ValueError.
    bad = "1" * 5000 + "_add"
    with pytest.raises(InvalidMigrationId) as info:
        parse_id(bad)
    assert "invalid migration id" in str(info.value)


@pytest.mark.parametrize("bad", [1700000000, 1700000000.0, None, b"1700000000_add", ("a",)])
def test_parse_id_rejects_non_strings(bad: Any) -> None:
    with pytest.raises(InvalidMigrationId) as info:
        parse_id(bad)
    assert repr(bad) in str(info.value)
    assert "an id must be a string" in info.value.message
    assert HINT in str(info.value)


def test_parse_id_names_the_source_in_the_message() -> None:
    with pytest.raises(InvalidMigrationId) as info:
        parse_id("add_indexes", "migrations/add_indexes.py")
    assert str(info.value).startswith(
        "invalid migration id 'add_indexes' (migrations/add_indexes.py): expected"
    )


def test_invalid_id_is_a_registry_error() -> None:
    with pytest.raises(RegistryError):
        parse_id("nope")
    with pytest.raises(MigrateError):
        parse_id("nope")


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("add_indexes", True),
        ("A1_b2", True),
        ("_", True),
        ("123", True),
        ("", False),
        ("add-indexes", True),  # as the original tool allowed
        ("add indexes", False),
        ("café", False),
        ("a.b", False),
        ("add\n", False),
    ],
)
def test_is_valid_name(name: str, valid: bool) -> None:
    assert is_valid_name(name) is valid


# --- the Migration model -----------------------------------------------------------


def test_migration_fields_and_version() -> None:
    def up(ctx: Any) -> None: ...

    def down(ctx: Any) -> None: ...

    def validate(ctx: Any) -> bool:
        return True

    m = Migration(
        id="1700000000_add_indexes",
        up=up,
        description="Add the secondary indexes",
        down=down,
        validate=validate,
        rerunnable=True,
        dependencies=("946684800_base",),
        source="migrations/1700000000_add_indexes.py",
    )
    assert m.id == "1700000000_add_indexes"
    assert m.version == 1700000000
    assert m.up is up
    assert m.down is down
    assert m.validate is validate
    assert m.description == "Add the secondary indexes"
    assert m.rerunnable is True
    assert m.dependencies == ("946684800_base",)
    assert m.source == "migrations/1700000000_add_indexes.py"
    assert m.reversible is True


def test_migration_defaults() -> None:
    m = Migration(id="1700000000_add_indexes", up=noop)
    assert m.down is None
    assert m.validate is None
    assert m.rerunnable is False
    assert m.dependencies == ()
    assert m.source is None
    assert m.reversible is False


def test_migration_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        Migration("1700000000_add_indexes", noop)  # type: ignore[misc]


def test_migration_version_is_not_a_constructor_argument() -> None:
    with pytest.raises(TypeError):
        Migration(id="1700000000_a", up=noop, version=1)  # type: ignore[call-arg]


def test_migration_is_frozen() -> None:
    m = Migration(id="1700000000_a", up=noop)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.id = "1700000001_b"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("migration_id", "description"),
    [
        ("1700000000_add_user_index", "add user index"),
        ("1700000000_x", "x"),
        ("1700000000_Backfill2024", "Backfill2024"),
    ],
)
def test_description_defaults_from_the_id(migration_id: str, description: str) -> None:
    assert Migration(id=migration_id, up=noop).description == description


def test_explicit_description_is_kept() -> None:
    m = Migration(id="1700000000_add_user_index", up=noop, description="Index users by email")
    assert m.description == "Index users by email"


def test_equality_ignores_source() -> None:
    a = Migration(id="1700000000_a", up=noop, source="one.py")
    b = Migration(id="1700000000_a", up=noop, source="two.py")
    c = Migration(id="1700000000_a", up=noop, description="different")
    assert a == b
    assert a != c


@pytest.mark.parametrize("bad", ["add_indexes", "1700000000_", "01700000000_a", "946684799_a"])
def test_migration_rejects_a_bad_id(bad: str) -> None:
    with pytest.raises(InvalidMigrationId) as info:
        Migration(id=bad, up=noop)
    assert f"invalid migration id {bad!r}" in str(info.value)
    assert HINT in str(info.value)


def test_migration_rejects_a_non_string_id() -> None:
    with pytest.raises(InvalidMigrationId) as info:
        Migration(id=1700000000, up=noop)  # type: ignore[arg-type]
    assert "1700000000" in str(info.value)
    assert "an id must be a string" in str(info.value)


def test_migration_bad_id_names_its_source() -> None:
    with pytest.raises(InvalidMigrationId) as info:
        Migration(id="oops", up=noop, source="migrations/oops.py")
    assert "'oops' (migrations/oops.py)" in str(info.value)


@pytest.mark.parametrize("bad", [None, 42, "def up(ctx): pass", ["up"]])
def test_up_must_be_callable(bad: Any) -> None:
    with pytest.raises(InvalidMigrationId) as info:
        Migration(id="1700000000_add_indexes", up=bad)
    assert "migration 1700000000_add_indexes cannot be run" in str(info.value)
    assert "`up` must be a function taking ctx" in str(info.value)


def test_up_error_names_its_source() -> None:
    with pytest.raises(InvalidMigrationId) as info:
        Migration(id="1700000000_a", up=42, source="m/1700000000_a.py")  # type: ignore[arg-type]
    assert "1700000000_a (m/1700000000_a.py) cannot be run" in str(info.value)


@pytest.mark.parametrize("name", ["down", "validate"])
@pytest.mark.parametrize("bad", [42, "noop", True])
def test_down_and_validate_must_be_callable_or_none(name: str, bad: Any) -> None:
    with pytest.raises(InvalidMigrationId) as info:
        Migration(id="1700000000_add_indexes", up=noop, **{name: bad})
    assert "migration 1700000000_add_indexes cannot be run" in str(info.value)
    assert f"`{name}` must be a function or None" in str(info.value)


def test_callable_objects_are_accepted() -> None:
    class Step:
        def __call__(self, ctx: Any) -> None: ...

    step = Step()
    m = Migration(id="1700000000_a", up=step, down=step, validate=step)
    assert m.up is step
    assert m.reversible


# --- dependencies ------------------------------------------------------------------


def test_dependencies_become_a_tuple() -> None:
    m = Migration(id="1700000002_c", up=noop, dependencies=["1700000000_a", "1700000001_b"])  # type: ignore[arg-type]
    assert m.dependencies == ("1700000000_a", "1700000001_b")
    assert isinstance(m.dependencies, tuple)


def test_dependencies_from_a_generator_become_a_tuple() -> None:
    m = Migration(
        id="1700000002_c",
        up=noop,
        dependencies=(d for d in ["1700000000_a", "1700000001_b"]),  # type: ignore[arg-type]
    )
    assert m.dependencies == ("1700000000_a", "1700000001_b")


def test_a_single_string_dependency_is_one_id_not_characters() -> None:
    m = Migration(id="1700000002_c", up=noop, dependencies="1700000000_a")  # type: ignore[arg-type]
    assert m.dependencies == ("1700000000_a",)


def test_dependencies_may_point_to_a_later_version() -> None:
    m = Migration(id="1700000000_a", up=noop, dependencies=("1800000000_z",))
    assert m.dependencies == ("1800000000_z",)


@pytest.mark.parametrize("bad", [1700000000, None, b"1700000000_a"])
def test_dependencies_must_be_strings(bad: Any) -> None:
    with pytest.raises(InvalidMigrationId) as info:
        Migration(id="1700000002_c", up=noop, dependencies=("1700000000_a", bad))
    assert "invalid migration id '1700000002_c'" in str(info.value)
    assert f"dependency {bad!r} is not an id string" in str(info.value)


def test_self_dependency_is_a_cycle() -> None:
    with pytest.raises(DependencyCycle) as info:
        Migration(id="1700000000_a", up=noop, dependencies=("1700000000_a",))
    assert info.value.ids == ("1700000000_a", "1700000000_a")
    assert info.value.message == "dependency cycle: 1700000000_a -> 1700000000_a."
    assert "Remove one of these dependencies" in str(info.value)


def test_self_dependency_among_others_is_a_cycle() -> None:
    with pytest.raises(DependencyCycle) as info:
        Migration(
            id="1700000001_b",
            up=noop,
            dependencies=["1700000000_a", "1700000001_b"],  # type: ignore[arg-type]
        )
    assert "1700000001_b -> 1700000001_b" in str(info.value)
    assert isinstance(info.value, RegistryError)
