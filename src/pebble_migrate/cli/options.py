"""Global options, accepted before or after the command name, and how they are resolved."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import click

from pebble_migrate.errors import ConfirmationRequired, PromptInterrupted, UsageError

if TYPE_CHECKING:
    from pebble_migrate.config import ProjectConfig
    from pebble_migrate.registry import Registry

F = TypeVar("F", bound=Callable[..., Any])

ENV_DATABASE = "PEBBLE_MIGRATE_DATABASE"
ENV_MIGRATIONS = "PEBBLE_MIGRATE_MIGRATIONS"
ENV_BACKUP_DIR = "PEBBLE_MIGRATE_BACKUP_DIR"
ENV_BACKUP_MODE = "PEBBLE_MIGRATE_BACKUP_MODE"
ENV_ALLOW_OUT_OF_ORDER = "PEBBLE_MIGRATE_ALLOW_OUT_OF_ORDER"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclass
class Settings:
    """What the global options and the environment say, merged over pyproject.toml."""

    database: str | None = None
    migrations: str | None = None
    backup_dir: str | None = None
    verbose: bool = False
    dry_run: bool = False
    json: bool = False
    cli_name: str = "pebble-migrate"
    """How the operator runs this CLI (the command path of its group: `pebble-migrate`, or
    `myapp db` when an application mounts the group); every hint names commands by it."""
    _project: ProjectConfig | None = field(default=None, repr=False)

    @property
    def project(self) -> ProjectConfig:
        """The `[tool.pebble-migrate]` settings (read once)."""
        if self._project is None:
            from pebble_migrate.config import load_project_config

            self._project = load_project_config()
        return self._project

    def _path(self, flag_value: str | None, flag: str, env: str, key: str) -> str | None:
        """Return a path setting from the first place that gives it (flag, environment,
        pyproject.toml), checked, or None; an error names where the bad value came from."""
        found = self._sourced(flag_value, flag, env, key)
        return found[0] if found else None

    def _sourced(
        self, flag_value: str | None, flag: str, env: str, key: str
    ) -> tuple[str, str] | None:
        """`_path`, with the place the value came from."""
        project = getattr(self.project, key.replace("-", "_"))
        for value, source in (
            (flag_value, flag),
            (os.environ.get(env), f"${env}"),
            (project, f"`{key}` in {self.project.source}"),
        ):
            if value is not None:
                if not value:
                    # `-d "$DB"` with DB unset: going on to the next source would act on
                    # another database than the one the script meant.
                    raise UsageError(
                        f"the path given by {source} is empty.",
                        hint=f"Nothing was changed. Give a path with {source}, or leave it "
                        "out (unset it) to use the next place a path can come from.",
                    )
                if "\0" in value:
                    raise UsageError(
                        f"the path given by {source} contains a NUL character, which no "
                        "file name can hold.",
                        hint=f"Nothing was changed. Correct {source}.",
                    )
                return str(value), source
        return None

    def database_path(self) -> str:
        """Return the database path, or raise a UsageError saying how to give one (or
        naming the setting that puts the backup directory inside it)."""
        path = self._path(self.database, "-d/--database", ENV_DATABASE, "database")
        if not path:
            raise UsageError(
                "no database given.",
                hint=f"Pass -d/--database PATH, set {ENV_DATABASE}, or set `database` "
                "under [tool.pebble-migrate] in pyproject.toml.",
            )
        self._refuse_backups_inside(path)
        return path

    def _refuse_backups_inside(self, database: str) -> None:
        """Refuse, before any command acts, a backup directory inside the database: a
        restore replaces that directory, and the backups would go with it."""
        found = self._sourced(self.backup_dir, "--backup-dir", ENV_BACKUP_DIR, "backup-dir")
        if found is None:
            return
        from pebble_migrate.paths import default_backup_dir, resolve_database

        where, source = found
        db = resolve_database(database)
        real = resolve_database(where)
        if real == db or db in real.parents:
            raise UsageError(
                f"the backup directory {where} (from {source}) is inside the database "
                f"directory {db}: a restore replaces that directory, and every backup in it "
                "would go with it.",
                hint=f"Nothing was changed. Point {source} outside the database, or leave it "
                f"out for the default, {default_backup_dir(db)}.",
            )

    def migrations_dir(self) -> str:
        """Return the migrations directory (default ./migrations)."""
        given = self._path(self.migrations, "-m/--migrations", ENV_MIGRATIONS, "migrations")
        return given or "migrations"

    def migrations_configured(self) -> bool:
        """Whether the migrations directory was named (flag, environment or pyproject), as
        opposed to the default ./migrations."""
        return bool(self.migrations or os.environ.get(ENV_MIGRATIONS) or self.project.migrations)

    def registry(self) -> Registry:
        """Load and check the migrations."""
        from pathlib import Path

        from pebble_migrate.registry import load_migrations

        registry = load_migrations(Path(self.migrations_dir()))
        registry.check()
        return registry

    def check(self) -> None:
        """Validate every setting that does not come from a flag, up front, whatever the
        command: the environment variables and the whole `[tool.pebble-migrate]` table.
        Each message names its source (the variable, or the file and key)."""
        _ = self.project  # reads the nearest pyproject.toml and checks the whole table
        self.backup_mode()
        self.allow_out_of_order(False)

    def backup_mode(self) -> str:
        """Return how automatic backups are made: "link" (the default) or "copy"."""
        from pebble_migrate.config import BACKUP_MODES

        mode = os.environ.get(ENV_BACKUP_MODE)
        if mode is not None:
            if mode not in BACKUP_MODES:
                raise UsageError(
                    f'${ENV_BACKUP_MODE} must be "link" or "copy", not {mode!r:.40}.',
                    hint=f"Nothing was changed. Set {ENV_BACKUP_MODE}=copy for independent "
                    "copies, or unset it.",
                )
            return mode
        return self.project.backup_mode or "link"

    def allow_out_of_order(self, flag: bool) -> bool:
        """Whether `up` may apply migrations below the current version: the flag, else
        $PEBBLE_MIGRATE_ALLOW_OUT_OF_ORDER, else `allow-out-of-order` in pyproject.toml."""
        if flag:
            return True
        text = os.environ.get(ENV_ALLOW_OUT_OF_ORDER)
        if text is not None:
            if text.strip().lower() not in _TRUE + _FALSE:
                raise UsageError(
                    f"${ENV_ALLOW_OUT_OF_ORDER} must be 1 or 0 (true/false, yes/no), "
                    f"not {text!r:.40}.",
                    hint=f"Nothing was changed. Correct ${ENV_ALLOW_OUT_OF_ORDER}, or unset it.",
                )
            return text.strip().lower() in _TRUE
        return bool(self.project.allow_out_of_order)

    def backups(self) -> str | None:
        """Return the configured backup directory, or None for the default beside the db."""
        return self._path(self.backup_dir, "--backup-dir", ENV_BACKUP_DIR, "backup-dir")


def settings() -> Settings:
    """Return the Settings of the running command."""
    return click.get_current_context().find_root().ensure_object(Settings)


def _store(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is None or value is False:
            return
        setattr(ctx.find_root().ensure_object(Settings), name, value)

    return callback


def global_options(fn: F) -> F:
    """Add -d, -m, --backup-dir, -v and --json to a group or command."""
    decorators = [
        click.option(
            "-d",
            "--database",
            metavar="PATH",
            expose_value=False,
            callback=_store("database"),
            help=f"RocksDB directory (or ${ENV_DATABASE}).",
        ),
        click.option(
            "-m",
            "--migrations",
            metavar="DIR",
            expose_value=False,
            callback=_store("migrations"),
            help=f"Migrations directory (or ${ENV_MIGRATIONS}; default ./migrations).",
        ),
        click.option(
            "--backup-dir",
            metavar="DIR",
            expose_value=False,
            callback=_store("backup_dir"),
            help=f"Backup directory (or ${ENV_BACKUP_DIR}; default <database>.backups).",
        ),
        click.option(
            "-v",
            "--verbose",
            is_flag=True,
            default=False,
            expose_value=False,
            callback=_store("verbose"),
            help="More detail; tracebacks on errors.",
        ),
        click.option(
            "--json",
            "json_",
            is_flag=True,
            default=False,
            expose_value=False,
            callback=_store("json"),
            help="Machine-readable output on stdout.",
        ),
    ]
    for decorate in reversed(decorators):
        fn = decorate(fn)
    return fn


def dry_run_option(fn: F) -> F:
    """Add -n/--dry-run to a command that changes something (and only to those)."""
    return click.option(
        "-n",
        "--dry-run",
        is_flag=True,
        default=False,
        expose_value=False,
        callback=_store("dry_run"),
        help="Show what would happen; change nothing.",
    )(fn)


def yes_option(fn: F) -> F:
    """Add -y/--yes to a destructive command."""
    return click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")(fn)


def is_terminal() -> bool:
    """Return whether there is a person at a terminal to answer questions."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def confirmer(yes: bool, *, destructive: bool, flag: str = "--yes") -> Callable[[str], bool]:
    """Return the confirmation function a command hands to the library.

    With `yes`, every question is answered yes. Otherwise, on a terminal, the question is
    asked. Without a terminal, destructive commands refuse; `up` goes ahead.
    """

    def confirm(question: str) -> bool:
        if yes:
            return True
        if not is_terminal():
            if destructive:
                raise ConfirmationRequired(question, flag)
            return True
        return ask(question)

    return confirm


def ask(question: str) -> bool:
    """Ask `question` on stderr and read the answer: yes only for y/yes. End of input
    (Ctrl+D) is a no, so the command is aborted (exit 1); Ctrl+C ends the line and
    raises PromptInterrupted (exit 130), since nothing was attempted yet."""
    import contextlib

    from click import termui

    from pebble_migrate.units import printable

    while True:
        try:
            # click's line reader (what CliRunner feeds in tests), its prompt on stderr.
            with contextlib.redirect_stdout(sys.stderr):
                answer = termui.visible_prompt_func(f"{printable(question)} [y/N]: ")
        except EOFError:
            sys.stderr.write("\n")
            return False
        except KeyboardInterrupt:
            sys.stderr.write("\n")
            raise PromptInterrupted from None
        answer = answer.strip().lower()
        if answer in ("y", "yes"):
            return True
        if answer in ("", "n", "no"):
            return False
        sys.stderr.write("Please answer y or n.\n")
