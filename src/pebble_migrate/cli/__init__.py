"""The `pebble-migrate` command: a thin click layer over the library."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from typing import Any

import click

# Only what `--help` needs is imported here: the commands import the library, the renderer
# (rich) and RocksDB inside their functions, so that `--help` starts fast and each command
# pays only for what it uses.
from pebble_migrate.cli.options import Settings, global_options, settings
from pebble_migrate.errors import EXIT_SIGINT, EXIT_SIGTERM, FilesystemError, MigrateError


class _Group(click.Group):
    """A group that turns library errors into `Error: ...` and the error's exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise  # the reader went away: main() ends quietly
        except (MigrateError, OSError) as raised:
            # The library reports file errors itself; an OSError that still escapes it is
            # shown the same way, never as a traceback.
            exc = (
                raised
                if isinstance(raised, MigrateError)
                else FilesystemError(
                    f"{settings().cli_name} {ctx.invoked_subcommand or ''}".strip(), raised
                )
            )
            from pebble_migrate.cli.render import Renderer

            s = settings()
            _name_the_backups_that_repair(exc, s)
            Renderer(json_mode=s.json, verbose=s.verbose, cli_name=s.cli_name).error(exc)
            ctx.exit(exc.exit_code)


def _name_the_backups_that_repair(exc: MigrateError, s: Settings) -> None:
    """Point a corruption error at the backups that do not share the damaged file."""
    from pebble_migrate.catalog import explain_damage

    # No database named, or a bad setting: the error stands as it is.
    with contextlib.suppress(MigrateError):
        explain_damage(exc, s.database_path(), s.backups(), s.cli_name)


@click.group("pebble-migrate", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@global_options
@click.version_option(package_name="pebble-migrate")
def cli() -> None:
    """Versioned, recoverable data migrations for RocksDB databases.

    Global options (-d, -m, -v, --json, --backup-dir) may come before or after the
    command name; commands that change something also take -n/--dry-run, and those that
    ask take -y/--yes. Exit codes: 0 ok, 1 error, 2 usage, 3 pending (status --check),
    4 not clean, 5 database in use, 6 migration failed, 7 validation failed,
    130/143 interrupted by SIGINT/SIGTERM.
    """
    s = settings()
    s.cli_name = click.get_current_context().command_path
    _configure_logging()
    s.check()  # every setting, up front, whichever command runs


def _configure_logging() -> None:
    import logging  # not at the top: `--help` needs no logging

    class AboveTheBar(logging.StreamHandler):  # type: ignore[type-arg]
        """Print through the progress bar's console while one is on screen, so a warning
        (`SIGINT received: ...`) never lands in the middle of the bar."""

        def emit(self, record: logging.LogRecord) -> None:
            render = sys.modules.get("pebble_migrate.cli.render")
            if render is not None and render.log_line(self.format(record)):
                return
            super().emit(record)

    class _OneLine(logging.Formatter):
        """A notice on one line: a path or a message from data in it cannot start a line
        of its own (see `units.one_line`)."""

        def format(self, record: logging.LogRecord) -> str:
            from pebble_migrate.units import one_line

            return one_line(super().format(record))

    logger = logging.getLogger("pebble_migrate")
    if not any(getattr(h, "_pebble_cli", False) for h in logger.handlers):
        handler = AboveTheBar(sys.stderr)
        handler.setFormatter(_OneLine("%(message)s"))
        handler._pebble_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False


def _standard_streams() -> None:
    """Give a closed stdin, stdout or stderr (`>&-`, some daemon wrappers) /dev/null, so
    output has somewhere harmless to go and no file the database opens lands on fd 1 or 2."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115 - lives as long as the process
    for name in ("stdout", "stderr"):
        _whole_writes(name)
    # Everything printed from here on (click's help and errors included) goes through an
    # Outlet: a lost stream goes quiet, and what lost stdout decides the exit code below.
    from pebble_migrate.cli.outlet import Outlet

    sys.stdout = Outlet(sys.stdout, stdout=True)
    sys.stderr = Outlet(sys.stderr)


def _whole_writes(name: str) -> None:
    """Under `python -u` / PYTHONUNBUFFERED, sys.stdout writes straight to the file, and a
    short write (a disk that fills up mid-way) drops the rest of the text without an
    error. Put a buffer back under it: a buffered writer writes everything or raises, so
    a result cut short is seen. Lines still go out as they are printed."""
    stream = getattr(sys, name)
    raw = getattr(stream, "buffer", None)
    if not isinstance(raw, io.FileIO):
        return
    stream.flush()
    # Its own file object on the same descriptor, not closing it: the original stream
    # (still sys.__stdout__) owns the descriptor and closes it at exit.
    buffered = open(raw.fileno(), "wb", closefd=False)  # noqa: SIM115 - lives as long as the process
    setattr(
        sys,
        name,
        io.TextIOWrapper(
            buffered, encoding=stream.encoding, errors=stream.errors, line_buffering=True
        ),
    )


class _Terminated(Exception):
    """SIGTERM outside a migration run (a run installs its own graceful handlers)."""


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated


INTERRUPTED = (
    "Error: interrupted{how}. Every write pebble-migrate makes is atomic: it was made whole "
    "or not at all.\nRun `{cli} status` to see where things stand.\n"
)


def main() -> None:
    """Run the CLI (console script entry point)."""
    import signal

    _standard_streams()
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    cli_name = "pebble-migrate"
    try:
        code = cli.main(prog_name=cli_name, standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort):
        # A signal outside a migration run (which handles its own): nothing was half-done.
        sys.stderr.write(INTERRUPTED.format(how="", cli=cli_name))
        sys.exit(EXIT_SIGINT)
    except _Terminated:
        sys.stderr.write(INTERRUPTED.format(how=" by SIGTERM", cli=cli_name))
        sys.exit(EXIT_SIGTERM)
    except BrokenPipeError:
        # Whoever read the output (`| head`) has gone: nothing more to say to anyone.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    from pebble_migrate.cli.outlet import OUTPUT

    sys.exit(OUTPUT.exit_code(code if isinstance(code, int) else 0, cli_name))


from pebble_migrate.cli import backup, inspect, maintain, migrate  # noqa: E402, F401
