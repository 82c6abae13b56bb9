"""Every CLI command on real databases: output, exit codes, JSON, prompts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pebble_migrate.cli import options
from pebble_migrate.testing import contents, create_database
from tests.conftest import Invoke, snapshot, write_migration

A = '''
"""Add users."""
def up(ctx):
    for i in range(3):
        ctx.put(b"user:%d" % i, b"name%d" % i)
def down(ctx):
    for i in range(3):
        ctx.delete(b"user:%d" % i)
'''
B = '''
"""Uppercase names."""
dependencies = ["1700000000_add_users"]
def up(ctx):
    for key, value in ctx.scan(prefix=b"user:"):
        ctx.put(key, value.upper())
def down(ctx):
    for key, value in ctx.scan(prefix=b"user:"):
        ctx.put(key, value.lower())
def validate(ctx):
    return [f"{k!r} not upper" for k, v in ctx.scan(prefix=b"user:") if v != v.upper()]
'''


@pytest.fixture
def project(tmp_path: Path, migrations_dir: Path) -> Path:
    write_migration(migrations_dir, "1700000000_add_users", A)
    write_migration(migrations_dir, "1700100000_upper", B)
    create_database(tmp_path / "db", {b"seed": b"1"})
    return tmp_path


def test_status_before_and_after_up(invoke: Invoke, project: Path) -> None:
    result = invoke("status", "-d", "db")
    assert result.exit_code == 0
    assert "not initialized" in result.stdout
    assert "0 applied, 2 pending, 2 known" in result.stdout
    assert "1700000000_add_users" in result.stdout
    result = invoke("up", "-d", "db")
    assert result.exit_code == 0, result.stderr
    assert "Done: 2 step(s); version 0 -> 1700100000 (2023-11-16 02:00:00 UTC)" in result.stdout
    result = invoke("status", "-d", "db")
    assert "1700100000 (2023-11-16 02:00:00 UTC)" in result.stdout
    assert "clean" in result.stdout
    assert "2 applied, 0 pending, 2 known" in result.stdout
    assert "Recent history" in result.stdout
    assert contents(project / "db")["default"][b"user:1"] == b"NAME1"


def test_options_before_or_after_the_command(invoke: Invoke, project: Path) -> None:
    first = invoke("-d", "db", "-m", "migrations", "--json", "status")
    second = invoke("status", "--json", "-m", "migrations", "-d", "db")
    assert first.exit_code == second.exit_code == 0
    assert json.loads(first.stdout) == json.loads(second.stdout)


def test_database_from_environment_and_pyproject(invoke: Invoke, project: Path) -> None:
    result = invoke("status", "--json", env={"PEBBLE_MIGRATE_DATABASE": "db"})
    assert json.loads(result.stdout)["database"] == str(project.resolve() / "db")
    (project / "pyproject.toml").write_text(
        '[tool.pebble-migrate]\ndatabase = "db"\nmigrations = "migrations"\n'
    )
    result = invoke("status", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["database"].endswith("/db")
    assert json.loads(result.stdout)["pending"] == ["1700000000_add_users", "1700100000_upper"]


def test_status_json_is_the_only_thing_on_stdout(invoke: Invoke, project: Path) -> None:
    invoke("up", "-d", "db")
    data = json.loads(invoke("status", "-d", "db", "--json").stdout)
    assert data["status"] == "clean"
    assert data["current_version"] == 1700100000
    assert data["current_version_time"] == "2023-11-16 02:00:00 UTC"
    assert data["counts"] == {"applied": 2, "pending": 0, "known": 2}
    assert [h["kind"] for h in data["history"]] == ["apply", "apply"]


def test_status_check_exit_codes(invoke: Invoke, project: Path, migrations_dir: Path) -> None:
    assert invoke("status", "-d", "db", "--check").exit_code == 3
    invoke("up", "-d", "db")
    assert invoke("status", "-d", "db", "--check").exit_code == 0
    write_migration(migrations_dir, "1700200000_boom", "def up(ctx):\n    raise ValueError('x')\n")
    write_migration(migrations_dir, "1700300000_later", "def up(ctx):\n    pass\n")
    assert invoke("up", "-d", "db").exit_code == 6
    assert invoke("status", "-d", "db", "--check").exit_code == 4  # not clean wins over pending


def test_up_dry_run_prints_the_plan_and_touches_nothing(invoke: Invoke, project: Path) -> None:
    before = snapshot(project / "db")
    result = invoke("up", "-d", "db", "--dry-run")
    assert result.exit_code == 0
    assert "1. apply    1700000000_add_users" in result.stdout
    assert "2. apply    1700100000_upper" in result.stdout
    assert "nothing was changed" in result.stdout
    assert snapshot(project / "db") == before
    assert not (project / "db.backups").exists()


def test_up_json_streams_events_then_result(invoke: Invoke, project: Path) -> None:
    result = invoke("up", "-d", "db", "--json", "--no-backup")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[-1]["result"]["to_version"] == 1700100000
    assert {"step_start", "step_done", "progress"} <= {x.get("event") for x in lines}


def test_up_asks_on_a_terminal(
    invoke: Invoke, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(options, "is_terminal", lambda: True)
    before = snapshot(project / "db")
    result = invoke("up", "-d", "db", input="n\n")
    assert result.exit_code == 1
    assert "Apply 2 migration(s)" in result.stderr
    assert "aborted; nothing was changed" in result.stderr
    assert snapshot(project / "db") == before
    result = invoke("up", "-d", "db", input="y\n")
    assert result.exit_code == 0
    assert "Done: 2 step(s)" in result.stdout


@pytest.mark.parametrize(
    "args",
    [["down", "0"], ["rerun", "1700100000_upper"], ["force-clean"], ["repair"]],
)
def test_destructive_commands_refuse_without_terminal_or_yes(
    invoke: Invoke, project: Path, args: list[str]
) -> None:
    invoke("up", "-d", "db")
    if args == ["force-clean"]:
        write_migration(
            project / "migrations", "1700200000_boom", "def up(ctx):\n    raise OSError\n"
        )
        invoke("up", "-d", "db")
    if args == ["repair"]:
        _drop_history_of(project / "db")
    before = snapshot(project / "db")
    result = invoke(*args, "-d", "db")
    assert result.exit_code == 2
    assert "no terminal to ask on" in result.stderr
    assert "--yes" in result.stderr
    assert snapshot(project / "db") == before
    result = invoke(*args, "-d", "db", "--yes")
    assert result.exit_code == 0, result.stderr
    assert snapshot(project / "db") != before


def test_down_then_history_and_validate(invoke: Invoke, project: Path) -> None:
    invoke("up", "-d", "db")
    result = invoke("validate", "-d", "db")
    assert result.exit_code == 0
    assert "Valid: 8 checks passed." in result.stdout
    result = invoke("down", "1700000000", "-d", "db", "--yes")
    assert result.exit_code == 0
    assert "version 1700100000 -> 1700000000" in result.stdout
    assert contents(project / "db")["default"][b"user:1"] == b"name1"
    result = invoke("history", "-d", "db")
    assert result.stdout.count("apply") == 2 and "rollback" in result.stdout
    result = invoke("history", "-d", "db", "--json", "--limit", "1")
    assert [r["kind"] for r in json.loads(result.stdout)["history"]] == ["rollback"]


def _validate_after_damage(invoke: Invoke, project: Path) -> Any:
    """Apply everything, break what the upper migration validates, run `validate -v`."""
    invoke("up", "-d", "db")
    import rocksdict

    db = rocksdict.Rdict(str(project / "db"))
    db[b"user:1"] = b"lower"
    db.close()
    return invoke("validate", "-d", "db", "--verbose")


def test_validate_failure_exits_7(invoke: Invoke, project: Path) -> None:
    result = _validate_after_damage(invoke, project)
    assert result.exit_code == 7
    assert "FAIL validate 1700100000_upper: b'user:1' not upper" in result.stdout
    assert "ok   status" in result.stdout
    assert "Error: validation found 1 problem(s)" in result.stderr


def test_rerun(invoke: Invoke, project: Path) -> None:
    invoke("up", "-d", "db")
    result = invoke("rerun", "1700100000_upper", "-d", "db", "--yes")
    assert result.exit_code == 0
    kinds = [
        r["kind"] for r in json.loads(invoke("history", "-d", "db", "--json").stdout)["history"]
    ]
    assert kinds == ["apply", "apply", "rollback", "rerun"]


def test_force_clean_then_up(invoke: Invoke, project: Path) -> None:
    write_migration(
        project / "migrations",
        "1700200000_flaky",
        """
        import os
        def up(ctx):
            if not os.environ.get("FIXED"):
                raise RuntimeError("not yet")
            ctx.put(b"flaky", b"done")
    """,
    )
    result = invoke("up", "-d", "db")
    assert result.exit_code == 6
    assert "Error: migration 1700200000_flaky failed: RuntimeError: not yet" in result.stderr
    assert "Traceback" not in result.stderr
    status = json.loads(invoke("status", "-d", "db", "--json").stdout)
    assert status["status"] == "dirty" and status["last_error"] == "RuntimeError: not yet"
    assert invoke("force-clean", "-d", "db", "--yes").exit_code == 0
    assert json.loads(invoke("status", "-d", "db", "--json").stdout)["pending"] == [
        "1700200000_flaky"
    ]
    assert invoke("up", "-d", "db", env={"FIXED": "1"}).exit_code == 0
    assert contents(project / "db")["default"][b"flaky"] == b"done"


def test_verbose_error_shows_traceback(invoke: Invoke, project: Path) -> None:
    write_migration(project / "migrations", "1700200000_boom", "def up(ctx):\n    1/0\n")
    result = invoke("up", "-d", "db", "-v")
    assert result.exit_code == 6
    assert "Traceback" in result.stderr and "ZeroDivisionError" in result.stderr


def test_create_writes_a_loadable_migration(invoke: Invoke, project: Path) -> None:
    result = invoke("create", "add_email_index")
    assert result.exit_code == 0
    created = sorted((project / "migrations").glob("*_add_email_index.py"))
    assert len(created) == 1
    assert (
        f"Created {created[0].relative_to(project)}" in result.stdout or "Created" in result.stdout
    )
    second = invoke("create", "add_email_index")
    assert second.exit_code == 0
    assert len(list((project / "migrations").glob("*_add_email_index.py"))) == 2
    assert invoke("status", "-d", "db").exit_code == 0  # both load, versions are distinct
    bad = invoke("create", "bad-name!")
    assert bad.exit_code == 2
    assert "invalid migration name 'bad-name!'" in bad.stderr


def test_up_create_makes_a_new_raw_database(invoke: Invoke, project: Path) -> None:
    result = invoke("up", "-d", "fresh", "--create")
    assert result.exit_code == 0, result.stderr
    status = json.loads(invoke("status", "-d", "fresh", "--json").stdout)
    assert status["current_version"] == 1700100000  # empty: stamped at latest
    assert status["history"][0]["note"] == "skipped: fresh database"


def test_up_from_start_asks_and_needs_yes_without_a_terminal(invoke: Invoke, project: Path) -> None:
    write_migration(
        project / "migrations",
        "1700200000_plus",
        """
        import os
        def up(ctx):
            for key, _ in ctx.scan(prefix=b"user:"):
                if key == b"user:1" and os.environ.get("FAIL"):
                    raise RuntimeError("stop")
                ctx.put(key, ctx.get(key) + b"+")
    """,
    )
    assert invoke("up", "-d", "db", "--chunk-records", "1", env={"FAIL": "1"}).exit_code == 6
    assert invoke("force-clean", "-d", "db", "--yes").exit_code == 0
    before = snapshot(project / "db")
    refused = invoke("up", "-d", "db", "--from-start")
    assert refused.exit_code == 2
    assert "not idempotent" in refused.stderr and "--yes" in refused.stderr
    assert snapshot(project / "db") == before
    done = invoke("up", "-d", "db", "--from-start", "--yes")
    assert done.exit_code == 0, done.stderr
    assert "discarded the progress of 1700200000_plus" in done.stderr
    data = contents(project / "db")["default"]
    assert data[b"user:0"] == b"NAME0++"  # committed before the failure, then again
    assert data[b"user:1"] == b"NAME1+"


def test_progress_lines_without_a_terminal(invoke: Invoke, project: Path) -> None:
    result = invoke("up", "-d", "db", "--no-backup")
    assert "1700100000_upper: 3 of ~3 keys" in result.stderr


def test_maintenance_commands_honour_dry_run(invoke: Invoke, project: Path) -> None:
    write_migration(project / "migrations", "1700200000_boom", "def up(ctx):\n    raise OSError\n")
    invoke("up", "-d", "db")
    before = snapshot(project / "db")
    result = invoke("force-clean", "-d", "db", "--dry-run")
    assert result.exit_code == 0
    assert "Would set the status dirty (1700200000_boom) -> clean." in result.stdout
    _drop_history_of(project / "db", "1700000000_add_users")
    before = snapshot(project / "db")
    result = invoke("repair", "-d", "db", "-n", "--json")
    assert json.loads(result.stdout) == {
        "added_history": ["1700000000_add_users"],
        "version_fixed": None,
        "dry_run": True,
    }
    result = invoke("backup", "create", "-d", "db", "--dry-run")
    where = project.resolve()
    assert f"Would back up {where / 'db'} into {where / 'db.backups'}" in result.stdout
    assert snapshot(project / "db") == before
    backups_before = sorted(p.name for p in (project / "db.backups").iterdir())
    assert invoke("backup", "create", "-d", "db", "--dry-run").exit_code == 0
    assert sorted(p.name for p in (project / "db.backups").iterdir()) == backups_before
    result = invoke("create", "new_thing", "--dry-run")
    assert "Would create migrations/" in result.stdout
    assert not list((project / "migrations").glob("*_new_thing.py"))


def _drop_history_of(path: Path, migration_id: str | None = None) -> None:
    """Delete the history records of one migration (of all, by default)."""
    import rocksdict

    from pebble_migrate.store import STATE_CF

    db = rocksdict.Rdict(str(path))
    cf = db.get_column_family(STATE_CF)
    for key, value in list(cf.items(from_key=b"history/")):
        if key.startswith(b"history/") and migration_id in (None, json.loads(value)["id"]):
            del cf[key]
    del cf
    db.close()


def test_up_dry_run_on_a_fresh_empty_database_says_it_would_stamp(
    invoke: Invoke, project: Path
) -> None:
    create_database(project / "empty")
    before = snapshot(project / "empty")
    result = invoke("up", "-d", "empty", "--dry-run")
    assert result.exit_code == 0
    assert "Would do: fresh empty database: stamped at version 1700100000" in result.stdout
    assert snapshot(project / "empty") == before
    assert "Fresh empty database: stamped" in invoke("up", "-d", "empty").stdout


def test_down_from_dirty_with_nothing_to_undo_marks_it_clean(invoke: Invoke, project: Path) -> None:
    write_migration(project / "migrations", "1700200000_boom", "def up(ctx):\n    raise OSError\n")
    invoke("up", "-d", "db")
    result = invoke("down", "1700100000", "-d", "db", "--yes")
    assert result.exit_code == 0, result.stderr
    assert "1700200000_boom failed and left no writes to undo; status dirty -> clean" in (
        result.stdout
    )
    status = json.loads(invoke("status", "-d", "db", "--json").stdout)
    assert (status["status"], status["current_version"]) == ("clean", 1700100000)
    assert status["history"][-1]["kind"] == "rollback"


def test_verbose_shows_no_traceback_for_expected_outcomes(invoke: Invoke, project: Path) -> None:
    result = _validate_after_damage(invoke, project)
    assert result.exit_code == 7
    assert "Traceback" not in result.stderr
    assert "Error: validation found 1 problem(s)" in result.stderr


def test_nearest_pyproject_with_the_table_wins(
    invoke: Invoke, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "pyproject.toml").write_text('[tool.pebble-migrate]\ndatabase = "db"\n')
    sub = project / "service"
    sub.mkdir()
    (sub / "pyproject.toml").write_text('[project]\nname = "service"\n')
    monkeypatch.chdir(sub)
    result = invoke("status", "--json", "-m", str(project / "migrations"))
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["database"] == str(project / "db")
