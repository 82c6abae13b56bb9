"""Shared fixtures: real RocksDB directories under tmp_path and the real CLI."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from pebble_migrate import Migration, Registry
from pebble_migrate.cli import cli
from pebble_migrate.testing import contents, create_database

Invoke = Callable[..., Result]

# The suite sends SIGINT to real CLI processes. Started in the background by a shell, it
# and its children would ignore SIGINT; with a handler here, children start with the
# default action, as in a foreground run.
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the developer's environment and pyproject.toml out of every test."""
    for name in list(os.environ):
        if name.startswith("PEBBLE_MIGRATE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A database with some application data (so it is not 'fresh')."""
    return create_database(tmp_path / "db", {b"seed": b"1"})


@pytest.fixture
def migrations_dir(tmp_path: Path) -> Path:
    """An empty migrations directory."""
    path = tmp_path / "migrations"
    path.mkdir()
    return path


def write_migration(directory: Path, migration_id: str, body: str) -> Path:
    """Write a migration file with the given (dedented) body."""
    path = directory / f"{migration_id}.py"
    path.write_text(textwrap.dedent(body).lstrip())
    return path


def put_items(items: dict[bytes, bytes]) -> Callable[[Any], None]:
    """Return an `up` that stages these writes through ctx."""

    def up(ctx: Any) -> None:
        for key, value in items.items():
            ctx.put(key, value)

    return up


def noop(ctx: Any) -> None:
    """A migration step that changes nothing."""


def migration(mid: str, *deps: str, **kwargs: Any) -> Migration:
    """Return a migration with a no-op up (and down) unless given."""
    kwargs.setdefault("up", noop)
    kwargs.setdefault("down", noop)
    return Migration(id=mid, dependencies=deps, **kwargs)


def registry_of(*migrations: Migration) -> Registry:
    """Return a registry holding these migrations."""
    return Registry(migrations)


@pytest.fixture
def invoke() -> Invoke:
    """Run the real CLI in-process; returns click's Result (stdout and stderr apart)."""
    runner = CliRunner()

    def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:  # noqa: A002 - CliRunner's name
        return runner.invoke(cli, list(args), input=input, env=env, catch_exceptions=False)

    return run


def snapshot(path: Path) -> dict[str, Any]:
    """Return everything a command could change: all column families, state included."""
    return contents(path, state=True)


@contextlib.contextmanager
def tmpfs(where: Path, size: str = "4m") -> Iterator[Path]:
    """Mount a small tmpfs at `where` for the block; skip the test (saying why) if we may not."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


# --- pseudo-terminals ---------------------------------------------------------------------


def read_terminal_until(leader: int, shown: bytearray, done: Callable[[bytes], bool]) -> None:
    """Read what a child writes to its pseudo-terminal into `shown` until `done(shown)`;
    fail if it goes quiet for 60 s first."""
    while not done(bytes(shown)):
        ready, _, _ = select.select([leader], [], [], 60)
        assert ready, shown
        shown += os.read(leader, 65536)


def read_terminal_to_the_end(leader: int, shown: bytearray) -> str:
    """Read the rest of what a child writes to its pseudo-terminal, until it closes it
    (or is quiet for 60 s), into `shown`; close our end; return it all as text."""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        try:
            chunk = os.read(leader, 65536) if ready else b""
        except OSError:  # EIO: the child has gone
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    return shown.decode("utf-8", "replace")
