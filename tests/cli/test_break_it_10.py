"""What the second outside review of issue 10 (an operator trying to break it on a fresh
clone) found, each pinned by a test through a real process.

(The `project` fixture comes from tests/cli/test_operator.py, through tests/cli/conftest.py.)
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from pebble_migrate.testing import create_database
from tests.cli.test_operator import IDS, PAUSING_DOWN, common, run, values
from tests.conftest import snapshot, write_migration

# --- texts too long for the records that keep them ------------------------------------------

HUGE_ERROR = """
def up(ctx):
    for key, value in ctx.scan(prefix=b"k:"):
        if key == b"k:10":
            raise ValueError("x" * 200_000)
        ctx.put(key, value + b"!")
"""


def test_a_huge_error_message_is_kept_shortened_and_every_command_still_works(
    tmp_path: Path,
) -> None:
    create_database(tmp_path / "app.db", {b"k:%02d" % i: b"v" for i in range(20)})
    (tmp_path / "migrations").mkdir()
    write_migration(tmp_path / "migrations", "1700000001_boom", HUGE_ERROR)
    where = common(tmp_path)

    assert run("up", "--chunk-records", "4", *where, cwd=tmp_path).returncode == 6

    status = run("status", "--json", *where, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    error = json.loads(status.stdout)["last_error"]
    assert 10_000 - 100 < len(error) <= 10_000
    assert error.endswith("characters]") and "shortened" in error
    history = run("history", *where, cwd=tmp_path)
    assert history.returncode == 0 and "shortened" in history.stdout
    cleaned = run("force-clean", "--yes", *where, cwd=tmp_path)
    assert cleaned.returncode == 0, cleaned.stderr
    assert run("validate", *where, cwd=tmp_path).returncode in (0, 7)


def test_create_refuses_a_name_whose_id_the_history_could_not_keep(tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    refused = run("create", "a" * 240, "-m", str(migrations), cwd=tmp_path)

    assert refused.returncode == 2, refused.stderr
    assert "migration name too long: 240 characters, at most 189" in refused.stderr
    assert not migrations.exists() or not list(migrations.iterdir())
    made = run("create", "a" * 189, "-m", str(migrations), cwd=tmp_path)
    assert made.returncode == 0, made.stderr


def test_a_migration_file_with_an_over_long_id_is_refused_when_loaded(tmp_path: Path) -> None:
    create_database(tmp_path / "app.db", {b"k": b"v"})
    (tmp_path / "migrations").mkdir()
    write_migration(tmp_path / "migrations", "1700000001_" + "a" * 240, "def up(ctx):\n    pass\n")
    before = snapshot(tmp_path / "app.db")

    refused = run("up", *common(tmp_path), cwd=tmp_path)

    assert refused.returncode == 1, refused.stderr
    assert "an id is at most 200 characters" in refused.stderr
    assert snapshot(tmp_path / "app.db") == before


def test_a_huge_docstring_is_kept_shortened_in_the_history(tmp_path: Path) -> None:
    create_database(tmp_path / "app.db", {b"k": b"v"})
    (tmp_path / "migrations").mkdir()
    doc = "x" * 20_000
    write_migration(
        tmp_path / "migrations", "1700000001_big", f'"""{doc}."""\ndef up(ctx):\n    pass\n'
    )
    where = common(tmp_path)

    assert run("up", *where, cwd=tmp_path).returncode == 0

    shown = run("history", "--json", *where, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    (record,) = [r for r in json.loads(shown.stdout)["history"] if r["kind"] == "apply"]
    assert len(record["description"]) <= 2_000 and "shortened" in record["description"]
    assert run("status", *where, cwd=tmp_path).returncode == 0


# --- down --steps after an interrupted rollback ---------------------------------------------


def _interrupt_the_rollback_of_the_third(project: Path, steps: str) -> None:
    write_migration(project / "migrations", IDS[2], PAUSING_DOWN)
    assert run("up", *common(project), cwd=project).returncode == 0
    child = subprocess.Popen(
        [sys.executable, "-m", "pebble_migrate", "down", "--steps", steps, "--yes",
         "--no-backup", "--chunk-records", "2", *common(project)],
        cwd=project, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline().strip() == "midway"
    child.send_signal(signal.SIGINT)
    child.stdin.write("\n")
    child.stdin.close()
    assert child.wait(timeout=60) == 130


def test_down_steps_again_after_an_interrupted_rollback_is_refused_not_more_steps(
    project: Path,
) -> None:
    _interrupt_the_rollback_of_the_third(project, "2")
    before = snapshot(project / "app.db")

    again = run("down", "--steps", "2", "--yes", "--no-backup", *common(project), cwd=project)

    assert again.returncode == 4, again.stderr
    said = " ".join(again.stderr.split())
    assert "the rollback of 1700000003_third was left halfway" in said
    assert "`pebble-migrate down 1700000002` (the same as `down --steps 1`)" in said
    assert snapshot(project / "app.db") == before
    # The way out it names finishes exactly that one rollback.
    one = run("down", "--steps", "1", "--yes", "--no-backup", *common(project), cwd=project)
    assert one.returncode == 0, one.stderr
    assert values(project) == {b"vab"}
