"""Regression tests for issue 7: each reproduces one reported bug and asserts the fix.

Real RocksDB directories under tmp_path, the real CLI (in-process through CliRunner, or a
real subprocess where signals, working directories or closed pipes matter). A migration
that must be interrupted prints "midway" at a chosen key and waits on stdin; the parent
sends the signal, then unblocks it. Every transform appends b"+", so applying it twice to
a key shows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import rocksdict

import pebble_migrate as pm
from pebble_migrate.testing import contents, create_database
from tests.conftest import Invoke, snapshot, tmpfs, write_migration

MID = "1700000000_job"

# Appends b"+" (down strips it). PM_MIDWAY / PM_MIDWAY_DOWN name the key where up / down
# print "midway" and wait for a line on stdin; PM_FAIL_AT the key where up raises.
BODY = """
import os
import sys


def _pause(variable, key):
    if key == os.environ.get(variable, "").encode():
        print("midway", flush=True)
        sys.stdin.readline()


def up(ctx):
    for key, value in ctx.scan(prefix=b"k:"):
        if key == os.environ.get("PM_FAIL_AT", "").encode():
            raise RuntimeError("failing on purpose at " + key.decode())
        ctx.put(key, value + b"+")
        _pause("PM_MIDWAY", key)


def down(ctx):
    for key, value in ctx.scan(prefix=b"k:"):
        ctx.put(key, value.removesuffix(b"+"))
        _pause("PM_MIDWAY_DOWN", key)
"""


# --- helpers ---------------------------------------------------------------------------


def _keys(n: int, value: str = "v") -> dict[bytes, bytes]:
    return {b"k:%04d" % i: f"{value}{i}".encode() for i in range(n)}


def _plus(items: dict[bytes, bytes]) -> dict[bytes, bytes]:
    return {k: v + b"+" for k, v in items.items()}


def _wrong(path: Path, expected: dict[Any, Any]) -> int:
    """Return how many keys differ from `expected` (missing or extra keys count too)."""
    data = contents(path)["default"]
    wrong: int = sum(data.get(k) != v for k, v in expected.items())
    return wrong + len(set(data) - set(expected))


def _migrations(root: Path, bodies: dict[str, str] | None = None) -> Path:
    folder = root / "migrations"
    folder.mkdir(parents=True, exist_ok=True)
    for mid, body in (bodies or {MID: BODY}).items():
        write_migration(folder, mid, body)
    return folder


def _project(
    root: Path, items: dict[Any, Any], body: str = BODY, name: str = "app.db"
) -> tuple[Path, Path]:
    """Return (database, migrations directory) under `root`, one migration MID."""
    return create_database(root / name, items), _migrations(root, {MID: body})


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pebble_migrate", *args]


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    return {**os.environ, **(extra or {})}


def _run(*args: Any, cwd: Path | None = None, env: dict[str, str] | None = None) -> Any:
    """Run the real CLI in a subprocess and return the CompletedProcess."""
    return subprocess.run(
        _cmd(*map(str, args)),
        cwd=cwd,
        env=_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _until_midway(
    *args: Any, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start a process (the CLI unless args start with the interpreter) and return once
    the migration printed "midway" and waits on stdin."""
    argv = [str(a) for a in args]
    proc = subprocess.Popen(
        argv if argv[0] == sys.executable else _cmd(*argv),
        cwd=cwd,
        env=_env(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "midway":
        proc.kill()
        out, err = proc.communicate(timeout=60)
        raise AssertionError(f"never reached midway: {line}{out}\n{err}")
    return proc


def _signal(proc: subprocess.Popen[str], signum: int = signal.SIGINT) -> tuple[int, str, str]:
    """Send `signum` to a process waiting midway, unblock it; return (code, stdout, stderr)."""
    assert proc.stdin is not None
    proc.send_signal(signum)
    proc.stdin.write("\n")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def _interrupt_up(db: Any, migrations: Path, key: str, *, cwd: Path | None = None) -> str:
    """Run `up` in a subprocess, SIGINT it at `key`; check it stopped with 130."""
    proc = _until_midway(
        "up",
        "-d",
        db,
        "-m",
        migrations,
        "--no-backup",
        "--chunk-records",
        "500",
        cwd=cwd,
        env={"PM_MIDWAY": key},
    )
    code, _, err = _signal(proc)
    assert code == 130, err
    return err


def _status(invoke: Invoke, db: Path) -> dict[str, Any]:
    result = invoke("status", "-d", str(db), "--json")
    assert result.exit_code == 0, result.output
    status: dict[str, Any] = json.loads(result.stdout)
    return status


def _state(path: Path) -> pm.State:
    db = rocksdict.Rdict(str(path), access_type=rocksdict.AccessType.read_only(False))
    try:
        return pm.read_state(db)
    finally:
        db.close()


def _startup(path: Path, migrations: Path, **options: Any) -> Any:
    opts = pm.default_startup_options()
    opts.run_migrations = True
    opts.registry = pm.load_migrations(migrations)
    for name, value in options.items():
        setattr(opts, name, value)
    db = rocksdict.Rdict(str(path))
    try:
        return pm.check_and_run_startup_migrations(db, path, opts)
    finally:
        db.close()


# --- 1. resume from another working directory ----------------------------------------


def test_resume_from_another_directory_reads_its_own_frozen_view(tmp_path: Path) -> None:
    migrations = _migrations(tmp_path)
    prod, staging, third = tmp_path / "prod", tmp_path / "staging", tmp_path / "third"
    third.mkdir()
    originals = {prod: _keys(3000, "prod"), staging: _keys(3000, "staging")}
    for where, items in originals.items():
        create_database(where / "app.db", items)
        _interrupt_up("app.db", migrations, "k:1000", cwd=where)

    resumed = {
        prod: _run("up", "-d", prod / "app.db", "-m", migrations, "--no-backup", cwd=staging),
        staging: _run("up", "-d", staging / "app.db", "-m", migrations, "--no-backup", cwd=third),
    }
    outcome = {
        where.name: (done.returncode, _wrong(where / "app.db", _plus(originals[where])))
        for where, done in resumed.items()
    }
    errors = {where.name: done.stderr for where, done in resumed.items()}
    assert outcome == {"prod": (0, 0), "staging": (0, 0)}, errors


def test_startup_api_resumes_from_another_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrations = _migrations(tmp_path)
    prod, elsewhere = tmp_path / "prod", tmp_path / "elsewhere"
    elsewhere.mkdir()
    original = _keys(3000, "prod")
    db = create_database(prod / "app.db", original)
    _interrupt_up("app.db", migrations, "k:1000", cwd=prod)
    monkeypatch.chdir(elsewhere)
    _startup(db.resolve(), migrations, handle_signals=False)
    assert contents(db)["default"] == _plus(original)


# --- 2. a copy, or a backup, of a database mid-migration -------------------------------


def test_copy_of_a_database_mid_migration_finishes_exactly(tmp_path: Path, invoke: Invoke) -> None:
    original = _keys(3000)
    db, migrations = _project(tmp_path, original)
    _interrupt_up(db, migrations, "k:1000")
    copy = tmp_path / "copy.db"
    shutil.copytree(db, copy, symlinks=True)  # cp -a of the database directory
    # The original goes on (and finishes) on its own; the copy must not depend on it.
    assert invoke("up", "-d", str(db), "-m", str(migrations), "--no-backup").exit_code == 0
    assert contents(db)["default"] == _plus(original)

    result = invoke("up", "-d", str(copy), "-m", str(migrations), "--no-backup")
    assert result.exit_code == 0, result.output
    assert contents(copy)["default"] == _plus(original)


def _backup_mid_migration(
    tmp_path: Path, invoke: Invoke
) -> tuple[Path, Path, str, dict[bytes, bytes]]:
    original = _keys(3000)
    db, migrations = _project(tmp_path, original)
    _interrupt_up(db, migrations, "k:1000")
    created = invoke("backup", "create", "-d", str(db), "--json")
    assert created.exit_code == 0, created.output
    return db, migrations, json.loads(created.stdout)["backup"]["id"], original


def test_backup_taken_mid_migration_restores_and_finishes_exactly(
    tmp_path: Path, invoke: Invoke
) -> None:
    db, migrations, backup_id, original = _backup_mid_migration(tmp_path, invoke)
    assert invoke("up", "-d", str(db), "-m", str(migrations), "--no-backup").exit_code == 0
    restored = invoke("backup", "restore", backup_id, "--force", "-d", str(db))
    assert restored.exit_code == 0, restored.output

    result = invoke("up", "-d", str(db), "-m", str(migrations), "--no-backup")
    assert result.exit_code == 0, result.output
    assert contents(db)["default"] == _plus(original)


def test_backup_list_shows_a_backup_holding_a_partly_applied_migration(
    tmp_path: Path, invoke: Invoke
) -> None:
    db, _, backup_id, _ = _backup_mid_migration(tmp_path, invoke)
    listed = invoke("backup", "list", "-d", str(db), "--json")
    assert listed.exit_code == 0, listed.output
    (entry,) = [b for b in json.loads(listed.stdout) if b["id"] == backup_id]
    assert entry.get("partial"), entry
    assert MID in entry["partial"], entry


# --- 3. a stale apply cursor survives a half-done rollback ---------------------------


def test_stale_apply_cursor_after_a_half_done_rollback_is_refused(
    tmp_path: Path, invoke: Invoke
) -> None:
    original = _keys(400)
    db, migrations = _project(tmp_path, original)
    where = ("-d", str(db), "-m", str(migrations), "--no-backup")
    failed = invoke("up", *where, "--chunk-records", "100", env={"PM_FAIL_AT": "k:0320"})
    assert failed.exit_code == 6, failed.output
    proc = _until_midway("down", "0", "--yes", *where, env={"PM_MIDWAY_DOWN": "k:0120"})
    code, _, err = _signal(proc)
    assert code == 130, err
    assert invoke("force-clean", "--yes", "-d", str(db)).exit_code == 0
    before = contents(db)["default"]

    refused = invoke("up", *where)
    assert refused.exit_code == 4, refused.output
    assert MID in refused.output and "down" in refused.output
    assert contents(db)["default"] == before
    assert invoke("status", "--check", "-d", str(db), "-m", str(migrations)).exit_code == 4

    assert invoke("down", "0", "--yes", *where).exit_code == 0
    assert contents(db)["default"] == original
    assert invoke("up", *where).exit_code == 0
    assert contents(db)["default"] == _plus(original)


# --- 4. a stop (or a corruption error) swallowed by the migration --------------------

SWALLOWING = """
import os
import sys


def up(ctx):
    try:
        for key, value in ctx.scan(prefix=b"k:"):
            ctx.put(key, value + b"+")
            if key == os.environ.get("PM_MIDWAY", "").encode():
                print("midway", flush=True)
                sys.stdin.readline()
    except Exception:
        pass
"""


def test_a_caught_stop_is_still_an_interruption(tmp_path: Path, invoke: Invoke) -> None:
    original = _keys(400)
    db, migrations = _project(tmp_path, original, SWALLOWING)
    proc = _until_midway(
        "up",
        "-d",
        db,
        "-m",
        migrations,
        "--no-backup",
        "--chunk-records",
        "50",
        env={"PM_MIDWAY": "k:0200"},
    )
    code, _, err = _signal(proc)
    status = _status(invoke, db)
    assert (code, status["status"], MID in status["applied"]) == (130, "migrating", False), err

    again = invoke("up", "-d", str(db), "-m", str(migrations), "--no-backup")
    assert again.exit_code == 0, again.output
    assert contents(db)["default"] == _plus(original)


def _corrupt_largest_sst(path: Path) -> None:
    db = rocksdict.Rdict(str(path))
    try:
        db.flush()
        db.compact_range(None, None)
    finally:
        db.close()
    largest = max(path.glob("*.sst"), key=lambda p: p.stat().st_size)
    middle = largest.stat().st_size // 2 // 4096 * 4096
    with largest.open("r+b") as handle:
        handle.seek(middle)
        handle.write(b"\0" * 4096)


def test_a_swallowed_corruption_error_fails_the_migration(tmp_path: Path, invoke: Invoke) -> None:
    items = {b"k:%05d" % i: os.urandom(60) for i in range(50_000)}
    db, migrations = _project(tmp_path, items, SWALLOWING)
    _corrupt_largest_sst(db)
    result = invoke("up", "-d", str(db), "-m", str(migrations), "--no-backup")
    status = _status(invoke, db)
    check = invoke("status", "--check", "-d", str(db), "-m", str(migrations))
    assert (result.exit_code, status["status"], MID in status["applied"]) == (6, "dirty", False), (
        result.output
    )
    assert check.exit_code != 0


# --- 5. sys.exit(0), async def and generators as up() -------------------------------


def test_sys_exit_zero_inside_up_is_a_failure(tmp_path: Path, invoke: Invoke) -> None:
    body = """
    import sys

    def up(ctx):
        for key, value in ctx.scan(prefix=b"k:"):
            ctx.put(key, value + b"+")
        sys.exit(0)
    """
    db, migrations = _project(tmp_path, _keys(50), body)
    result = _run("up", "-d", db, "-m", migrations, "--no-backup")
    status = _status(invoke, db)
    assert (result.returncode, status["status"], MID in status["applied"]) == (6, "dirty", False), (
        result.stderr
    )
    assert invoke("status", "--check", "-d", str(db), "-m", str(migrations)).exit_code == 4


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (
            """
            async def up(ctx):
                for key, value in ctx.scan(prefix=b"k:"):
                    ctx.put(key, value + b"+")
            """,
            ("coroutine", "async"),
        ),
        (
            """
            def up(ctx):
                for key, value in ctx.scan(prefix=b"k:"):
                    ctx.put(key, value + b"+")
                    yield key
            """,
            ("generator",),
        ),
    ],
    ids=["async", "generator"],
)
def test_an_up_that_does_not_run_when_called_is_refused_at_load(
    tmp_path: Path, invoke: Invoke, body: str, words: tuple[str, ...]
) -> None:
    db, migrations = _project(tmp_path, _keys(50), body)
    before = snapshot(db)
    result = invoke("up", "-d", str(db), "-m", str(migrations), "--no-backup")
    assert result.exit_code in (1, 2), result.output
    assert "Error:" in result.output and f"{MID}.py" in result.output
    assert any(word in result.output for word in words), result.output
    assert snapshot(db) == before


# --- 6. a signal after the last check of the last step -----------------------------

SIGNAL_AT_END = """
import os
import signal


def up(ctx):
    for key, value in ctx.scan(prefix=b"k:"):
        ctx.put(key, value + b"+")
    os.kill(os.getpid(), signal.SIGTERM)
"""


def test_signal_after_the_last_check_is_acted_upon(tmp_path: Path, invoke: Invoke) -> None:
    original = _keys(200)
    db, migrations = _project(tmp_path, original, SIGNAL_AT_END)
    result = _run("up", "-d", db, "-m", migrations, "--no-backup")
    status = _status(invoke, db)
    assert (result.returncode, status["status"], MID in status["applied"]) == (
        143,
        "clean",
        True,
    ), result.stderr
    assert contents(db)["default"] == _plus(original)


def test_signal_after_the_last_check_reaches_the_apps_handler_once(tmp_path: Path) -> None:
    db, migrations = _project(tmp_path, _keys(200), SIGNAL_AT_END)
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        # Raising MigrationInterrupted is fine; losing the signal is not.
        with contextlib.suppress(pm.MigrationInterrupted):
            _startup(db, migrations)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == [signal.SIGTERM]


# --- 7. up --json with nobody reading stdout -----------------------------------------


def test_up_json_with_stdout_closed_still_applies(tmp_path: Path, invoke: Invoke) -> None:
    original = _keys(200)
    db, migrations = _project(tmp_path, original)
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head -c0`: every write to stdout fails with EPIPE
    try:
        done = subprocess.run(
            _cmd("up", "--json", "-d", str(db), "-m", str(migrations), "--no-backup"),
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    status = _status(invoke, db)
    assert (done.returncode, status["status"], MID in status["applied"]) == (0, "clean", True), (
        done.stderr
    )
    assert contents(db)["default"] == _plus(original)


# --- 8. TypeError from a reporter, or from a pickled float key ----------------------


def _append(ctx: Any) -> None:
    for key, value in ctx.scan(prefix=b"k:"):
        ctx.put(key, value + b"+")


def test_a_reporter_raising_type_error_does_not_cut_the_scan_short(tmp_path: Path) -> None:
    original = _keys(100)
    db = create_database(tmp_path / "db", original)

    def reporter(event: pm.Event) -> None:
        if event.kind == "progress":
            raise TypeError("the reporter has a bug")

    registry = pm.Registry([pm.Migration(id=MID, up=_append)])
    options = pm.RunOptions(
        reporter=reporter, policy=pm.ChunkPolicy(records=10), handle_signals=False
    )
    pm.up(db, registry, options=options)
    assert MID in _state(db).applied
    assert contents(db)["default"] == _plus(original)


def test_pickle_mode_float_keys_scan_across_chunks(tmp_path: Path) -> None:
    original = {i + 0.5: f"v{i}" for i in range(100)}
    db = create_database(tmp_path / "db", original, raw=False)

    def up(ctx: Any) -> None:
        for key, value in ctx.scan():
            ctx.put(key, value + "+")

    registry = pm.Registry([pm.Migration(id=MID, up=up)])
    pm.up(db, registry, options=pm.RunOptions(policy=pm.ChunkPolicy(records=10)))
    assert MID in _state(db).applied
    assert contents(db)["default"] == {k: v + "+" for k, v in original.items()}


# --- 9. the disk fills while the database closes after the final commit ------------


def test_disk_full_at_close_after_the_final_commit_is_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Writes ~6 MiB: more than the 4 MiB ballast given back before the close, so flushing
    # the memtable at close cannot fit once the disk is full.
    big = {b"k:%04d" % i: b"v" for i in range(3000)}

    def grow(ctx: Any) -> None:
        for key, value in ctx.scan(prefix=b"k:"):
            ctx.put(key, value + b"+" + os.urandom(2000))

    with tmpfs(tmp_path / "small", "32m") as mount:
        db = create_database(mount / "db", big)
        filler = mount / "filler"

        def fill_the_disk(event: pm.Event) -> None:
            if event.kind == "step_done":  # after the final commit
                with filler.open("wb") as handle:
                    try:
                        while True:
                            handle.write(b"\0" * (1 << 20))
                    except OSError:
                        pass

        registry = pm.Registry([pm.Migration(id=MID, up=grow)])
        options = pm.RunOptions(reporter=fill_the_disk, handle_signals=False, check_space=False)
        logger = logging.getLogger("pebble_migrate")
        logger.addHandler(caplog.handler)  # the CLI's tests may have stopped propagation
        try:
            with caplog.at_level("WARNING", logger="pebble_migrate"):
                pm.up(db, registry, options=options)
        finally:
            logger.removeHandler(caplog.handler)
            filler.unlink(missing_ok=True)
        warned = " ".join(r.getMessage() for r in caplog.records)
        assert "everything was committed before" in warned
        assert "force-clean" not in warned  # no advice to redo what is done
        state = _state(db)
        assert (state.status, MID in state.applied) == (pm.Status.CLEAN, True)
        data = contents(db)["default"]
        assert all(data[k].startswith(b"v+") and len(data[k]) == 2002 for k in big)


# --- 10. rerun of a migration that later migrations build on ---------------------------

INDEX = """
def up(ctx):
    for key, value in ctx.scan(prefix=b"order:"):
        ctx.put(b"idx:" + key[len(b"order:"):], value)


def down(ctx):
    for key, _ in ctx.scan(prefix=b"idx:"):
        ctx.delete(key)
"""

RENAME = """
def up(ctx):
    for key, value in ctx.scan(prefix=b"order:"):
        ctx.delete(key)
        ctx.put(b"purchase:" + key[len(b"order:"):], value)


def down(ctx):
    for key, value in ctx.scan(prefix=b"purchase:"):
        ctx.delete(key)
        ctx.put(b"order:" + key[len(b"purchase:"):], value)
"""

A_ID, B_ID = "1700000000_index_orders", "1700100000_rename_orders"


def _orders_project(tmp_path: Path, invoke: Invoke) -> tuple[str, ...]:
    db = create_database(tmp_path / "db", {b"order:%03d" % i: b"o%d" % i for i in range(50)})
    migrations = _migrations(tmp_path, {A_ID: INDEX, B_ID: RENAME})
    where = ("-d", str(db), "-m", str(migrations), "--no-backup")
    assert invoke("up", *where).exit_code == 0
    return where


def test_rerun_with_later_migrations_applied_is_refused(tmp_path: Path, invoke: Invoke) -> None:
    where = _orders_project(tmp_path, invoke)
    before = snapshot(tmp_path / "db")
    result = invoke("rerun", A_ID, "--yes", *where)
    assert result.exit_code in (1, 2), result.output
    assert B_ID in result.output
    assert snapshot(tmp_path / "db") == before


def test_rerun_with_later_migrations_applied_proceeds_with_allow_later(
    tmp_path: Path, invoke: Invoke
) -> None:
    where = _orders_project(tmp_path, invoke)
    result = invoke("rerun", A_ID, "--allow-later", "--yes", *where)
    assert result.exit_code == 0, result.output


def test_rerun_dry_run_names_the_later_migrations(tmp_path: Path, invoke: Invoke) -> None:
    where = _orders_project(tmp_path, invoke)
    result = invoke("rerun", A_ID, "--dry-run", "--allow-later", *where)
    assert B_ID in result.output, result.output


# --- 11. status --check with a migrations directory that does not exist -------------


@pytest.mark.parametrize("source", ["env", "pyproject"])
def test_status_check_with_a_missing_configured_migrations_directory(
    tmp_path: Path, invoke: Invoke, db_path: Path, source: str
) -> None:
    env = None
    if source == "env":
        env = {"PEBBLE_MIGRATE_MIGRATIONS": str(tmp_path / "nope")}
    else:
        (tmp_path / "pyproject.toml").write_text('[tool.pebble-migrate]\nmigrations = "nope"\n')
    result = invoke("status", "--check", "-d", str(db_path), env=env)
    assert result.exit_code == 2, result.output
    assert "Error:" in result.output and "nope" in result.output


# --- 12. the hint after an interrupted rerun ---------------------------------------


def test_the_command_suggested_after_an_interrupted_rerun_finishes_it(
    tmp_path: Path, invoke: Invoke
) -> None:
    original = _keys(300)
    db, migrations = _project(tmp_path, original)
    where = ["-d", str(db), "-m", str(migrations), "--no-backup"]
    assert invoke("up", *where).exit_code == 0
    proc = _until_midway("rerun", MID, "--yes", *where, env={"PM_MIDWAY": "k:0150"})
    code, _, err = _signal(proc)
    assert code == 130, err
    hint = re.search(r"Run `([^`]+)`", err)
    assert hint is not None, err
    suggested = shlex.split(hint.group(1))
    assert suggested[0] == "pebble-migrate", hint.group(0)
    args = [*suggested[1:], *where, *(["--yes"] if suggested[1] == "rerun" else [])]

    result = invoke(*args)
    assert result.exit_code == 0, f"{hint.group(0)}\n{result.output}"
    assert contents(db)["default"] == _plus(original)


# --- 13. asyncio: one SIGTERM must reach the app once --------------------------------

ASYNC_APP = """
import asyncio
import signal
import sys

import rocksdict

import pebble_migrate as pm

calls = []


async def main():
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: calls.append(signal.SIGTERM))
    opts = pm.default_startup_options()
    opts.run_migrations = True
    opts.registry = pm.load_migrations(sys.argv[2])
    db = rocksdict.Rdict(sys.argv[1])
    try:
        pm.check_and_run_startup_migrations(db, sys.argv[1], opts)
    except pm.MigrationInterrupted:
        pass
    finally:
        db.close()
    for _ in range(10):
        await asyncio.sleep(0)
    print("handler ran", len(calls), flush=True)


asyncio.run(main())
"""


def test_asyncio_app_gets_one_sigterm_once(tmp_path: Path) -> None:
    db, migrations = _project(tmp_path, _keys(200))
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(ASYNC_APP))
    proc = _until_midway(sys.executable, app, db, migrations, env={"PM_MIDWAY": "k:0100"})
    code, out, err = _signal(proc, signal.SIGTERM)
    assert code == 0, err
    assert out.strip() == "handler ran 1", err
