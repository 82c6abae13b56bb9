"""Registry: the set of known migrations, registered in code or loaded from a directory."""

from __future__ import annotations

import importlib.util
import logging
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from pebble_migrate import plan
from pebble_migrate.errors import (
    DuplicateMigration,
    InvalidMigrationId,
    MigrateError,
    MigrationLoadError,
    UsageError,
)
from pebble_migrate.migration import Migration, MigrationFn, parse_id

log = logging.getLogger("pebble_migrate")


class Registry:
    """A collection of migrations with unique ids (`check()` also rejects shared versions)."""

    def __init__(self, migrations: Iterable[Migration] = ()) -> None:
        self._by_id: dict[str, Migration] = {}
        for m in migrations:
            self.register(m)

    def register(self, migration: Migration) -> Migration:
        """Add a migration and return it; raise DuplicateMigration if its id is taken."""
        if not isinstance(migration, Migration):
            raise TypeError(f"expected a pebble_migrate.Migration, got {type(migration).__name__}")
        if migration.id in self._by_id:
            raise DuplicateMigration([migration.id, migration.id])
        self._by_id[migration.id] = migration
        return migration

    def migration(
        self,
        id: str,  # noqa: A002 - the domain's word, as in Migration(id=...)
        *,
        description: str = "",
        down: MigrationFn | None = None,
        validate: MigrationFn | None = None,
        rerunnable: bool = False,
        dependencies: Iterable[str] = (),
    ) -> Callable[[MigrationFn], MigrationFn]:
        """Return a decorator that registers the decorated function as a migration's `up`."""

        def decorate(up: MigrationFn) -> MigrationFn:
            doc = (up.__doc__ or "").strip().splitlines()
            self.register(
                Migration(
                    id=id,
                    up=up,
                    description=description or (doc[0] if doc else ""),
                    down=down,
                    validate=validate,
                    rerunnable=rerunnable,
                    dependencies=tuple(dependencies),
                )
            )
            return up

        return decorate

    def get(self, migration_id: str) -> Migration | None:
        """Return the migration with this id, or None."""
        return self._by_id.get(migration_id)

    def __contains__(self, migration_id: object) -> bool:
        return migration_id in self._by_id

    def __iter__(self) -> Iterator[Migration]:
        return iter(self.ordered())

    def __len__(self) -> int:
        return len(self._by_id)

    def all(self) -> list[Migration]:
        """Return the migrations in registration order (unchecked)."""
        return list(self._by_id.values())

    def ordered(self) -> list[Migration]:
        """Return the migrations in the order `up` runs them; raise if that is impossible."""
        return plan.order(self.all())

    def check(self) -> None:
        """Raise if the migrations cannot be ordered (unknown dependency, cycle, duplicate)."""
        plan.check(self.all())

    @property
    def latest_version(self) -> int:
        """The highest version among the migrations, or 0."""
        return max((m.version for m in self._by_id.values()), default=0)


default_registry = Registry()


def register(migration: Migration) -> Migration:
    """Add a migration to the default registry and return it."""
    return default_registry.register(migration)


def load_migrations(directory: str | Path) -> Registry:
    """Return a Registry of the migration files in `directory`.

    Every `*.py` file is a migration except `__init__.py` and files starting with `_`
    (keep shared helpers there). The file stem is the id.
    """
    root = Path(directory)
    if not root.is_dir():
        raise UsageError(
            f"migrations directory {root} does not exist.",
            hint="Point -m/--migrations (or PEBBLE_MIGRATE_MIGRATIONS) at it, or create "
            "your first migration with `pebble-migrate create NAME`.",
        )
    registry = Registry()
    for path in sorted(root.glob("*.py")):
        if path.name.startswith("_"):
            continue
        registry.register(load_file(path))
    return registry


def load_file(path: Path) -> Migration:
    """Import one migration file and return its Migration; raise MigrationLoadError."""
    migration_id = path.stem
    parse_id(migration_id, str(path))
    module = _import(path)
    try:
        return _from_module(module, migration_id, path)
    except MigrateError:
        raise
    except (TypeError, ValueError) as exc:
        raise MigrationLoadError(str(path), str(exc)) from None


def _import(path: Path) -> ModuleType:
    name = f"pebble_migrate_loaded.m{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise MigrationLoadError(str(path), "not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = str(path.parent.resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)  # so migrations can `import _helpers` kept beside them
    try:
        # Compile the source here rather than through the import system: no __pycache__
        # in the migrations directory, and never a stale .pyc after an edit.
        code = compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
        exec(code, module.__dict__)
    except SyntaxError as exc:
        del sys.modules[name]
        raise MigrationLoadError(str(path), f"syntax error: {exc.msg}", exc.lineno) from None
    except Exception as exc:  # noqa: BLE001 - any error in user code becomes a load error
        del sys.modules[name]
        line = _line_in(exc, path)
        detail = f"{type(exc).__name__}: {exc}"
        raise MigrationLoadError(str(path), detail, line) from None
    return module


def _line_in(exc: BaseException, path: Path) -> int | None:
    line = None
    resolved = str(path.resolve())
    for frame in traceback.extract_tb(exc.__traceback__):
        if str(Path(frame.filename).resolve()) == resolved:
            line = frame.lineno
    return line


def _from_module(module: ModuleType, migration_id: str, path: Path) -> Migration:
    up = getattr(module, "up", None)
    if not callable(up):
        raise MigrationLoadError(str(path), "no `up(ctx)` function defined")
    description = getattr(module, "description", None) or _first_line(module.__doc__)
    if not isinstance(description, str):
        raise MigrationLoadError(str(path), "`description` must be a string")
    rerunnable = getattr(module, "rerunnable", False)
    if not isinstance(rerunnable, bool):
        raise MigrationLoadError(str(path), "`rerunnable` must be True or False")
    dependencies: Any = getattr(module, "dependencies", ())
    if isinstance(dependencies, str) or not isinstance(dependencies, list | tuple):
        raise MigrationLoadError(str(path), "`dependencies` must be a list of migration ids")
    try:
        return Migration(
            id=migration_id,
            up=up,
            description=description,
            down=_optional_fn(module, "down", path),
            validate=_optional_fn(module, "validate", path),
            rerunnable=rerunnable,
            dependencies=tuple(dependencies),
            source=str(path),
        )
    except InvalidMigrationId as exc:
        raise MigrationLoadError(str(path), exc.message) from None


def _optional_fn(module: ModuleType, name: str, path: Path) -> MigrationFn | None:
    fn = getattr(module, name, None)
    if fn is not None and not callable(fn):
        raise MigrationLoadError(str(path), f"`{name}` must be a function")
    return fn


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0].strip() if lines else ""
