"""The CLI's own text output (cli/screen.py): columns, colour rules, escaping, and what a
real terminal receives, progress bar included (through a pseudo-terminal)."""

from __future__ import annotations

import io
import os
import pty
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pebble_migrate.cli.screen import Screen, Styled, columns, styled, wants_color, width
from pebble_migrate.testing import contents, create_database
from tests.conftest import read_terminal_to_the_end, read_terminal_until, write_migration

# --- layout ------------------------------------------------------------------------------


def test_columns_align_left_with_the_gap_and_end_without_spaces() -> None:
    lines = columns([("Database", "/d"), ("Last migration", "x"), ("Status", "")])
    assert [str(line) for line in lines] == ["Database        /d", "Last migration  x", "Status"]


def test_a_table_with_a_header_has_an_edge_and_a_bold_header() -> None:
    lines = columns([["1", "a"], ["10", "bb"]], header=["#", "id"], edge=1)
    assert [str(line) for line in lines] == [" #   id", " 1   a", " 10  bb"]
    assert lines[0].spans[1] == ("#", "bold")


def test_columns_of_nothing_are_nothing() -> None:
    assert columns([]) == []


def test_wide_characters_take_two_columns_and_combining_marks_none() -> None:
    assert width("abc") == 3
    assert width("日本") == 4
    assert width("e\u0301") == 1
    lines = columns([("日本", "x"), ("abcd", "y")])
    assert [str(line) for line in lines] == ["日本  x", "abcd  y"]


def test_styled_text_is_plain_as_a_string_and_joins() -> None:
    text = styled("Error:", "bold red") + " it broke"
    assert str(text) == "Error: it broke"
    assert text.spans == [("Error:", "bold red"), (" it broke", "")]


# --- what reaches the stream ---------------------------------------------------------------


def test_control_characters_are_shown_escaped_in_every_span() -> None:
    stream = io.StringIO()
    Screen(stream).print(Styled(("\x1b]0;pwned\x07", "red"), " and \x1b[2J"))
    assert stream.getvalue() == "\\x1b]0;pwned\\x07 and \\x1b[2J\n"


def test_a_printed_line_is_one_line_styled_and_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    stream = io.StringIO()
    Screen(stream).print(Styled(("one\ntwo", "bold red"), " plain\t!"))
    assert stream.getvalue() == "\x1b[1;31mone\\ntwo\x1b[0m plain\\t!\n"


def test_a_block_keeps_its_lines_and_escapes_control_characters() -> None:
    stream = io.StringIO()
    Screen(stream).block("Traceback:\n  line \x1b[2J\n")
    assert stream.getvalue() == "Traceback:\n  line \\x1b[2J\n"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("env", "tty", "expected"),
    [
        ({}, False, (False, False)),
        ({}, True, (True, False)),
        ({"TERM": "dumb"}, True, (False, False)),
        ({"FORCE_COLOR": "1"}, False, (True, False)),
        ({"NO_COLOR": "1"}, True, (True, True)),
        ({"FORCE_COLOR": ""}, False, (False, False)),
    ],
)
def test_colour_follows_the_terminal_and_the_usual_variables(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], tty: bool, expected: tuple[bool, bool]
) -> None:
    for name in ("FORCE_COLOR", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert wants_color(_Tty() if tty else io.StringIO()) == expected


def test_no_color_keeps_only_bold() -> None:
    text = Styled(("a", "bold red"), ("b", "green"))
    assert text.render(color=True, bold_only=True) == "\x1b[1ma\x1b[0mb"


def test_a_stream_that_cannot_say_whether_it_is_a_terminal_is_not_one() -> None:
    class Closed(io.StringIO):
        def isatty(self) -> bool:
            raise ValueError("I/O operation on closed file")

    assert wants_color(Closed()) == (False, False)
    assert not Screen(Closed()).is_terminal


# --- a real terminal -----------------------------------------------------------------------


def _on_a_terminal(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run the real CLI with stdout and stderr on a pseudo-terminal; return its exit code
    and everything the terminal received."""
    leader, follower = pty.openpty()
    full = {k: v for k, v in os.environ.items() if not k.startswith(("PEBBLE_MIGRATE_", "NO_"))}
    full.pop("FORCE_COLOR", None)
    full.update({"TERM": "xterm-256color", "COLUMNS": "100", **env})
    child = subprocess.Popen(
        [sys.executable, "-m", "pebble_migrate", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env=full,
    )
    os.close(follower)
    received = read_terminal_to_the_end(leader, bytearray())
    return child.wait(timeout=60), received


@pytest.fixture
def project(tmp_path: Path) -> Path:
    create_database(tmp_path / "app.db", {b"k:%05d" % i: b"v" for i in range(3000)})
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    write_migration(
        migrations,
        "1700000001_mark",
        "def up(ctx):\n"
        "    for key, value in ctx.scan(prefix=b'k:'):\n"
        "        ctx.put(key, value + b'!')\n",
    )
    return tmp_path


def test_status_on_a_terminal_is_coloured_and_not_with_no_color(project: Path) -> None:
    args = ["status", "-d", "app.db", "-m", "migrations"]
    code, shown = _on_a_terminal(args, project, {})
    assert code == 0
    assert "\x1b[1mPending\x1b[0m" in shown
    assert "\x1b[32mclean\x1b[0m" in shown
    code, plain = _on_a_terminal(args, project, {"TERM": "dumb"})
    assert code == 0 and "\x1b[" not in plain and "Pending" in plain


def test_a_progress_bar_is_drawn_on_a_terminal_and_the_run_ends_applied(project: Path) -> None:
    args = ["up", "-y", "-d", "app.db", "-m", "migrations", "--chunk-records", "100"]
    code, shown = _on_a_terminal(args, project, {})
    assert code == 0, shown
    assert "━" in shown and "3000/3000" in shown  # the bar and its count, drawn by rich
    assert "\x1b[32mDone:\x1b[0m 1 step(s)" in shown
    assert shown.index("3000/3000") < shown.index("Done:")
    values = contents(project / "app.db")["default"]
    assert all(v == b"v!" for k, v in values.items() if k.startswith(b"k:"))


def test_a_long_error_in_history_stays_on_one_line(tmp_path: Path) -> None:
    create_database(tmp_path / "app.db", {b"k": b"v"})
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    reason = "the value of the key was not what this migration expects " * 5
    write_migration(
        migrations, "1700000001_fails", f"def up(ctx):\n    raise ValueError({reason!r})\n"
    )
    common = ["-d", "app.db", "-m", "migrations"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_MIGRATE_")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pebble_migrate", *args, *common],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    assert cli("up", "-y").returncode == 6
    shown = cli("history").stdout
    (row,) = [line for line in shown.splitlines() if "1700000001_fails" in line]
    assert reason.strip() in row and len(row) > 300


def test_ctrl_c_takes_the_bar_off_the_screen_before_the_interruption_message(
    tmp_path: Path,
) -> None:
    create_database(tmp_path / "app.db", {b"s:%05d" % i: b"v" for i in range(3000)})
    (tmp_path / "migrations").mkdir()
    write_migration(
        tmp_path / "migrations",
        "1700000001_slow",
        "import time\n"
        "def up(ctx):\n"
        "    for key, value in ctx.scan(prefix=b's:'):\n"
        "        time.sleep(0.001)  # the workload: a slow transform\n"
        "        ctx.put(key, value + b'!')\n",
    )
    leader, follower = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "pebble_migrate", "up", "-y", "-d", "app.db", "-m", "migrations",
         "--chunk-records", "100"],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "100"},
    )  # fmt: skip
    os.close(follower)
    shown = bytearray()
    bar = "━".encode()
    read_terminal_until(leader, shown, lambda got: bar in got and b"/3000" in got[got.find(bar) :])
    child.send_signal(signal.SIGINT)
    text = read_terminal_to_the_end(leader, shown)
    assert child.wait(timeout=60) == 130
    message = text.index("interrupted at b's:")
    after_the_bar = text[text.rindex("━", 0, message) : message]
    # rich erases the bar's line (cursor up, erase line) instead of leaving its last,
    # stale count above the message.
    assert "\x1b[1A\x1b[2K" in after_the_bar
