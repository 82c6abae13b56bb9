"""The user's recovery guide, command by command, exactly as written.

Commands the guide has people type run on a real pseudo-terminal (answering `y` when a
command asks, as a person would); the backup commands also run as a script would run
them, with no terminal at all. Only the placeholders (/path/to/db, [previous_version])
are replaced with real values.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pebble_migrate.testing import contents, create_database

BIN = str(Path(sys.executable).parent)

USERS = '''
"""Create users."""
def up(ctx):
    for i in range(50):
        ctx.put(b"user:%02d" % i, b"name")
def down(ctx):
    for key, _ in ctx.scan(prefix=b"user:"):
        ctx.delete(key)
'''

# Writes around ctx (not resumable), can block half-way so a test can kill it, and fails
# while FAIL is set: the guide's "interrupted" and "dirty" scenarios.
EMAILS = '''
"""Backfill emails."""
import os, sys
dependencies = ["1700000000_create_users"]
def up(ctx):
    for i, (key, value) in enumerate(ctx.scan(prefix=b"user:")):
        ctx.db[b"email:" + key[5:]] = value + b"@example.org"
        if i == 25 and os.environ.get("BLOCK"):
            print("midway", flush=True)
            sys.stdin.readline()
        if i == 25 and os.environ.get("FAIL"):
            raise ValueError("bad address for " + key.decode())
def down(ctx):
    for key, _ in ctx.scan(prefix=b"email:"):
        ctx.delete(key)
def validate(ctx):
    users = sum(1 for _ in ctx.scan(prefix=b"user:", name="u"))
    emails = sum(1 for _ in ctx.scan(prefix=b"email:", name="e"))
    return [] if users == emails else [f"{users} users, {emails} emails"]
'''


class Shell:
    """Runs guide commands in a project directory with ./migrations."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.db = root / "data" / "db"
        self.env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
        self.env.pop("PEBBLE_MIGRATE_DATABASE", None)

    def words(self, command: str, **values: str) -> list[str]:
        text = command.replace("/path/to/db", str(self.db))
        for placeholder, value in values.items():
            text = text.replace(placeholder, value)
        return shlex.split(text)

    def script(self, command: str, expect: int = 0, **values: str) -> str:
        """Run as a script would: no terminal."""
        done = subprocess.run(
            self.words(command, **values),
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
        assert done.returncode == expect, f"{command}\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    def typed(self, command: str, expect: int = 0, **values: str) -> str:
        """Run as typed at a terminal, answering y to any question."""
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            self.words(command, **values),
            cwd=self.root,
            env=self.env,
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=slave,
        )
        os.close(slave)
        seen, answered = b"", 0
        try:
            while True:
                ready, _, _ = select.select([master], [], [], 120)
                assert ready, f"{command}: no output for 120 s\n{seen.decode()}"
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the command closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
                if seen.count(b"[y/N]") > answered:
                    answered += 1
                    os.write(master, b"y\n")
        finally:
            os.close(master)
        assert proc.stdout is not None
        out = proc.stdout.read().decode()
        proc.stdout.close()
        proc.wait(timeout=120)
        text = out + seen.decode(errors="replace")
        assert proc.returncode == expect, f"{command}\n{text}"
        return text

    def status(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(
            self.script("pebble-migrate status -d /path/to/db --json")
        )
        return data

    def backups(self) -> list[dict[str, object]]:
        found: list[dict[str, object]] = json.loads(
            self.script("pebble-migrate backup list --database /path/to/db --json")
        )
        return found


@pytest.fixture
def shell(tmp_path: Path) -> Shell:
    root = tmp_path / "project"
    (root / "migrations").mkdir(parents=True)
    (root / "migrations" / "1700000000_create_users.py").write_text(textwrap.dedent(USERS))
    create_database(root / "data" / "db", {b"config": b"v1"})
    return Shell(root)


def _add_emails(shell: Shell) -> None:
    (shell.root / "migrations" / "1700100000_backfill_emails.py").write_text(
        textwrap.dedent(EMAILS)
    )


def test_before_running_migrations(shell: Shell) -> None:
    shell.typed("pebble-migrate up --database /path/to/db")
    _add_emails(shell)
    assert "No backups" not in shell.typed("pebble-migrate backup list --database /path/to/db")
    assert "1 pending" in shell.typed("pebble-migrate status --database /path/to/db")
    before = contents(shell.db, state=True)
    out = shell.typed("pebble-migrate up --database /path/to/db --dry-run")
    assert "1700100000_backfill_emails" in out and "nothing was changed" in out
    assert contents(shell.db, state=True) == before
    shell.typed("pebble-migrate up --database /path/to/db")
    assert "Valid:" in shell.typed("pebble-migrate validate --database /path/to/db")


def _kill_midway(shell: Shell) -> None:
    """Apply the users, then SIGKILL the emails migration half-way (it wrote around ctx)."""
    shell.typed("pebble-migrate up --database /path/to/db")
    _add_emails(shell)
    proc = subprocess.Popen(
        shell.words("pebble-migrate up --database /path/to/db --yes"),
        cwd=shell.root,
        env={**shell.env, "BLOCK": "1"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "midway"
    proc.kill()
    proc.wait()


def test_scenario_1_interrupted_manual_recovery(shell: Shell) -> None:
    _kill_midway(shell)  # the crash / OOM of the guide
    assert shell.status()["status"] == "migrating"

    assert "migrating" in shell.typed("pebble-migrate status --database /path/to/db")
    shell.typed("pebble-migrate force-clean --database /path/to/db")
    shell.typed("pebble-migrate up --database /path/to/db")
    assert shell.status()["status"] == "clean"
    assert sum(k.startswith(b"email:") for k in contents(shell.db)["default"]) == 50


def test_scenario_1_restore_from_backup(shell: Shell) -> None:
    _kill_midway(shell)
    shell.typed("pebble-migrate backup list --database /path/to/db")
    newest = str(shell.backups()[-1]["path"])
    shell.typed(
        "pebble-migrate backup restore /path/to/backup --database /path/to/db --force",
        **{"/path/to/backup": newest},
    )
    state = shell.status()
    assert state["status"] == "clean" and state["pending"] == ["1700100000_backfill_emails"]
    assert not any(k.startswith(b"email:") for k in contents(shell.db)["default"])
    shell.typed("pebble-migrate up --database /path/to/db")
    assert shell.status()["status"] == "clean"


def _fail_emails(shell: Shell) -> None:
    shell.typed("pebble-migrate up --database /path/to/db")
    _add_emails(shell)
    subprocess.run(
        shell.words("pebble-migrate up --database /path/to/db --yes"),
        cwd=shell.root,
        env={**shell.env, "FAIL": "1"},
        capture_output=True,
        check=False,
    )
    assert shell.status()["status"] == "dirty"


def test_scenario_2_dirty_force_clean_and_retry(shell: Shell) -> None:
    _fail_emails(shell)
    out = shell.typed("pebble-migrate status --database /path/to/db --verbose")
    assert "dirty" in out and "bad address for user:25" in out
    assert "bad address for user:25" in shell.typed("pebble-migrate history --database /path/to/db")
    shell.typed("pebble-migrate force-clean --database /path/to/db")
    shell.typed("pebble-migrate up --database /path/to/db")
    assert shell.status()["status"] == "clean"


def test_scenario_2_dirty_rollback_to_previous_version(shell: Shell) -> None:
    _fail_emails(shell)
    assert any(k.startswith(b"email:") for k in contents(shell.db)["default"])  # direct writes
    shell.typed(
        "pebble-migrate down [previous_version] --database /path/to/db",
        **{"[previous_version]": "1700000000"},
    )
    state = shell.status()
    assert (state["status"], state["current_version"]) == ("clean", 1700000000)
    assert not any(k.startswith(b"email:") for k in contents(shell.db)["default"])


def test_scenario_2_dirty_restore(shell: Shell) -> None:
    _fail_emails(shell)
    newest = str(shell.backups()[-1]["path"])
    shell.typed(
        "pebble-migrate backup restore /path/to/backup --database /path/to/db --force",
        **{"/path/to/backup": newest},
    )
    assert shell.status()["status"] == "clean"


def test_scenario_3_validation_failure_then_rollback(shell: Shell) -> None:
    shell.typed("pebble-migrate up --database /path/to/db")
    _add_emails(shell)
    shell.typed("pebble-migrate up --database /path/to/db")
    import rocksdict

    db = rocksdict.Rdict(str(shell.db))
    del db[b"email:07"]
    db.close()
    out = shell.typed("pebble-migrate validate --database /path/to/db --verbose", expect=7)
    assert "50 users, 49 emails" in out
    shell.typed(
        "pebble-migrate down [previous_version] --database /path/to/db",
        **{"[previous_version]": "1700000000"},
    )
    assert shell.status()["current_version"] == 1700000000


def test_emergency_recovery(shell: Shell) -> None:
    shell.typed("pebble-migrate up --database /path/to/db")
    _add_emails(shell)
    shell.typed("pebble-migrate up --database /path/to/db")
    good = str(shell.backups()[-1]["path"])
    expected = contents(Path(good) / "db")
    shell.script("cp -r /path/to/db /path/to/db.corrupted.backup")
    shell.script("rm -rf /path/to/db")
    shell.typed(
        "pebble-migrate backup restore /path/to/good-backup /path/to/db --force",
        **{"/path/to/good-backup": good},
    )
    assert contents(shell.db) == expected
    assert "clean" in shell.typed("pebble-migrate status --database /path/to/db")
    shell.typed("pebble-migrate validate --database /path/to/db")
    assert (shell.root / "data" / "db.corrupted.backup" / "CURRENT").exists()


def test_backup_commands_run_as_written_in_a_script(shell: Shell) -> None:
    """No terminal at all: the backup commands of the guide do what it says."""
    shell.script("pebble-migrate up --database /path/to/db")
    _add_emails(shell)
    shell.script("pebble-migrate up --database /path/to/db")
    listing = shell.script("pebble-migrate backup list --database /path/to/db")
    assert "before up to 1700100000: 1 migration" in listing
    backups = shell.backups()
    first = str(backups[0]["path"])
    shell.script(
        "pebble-migrate backup restore /path/to/backup --database /path/to/db --force",
        **{"/path/to/backup": first},
    )
    assert shell.status()["current_version"] == 0
    shell.script("pebble-migrate up --database /path/to/db")
    shell.script("rm -rf /path/to/db")
    shell.script(
        "pebble-migrate backup restore /path/to/good-backup /path/to/db --force",
        **{"/path/to/good-backup": str(backups[-1]["path"])},
    )
    assert shell.status()["current_version"] == 1700000000


def test_quick_reference_short_forms(shell: Shell) -> None:
    shell.typed("pebble-migrate status -d /path/to/db")
    shell.typed("pebble-migrate up -d /path/to/db")
    _add_emails(shell)
    shell.typed("pebble-migrate up -d /path/to/db")
    shell.typed("pebble-migrate validate -d /path/to/db")
    shell.typed("pebble-migrate backup list -d /path/to/db")
    shell.typed("pebble-migrate down [version] -d /path/to/db", **{"[version]": "1700000000"})
    shell.typed("pebble-migrate force-clean -d /path/to/db")
    path = str(shell.backups()[-1]["path"])
    shell.typed("pebble-migrate backup restore [path] -d /path/to/db --force", **{"[path]": path})
    assert shell.status()["status"] == "clean"
