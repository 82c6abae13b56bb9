"""Regression tests for what an outside review found after issue 7's first fixes.

Each test reproduces one finding (numbered as in the review) and asserts the fix.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import pebble_migrate as pm
from pebble_migrate import commands, views
from pebble_migrate.context import ChunkPolicy
from pebble_migrate.testing import contents, create_database
from tests.conftest import Invoke, migration, registry_of, snapshot, write_migration
from tests.test_issue7_regressions import (
    MID,
    _cmd,
    _migrations,
    _run,
    _signal,
    _state,
    _until_midway,
)

KEYS = {b"k:%03d" % i: b"v" for i in range(300)}
PLUS = {k: v + b"+" for k, v in KEYS.items()}


def _opts(records: int = 10, **kwargs: Any) -> commands.RunOptions:
    return commands.RunOptions(policy=ChunkPolicy(records), handle_signals=False, **kwargs)


def _failing_at(stop: bytes, name: str = "default") -> Any:
    def up(ctx: Any) -> None:
        for key, value in ctx.scan(prefix=b"k:", name=name):
            if key == stop:
                raise RuntimeError(f"failing at {key!r}")
            ctx.put(key, value + b"+")

    return up


def _plus(name: str = "default", prefix: bytes = b"k:") -> Any:
    def up(ctx: Any) -> None:
        for key, value in ctx.scan(prefix=prefix, name=name):
            ctx.put(key, value + b"+")

    return up


def _minus(ctx: Any) -> None:
    reached = ctx.partial.get("default") if ctx.partial is not None else None
    for key, value in ctx.scan(prefix=b"k:"):
        if ctx.partial is not None and (reached is None or key > reached):
            break
        ctx.put(key, value[:-1])


# --- 01: a renamed scan between a failure and the retry --------------------------------


def test_01_a_renamed_scan_is_refused_before_it_commits(tmp_path: Path) -> None:
    db = create_database(tmp_path / "db", KEYS)
    with pytest.raises(pm.MigrationFailed):
        commands.up(db, registry_of(migration(MID, up=_failing_at(b"k:150"))), options=_opts())
    pm.force_clean(db)
    before = contents(db)["default"]
    with pytest.raises(pm.MigrationFailed) as info:
        commands.up(db, registry_of(migration(MID, up=_plus("users"))), options=_opts())
    assert isinstance(info.value.cause, pm.CodeChanged)
    assert "scan 'users' starts while scan 'default'" in str(info.value)
    assert "Put the code of" in (info.value.hint or "")
    assert contents(db)["default"] == before  # nothing processed twice
    pm.force_clean(db)
    commands.up(db, registry_of(migration(MID, up=_plus())), options=_opts())
    assert contents(db)["default"] == PLUS


# --- 02: a lower-version migration merged while one is left halfway ---------------------


def test_02_the_migration_left_halfway_finishes_before_a_lower_one(tmp_path: Path) -> None:
    db = create_database(tmp_path / "db", KEYS)
    tag = "1700100000_tag"
    with pytest.raises(pm.MigrationFailed):
        commands.up(db, registry_of(migration(tag, up=_failing_at(b"k:100"))), options=_opts())
    pm.force_clean(db)

    def rename(ctx: Any) -> None:
        for key, value in ctx.scan(prefix=b"k:"):
            ctx.put(b"j:" + key[2:], value)
            ctx.delete(key)

    reg = registry_of(migration("1700050000_rename", up=rename), migration(tag, up=_plus()))
    report = commands.up(db, reg, options=_opts()).report
    assert report is not None
    assert [s.id for s in report.steps] == [tag, "1700050000_rename"]
    assert contents(db)["default"] == {b"j:" + k[2:]: v for k, v in PLUS.items()}


# --- 03: a second signal swallowed by a bare except in the loop body ------------------

BARE = """
import os, signal, sys

def up(ctx):
    for key, value in ctx.scan(prefix=b"k:"):
        try:
            if key == b"k:040":
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)  # the second lands in our own code
            ctx.put(key, value + b"+")
        except:  # noqa: E722 - skip a bad record, as migrations do
            continue
"""


def test_03_a_swallowed_second_signal_commits_nothing_more(tmp_path: Path) -> None:
    db = create_database(tmp_path / "db", KEYS)
    migrations = _migrations(tmp_path, {MID: BARE})
    first = _run("up", "-d", db, "-m", migrations, "--no-backup", "--chunk-records", "10")
    assert first.returncode == 130, first.stderr
    assert "at once on a second SIGINT" in first.stderr
    write_migration(migrations, MID, _PLUS_FILE)
    again = _run("up", "-d", db, "-m", migrations, "--no-backup")
    assert again.returncode == 0, again.stderr
    assert contents(db)["default"] == PLUS  # k:040 migrated, once


_PLUS_FILE = """
def up(ctx):
    for key, value in ctx.scan(prefix=b"k:"):
        ctx.put(key, value + b"+")


def down(ctx):
    for key, value in ctx.scan(prefix=b"k:"):
        ctx.put(key, value[:-1])
"""


# --- 04: a compressed backup taken mid-migration -----------------------------------------


def test_04_a_compressed_backup_mid_migration_restores_and_finishes(
    tmp_path: Path, invoke: Invoke
) -> None:
    db = create_database(tmp_path / "db", KEYS)
    with pytest.raises(pm.MigrationFailed):
        commands.up(db, registry_of(migration(MID, up=_failing_at(b"k:150"))), options=_opts())
    info = pm.create_backup(db, compress=True)
    assert info.archive and MID in info.partial
    assert invoke("backup", "verify", info.id, "-d", str(db)).exit_code == 0
    restored = invoke("backup", "restore", info.id, "-d", str(db), "--force")
    assert restored.exit_code == 0, restored.stderr
    pm.force_clean(db)
    commands.up(db, registry_of(migration(MID, up=_plus())), options=_opts())
    assert contents(db)["default"] == PLUS


# --- 05, 06: a validate or a migration that ends the process ---------------------------


def test_05_validate_calling_sys_exit_fails_the_migration(tmp_path: Path) -> None:
    db = create_database(tmp_path / "db", KEYS)

    def leaves(ctx: Any) -> None:
        raise SystemExit(0)

    with pytest.raises(pm.MigrationFailed) as info:
        commands.up(db, registry_of(migration(MID, up=_plus(), validate=leaves)), options=_opts())
    assert "validate() called sys.exit(0)" in str(info.value)
    assert _state(db).status is pm.Status.DIRTY


def test_06_os_exit_in_a_migration_run_by_the_cli_is_a_failure(tmp_path: Path) -> None:
    db = create_database(tmp_path / "db", KEYS)
    body = """
    import os

    def up(ctx):
        for key, value in ctx.scan(prefix=b"k:"):
            ctx.put(key, value + b"+")
            if key == b"k:150":
                os._exit(0)
    """
    migrations = _migrations(tmp_path, {MID: textwrap.dedent(body)})
    done = _run("up", "-d", db, "-m", migrations, "--no-backup", "--chunk-records", "10")
    assert done.returncode == 6, done.stderr
    assert "the migration called os._exit(0)" in done.stderr
    check = _run("status", "--check", "-d", db, "-m", migrations)
    assert check.returncode == 4


# --- 07, 08, 09: hints when a resume cannot be exact ---------------------------------------


def test_07_an_edited_scan_range_names_the_safe_ways_out(tmp_path: Path) -> None:
    db = create_database(tmp_path / "db", KEYS)
    commands.up(db, registry_of(), options=_opts())
    backup = pm.create_backup(db, description="before")
    with pytest.raises(pm.MigrationFailed):
        commands.up(db, registry_of(migration(MID, up=_failing_at(b"k:150"))), options=_opts())
    pm.force_clean(db)
    before = contents(db)["default"]
    with pytest.raises(pm.MigrationFailed) as info:
        commands.up(db, registry_of(migration(MID, up=_plus(prefix=b"k:0"))), options=_opts())
    hint = info.value.hint or ""
    assert "covers a different range" in str(info.value)
    assert f"backup restore {backup.id} --force" in hint
    assert "`pebble-migrate force-clean`, then `pebble-migrate up --from-start`" in hint
    assert contents(db)["default"] == before


def _interrupted_up(db: Path) -> None:
    """Leave MID partly applied: failed at k:150, then force-cleaned."""
    with pytest.raises(pm.MigrationFailed):
        commands.up(db, registry_of(migration(MID, up=_failing_at(b"k:150"))), options=_opts())
    pm.force_clean(db)


def test_08_a_shared_backup_directory_never_names_another_databases_backup(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "backups"
    prod = create_database(tmp_path / "prod", KEYS)
    staging = create_database(tmp_path / "staging", KEYS)
    for db in (prod, staging):
        commands.up(db, registry_of(), options=_opts())
    ours = pm.create_backup(prod, backup_dir=shared)
    theirs = pm.create_backup(staging, backup_dir=shared)
    _interrupted_up(prod)
    shutil.rmtree(views.view_path(prod, MID, "apply", "default"))
    with pytest.raises(pm.NotCleanError) as info:
        commands.up(prod, registry_of(migration(MID, up=_plus())), options=_opts(backup_dir=shared))
    assert theirs.id != ours.id
    assert f"restore {ours.id} " in (info.value.hint or "")
    assert theirs.id not in (info.value.hint or "")


def test_09_a_damaged_view_is_refused_as_unusable_not_as_corruption(tmp_path: Path) -> None:
    db = create_database(tmp_path / "db", KEYS)
    _interrupted_up(db)
    view = views.view_path(db, MID, "apply", "default")
    for manifest in view.glob("MANIFEST-*"):
        manifest.write_bytes(manifest.read_bytes()[:10])
    before = snapshot(db)
    with pytest.raises(pm.NotCleanError) as info:
        commands.up(db, registry_of(migration(MID, up=_plus())), options=_opts())
    assert "its frozen view is unusable (it does not open" in str(info.value)
    assert "up --from-start" in (info.value.hint or "")
    assert snapshot(db) == before


# --- 10, 11, 12: ways out of an interrupted rollback or rerun ---------------------------


def test_10_rerun_finishes_a_rollback_left_halfway_then_applies(tmp_path: Path) -> None:
    db = create_database(tmp_path / "db", KEYS)
    with pytest.raises(pm.MigrationFailed):
        commands.up(db, registry_of(migration(MID, up=_failing_at(b"k:150"))), options=_opts())

    def minus_stopping(ctx: Any) -> None:
        reached = ctx.partial.get("default") if ctx.partial is not None else None
        for key, value in ctx.scan(prefix=b"k:"):
            if key == b"k:060":
                raise KeyboardInterrupt
            if ctx.partial is not None and (reached is None or key > reached):
                break
            ctx.put(key, value[:-1])

    with pytest.raises(KeyboardInterrupt):
        commands.down(db, registry_of(migration(MID, up=_plus(), down=minus_stopping)), "0")
    reg = registry_of(migration(MID, up=_plus(), down=_minus))
    commands.rerun(db, reg, MID, options=_opts())
    assert contents(db)["default"] == PLUS
    assert MID in _state(db).applied


def test_11_the_hint_after_a_rerun_stopped_between_its_steps_works(tmp_path: Path) -> None:
    db = create_database(tmp_path / "db", KEYS)
    migrations = _migrations(tmp_path, {MID: _PLUS_FILE})
    assert _run("up", "-d", db, "-m", migrations, "--no-backup").returncode == 0
    slow_down = _PLUS_FILE.replace(
        "        ctx.put(key, value[:-1])\n",
        "        ctx.put(key, value[:-1])\n    print('midway', flush=True)\n"
        "    __import__('sys').stdin.readline()\n",
    )
    write_migration(migrations, MID, slow_down)
    proc = _until_midway("rerun", MID, "--yes", "-d", db, "-m", migrations, "--no-backup")
    code, _, err = _signal(proc)
    assert code == 130, err
    hint = next(line for line in err.splitlines() if "Run `" in line)
    command = hint.split("`")[1].split()[1:]
    assert command == ["up", MID.split("_")[0]]
    done = _run(*command, "-d", db, "-m", migrations, "--no-backup")
    assert done.returncode == 0, done.stderr
    assert contents(db)["default"] == PLUS


def test_12_force_clean_after_an_interrupted_rollback_points_at_down(
    tmp_path: Path, invoke: Invoke
) -> None:
    db = create_database(tmp_path / "db", KEYS)
    reg = registry_of(migration(MID, up=_plus(), down=_minus))
    commands.up(db, reg, options=_opts())

    def stopping(ctx: Any) -> None:
        for key, value in ctx.scan(prefix=b"k:"):
            if key == b"k:060":
                raise KeyboardInterrupt
            ctx.put(key, value[:-1])

    with pytest.raises(KeyboardInterrupt):
        commands.down(db, registry_of(migration(MID, up=_plus(), down=stopping)), "0")
    said = invoke("force-clean", "-d", str(db), "--yes")
    assert said.exit_code == 0, said.stderr
    assert f"The rollback of {MID} is still halfway" in said.stdout
    assert "finish it with `down 0`" in said.stdout  # the version it was rolling back to


# --- 13: pickle-mode bounds -------------------------------------------------------------


def test_13_numeric_bounds_in_a_pickle_mode_database_are_refused_clearly(
    tmp_path: Path,
) -> None:
    db = create_database(tmp_path / "db", {1.0: "v", 2.0: "v", -5.0: "v"}, raw=False)

    def prices(ctx: Any) -> None:
        for key, value in ctx.scan(start=0.0, end=1000.0):
            ctx.put(key, value + "+")

    before = contents(db)["default"]
    with pytest.raises(pm.MigrationFailed) as info:
        commands.up(db, registry_of(migration(MID, up=prices)), options=_opts())
    assert "bounds of type float are not supported in a pickle-mode database" in str(info.value)
    assert "stopped early" not in str(info.value)
    assert contents(db)["default"] == before


def test_13_str_bounds_in_a_pickle_mode_database_stay_within_str_keys(tmp_path: Path) -> None:
    items = {"a": "v", "m": "v", "z": "v", b"b": "v", 2: "v", -2.5: "v", True: "v"}
    db = create_database(tmp_path / "db", items, raw=False)

    def tag(ctx: Any) -> None:
        for key, value in ctx.scan(start="a", end="n"):
            ctx.put(key, value + "+")
        for key, value in ctx.scan(end="b", name="below"):
            ctx.put(key, value + "!")

    commands.up(db, registry_of(migration(MID, up=tag)), options=_opts(records=1))
    data = contents(db)["default"]
    assert data == {**items, "a": "v+!", "m": "v+"}


# --- 14, 15, 16, 17: output and messages ---------------------------------------------------


def test_14_a_closed_stdout_still_applies(tmp_path: Path) -> None:
    db = create_database(tmp_path / "db", KEYS)
    migrations = _migrations(tmp_path, {MID: _PLUS_FILE})
    done = subprocess.run(
        _cmd("up", "-d", str(db), "-m", str(migrations), "--no-backup"),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.close(1),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert contents(db)["default"] == PLUS


def test_16_an_async_migration_is_not_called_an_invalid_id(
    tmp_path: Path, invoke: Invoke, migrations_dir: Path
) -> None:
    db = create_database(tmp_path / "db", KEYS)
    write_migration(migrations_dir, MID, "async def up(ctx):\n    pass\n")
    refused = invoke("up", "-d", str(db))
    assert refused.exit_code == 1
    assert f"migration {MID} (" in refused.stderr
    assert "cannot be run: `up` is an `async def` coroutine function" in refused.stderr
    assert "invalid migration id" not in refused.stderr
    assert ".." not in refused.stderr.replace("...", "")


def test_17_status_names_the_migration_instead_of_m(tmp_path: Path, invoke: Invoke) -> None:
    db = create_database(tmp_path / "db", KEYS)
    migrations = _migrations(tmp_path, {MID: _PLUS_FILE})
    _interrupted_up(db)
    shown = invoke("status", "-d", str(db), "-m", str(migrations))
    line = next(x for x in shown.stdout.splitlines() if x.startswith("Left halfway"))
    assert f"(up: continues {MID} after its last committed key" in line
    data = json.loads(invoke("status", "-d", str(db), "-m", str(migrations), "--json").stdout)
    assert data["up_would"].startswith(f"continues {MID} ")
    assert " M " not in data["up_would"]


def test_signal_handling_stays_intact_for_the_rest_of_the_suite() -> None:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert sys.stdout is not None
