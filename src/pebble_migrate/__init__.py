"""pebble-migrate: versioned, recoverable data migrations for applications on RocksDB."""

# Only the errors are imported eagerly (they are cheap and an application catches them);
# every other public name is imported on its first use (PEP 562 `__getattr__`), so that
# `import pebble_migrate` costs an application's start almost nothing: no RocksDB, no
# hashing, no archives until they are used. The TYPE_CHECKING block gives type checkers and
# IDEs the same names statically.

from __future__ import annotations

from pebble_migrate.errors import (
    CodeChanged,
    ConfirmationRequired,
    CorruptionError,
    CorruptStateError,
    DatabaseError,
    DatabaseInUse,
    DatabaseNotFound,
    DependencyCycle,
    DiskFullError,
    DuplicateMigration,
    FilesystemError,
    InsufficientSpace,
    InvalidMigration,
    InvalidMigrationId,
    IrreversibleMigration,
    MigrateError,
    MigrationFailed,
    MigrationInterrupted,
    MigrationLoadError,
    NewerStateFormat,
    NotADatabase,
    NotCleanError,
    PendingMigrations,
    PlanError,
    RegistryError,
    StateError,
    StorageError,
    UnknownDependency,
    UnknownTarget,
    UsageError,
    ValidationFailed,
)

# Not `typing.TYPE_CHECKING`: typing itself costs an application start a few milliseconds.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from pebble_migrate.backup import (
        BackupCorrupt,
        BackupError,
        BackupInfo,
        NotABackup,
        TableDamaged,
        create_backup,
    )
    from pebble_migrate.catalog import CleanupResult, cleanup_backups, list_backups
    from pebble_migrate.commands import Aborted, RunOptions, down, history, rerun, status, up
    from pebble_migrate.context import ChunkPolicy, MigrationContext
    from pebble_migrate.events import Event
    from pebble_migrate.maintenance import create, force_clean, repair
    from pebble_migrate.migration import Migration
    from pebble_migrate.plan import Plan, Step
    from pebble_migrate.registry import Registry, default_registry, load_migrations, register
    from pebble_migrate.restore import OtherDatabase, RestoreResult, restore_backup
    from pebble_migrate.restore import recover as recover_interrupted_restore
    from pebble_migrate.startup import (
        StartupOptions,
        check_and_run_startup_migrations,
        default_startup_options,
        open_database,
    )
    from pebble_migrate.state import HistoryRecord, State, Status, read_state
    from pebble_migrate.validation import validate

_LAZY: dict[str, tuple[str, str]] = {
    # public name: (module under pebble_migrate, its name there)
    "BackupCorrupt": ("backup", "BackupCorrupt"),
    "BackupError": ("backup", "BackupError"),
    "BackupInfo": ("backup", "BackupInfo"),
    "NotABackup": ("backup", "NotABackup"),
    "TableDamaged": ("backup", "TableDamaged"),
    "create_backup": ("backup", "create_backup"),
    "CleanupResult": ("catalog", "CleanupResult"),
    "cleanup_backups": ("catalog", "cleanup_backups"),
    "list_backups": ("catalog", "list_backups"),
    "Aborted": ("commands", "Aborted"),
    "RunOptions": ("commands", "RunOptions"),
    "down": ("commands", "down"),
    "history": ("commands", "history"),
    "rerun": ("commands", "rerun"),
    "status": ("commands", "status"),
    "up": ("commands", "up"),
    "ChunkPolicy": ("context", "ChunkPolicy"),
    "MigrationContext": ("context", "MigrationContext"),
    "Event": ("events", "Event"),
    "create": ("maintenance", "create"),
    "force_clean": ("maintenance", "force_clean"),
    "repair": ("maintenance", "repair"),
    "Migration": ("migration", "Migration"),
    "Plan": ("plan", "Plan"),
    "Step": ("plan", "Step"),
    "Registry": ("registry", "Registry"),
    "default_registry": ("registry", "default_registry"),
    "load_migrations": ("registry", "load_migrations"),
    "register": ("registry", "register"),
    "OtherDatabase": ("restore", "OtherDatabase"),
    "RestoreResult": ("restore", "RestoreResult"),
    "restore_backup": ("restore", "restore_backup"),
    "recover_interrupted_restore": ("restore", "recover"),
    "StartupOptions": ("startup", "StartupOptions"),
    "check_and_run_startup_migrations": ("startup", "check_and_run_startup_migrations"),
    "open_database": ("startup", "open_database"),
    "default_startup_options": ("startup", "default_startup_options"),
    "HistoryRecord": ("state", "HistoryRecord"),
    "State": ("state", "State"),
    "Status": ("state", "Status"),
    "read_state": ("state", "read_state"),
    "validate": ("validation", "validate"),
}


if not TYPE_CHECKING:  # hidden from type checkers, so that a misspelt name stays an error

    def __getattr__(name: str) -> Any:
        """Import a public name on first use and keep it in this module's namespace."""
        try:
            module_name, attr = _LAZY[name]
        except KeyError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        from importlib import import_module

        value = getattr(import_module(f"{__name__}.{module_name}"), attr)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "Aborted",
    "BackupCorrupt",
    "BackupError",
    "BackupInfo",
    "ChunkPolicy",
    "CleanupResult",
    "CodeChanged",
    "ConfirmationRequired",
    "CorruptStateError",
    "CorruptionError",
    "DatabaseError",
    "DatabaseInUse",
    "DatabaseNotFound",
    "DependencyCycle",
    "DiskFullError",
    "DuplicateMigration",
    "Event",
    "FilesystemError",
    "HistoryRecord",
    "InsufficientSpace",
    "InvalidMigration",
    "InvalidMigrationId",
    "IrreversibleMigration",
    "MigrateError",
    "Migration",
    "MigrationContext",
    "MigrationFailed",
    "MigrationInterrupted",
    "MigrationLoadError",
    "NewerStateFormat",
    "NotABackup",
    "NotADatabase",
    "NotCleanError",
    "OtherDatabase",
    "PendingMigrations",
    "Plan",
    "PlanError",
    "Registry",
    "RegistryError",
    "RestoreResult",
    "RunOptions",
    "StartupOptions",
    "State",
    "StateError",
    "Status",
    "Step",
    "StorageError",
    "TableDamaged",
    "UnknownDependency",
    "UnknownTarget",
    "UsageError",
    "ValidationFailed",
    "check_and_run_startup_migrations",
    "cleanup_backups",
    "create",
    "create_backup",
    "default_registry",
    "default_startup_options",
    "down",
    "force_clean",
    "history",
    "list_backups",
    "load_migrations",
    "open_database",
    "read_state",
    "recover_interrupted_restore",
    "register",
    "repair",
    "rerun",
    "restore_backup",
    "status",
    "up",
    "validate",
]
