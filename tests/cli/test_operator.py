"""The operator's CLI (issue 10), each item through a real `pebble-migrate` process.

Every test runs `python -m pebble_migrate` (or a small program embedding the click group
under another name) against a real database under tmp_path, and checks the exit code,
what is printed, and what the database holds afterwards. A refused command must leave the
database exactly as it was.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pebble_migrate.testing import contents, create_database
from tests.conftest import (
    read_terminal_to_the_end,
    read_terminal_until,
    snapshot,
    write_migration,
)

KEYS = {b"k:%02d" % i: b"v" for i in range(20)}

# Three migrations, each appending its own letter to every k: value (so down can undo it).
BODY = """
def up(ctx):
    for key, value in ctx.scan(prefix=b"k:"):
        ctx.put(key, value + b"{tag}")


def down(ctx):
    for key, value in ctx.scan(prefix=b"k:"):
        ctx.put(key, value.removesuffix(b"{tag}"))
"""
IDS = ("1700000001_first", "1700000002_second", "1700000003_third")


def run(
    *args: str, cwd: Path, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a child process."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_MIGRATE_")}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pebble_migrate", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        env=full,
        timeout=120,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A database with 20 keys and a migrations directory with three migrations."""
    create_database(tmp_path / "app.db", KEYS)
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    for mid, tag in zip(IDS, "abc", strict=True):
        write_migration(migrations, mid, BODY.format(tag=tag))
    return tmp_path


def common(project: Path) -> list[str]:
    return ["-d", str(project / "app.db"), "-m", str(project / "migrations")]


def values(project: Path) -> set[bytes]:
    return {v for k, v in contents(project / "app.db")["default"].items() if k.startswith(b"k:")}


# --- down --steps ----------------------------------------------------------------------


def test_down_steps_rolls_back_the_newest_applied_migrations(project: Path) -> None:
    assert run("up", *common(project), cwd=project).returncode == 0
    assert values(project) == {b"vabc"}

    done = run("down", "--steps", "2", "--yes", "--no-backup", *common(project), cwd=project)

    assert done.returncode == 0, done.stderr
    assert values(project) == {b"va"}
    status = json.loads(run("status", "--json", *common(project), cwd=project).stdout)
    assert status["applied"] == [IDS[0]]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--steps", "0"], 2, "0 is not in the range x>=1"),
        (["--steps", "-1"], 2, "-1 is not in the range x>=1"),
        (["--steps", "4"], 1, "roll back 4 migration(s): there are only 3 (1700000003_third,"),
        ([], 2, "say how far to roll back: a VERSION or --steps N."),
        (["0", "--steps", "1"], 2, "a VERSION or --steps N, not both."),
    ],
)
def test_down_refuses_a_bad_step_count_and_changes_nothing(
    project: Path, args: list[str], code: int, message: str
) -> None:
    assert run("up", *common(project), cwd=project).returncode == 0
    before = snapshot(project / "app.db")

    refused = run("down", *args, "--yes", *common(project), cwd=project)

    assert refused.returncode == code, refused.stderr
    assert message in refused.stderr
    assert "Traceback" not in refused.stderr
    assert snapshot(project / "app.db") == before


def test_down_takes_the_chunk_options_of_up(project: Path) -> None:
    assert run("up", *common(project), cwd=project).returncode == 0
    done = run(
        "down", "0", "--yes", "--no-backup", "--chunk-records", "3", "--chunk-bytes", "1024",
        *common(project), cwd=project,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert values(project) == {b"v"}


# --- the version an interrupted rollback needs ------------------------------------------

PAUSING_DOWN = """
import os
import sys


def up(ctx):
    for key, value in ctx.scan(prefix=b"k:"):
        ctx.put(key, value + b"c")


def down(ctx):
    for key, value in ctx.scan(prefix=b"k:"):
        ctx.put(key, value.removesuffix(b"c"))
        if key == b"k:10":
            print("midway", flush=True)
            sys.stdin.readline()
"""


def interrupt_the_rollback_of_the_third(project: Path, steps: str) -> None:
    """Apply the three migrations, then stop `down --steps STEPS` with SIGINT halfway
    through the third one's rollback (exit 130)."""
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


def test_status_names_the_version_an_interrupted_rollback_must_finish_at(
    project: Path,
) -> None:
    interrupt_the_rollback_of_the_third(project, "1")

    text = run("status", *common(project), cwd=project)
    shown = json.loads(run("status", "--json", *common(project), cwd=project).stdout)

    assert shown["rollback_to"] == 1700000002
    assert "down 1700000002" in " ".join(text.stdout.split())
    finished = run("down", IDS[1], "--yes", "--no-backup", *common(project), cwd=project)
    assert finished.returncode == 0, finished.stderr
    assert values(project) == {b"vab"}


# --- the configured CLI name ------------------------------------------------------------

EMBEDDED = """
import sys
from pebble_migrate.cli import cli

cli(prog_name="myapp db")
"""


def test_hints_use_the_name_the_application_runs_the_cli_by(project: Path) -> None:
    program = project / "myapp.py"
    program.write_text(textwrap.dedent(EMBEDDED))
    full = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_MIGRATE_")}
    assert run("up", *common(project), cwd=project).returncode == 0

    refused = subprocess.run(
        [sys.executable, str(program), "down", "--steps", "9", *common(project)],
        cwd=project, capture_output=True, text=True, env=full, timeout=120,
    )  # fmt: skip

    assert refused.returncode == 1
    assert "`myapp db down 0`" in refused.stderr
    assert "`pebble-migrate" not in refused.stderr


# --- ids and the create template ---------------------------------------------------------


def test_ids_with_hyphens_as_the_original_tool_allowed_are_applied(project: Path) -> None:
    write_migration(project / "migrations", "1754917200_test-migration", BODY.format(tag="h"))

    done = run("up", *common(project), cwd=project)
    status = json.loads(run("status", "--json", *common(project), cwd=project).stdout)

    assert done.returncode == 0, done.stderr
    assert "1754917200_test-migration" in status["applied"]
    assert values(project) == {b"vabch"}


@pytest.mark.parametrize(
    ("name", "docstring"),
    [
        ("AddUsers", '"""Add users."""'),
        ("add_users", '"""Add users."""'),
        ("add-users", '"""Add users."""'),
        ("AddHTTPCache", '"""Add HTTP cache."""'),
    ],
)
def test_create_makes_the_docstring_a_sentence_from_the_name(
    tmp_path: Path, name: str, docstring: str
) -> None:
    made = run("create", name, "-m", "migrations", cwd=tmp_path)

    assert made.returncode == 0, made.stderr
    (written,) = (tmp_path / "migrations").glob(f"*_{name}.py")
    assert written.read_text().splitlines()[0] == docstring


def test_the_create_template_says_what_the_docs_say_about_rerunnable(tmp_path: Path) -> None:
    assert run("create", "x", "-m", "migrations", cwd=tmp_path).returncode == 0
    (written,) = (tmp_path / "migrations").glob("*_x.py")
    comment = " ".join(
        line.lstrip("# ") for line in written.read_text().splitlines() if line.startswith("#")
    )
    guide = Path(__file__).parents[2] / "docs" / "writing-migrations.md"
    section = " ".join(guide.read_text().split("## `rerunnable`", 1)[1].split("##", 1)[0].split())

    # Both say the same two things: it is about direct writes through ctx.db, which run
    # again; a migration that writes only through ctx resumes without it.
    assert "writes through ctx.db" in comment and "writes through `ctx.db`" in section
    assert "run again" in comment and "run again" in section
    assert "resumes by itself" in comment and "resumes by itself" in section
    assert "from the start" not in comment


# --- output ------------------------------------------------------------------------------


def test_tables_have_no_trailing_spaces(project: Path) -> None:
    assert run("up", *common(project), cwd=project).returncode == 0
    for command in (["status"], ["status", "-v"], ["history"], ["backup", "list"]):
        shown = run(*command, *common(project)[:2], "-m", str(project / "migrations"), cwd=project)
        if command[0] == "backup":
            shown = run(*command, "-d", str(project / "app.db"), cwd=project)
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert len(lines) >= 2
        assert [line for line in lines if line != line.rstrip()] == [], command


def test_the_package_declares_its_license_in_the_current_form() -> None:
    import tomllib

    meta = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT"  # an SPDX expression, not the old table
    assert (Path(__file__).parents[2] / meta["project"]["license-files"][0]).is_file()
    assert "setuptools>=77" in meta["build-system"]["requires"]


# --- one meaning per flag ------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["status"], ["history"], ["validate"], ["backup", "list"], ["backup", "verify", "x"]],
)
def test_commands_that_change_nothing_do_not_take_dry_run(
    project: Path, command: list[str]
) -> None:
    shown = run(*command, "--help", cwd=project)
    refused = run(*command, "--dry-run", *common(project)[:2], cwd=project)

    assert "--dry-run" not in shown.stdout
    assert refused.returncode == 2
    assert "No such option '--dry-run'" in refused.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["up"], ["down"], ["rerun"], ["force-clean"], ["repair"], ["create"],
        ["backup", "create"], ["backup", "restore"], ["backup", "cleanup"],
    ],
)  # fmt: skip
def test_commands_that_change_something_offer_dry_run(project: Path, command: list[str]) -> None:
    assert "--dry-run" in run(*command, "--help", cwd=project).stdout


def test_backup_restore_takes_yes_like_every_command_that_asks(project: Path) -> None:
    db = str(project / "app.db")
    assert run("up", *common(project), cwd=project).returncode == 0
    listed = json.loads(run("backup", "list", "-d", db, "--json", cwd=project).stdout)
    backup_id = listed[0]["id"]  # the one `up` took before it ran

    refused = run("backup", "restore", backup_id, "-d", db, cwd=project)
    assert refused.returncode == 2
    assert "Re-run with --yes to confirm." in refused.stderr
    assert values(project) == {b"vabc"}

    done = run("backup", "restore", backup_id, "-d", db, "--yes", cwd=project)
    assert done.returncode == 0, done.stderr
    assert values(project) == {b"v"}


# --- stamp -------------------------------------------------------------------------------


def test_stamp_records_migrations_as_applied_without_running_them(project: Path) -> None:
    before = snapshot(project / "app.db")["default"]
    dry = run("stamp", IDS[1], "--dry-run", *common(project), cwd=project)
    assert dry.returncode == 0, dry.stderr
    assert "would record 1700000002_second as applied (not run)" in dry.stdout
    assert snapshot(project / "app.db") == {"default": before}  # not even the state

    done = run("stamp", IDS[1], "--yes", *common(project), cwd=project)

    assert done.returncode == 0, done.stderr
    assert snapshot(project / "app.db")["default"] == before  # no migration ran
    status = json.loads(run("status", "--json", *common(project), cwd=project).stdout)
    assert status["applied"] == list(IDS[:2])
    assert status["current_version"] == 1700000002
    assert status["pending"] == [IDS[2]]
    history = json.loads(run("history", "--json", *common(project), cwd=project).stdout)
    assert [(h["id"], h["kind"]) for h in history["history"]] == [
        (IDS[0], "stamp"),
        (IDS[1], "stamp"),
    ]
    # The rest applies normally afterwards: only the third migration runs.
    assert run("up", *common(project), cwd=project).returncode == 0
    assert values(project) == {b"vc"}


def test_stamp_0_clears_the_applied_set_without_rolling_back(project: Path) -> None:
    assert run("up", *common(project), cwd=project).returncode == 0

    done = run("stamp", "0", "--yes", "--json", *common(project), cwd=project)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["recorded_not_applied"] == list(IDS)
    assert values(project) == {b"vabc"}  # no down ran
    status = json.loads(run("status", "--json", *common(project), cwd=project).stdout)
    assert status["applied"] == [] and status["current_version"] == 0


def test_stamp_asks_first(project: Path) -> None:
    before = snapshot(project / "app.db")
    refused = run("stamp", IDS[0], *common(project), cwd=project)
    assert refused.returncode == 2
    assert "Re-run with --yes to confirm." in refused.stderr
    assert snapshot(project / "app.db") == before


FAILING = """
def up(ctx):
    raise RuntimeError("failing on purpose")
"""


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("unknown version", 1, "no migration has version or id '1700000009'"),
        ("not clean", 4, "its status is dirty; stamp only records versions on a clean"),
    ],
)
def test_stamp_refuses_and_changes_nothing(
    project: Path, case: str, code: int, message: str
) -> None:
    if case == "not clean":
        write_migration(project / "migrations", "1700000004_fails", FAILING)
        assert run("up", *common(project), cwd=project).returncode == 6
    before = snapshot(project / "app.db")

    refused = run("stamp", "1700000009" if case != "not clean" else IDS[0], "--yes",
                  *common(project), cwd=project)  # fmt: skip

    assert refused.returncode == code, refused.stderr
    assert message in " ".join(refused.stderr.split())
    assert "Traceback" not in refused.stderr
    assert snapshot(project / "app.db") == before


# --- out-of-order migrations ---------------------------------------------------------------

MERGED = "1700000000_merged_late"


def merged_late(project: Path) -> None:
    """All three applied, then a migration below them appears (a branch merged late)."""
    assert run("up", *common(project), cwd=project).returncode == 0
    # It depends on an applied migration: status once failed to list such a one apart.
    body = f"dependencies = [{IDS[0]!r}]\n" + textwrap.dedent(BODY.format(tag="m"))
    write_migration(project / "migrations", MERGED, body)


@pytest.mark.parametrize("dry", [False, True])
def test_up_refuses_a_migration_below_the_current_version(project: Path, dry: bool) -> None:
    merged_late(project)
    before = snapshot(project / "app.db")

    refused = run("up", *(["--dry-run"] if dry else []), *common(project), cwd=project)

    assert refused.returncode == 1, refused.stderr
    assert f"below the current version 1700000003: {MERGED}" in refused.stderr
    assert "`pebble-migrate up --allow-out-of-order`" in refused.stderr
    assert snapshot(project / "app.db") == before


@pytest.mark.parametrize(
    ("how", "env", "pyproject"),
    [
        (["--allow-out-of-order"], {}, ""),
        ([], {"PEBBLE_MIGRATE_ALLOW_OUT_OF_ORDER": "1"}, ""),
        ([], {}, "[tool.pebble-migrate]\nallow-out-of-order = true\n"),
    ],
)
def test_out_of_order_applies_when_allowed_by_flag_variable_or_setting(
    project: Path, how: list[str], env: dict[str, str], pyproject: str
) -> None:
    merged_late(project)
    if pyproject:
        (project / "pyproject.toml").write_text(pyproject)

    done = run("up", *how, *common(project), cwd=project, env=env)

    assert done.returncode == 0, done.stderr
    assert f"Applied out of order (allowed): {MERGED}." in done.stdout + done.stderr
    assert values(project) == {b"vabcm"}


def test_allowing_out_of_order_where_nothing_is_says_so(project: Path) -> None:
    done = run("up", "--allow-out-of-order", *common(project), cwd=project)
    assert done.returncode == 0, done.stderr
    assert "no pending migration is out of order; it changed nothing" in done.stdout
    assert values(project) == {b"vabc"}


def test_a_bad_allow_out_of_order_setting_is_refused_naming_its_source(project: Path) -> None:
    before = snapshot(project / "app.db")
    refused = run("up", *common(project), cwd=project,
                  env={"PEBBLE_MIGRATE_ALLOW_OUT_OF_ORDER": "maybe"})  # fmt: skip
    assert refused.returncode == 2
    assert "$PEBBLE_MIGRATE_ALLOW_OUT_OF_ORDER must be 1 or 0" in refused.stderr
    assert snapshot(project / "app.db") == before

    (project / "pyproject.toml").write_text('[tool.pebble-migrate]\nallow-out-of-order = "yes"\n')
    refused = run("up", *common(project), cwd=project)
    assert refused.returncode == 2
    assert "pyproject.toml: [tool.pebble-migrate] allow-out-of-order must be true or false" in (
        refused.stderr
    )
    assert snapshot(project / "app.db") == before


def test_status_lists_out_of_order_migrations_apart(project: Path) -> None:
    merged_late(project)
    write_migration(project / "migrations", "1700000004_fourth", BODY.format(tag="d"))

    text = run("status", *common(project), cwd=project).stdout
    shown = json.loads(run("status", "--json", *common(project), cwd=project).stdout)

    assert shown["out_of_order"] == [MERGED]
    assert shown["pending"] == [MERGED, "1700000004_fourth"]
    pending, apart = text.split("\nPending\n")[1].split("\nPending out of order")
    assert "1700000004_fourth" in pending and MERGED not in pending
    assert MERGED in apart.split("\n\n")[0]


STARTUP_APP = """
import sys
import pebble_migrate as pm
import rocksdict

opts = pm.default_startup_options()
opts.run_migrations = True
opts.registry = pm.load_migrations(sys.argv[2])
opts.allow_out_of_order = sys.argv[3] == "allow"
db = rocksdict.Rdict(sys.argv[1])
try:
    pm.check_and_run_startup_migrations(db, sys.argv[1], opts)
except pm.PlanError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
finally:
    db.close()
"""


def test_the_startup_check_refuses_out_of_order_unless_its_option_allows(project: Path) -> None:
    merged_late(project)
    app = project / "app.py"
    app.write_text(textwrap.dedent(STARTUP_APP))
    argv = [sys.executable, str(app), str(project / "app.db"), str(project / "migrations")]
    before = snapshot(project / "app.db")

    refused = subprocess.run([*argv, "refuse"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1
    assert MERGED in refused.stderr and "allow_out_of_order=True" in refused.stderr
    assert snapshot(project / "app.db") == before

    allowed = subprocess.run([*argv, "allow"], capture_output=True, text=True, timeout=120)
    assert allowed.returncode == 0, allowed.stderr
    assert values(project) == {b"vabcm"}


# --- errors that point at the data --------------------------------------------------------

FAILS_AT_KEY = """
def up(ctx):
    for key, value in ctx.scan(prefix=b"k:", name="tagging"):
        if key == b"k:13":
            raise ValueError("bad value")
        ctx.put(key, value + b"!")
"""


def test_a_failure_inside_a_scan_names_the_key_the_scan_and_the_last_commit(
    project: Path,
) -> None:
    write_migration(project / "migrations", "1700000004_fails", FAILS_AT_KEY)
    assert run("up", IDS[2], *common(project), cwd=project).returncode == 0

    failed = run("up", "--chunk-records", "5", *common(project), cwd=project)

    where = "scan 'tagging' stopped at key b'k:13'; last committed key: b'k:09'"
    assert failed.returncode == 6
    assert f"ValueError: bad value ({where})" in failed.stderr
    assert "Traceback" not in failed.stderr
    status = run("status", *common(project), cwd=project).stdout
    assert where in status
    shown = json.loads(run("status", "--json", *common(project), cwd=project).stdout)
    assert where in shown["last_error"]
    history = json.loads(run("history", "--json", *common(project), cwd=project).stdout)
    assert where in history["history"][-1]["error"]
    verbose = run("up", "-v", *common(project), cwd=project)  # refused: dirty; no traceback
    assert verbose.returncode == 4


def test_a_long_or_binary_key_is_shown_printable_and_shortened(project: Path) -> None:
    body = FAILS_AT_KEY.replace('key == b"k:13"', 'key.startswith(b"k:\\xff")')
    write_migration(project / "migrations", "1700000004_fails", body)
    import rocksdict

    db = rocksdict.Rdict(str(project / "app.db"))
    db[b"k:\xff" + b"\x01" * 200] = b"v"
    db.close()
    assert run("up", IDS[2], *common(project), cwd=project).returncode == 0

    failed = run("up", *common(project), cwd=project)

    assert failed.returncode == 6
    assert "stopped at key 0x6b3aff0101" in failed.stderr
    assert "... (203 bytes)" in failed.stderr


# --- validate ID... ------------------------------------------------------------------------

CHECKED = """
def up(ctx):
    for key, value in ctx.scan(prefix=b"k:"):
        ctx.put(key, value + b"!")


def validate(ctx):
    return [key for key, value in ctx.scan(prefix=b"k:") if not value.endswith(b"!")]
"""
RETAG = """
def up(ctx):
    for key, value in ctx.scan(prefix=b"k:"):
        ctx.put(key, value.rstrip(b"!") + b"?")
"""


@pytest.fixture
def checked(tmp_path: Path) -> Path:
    create_database(tmp_path / "app.db", {b"k:%02d" % i: b"v" for i in range(12)})
    (tmp_path / "migrations").mkdir()
    write_migration(tmp_path / "migrations", "1700000001_mark", CHECKED)
    write_migration(tmp_path / "migrations", "1700000002_other", BODY.format(tag="o"))
    return tmp_path


def test_validate_runs_only_the_checks_of_the_migrations_named(checked: Path) -> None:
    assert run("up", *common(checked), cwd=checked).returncode == 0
    named = run("validate", "-v", "1700000001", *common(checked), cwd=checked)
    assert named.returncode == 7  # BODY's tag broke mark's check: the data changed after it
    assert "validate 1700000001_mark" in named.stdout

    other = run("validate", "-v", "1700000002_other", *common(checked), cwd=checked)
    assert other.returncode == 0, other.stderr
    assert "validate 1700000001_mark" not in other.stdout


def test_validate_of_a_migration_without_a_check_says_nothing_of_it_was_checked(
    checked: Path,
) -> None:
    assert run("up", *common(checked), cwd=checked).returncode == 0
    before = snapshot(checked / "app.db")

    named = run("validate", "1700000002", *common(checked), cwd=checked)

    assert named.returncode == 0, named.stderr
    line = "validate 1700000002_other: it has no validate() of its own, so none of its data"
    assert line in named.stdout  # shown without -v: not a silent pass
    assert "Valid: 7 checks passed." in named.stdout  # the notice is not counted as a check
    as_json = json.loads(
        run("validate", "1700000002", "--json", *common(checked), cwd=checked).stdout
    )
    notices = [c["name"] for c in as_json["checks"] if c["notice"]]
    assert notices == ["validate 1700000002_other"]
    assert snapshot(checked / "app.db") == before


def test_a_failing_check_with_later_migrations_is_reported_as_maybe_stale(checked: Path) -> None:
    write_migration(checked / "migrations", "1700000002_other", RETAG)
    assert run("up", *common(checked), cwd=checked).returncode == 0

    failed = run("validate", *common(checked), cwd=checked)

    assert failed.returncode == 7
    said = " ".join(failed.stderr.split())
    assert "Warning: 1700000002_other applied after it and may have changed the data" in said
    assert "the check may be stale" in said
    # The keys the check returned, printable, at most ten, then a count.
    assert "key b'k:00'; key b'k:01'" in said and "; ... and 2 more" in said
    assert "validate --verbose` lists every check" in said
    verbose = run("validate", "-v", *common(checked), cwd=checked)
    assert "--verbose" not in verbose.stderr


@pytest.mark.parametrize(
    ("ident", "message"),
    [
        ("1700000009", "no migration has version or id '1700000009'"),
        ("1700000002_other", "1700000002_other is not applied"),
    ],
)
def test_validate_of_an_unknown_or_unapplied_id_is_refused(
    checked: Path, ident: str, message: str
) -> None:
    assert run("up", "1700000001", *common(checked), cwd=checked).returncode == 0
    before = snapshot(checked / "app.db")

    refused = run("validate", ident, *common(checked), cwd=checked)

    assert refused.returncode == 1
    assert message in refused.stderr
    assert snapshot(checked / "app.db") == before


# --- progress a person can watch ----------------------------------------------------------

SLOW = """
import time


def up(ctx):
    for key, value in ctx.scan(prefix=b"s:"):
        time.sleep(0.0004)  # the workload: a slow transform
        ctx.put(key, value + b"!")
"""


@pytest.fixture
def slow(tmp_path: Path) -> Path:
    create_database(tmp_path / "app.db", {b"s:%05d" % i: b"v" for i in range(3000)})
    (tmp_path / "migrations").mkdir()
    write_migration(tmp_path / "migrations", "1700000001_slow", SLOW)
    return tmp_path


def test_json_progress_advances_by_time_within_one_chunk(slow: Path) -> None:
    ran = run("up", "--json", "--chunk-records", "1000000", *common(slow), cwd=slow)

    assert ran.returncode == 0, ran.stderr
    events = [json.loads(line) for line in ran.stdout.splitlines()]
    done = [e["done"] for e in events if e.get("event") == "progress"]
    # One chunk for all 3,000 keys: without time-based progress there would be one event.
    assert len(done) >= 3
    assert done == sorted(done) and done[-1] == 3000


def test_without_a_terminal_the_last_progress_line_shows_the_final_count(slow: Path) -> None:
    ran = run("up", "--chunk-records", "1000000", *common(slow), cwd=slow)

    assert ran.returncode == 0, ran.stderr
    lines = ran.stderr.splitlines()
    applied = next(i for i, line in enumerate(lines) if line.startswith("applied "))
    assert lines[applied - 1].startswith("1700000001_slow: 3000")
    assert lines[applied - 1].endswith("keys")


def test_on_ctrl_c_the_bar_is_cleared_before_any_message(slow: Path) -> None:
    import pty
    import re

    primary, secondary = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "pebble_migrate", "up", "--yes", "--chunk-records", "500",
         *common(slow)],
        cwd=slow, stdin=secondary, stdout=secondary, stderr=secondary, start_new_session=True,
    )  # fmt: skip
    os.close(secondary)
    seen = bytearray()
    # The bar is on screen:
    read_terminal_until(primary, seen, lambda got: b"keys/s" in got or b"/3000" in got)
    child.send_signal(signal.SIGINT)
    shown = read_terminal_to_the_end(primary, seen)
    assert child.wait(timeout=60) == 130

    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown)
    for message in ("SIGINT received", "Error: interrupted"):
        line = next(part for part in re.split(r"[\r\n]", text) if message in part)
        assert line.startswith(message), repr(line)


def test_up_create_dry_run_on_a_missing_path_says_what_up_create_would_do(
    project: Path,
) -> None:
    ran = run("up", "--create", "--dry-run", "-d", "new.db", "-m", "migrations", cwd=project)

    assert ran.returncode == 0, ran.stderr
    said = " ".join(ran.stdout.split())
    assert f"Would do: create an empty database (raw mode) at {project / 'new.db'}" in said
    assert "stamped at version 1700000003" in said and "Dry run: nothing was changed." in said
    assert not (project / "new.db").exists()


# --- settings checked up front ---------------------------------------------------------------


@pytest.mark.parametrize("command", [["history"], ["status"], ["create", "x", "--dry-run"]])
@pytest.mark.parametrize(
    ("env", "pyproject", "message"),
    [
        ({"PEBBLE_MIGRATE_BACKUP_MODE": "zip"}, "", '$PEBBLE_MIGRATE_BACKUP_MODE must be "link"'),
        ({}, "[tool.pebble-migrate]\nbackup-keep = 0\n", "] backup-keep must be a positive"),
        ({}, "[tool.pebble-migrate]\nbackup-mode = 'zip'\n", "] backup-mode must be"),
    ],
)
def test_every_setting_is_checked_up_front_by_every_command_naming_its_source(
    project: Path, command: list[str], env: dict[str, str], pyproject: str, message: str
) -> None:
    if pyproject:
        (project / "pyproject.toml").write_text(pyproject)
    before = snapshot(project / "app.db")

    refused = run(*command, *common(project), cwd=project, env=env)

    assert refused.returncode == 2, refused.stderr
    assert message in refused.stderr
    assert ("pyproject.toml: [tool.pebble-migrate]" in refused.stderr) == bool(pyproject)
    assert snapshot(project / "app.db") == before
    assert not list((project / "migrations").glob("*_x.py"))


# --- shell completion ------------------------------------------------------------------------


def test_shell_completion_as_documented(project: Path) -> None:
    script = run("--version", cwd=project, env={"_PEBBLE_MIGRATE_COMPLETE": "bash_source"})
    assert script.returncode == 0
    assert "_pebble_migrate_completion()" in script.stdout
    assert "complete -o nosort -F _pebble_migrate_completion pebble-migrate" in script.stdout

    env = {"_PEBBLE_MIGRATE_COMPLETE": "bash_complete", "COMP_CWORD": "1"}
    offered = run(cwd=project, env={**env, "COMP_WORDS": "pebble-migrate st"})
    assert offered.stdout.split() == ["plain,stamp", "plain,status"]
    env["COMP_CWORD"] = "2"
    offered = run(cwd=project, env={**env, "COMP_WORDS": "pebble-migrate backup re"})
    assert offered.stdout.split() == ["plain,restore"]


# --- status shows a partly applied migration without -v --------------------------------------

TWO_SCANS = """
import os
import signal


def up(ctx):
    for key, value in ctx.scan(prefix=b"k:"):
        ctx.put(key, value + b"!")
    for key, value in ctx.scan(prefix=b"k:", name="index"):
        ctx.put(b"i:" + key, b"")
        if key == b"k:12":
            os.kill(os.getpid(), signal.SIGINT)
"""


def test_status_shows_a_partly_applied_migration_in_one_line_without_verbose(
    project: Path,
) -> None:
    write_migration(project / "migrations", "1700000004_two", TWO_SCANS)
    assert run("up", IDS[2], *common(project), cwd=project).returncode == 0
    assert run("up", "--chunk-records", "4", *common(project), cwd=project).returncode == 130
    assert run("force-clean", "--yes", *common(project), cwd=project).returncode == 0

    shown = run("status", *common(project), cwd=project)

    row = shown.stdout.split("Left halfway", 1)[1].split("\n\n", 1)[0]  # one row
    said = " ".join(row.split())
    assert "partly-applied: 1700000004_two, scan 'index' after b'k:12' (13 of ~20)" in said
    assert "(up: continues 1700000004_two after its last committed key" in said
