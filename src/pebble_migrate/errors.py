"""The exception tree: every failure the library reports is a MigrateError."""

from __future__ import annotations

import contextlib
import errno
import functools

# `import pebble_migrate` imports this module eagerly, so what it imports at module level is
# paid by every application start: typing, re, traceback and datetime (through units) are
# imported only where they are used. `TYPE_CHECKING = False` is the idiom type checkers
# treat as true without importing typing at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from typing import ParamSpec, TypeVar

    P = ParamSpec("P")
    R = TypeVar("R")

# Exit codes the CLI uses; documented in docs/cli.md. Health checks rely on them.
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PENDING = 3
EXIT_NOT_CLEAN = 4
EXIT_IN_USE = 5
EXIT_MIGRATION_FAILED = 6
EXIT_VALIDATION_FAILED = 7
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class MigrateError(Exception):
    """Base of every error pebble-migrate raises; the CLI prints it as `Error: ...`."""

    exit_code = EXIT_ERROR
    expected = False
    """True for outcomes that are answers, not faults (validation failed, not clean): the
    CLI shows no traceback for them even with -v."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message)

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"


DEFAULT_CLI = "pebble-migrate"


def name_the_cli(exc: MigrateError, cli: str) -> MigrateError:
    """Make the commands an error's message and hint suggest use `cli` (the name the
    application runs pebble-migrate by, e.g. `myapp db`) instead of `pebble-migrate`."""
    if cli != DEFAULT_CLI:
        import re

        for attribute in ("message", "hint"):
            text = getattr(exc, attribute)
            if text:
                setattr(exc, attribute, re.sub(rf"`{DEFAULT_CLI}(?=[ `])", f"`{cli}", text))
    return exc


# --- configuration and invocation -------------------------------------------------


class UsageError(MigrateError):
    """Raised when options or arguments are missing or contradict each other."""

    expected = True
    exit_code = EXIT_USAGE


class ConfirmationRequired(UsageError):
    """Raised when a destructive command has no terminal to ask on and no --yes."""

    def __init__(self, question: str, flag: str = "--yes") -> None:
        self.question = question
        super().__init__(
            f"there is no terminal to ask on, and this needs confirmation: {question}",
            hint=f"Nothing was changed. Re-run with {flag} to confirm.",
        )


# --- the database on disk -------------------------------------------------------


class DatabaseError(MigrateError):
    """Raised when the database directory cannot be opened or read."""


class DatabaseNotFound(DatabaseError):
    """Raised when the database path does not exist."""

    def __init__(self, path: str, cli_name: str = "pebble-migrate") -> None:
        self.path = path
        super().__init__(
            f"no database at {path}.",
            hint=(
                "Check the path given with -d/--database or PEBBLE_MIGRATE_DATABASE; "
                f"to create a new database there, run `{cli_name} up --create -d {path}`."
            ),
        )


class NotADatabase(DatabaseError):
    """Raised when the path is a file, or a directory that is not a RocksDB database."""

    def __init__(self, path: str, reason: str, *, empty: bool = False) -> None:
        self.path = path
        # An empty directory is where `up --create` makes a new database.
        create = f"; to create a new database there, run `pebble-migrate up --create -d {path}`"
        super().__init__(
            f"{path} is not a usable RocksDB database: {reason}.",
            hint="Nothing was changed. Check the path"
            + (create if empty else ", or restore a backup (`pebble-migrate backup list -d PATH`)")
            + ".",
        )


class DatabaseInUse(DatabaseError):
    """Raised when another process holds the database's lock."""

    exit_code = EXIT_IN_USE

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"the database at {path} is in use by another process (its LOCK is held).",
            hint="Stop the application (or the other pebble-migrate) and try again; "
            "read-only commands such as `status` work while it runs.",
        )


class StorageError(DatabaseError):
    """Raised when RocksDB reports an I/O error or invalid argument."""


class CorruptionError(StorageError):
    """Raised when RocksDB finds corrupt data; the message names the file."""


class DiskFullError(StorageError):
    """Raised when a write fails because the filesystem is full."""

    def __init__(
        self,
        path: str,
        detail: str,
        free: int | None,
        needed: int | None,
        *,
        hint: str | None = None,
    ) -> None:
        from pebble_migrate.units import format_bytes

        self.free = free
        self.needed = needed
        numbers = []
        if free is not None:
            numbers.append(f"{format_bytes(free)} free")
        if needed is not None:
            numbers.append(f"about {format_bytes(needed)} needed")
        where = f" ({', '.join(numbers)})" if numbers else ""
        super().__init__(
            f"the disk holding {path} is full{where}: {detail}",
            hint=hint
            or "Free some space, then run `pebble-migrate status`: it says how to go on "
            "(committed work is kept; an interrupted `up` continues where it stopped when run "
            "again, and an interrupted rollback is finished by the `down VERSION` that "
            "status names).",
        )


class FilesystemError(StorageError):
    """Raised when a file operation outside RocksDB fails (an I/O error, a read-only or full
    filesystem, a quota); the message names the operation and the path."""

    def __init__(self, operation: str, exc: OSError, *, database: bool = True) -> None:
        self.errno = exc.errno
        where = f" ({exc.filename})" if exc.filename else ""
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            hint = "The filesystem is full (or the quota is used up): free some space there"
        elif exc.errno == errno.EROFS:
            hint = "The filesystem is read-only: mount it read-write"
        elif exc.errno == errno.EIO:
            hint = "The disk reported an I/O error: check it (the kernel log says more)"
        else:
            hint = "Check that path and its permissions"
        # Only a command that works on a database has commits to keep and a status to show.
        after = (
            "; whatever it had committed is kept, and `pebble-migrate status` says where "
            "things stand."
            if database
            else "."
        )
        super().__init__(
            f"{operation} failed: {reason}{where}.",
            hint=f"{hint}, then run the command again{after}",
        )


@contextlib.contextmanager
def filesystem_errors(operation: str, *, database: bool = True) -> Iterator[None]:
    """Turn an OSError raised in the block into a FilesystemError naming `operation`
    (`database=False`: an operation on no database, such as `create`)."""
    try:
        yield
    except OSError as exc:
        raise FilesystemError(operation, exc, database=database) from exc


def reports_filesystem_errors(
    operation: str, *, database: bool = True
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a public verb so that a failing file operation inside it is a
    FilesystemError naming the verb, never a bare OSError."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def verb(*args: P.args, **kwargs: P.kwargs) -> R:
            with filesystem_errors(operation, database=database):
                return fn(*args, **kwargs)

        return verb

    return decorate


class InsufficientSpace(MigrateError):
    """Raised before any write when free space is below what the job needs."""

    def __init__(self, path: str, free: int, needed: int, what: str) -> None:
        from pebble_migrate.units import format_bytes

        self.free = free
        self.needed = needed
        super().__init__(
            f"not enough free space for {what} at {path}: "
            f"{format_bytes(free)} free, {format_bytes(needed)} needed.",
            hint="Free space on that filesystem and try again; nothing was changed.",
        )


# --- the recorded state ---------------------------------------------------------


class StateError(MigrateError):
    """Raised when the migration state stored in the database forbids the request."""


class CorruptStateError(StateError):
    """Raised when a state record in the database cannot be decoded."""

    def __init__(self, key: str, detail: str) -> None:
        self.key = key
        super().__init__(
            f"the migration state record {key!r} is damaged: {detail}.",
            hint="Nothing was changed. Restore a backup taken before the damage "
            "(`pebble-migrate backup list`, then `pebble-migrate backup restore ID --force`).",
        )


class NewerStateFormat(StateError):
    """Raised when the migration state was written by a newer version of pebble-migrate."""

    def __init__(self, found: int) -> None:
        self.found = found
        super().__init__(
            f"the migration state was written by a newer pebble-migrate (format {found}; "
            "this version reads format 1).",
            hint="Nothing was changed. Upgrade pebble-migrate (`pip install -U "
            "pebble-migrate`) and run the command again.",
        )


class NotCleanError(StateError):
    """Raised when up/down/rerun find the database migrating, dirty or rolling back."""

    expected = True
    exit_code = EXIT_NOT_CLEAN


class CodeChanged(UsageError):
    """Raised when a resumed migration's code no longer matches the run that stopped."""

    expected = False
    exit_code = 1

    def __init__(self, migration_id: str, detail: str) -> None:
        self.migration_id = migration_id
        super().__init__(
            f"the code of {migration_id} changed since the run that stopped: {detail}.",
            hint="Nothing was committed for that scan.",
        )


# --- migrations and their registry -----------------------------------------------


class RegistryError(MigrateError):
    """Raised when the set of migrations is invalid as a whole."""


class InvalidMigrationId(RegistryError):
    """Raised when a migration id is not `<unix_timestamp>_<description>`."""

    def __init__(self, migration_id: str, reason: str, source: str | None = None) -> None:
        self.migration_id = migration_id
        where = f" ({source})" if source else ""
        super().__init__(
            f"invalid migration id {migration_id!r}{where}: {reason}.",
            hint="Ids look like 1700000000_add_indexes: a Unix timestamp between "
            "946684800 and 4102444800, an underscore, then letters, digits, underscores and "
            "hyphens. "
            "`pebble-migrate create NAME` writes one for you.",
        )


class InvalidMigration(InvalidMigrationId):
    """Raised when a migration's functions cannot be run (not callable, async, generator)."""

    def __init__(self, migration_id: str, reason: str, source: str | None = None) -> None:
        self.migration_id = migration_id
        where = f" ({source})" if source else ""
        MigrateError.__init__(
            self,
            f"migration {migration_id}{where} cannot be run: {reason}.",
            hint="Fix the migration's functions; nothing was changed.",
        )


class DuplicateMigration(RegistryError):
    """Raised when two migrations share an id or a version."""

    def __init__(self, ids: Sequence[str], what: str = "id") -> None:
        self.ids = tuple(ids)
        super().__init__(
            f"duplicate migration {what}: {', '.join(self.ids)}.",
            hint="Give each migration its own timestamp (rename one file).",
        )


class DependencyCycle(RegistryError):
    """Raised when migrations depend on each other in a cycle."""

    def __init__(self, cycle: Sequence[str]) -> None:
        self.ids = tuple(cycle)
        super().__init__(
            f"dependency cycle: {' -> '.join(self.ids)}.",
            hint="Remove one of these dependencies so the migrations can be ordered.",
        )


class UnknownDependency(RegistryError):
    """Raised when a migration depends on an id that no migration has."""

    def __init__(self, migration_id: str, missing: Iterable[str]) -> None:
        self.migration_id = migration_id
        self.missing = tuple(sorted(missing))
        super().__init__(
            f"migration {migration_id} depends on unknown "
            f"{'id' if len(self.missing) == 1 else 'ids'} {', '.join(self.missing)}.",
            hint="Fix the id in its `dependencies`, or add the missing migration.",
        )


class MigrationLoadError(RegistryError):
    """Raised when a migration file cannot be imported or lacks what it needs."""

    def __init__(self, path: str, detail: str, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = f"{path}:{line}" if line else path
        super().__init__(
            f"cannot load migration {where}: {detail.rstrip('.')}.",
            hint="Fix the file and run the command again; nothing was changed.",
        )


# --- plans ----------------------------------------------------------------------


class PlanError(MigrateError):
    """Raised when the requested up/down/rerun cannot be planned."""


class UnknownTarget(PlanError):
    """Raised when a version or id names no known migration."""

    def __init__(self, target: str, known: Sequence[str] = ()) -> None:
        self.target = target
        listing = f" Known: {', '.join(known[-5:])}" if known else ""
        super().__init__(
            f"no migration has version or id {target!r}.{listing}",
            hint="Run `pebble-migrate status` to see the versions.",
        )


class IrreversibleMigration(PlanError):
    """Raised when a rollback would have to pass through a migration without `down`."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = tuple(ids)
        super().__init__(
            f"cannot roll back {', '.join(self.ids)}: no `down` defined.",
            hint="Choose a target above it, add a `down` to the migration, or restore "
            "a backup (`pebble-migrate backup list`). Nothing was changed.",
        )


# --- running --------------------------------------------------------------------


class PendingMigrations(MigrateError):
    """Raised by the startup check when migrations are pending and may not run."""

    expected = True
    exit_code = EXIT_PENDING

    def __init__(self, ids: Sequence[str], cli_name: str) -> None:
        self.ids = tuple(ids)
        super().__init__(
            f"{len(self.ids)} pending migration(s): {', '.join(self.ids)}.",
            hint=f"Run `{cli_name} up`, or start with run_migrations enabled.",
        )


class MigrationFailed(MigrateError):
    """Raised when a migration's function raised; the state is now dirty."""

    exit_code = EXIT_MIGRATION_FAILED

    def __init__(self, migration_id: str, error: str, *, hint: str, details: str = "") -> None:
        self.migration_id = migration_id
        self.error = error
        self.details = details
        self.cause: BaseException | None = None
        super().__init__(f"migration {migration_id} failed: {error}", hint=hint)


class ValidationFailed(MigrateError):
    """Raised when `validate` finds problems."""

    expected = True
    exit_code = EXIT_VALIDATION_FAILED

    def __init__(
        self,
        problems: Sequence[str],
        *,
        migration_id: str | None = None,
        cli: str = "pebble-migrate",
        way_out: str = "",
        verbose: bool = False,
    ) -> None:
        self.problems = tuple(problems)
        self.migration_id = migration_id
        listing = f"{len(self.problems)} problem(s): " + "; ".join(self.problems)
        if migration_id is None:
            listed = "" if verbose else f" `{cli} validate --verbose` lists every check."
            super().__init__(
                f"validation found {listing}",
                hint=(way_out + listed).strip() or "validate changed nothing.",
            )
            return
        super().__init__(
            f"its validate() found {listing}",
            hint=f"The status is now `dirty`, with the data as up() wrote it. Roll it back with "
            f"`{cli} down VERSION`; or, if the check itself was wrong, fix it and run "
            f"`{cli} force-clean` then `{cli} up` (up's work is not done again, the check is); "
            f"`{cli} up --no-validate` skips the check.",
        )


class MigrationInterrupted(MigrateError):
    """Raised when SIGINT or SIGTERM stopped a migration at a safe point."""

    expected = True

    def __init__(self, message: str, *, signum: int, hint: str) -> None:
        import signal

        self.signum = signum
        self.exit_code = EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT
        self.note: str | None = None
        super().__init__(message, hint=hint)


class PromptInterrupted(MigrateError):
    """Raised when Ctrl+C answered a confirmation prompt: nothing had been attempted."""

    expected = True
    exit_code = EXIT_SIGINT

    def __init__(self) -> None:
        super().__init__(
            "interrupted at the confirmation prompt; nothing was changed.",
            hint="Run the command again to answer, or add --yes to answer yes beforehand.",
        )


def release_frames(exc: BaseException) -> None:
    """Clear the local variables of the finished frames an exception carries (and of its
    cause and context): a stored exception must not keep a rocksdict handle, iterator or
    snapshot alive, or the application could not close and reopen its database."""
    import traceback

    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        cause = getattr(current, "cause", None)
        if isinstance(cause, BaseException):
            pending.append(cause)
