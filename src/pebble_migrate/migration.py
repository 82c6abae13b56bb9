"""The Migration model: an id that carries the version, and the functions that move data."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pebble_migrate.errors import DependencyCycle, InvalidMigration, InvalidMigrationId

if TYPE_CHECKING:
    from pebble_migrate.context import MigrationContext

MIN_VERSION = 946684800  # 2000-01-01T00:00:00Z
MAX_VERSION = 4102444800  # 2100-01-01T00:00:00Z
MAX_ID_LENGTH = 200
"""The longest id: what a history record holds (and a file name of it fits any filesystem)."""

_ID = re.compile(r"^([0-9]+)_([A-Za-z0-9_-]+)$")
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")

MigrationFn = Callable[["MigrationContext"], Any]


def parse_id(migration_id: str, source: str | None = None) -> int:
    """Return the version (timestamp) in a migration id, or raise InvalidMigrationId."""
    if not isinstance(migration_id, str):
        raise InvalidMigrationId(repr(migration_id), "an id must be a string", source)
    if len(migration_id) > MAX_ID_LENGTH:
        raise InvalidMigrationId(
            f"{migration_id[:40]}...",
            f"an id is at most {MAX_ID_LENGTH} characters (the history keeps it whole); "
            f"this one has {len(migration_id)}: choose a shorter name",
            source,
        )
    match = _ID.fullmatch(migration_id)
    if match is None:
        raise InvalidMigrationId(
            migration_id,
            "expected <unix_timestamp>_<description> (letters, digits, underscores, hyphens)",
            source,
        )
    digits = match.group(1)
    if digits.startswith("0"):
        raise InvalidMigrationId(migration_id, "the timestamp has a leading zero", source)
    # int() refuses over 4300 digits; anything longer than MAX_VERSION is out of range anyway.
    version = int(digits) if len(digits) <= len(str(MAX_VERSION)) else None
    if version is None or not MIN_VERSION <= version <= MAX_VERSION:
        shown = digits if len(digits) <= 20 else f"{digits[:20]}..."
        raise InvalidMigrationId(
            migration_id,
            f"timestamp {shown} is outside {MIN_VERSION}..{MAX_VERSION} (years 2000 to 2100)",
            source,
        )
    return version


def is_valid_name(name: str) -> bool:
    """Return whether `name` may follow the timestamp in an id."""
    return bool(_NAME.fullmatch(name))


@dataclass(frozen=True, kw_only=True)
class Migration:
    """One versioned change to the data, defined in code or loaded from a file.

    `up(ctx)` applies it; `down(ctx)` undoes it; `validate(ctx)` checks the data after it
    (return False or a list of problem strings, or raise, to report failure).
    """

    id: str
    up: MigrationFn
    description: str = ""
    down: MigrationFn | None = None
    validate: MigrationFn | None = None
    rerunnable: bool = False
    dependencies: tuple[str, ...] = ()
    source: str | None = field(default=None, compare=False)
    version: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        version = parse_id(self.id, self.source)
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "dependencies", _as_ids(self.id, self.dependencies))
        if not callable(self.up):
            raise InvalidMigration(self.id, "`up` must be a function taking ctx", self.source)
        for name in ("up", "down", "validate"):
            fn = getattr(self, name)
            if fn is not None and not callable(fn):
                raise InvalidMigration(self.id, f"`{name}` must be a function or None", self.source)
            kind = _not_run_by_calling(fn)
            if kind:
                raise InvalidMigration(
                    self.id,
                    f"`{name}` is {kind}, which does nothing until awaited or iterated; "
                    "migration functions must be plain `def` functions",
                    self.source,
                )
        if not self.description:
            name = self.id.split("_", 1)[1]
            object.__setattr__(self, "description", name.replace("_", " ").replace("-", " "))

    @property
    def reversible(self) -> bool:
        """Whether the migration can be rolled back."""
        return self.down is not None


def _not_run_by_calling(fn: Any) -> str | None:
    """Return what kind of function `fn` is if calling it would not run its body."""
    if fn is None:
        return None
    if inspect.iscoroutinefunction(fn):
        return "an `async def` coroutine function"
    if inspect.isasyncgenfunction(fn):
        return "an async generator function"
    if inspect.isgeneratorfunction(fn):
        return "a generator function (it contains `yield`)"
    return None


def _as_ids(owner: str, deps: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(deps, str):
        deps = (deps,)
    ids = tuple(deps)
    for dep in ids:
        if not isinstance(dep, str):
            raise InvalidMigrationId(owner, f"dependency {dep!r} is not an id string")
    if owner in ids:
        raise DependencyCycle((owner, owner))
    return ids
