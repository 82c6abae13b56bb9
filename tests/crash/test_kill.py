"""Real processes, really killed: SIGKILL mid-migration, SIGINT/SIGTERM exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import rocksdict

import pebble_migrate as pm
from pebble_migrate.testing import contents, create_database

KEYS = {b"k:%04d" % i: b"v" for i in range(200)}

# Writes straight to ctx.db (so it is not resumable), and stops half-way to be killed.
DIRECT = """
import sys
{flag}
def up(ctx):
    for i, (key, value) in enumerate(ctx.scan(prefix=b"k:")):
        ctx.db[key] = b"done"
        if i == 100:
            print("midway", flush=True)
            sys.stdin.readline()
"""

# Writes only through ctx (resumable by construction); waits half-way for the parent.
SCANNING = """
import sys
def up(ctx):
    for i, (key, value) in enumerate(ctx.scan(prefix=b"k:")):
        ctx.put(key, ctx.get(key) + b"+")
        if i == 100:
            print("midway", flush=True)
            sys.stdin.readline()
"""

APP = """
import sys, pebble_migrate as pm, rocksdict
opts = pm.default_startup_options()
opts.run_migrations = True
opts.registry = pm.load_migrations(sys.argv[2])
opts.chunk_policy = pm.ChunkPolicy(records=25)
db = rocksdict.Rdict(sys.argv[1])
try:
    pm.check_and_run_startup_migrations(db, sys.argv[1], opts)
finally:
    db.close()
"""


def _project(tmp_path: Path, body: str) -> tuple[Path, Path]:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "1700000000_job.py").write_text(textwrap.dedent(body))
    db = create_database(tmp_path / "db", KEYS)
    return db, migrations


def _start(args: list[str], **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )  # type: ignore[call-overload]


def _run_app_until_midway_and_kill(tmp_path: Path, db: Path, migrations: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    proc = _start([sys.executable, str(app), str(db), str(migrations)])
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "midway"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _startup(db: Path, migrations: Path) -> None:
    opts = pm.default_startup_options()
    opts.run_migrations = True
    opts.registry = pm.load_migrations(migrations)
    handle = rocksdict.Rdict(str(db))
    try:
        pm.check_and_run_startup_migrations(handle, db, opts)
    finally:
        handle.close()


def test_killed_rerunnable_migration_is_finished_by_the_startup_api(tmp_path: Path) -> None:
    db, migrations = _project(tmp_path, DIRECT.format(flag="rerunnable = True"))
    _run_app_until_midway_and_kill(tmp_path, db, migrations)
    assert sum(v == b"done" for v in contents(db)["default"].values()) == 101
    _startup(db, migrations)
    assert contents(db)["default"] == dict.fromkeys(KEYS, b"done")
    handle = rocksdict.Rdict(str(db))
    try:
        state = pm.read_state(handle)
    finally:
        handle.close()
    assert (state.status, state.applied) == (pm.Status.CLEAN, {"1700000000_job"})


def test_killed_non_rerunnable_migration_is_refused_with_the_options(tmp_path: Path) -> None:
    db, migrations = _project(tmp_path, DIRECT.format(flag=""))
    _run_app_until_midway_and_kill(tmp_path, db, migrations)
    before = contents(db, state=True)
    with pytest.raises(pm.NotCleanError) as info:
        _startup(db, migrations)
    text = str(info.value)
    assert "migration 1700000000_job was interrupted" in text
    for option in (
        "pebble-migrate validate",
        "pebble-migrate force-clean",
        "pebble-migrate backup restore",
    ):
        assert option in text
    assert contents(db, state=True) == before


def test_killed_scan_migration_resumes_exactly_once(tmp_path: Path) -> None:
    db, migrations = _project(tmp_path, SCANNING)
    _run_app_until_midway_and_kill(tmp_path, db, migrations)
    data = contents(db)["default"]
    assert sum(v == b"v+" for v in data.values()) == 100  # four chunks of 25 committed
    done = subprocess.run(
        _cli_up(db, migrations), input="\n", capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "resuming 1700000000_job after b'k:0099' (100 of ~200)" in done.stderr
    assert contents(db)["default"] == dict.fromkeys(KEYS, b"v+")


def _cli_up(db: Path, migrations: Path, *extra: str) -> list[str]:
    """Return the command line of the real CLI's `up` on this project (no backup)."""
    up = ["up", "-d", str(db), "-m", str(migrations), "--no-backup", *extra]
    return [sys.executable, "-m", "pebble_migrate", *up]


def _up_until_midway(db: Path, migrations: Path, *, chunk: int) -> subprocess.Popen[str]:
    """Start the real CLI's `up` and return once the migration says it is half-way."""
    proc = _start(_cli_up(db, migrations, "--chunk-records", str(chunk)))
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "midway"
    return proc


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_first_signal_commits_and_exits_with_its_code(
    tmp_path: Path, signum: int, code: int
) -> None:
    db, migrations = _project(tmp_path, SCANNING)
    proc = _up_until_midway(db, migrations, chunk=1000)
    assert proc.stdin is not None
    proc.send_signal(signum)
    proc.stdin.write("\n")  # let key 100 finish; the scan stops before key 101
    proc.stdin.flush()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "interrupted 1700000000_job at b'k:0100' (101 of ~200)" in err
    assert "Run `pebble-migrate up` to continue" in err
    data = contents(db)["default"]
    assert sum(v == b"v+" for v in data.values()) == 101  # everything up to the key in hand
    status = json.loads(
        subprocess.run(
            [sys.executable, "-m", "pebble_migrate", "status", "-d", str(db), "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert status["status"] == "migrating"
    assert "interrupted at b'k:0100' (101 of ~200)" in status["history"][-1]["note"]


def test_second_signal_stops_at_once(tmp_path: Path) -> None:
    db, migrations = _project(tmp_path, SCANNING)
    proc = _up_until_midway(db, migrations, chunk=40)
    assert proc.stderr is not None
    proc.send_signal(signal.SIGINT)
    # Two signals sent back to back can arrive as one; wait until the first was handled.
    seen = ""
    while "SIGINT received" not in seen:
        line = proc.stderr.readline()
        assert line, seen
        seen += line
    proc.send_signal(signal.SIGINT)  # the second one interrupts the blocked read itself
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopped 1700000000_job at once on a second SIGINT" in err
    data = contents(db)["default"]
    assert sum(v == b"v+" for v in data.values()) == 80  # the open chunk (80..100) is gone


def test_console_script_and_module_entry_points(tmp_path: Path) -> None:
    db, migrations = _project(tmp_path, "def up(ctx):\n    ctx.put(b'x', b'1')\n")
    script = Path(sys.executable).with_name("pebble-migrate")
    first = subprocess.run(
        [str(script), "status", "-d", str(db), "-m", str(migrations), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["pending"] == ["1700000000_job"]
    env = {
        **os.environ,
        "PEBBLE_MIGRATE_DATABASE": str(db),
        "PEBBLE_MIGRATE_MIGRATIONS": str(migrations),
    }
    second = subprocess.run(
        [sys.executable, "-m", "pebble_migrate", "up"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert second.returncode == 0, second.stderr
    assert contents(db)["default"][b"x"] == b"1"
