"""What the second outside review of issue 10 (an operator trying to break it on a fresh
clone) found, each pinned by a test through a real process.

(The `project` fixture comes from tests/cli/test_operator.py, through tests/cli/conftest.py.)
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pebble_migrate.testing import create_database
from tests.cli.test_operator import (
    BODY,
    IDS,
    common,
    interrupt_the_rollback_of_the_third,
    run,
    values,
)
from tests.conftest import (
    read_terminal_to_the_end,
    read_terminal_until,
    snapshot,
    tmpfs,
    write_migration,
)

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


def test_down_steps_again_after_an_interrupted_rollback_is_refused_not_more_steps(
    project: Path,
) -> None:
    interrupt_the_rollback_of_the_third(project, "2")
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


# --- errors that say what to do next ----------------------------------------------------------


def test_writing_commands_on_a_read_only_filesystem_say_what_to_do(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "16m") as mount:
        create_database(mount / "app.db", {b"k:%02d" % i: b"v" for i in range(20)})
        (mount / "migrations").mkdir()
        for mid, tag in zip(IDS, "abc", strict=True):
            write_migration(mount / "migrations", mid, BODY.format(tag=tag))
        assert run("up", IDS[0], *common(mount), cwd=tmp_path).returncode == 0
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        try:
            before = snapshot(mount / "app.db")
            for command in (["up"], ["down", "--steps", "1", "--yes"], ["stamp", IDS[1], "--yes"]):
                refused = run(*command, *common(mount), cwd=tmp_path)
                said = " ".join(refused.stderr.split())
                assert refused.returncode == 1, (command, refused.stderr)
                assert "Read-only file system" in said
                assert "remount it read-write, or copy the database somewhere writable" in said
                assert "Traceback" not in said
            assert run("status", *common(mount), cwd=tmp_path).returncode == 0
            assert snapshot(mount / "app.db") == before
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)


def test_create_on_a_read_only_filesystem_does_not_talk_of_a_database(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "1m") as mount:
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        try:
            refused = run("create", "add_users", "-m", str(mount / "migrations"), cwd=tmp_path)
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 1, refused.stderr
    assert "The filesystem is read-only: mount it read-write, then run the command again." in said
    assert "committed" not in said and "status" not in said


# --- confirmation prompts on a real terminal ----------------------------------------------------


def _until_reading_stdin(pid: int) -> None:
    """Return once process `pid` is blocked in read(2) on its standard input (the kernel's
    /proc/PID/syscall: number 0 on x86-64, first argument 0): a signal sent before it got
    there would be noted and then wait, as a signal can, until the read returns."""
    for _ in range(100_000):
        with open(f"/proc/{pid}/syscall") as call:
            fields = call.read().split()
        if fields[:2] == ["0", "0x0"]:
            return
        select.select([], [], [], 0.001)  # let it run; the check above is what waits
    raise AssertionError(f"process {pid} never waited for input")


def _at_the_prompt(project: Path, answer: bytes | None, *extra: str) -> tuple[int, str]:
    """Run `stamp` on a pseudo-terminal, wait for its question, then type `answer` (or,
    for None, send SIGINT as Ctrl+C would); return the exit code and what was shown."""
    leader, follower = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "pebble_migrate", "stamp", IDS[1], *extra, *common(project)],
        cwd=project, stdin=follower, stdout=follower, stderr=follower,
        env={**os.environ, "TERM": "dumb"},
        # As an interactive shell starts it: Ctrl+C interrupts (a suite run in the
        # background would hand SIGINT down ignored).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509 - the suite starts no threads
    )  # fmt: skip
    os.close(follower)
    shown = bytearray()
    read_terminal_until(leader, shown, lambda got: b"[y/N]: " in got)
    if answer is None:
        _until_reading_stdin(child.pid)  # a person's Ctrl+C comes while it waits
        child.send_signal(signal.SIGINT)
    else:
        os.write(leader, answer)
    text = read_terminal_to_the_end(leader, shown)
    return child.wait(timeout=60), text


def test_end_of_input_at_a_prompt_is_a_no_and_ctrl_c_says_nothing_was_changed(
    project: Path,
) -> None:
    before = snapshot(project / "app.db")

    code, shown = _at_the_prompt(project, b"\x04")  # Ctrl+D at the start of the line
    assert code == 1, shown
    assert "[y/N]: \r\nError: aborted; nothing was changed." in shown

    code, shown = _at_the_prompt(project, None)
    assert code == 130, shown
    assert "\r\nError: interrupted at the confirmation prompt; nothing was changed." in shown
    assert "made whole or not at all" not in shown
    assert snapshot(project / "app.db") == before


# --- settings that would act on the wrong place -------------------------------------------------


def test_a_backup_directory_inside_the_database_is_refused_from_every_source(
    project: Path,
) -> None:
    assert run("up", IDS[0], *common(project), cwd=project).returncode == 0
    before = snapshot(project / "app.db")
    inside = str(project / "app.db" / "bk")
    (project / "pyproject.toml").write_text('[tool.pebble-migrate]\nbackup-dir = "app.db/bk"\n')
    for how, env in (
        (["--backup-dir", inside], {}),
        ([], {"PEBBLE_MIGRATE_BACKUP_DIR": inside}),
        ([], {}),  # the pyproject.toml
    ):
        for command in (["backup", "create", "one"], ["up", "--yes"], ["backup", "list"]):
            refused = run(*command, *how, *common(project), cwd=project, env=env)
            said = " ".join(refused.stderr.split())
            assert refused.returncode == 2, (command, how, env, refused.stderr)
            assert "is inside the database directory" in said
            assert f"the default, {project / 'app.db.backups'}" in said
            assert snapshot(project / "app.db") == before
    assert not (project / "app.db" / "bk").exists()


def test_an_age_past_a_century_is_a_usage_error_from_the_flag_and_the_file(
    project: Path,
) -> None:
    refused = run("backup", "cleanup", "--older-than", "99999999999d", "-n", "--json",
                  *common(project), cwd=project)  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert "--older-than: '99999999999d' is more than 100 years" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert json.loads(refused.stdout)["error"]["exit_code"] == 2
    (project / "pyproject.toml").write_text(
        '[tool.pebble-migrate]\nbackup-older-than = "99999999999999999999d"\n'
    )
    status = run("status", *common(project), cwd=project)
    assert status.returncode == 2 and "backup-older-than must be like" in status.stderr
    assert "Traceback" not in status.stderr


def test_an_empty_path_is_refused_naming_its_source_not_passed_over(project: Path) -> None:
    assert run("up", IDS[0], *common(project), cwd=project).returncode == 0
    before = snapshot(project / "app.db")
    env = {"PEBBLE_MIGRATE_DATABASE": str(project / "app.db")}
    cases = (
        (["-d", "", "down", "--steps", "1", "--yes"], env,
         "the path given by -d/--database is empty"),
        (["down", "--steps", "1", "--yes"], {"PEBBLE_MIGRATE_DATABASE": ""},
         "the path given by $PEBBLE_MIGRATE_DATABASE is empty"),
        (["backup", "list", "-d", "app.db", "--backup-dir", ""], {},
         "the path given by --backup-dir is empty"),
    )  # fmt: skip
    for args, extra, message in cases:
        refused = run(*args, cwd=project, env=extra)
        assert refused.returncode == 2, (args, refused.stderr)
        assert message in refused.stderr
        assert snapshot(project / "app.db") == before
    for key in ("database", "backup-dir"):
        (project / "pyproject.toml").write_text(f'[tool.pebble-migrate]\n{key} = ""\n')
        refused = run("status", "-d", "app.db", cwd=project)
        assert refused.returncode == 2, refused.stderr
        assert f"[tool.pebble-migrate] {key} is empty" in refused.stderr


def test_stamp_on_an_empty_directory_names_up_create(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "migrations").mkdir()
    write_migration(tmp_path / "migrations", IDS[0], "def up(ctx):\n    pass\n")

    refused = run("stamp", IDS[0], "--yes", "-d", "empty", "-m", "migrations", cwd=tmp_path)

    assert refused.returncode == 1
    said = " ".join(refused.stderr.split())
    assert f"run `pebble-migrate up --create -d {tmp_path / 'empty'}`" in said
    assert list((tmp_path / "empty").iterdir()) == []


BREAKS_THEN_FAILS = """
def up(ctx):
    for key, value in ctx.scan(prefix=b"k:", name="tagging"):
        ctx.put(key, value + b"!")
        if key == b"k:05":
            break
    raise ValueError("failed after the loop")
"""


def test_an_error_after_a_scan_was_left_says_where_the_scan_stopped(project: Path) -> None:
    write_migration(project / "migrations", "1700000004_breaks", BREAKS_THEN_FAILS)
    assert run("up", IDS[2], *common(project), cwd=project).returncode == 0

    failed = run("up", *common(project), cwd=project)

    assert failed.returncode == 6
    # Not "at key", as if the error came while that key was processed: the loop had
    # stopped there (a break) before the error.
    assert "ValueError: failed after the loop (scan 'tagging' stopped at key b'k:05';" in (
        failed.stderr
    )


# --- the second review ---------------------------------------------------------------------------


def test_a_backup_description_backup_json_could_not_keep_is_refused_up_front(
    project: Path,
) -> None:
    before = snapshot(project / "app.db")
    long = "d" * 10_001
    for extra in (["--dry-run"], []):
        refused = run("backup", "create", long, *extra, *common(project), cwd=project)
        assert refused.returncode == 2, refused.stderr
        assert "the backup description is 10,001 characters; at most 2,000" in refused.stderr
    assert not (project / "app.db.backups").exists() or not any(
        (project / "app.db.backups").iterdir()
    )
    assert snapshot(project / "app.db") == before


def test_output_lost_to_a_full_disk_fails_a_reading_command_and_warns_a_changing_one(
    project: Path,
) -> None:
    full = Path("/dev/full")
    with full.open("w") as sink:
        read = subprocess.run(
            [sys.executable, "-m", "pebble_migrate", "status", "--json", *common(project)],
            cwd=project, stdout=sink, stderr=subprocess.PIPE, text=True, timeout=120,
        )  # fmt: skip
        changed = subprocess.run(
            [sys.executable, "-m", "pebble_migrate", "up", IDS[0], *common(project)],
            cwd=project, stdout=sink, stderr=subprocess.PIPE, text=True, timeout=120,
        )  # fmt: skip
    assert read.returncode == 1, read.stderr
    assert "Error: the output could not be written to stdout (No space left on device): " in (
        read.stderr
    )
    assert changed.returncode == 0, changed.stderr
    assert "Warning: the output could not be written to stdout" in changed.stderr
    # The migration ran and is recorded: output is a side channel of a changing command.
    shown = json.loads(run("status", "--json", *common(project), cwd=project).stdout)
    assert shown["applied"] == [IDS[0]]


FAILS_WHEN_ASKED = """
import os


def up(ctx):
    if os.environ.get("FAIL"):
        raise ValueError("asked to fail")
    for key, value in ctx.scan(prefix=b"k:"):
        ctx.put(key, value + b"a")


def down(ctx):
    for key, value in ctx.scan(prefix=b"k:"):
        ctx.put(key, value.removesuffix(b"a"))
"""


def test_status_does_not_pair_a_failed_runs_kind_with_the_last_successful_time(
    project: Path,
) -> None:
    write_migration(project / "migrations", IDS[0], FAILS_WHEN_ASKED)
    assert run("up", IDS[0], *common(project), cwd=project).returncode == 0
    assert run("down", "0", "--yes", *common(project), cwd=project).returncode == 0
    failed = run("up", IDS[0], *common(project), cwd=project, env={"FAIL": "1"})
    assert failed.returncode == 6

    shown = run("status", *common(project), cwd=project).stdout
    (line,) = [ln for ln in shown.splitlines() if ln.startswith("Last migration")]
    assert "apply of" not in line  # the failed apply is not the run that time belongs to
    assert f"  {IDS[0]} at " in line


def test_on_a_dumb_terminal_progress_comes_as_lines_not_a_bar(tmp_path: Path) -> None:
    create_database(tmp_path / "app.db", {b"s:%05d" % i: b"v" for i in range(2000)})
    (tmp_path / "migrations").mkdir()
    write_migration(
        tmp_path / "migrations",
        "1700000001_mark",
        "def up(ctx):\n"
        "    for key, value in ctx.scan(prefix=b's:'):\n"
        "        ctx.put(key, value + b'!')\n",
    )
    leader, follower = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "pebble_migrate", "up", "-y", "-d", "app.db", "-m",
         "migrations", "--chunk-records", "100"],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
        env={**os.environ, "TERM": "dumb"},
    )  # fmt: skip
    os.close(follower)
    text = read_terminal_to_the_end(leader, bytearray())
    assert child.wait(timeout=60) == 0
    assert "━" not in text and "\x1b[" not in text
    lines = text.splitlines()
    applied = next(i for i, line in enumerate(lines) if line.startswith("applied "))
    # The final count, as a line before `applied` (as in a log).
    assert lines[applied - 1].startswith("1700000001_mark: 2000")
    assert lines[applied - 1].endswith("keys")


NEWLINE_ERROR = """
def up(ctx):
    raise ValueError("boom\\nError: nothing was changed")
"""


def test_line_breaks_and_reordering_marks_from_data_cannot_pass_for_lines_or_text(
    project: Path,
) -> None:
    write_migration(project / "migrations", IDS[0], NEWLINE_ERROR)
    write_migration(
        project / "migrations", IDS[1], '"""Rename \u202efdp.exe"""\ndef up(ctx):\n    pass\n'
    )
    failed = run("up", *common(project), cwd=project)
    assert failed.returncode == 6
    error_lines = [ln for ln in failed.stderr.splitlines() if ln.startswith("Error:")]
    assert len(error_lines) == 1 and "boom\\nError: nothing was changed" in error_lines[0]
    for command in (["history"], ["status"]):
        shown = run(*command, *common(project), cwd=project).stdout
        assert "boom\\nError: nothing was changed" in shown
        assert not any(ln.startswith("Error: nothing") for ln in shown.splitlines())
    status = run("status", *common(project), cwd=project).stdout
    assert "Rename \\u202efdp.exe" in status and "\u202e" not in status
    created = run("backup", "create", "evil\n 20990101T000000Z  fake row", *common(project),
                  cwd=project)  # fmt: skip
    assert created.returncode == 0, created.stderr
    listed = run("backup", "list", *common(project), cwd=project).stdout
    assert "evil\\n 20990101T000000Z  fake row" in listed
    assert not any(ln.startswith(" 20990101T000000Z") for ln in listed.splitlines())


def test_validate_marks_a_notice_apart_and_json_gives_a_way_out_only_for_failures(
    tmp_path: Path,
) -> None:
    create_database(tmp_path / "app.db", {b"k": b"v"})
    (tmp_path / "migrations").mkdir()
    write_migration(tmp_path / "migrations", IDS[0], "def up(ctx):\n    pass\n")
    where = ["-d", "app.db", "-m", "migrations"]
    assert run("up", *where, cwd=tmp_path).returncode == 0

    shown = run("validate", "-v", IDS[0], *where, cwd=tmp_path).stdout
    marks = [ln.split()[0] for ln in shown.splitlines() if not ln.startswith("Valid:")]
    assert marks.count("note") == 1 and f"Valid: {marks.count('ok')} checks passed." in shown
    checks = json.loads(run("validate", "--json", *where, cwd=tmp_path).stdout)["checks"]
    assert checks and all(c["ok"] and c["way_out"] == "" for c in checks)


# --- the third review ----------------------------------------------------------------------------


@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_a_result_cut_short_by_a_disk_that_fills_mid_way_fails(
    project: Path, tmp_path: Path, unbuffered: str
) -> None:
    for n in range(250):  # a status --json of about 6 KB
        write_migration(project / "migrations", f"17100{n:05d}_m", "def up(ctx):\n    pass\n")
    with tmpfs(tmp_path / "small", "8k") as small:
        (small / "fill").write_bytes(b"\0" * 4096)  # room for one short write, then full
        env = {**os.environ, "PYTHONUNBUFFERED": unbuffered}
        with (small / "out.json").open("w") as sink:
            cut = subprocess.run(
                [sys.executable, "-m", "pebble_migrate", "status", "--json", *common(project)],
                cwd=project, stdout=sink, stderr=subprocess.PIPE, text=True, env=env,
                timeout=120,
            )  # fmt: skip
        written = (small / "out.json").stat().st_size
    assert cut.returncode == 1, cut.stderr
    assert "the result is missing or cut short" in cut.stderr
    assert written < 6000


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--version"], ["status", "--help"], ["status", "--check"], ["validate"]],
)
def test_every_result_lost_to_a_full_disk_is_exit_1_and_says_so(
    project: Path, args: list[str]
) -> None:
    if args == ["validate"]:  # a failing validation: exit 7 when its result is seen
        write_migration(project / "migrations", IDS[0], "def up(ctx):\n    pass\n\n\n"
                        "def validate(ctx):\n    return ['wrong']\n")  # fmt: skip
        assert run("up", IDS[0], "--no-validate", *common(project), cwd=project).returncode == 0
    with Path("/dev/full").open("w") as full:
        lost = subprocess.run(
            [sys.executable, "-m", "pebble_migrate", *args, *common(project)],
            cwd=project, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120,
        )  # fmt: skip
    assert lost.returncode == 1, (args, lost.stderr)
    assert "Error: the output could not be written to stdout (No space left on device)" in (
        lost.stderr
    )
    assert "Traceback" not in lost.stderr and "failed" not in lost.stderr


def test_help_into_a_closed_pipe_is_quiet_and_a_usage_error_keeps_its_code(
    project: Path,
) -> None:
    for args in (["--help"], ["status", "--help"]):
        piped = subprocess.run(
            f"{sys.executable} -m pebble_migrate {' '.join(args)} | true; "
            "exit ${PIPESTATUS[0]}",
            shell=True, executable="/bin/bash", cwd=project, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert piped.returncode == 0, (args, piped.stderr)
        assert piped.stderr == ""
    with Path("/dev/full").open("w") as full:
        usage = subprocess.run(
            [sys.executable, "-m", "pebble_migrate", "status", "--bogus"],
            cwd=project, stderr=full, timeout=120,
        )  # fmt: skip
    assert usage.returncode == 2


def test_a_line_break_in_a_path_never_starts_a_line_of_its_own(project: Path) -> None:
    odd = project / "db\nError: fake"
    shutil.copytree(project / "app.db", odd, symlinks=True)
    for args in (
        ["backup", "create", "-d", str(odd)],
        ["status", "-d", str(odd) + "x"],
        ["up", "--yes", "-d", str(odd), "-m", "migrations"],
        ["create", "foo", "-m", str(project / "mig\nError: x"), "--dry-run"],
    ):
        shown = run(*args, cwd=project)
        lines = (shown.stdout + shown.stderr).splitlines()
        assert not any(line.startswith("Error: fake") for line in lines), (args, lines)
        assert not any(line.startswith("Error: x") for line in lines), (args, lines)
        assert any("\\nError: " in line for line in lines), (args, lines)


def test_unicode_line_separators_and_invisible_marks_are_shown_escaped() -> None:
    from pebble_migrate.units import one_line

    assert one_line("a\u2028b\u2029c\u200bd\ufeffe") == "a\\u2028b\\u2029c\\u200bd\\ufeffe"
    assert len(one_line("x\u2028Error: y").splitlines()) == 1


def test_a_backup_directory_inside_the_database_stops_every_command_before_it_acts(
    project: Path,
) -> None:
    before = snapshot(project / "app.db")
    inside = ["--backup-dir", str(project / "app.db" / "bk")]
    for command in (
        ["up", "--yes"], ["up", "--yes", "--no-backup"], ["up", "--dry-run"],
        ["stamp", "0", "--yes"], ["status"], ["validate"], ["force-clean", "--yes"],
    ):  # fmt: skip
        refused = run(*command, *inside, *common(project), cwd=project)
        said = " ".join(refused.stderr.split())
        assert refused.returncode == 2, (command, refused.stderr)
        assert "(from --backup-dir) is inside the database directory" in said
        assert snapshot(project / "app.db") == before  # not even the state initialized


FAILS_ON_ITS_FIRST_KEY = """
def up(ctx):
    for key, value in ctx.scan(prefix=b"k:"):
        raise ValueError("failed on the first key")


def down(ctx):
    for key, value in ctx.scan(prefix=b"k:"):
        ctx.put(key, value + b"-down-ran")
"""


def test_a_migration_that_committed_nothing_is_not_rolled_back(project: Path) -> None:
    write_migration(project / "migrations", IDS[1], FAILS_ON_ITS_FIRST_KEY)
    assert run("up", IDS[0], *common(project), cwd=project).returncode == 0
    assert run("up", IDS[1], *common(project), cwd=project).returncode == 6

    cleared = run("down", "--steps", "1", "--yes", *common(project), cwd=project)

    assert cleared.returncode == 0, cleared.stderr
    assert "failed and left no writes to undo" in cleared.stdout
    assert values(project) == {b"va"}  # its down did not run over data it never changed
    shown = json.loads(run("status", "--json", *common(project), cwd=project).stdout)
    assert shown["status"] == "clean" and shown["applied"] == [IDS[0]]


def test_an_answer_of_no_is_not_a_fault_even_with_verbose(project: Path) -> None:
    code, shown = _at_the_prompt(project, b"n\n", "-v")
    assert code == 1
    assert "Error: aborted; nothing was changed." in shown
    assert "Traceback" not in shown


def test_the_library_refuses_a_backup_directory_inside_the_database_too(tmp_path: Path) -> None:
    import pebble_migrate
    from pebble_migrate.errors import UsageError

    db = create_database(tmp_path / "app.db", {b"k": b"v"})
    before = snapshot(db)
    for inside in (db / "bk", db, tmp_path / "app.db" / "." / "x" / ".." / "bk"):
        with pytest.raises(UsageError, match="is inside the database directory"):
            pebble_migrate.create_backup(db, backup_dir=inside)
    assert snapshot(db) == before
    assert not (db / "bk").exists()
