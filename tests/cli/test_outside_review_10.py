"""What the outside review of issue 10 found, each pinned by a test through a real process.

(The `project` fixture comes from tests/cli/test_operator.py, through tests/cli/conftest.py.)
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pebble_migrate.testing import create_database
from tests.cli.test_operator import BODY, IDS, common, run, values
from tests.conftest import snapshot, write_migration

FAILS_AT_15 = """
def up(ctx):
    for key, value in ctx.scan(prefix=b"k:"):
        if key == b"k:15":
            raise ValueError("bad")
        ctx.put(key, value + b"x")


def down(ctx):
    for key, value in ctx.scan(prefix=b"k:"):
        ctx.put(key, value.removesuffix(b"x"))
"""


def test_stamp_takes_dependencies_as_up_version_does(project: Path) -> None:
    body = f"dependencies = [{IDS[2]!r}]\n" + textwrap.dedent(BODY.format(tag="e"))
    write_migration(project / "migrations", "1690000000_early", body)
    before = snapshot(project / "app.db")

    refused = run("stamp", "1690000000", "--yes", *common(project), cwd=project)

    assert refused.returncode == 1
    assert "1700000003_third lie above it but migrations at or below it depend on them" in (
        " ".join(refused.stderr.split())
    )
    assert snapshot(project / "app.db") == before


def test_down_steps_1_undoes_only_the_failed_migration(project: Path) -> None:
    write_migration(project / "migrations", IDS[2], FAILS_AT_15)
    assert run("up", "--chunk-records", "4", *common(project), cwd=project).returncode == 6

    done = run("down", "--steps", "1", "--yes", "--no-backup", *common(project), cwd=project)

    assert done.returncode == 0, done.stderr
    assert values(project) == {b"vab"}  # the second migration's work stays
    shown = json.loads(run("status", "--json", *common(project), cwd=project).stdout)
    assert shown["applied"] == list(IDS[:2]) and shown["status"] == "clean"


def test_down_steps_on_an_interrupted_run_is_refused_as_not_clean(project: Path) -> None:
    direct = "import os\nimport signal\n\n\ndef up(ctx):\n    ctx.db[b'direct'] = b'1'\n"
    direct += (
        "    os.kill(os.getpid(), signal.SIGINT)\n    for key, value in ctx.scan(prefix=b'k:'):\n"
    )
    direct += "        ctx.put(key, value)\n"
    write_migration(project / "migrations", IDS[0], direct)
    assert run("up", IDS[0], *common(project), cwd=project).returncode == 130
    before = snapshot(project / "app.db")

    refused = run("down", "--steps", "1", "--yes", *common(project), cwd=project)

    assert refused.returncode == 4, refused.stderr
    assert "only 0 applied" not in refused.stderr
    assert snapshot(project / "app.db") == before


def test_an_interrupted_down_steps_names_the_version_to_finish_with(project: Path) -> None:
    pausing = BODY.format(tag="c").replace(
        'ctx.put(key, value.removesuffix(b"c"))',
        'ctx.put(key, value.removesuffix(b"c"))\n        if key == b"k:10":\n'
        "            import os, signal\n            os.kill(os.getpid(), signal.SIGINT)",
    )
    write_migration(project / "migrations", IDS[2], pausing)
    assert run("up", *common(project), cwd=project).returncode == 0

    stopped = run("down", "--steps", "1", "--yes", "--no-backup", "--chunk-records", "3",
                  *common(project), cwd=project)  # fmt: skip

    assert stopped.returncode == 130
    assert "Run `pebble-migrate down 1700000002` to finish." in stopped.stderr


def test_the_stale_check_warning_follows_the_order_migrations_were_applied(
    project: Path,
) -> None:
    checked = BODY.format(tag="b") + (
        "\n\ndef validate(ctx):\n"
        "    return [k for k, v in ctx.scan(prefix=b'k:') if not v.endswith(b'b')]\n"
    )
    write_migration(project / "migrations", IDS[1], checked)
    assert run("up", IDS[1], *common(project), cwd=project).returncode == 0
    write_migration(project / "migrations", "1700000000_zero", BODY.format(tag="z"))
    up = run("up", IDS[1], "--allow-out-of-order", "--no-validate", *common(project), cwd=project)
    assert up.returncode == 0, up.stderr

    failed = run("validate", IDS[1], *common(project), cwd=project)

    said = " ".join(failed.stderr.split())
    assert failed.returncode == 7
    assert "Warning: 1700000000_zero applied after it" in said  # lower version, ran later


def test_sigterm_at_a_prompt_says_what_happened(project: Path) -> None:
    primary, secondary = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "pebble_migrate", "stamp", "0", *common(project)],
        cwd=project, stdin=secondary, stdout=secondary, stderr=secondary,
        start_new_session=True,
    )  # fmt: skip
    os.close(secondary)
    seen = b""
    while b"?" not in seen:  # the question is on the screen
        chunk = os.read(primary, 4096)
        assert chunk, seen
        seen += chunk
    before = snapshot(project / "app.db")
    child.send_signal(signal.SIGTERM)
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    assert child.wait(timeout=60) == 143
    os.close(primary)
    text = seen.decode(errors="replace")
    assert "Error: interrupted by SIGTERM." in text
    assert "`pebble-migrate status`" in text
    assert snapshot(project / "app.db") == before


def test_ctrl_c_while_the_cli_loads_is_no_traceback(tmp_path: Path) -> None:
    # Stand-in for a Ctrl+C that lands while the CLI's modules load.
    program = textwrap.dedent(
        """
        import sys

        class Interrupt:
            def find_spec(self, name, path=None, target=None):
                if name == "pebble_migrate.cli":
                    raise KeyboardInterrupt
                return None

        sys.meta_path.insert(0, Interrupt())
        from pebble_migrate._entry import main
        main()
        """
    )
    ran = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert ran.returncode == 130
    assert ran.stderr == "Error: interrupted before anything was done.\n"


def test_a_deleted_working_directory_with_absolute_paths_works(project: Path) -> None:
    gone = project / "gone"
    gone.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_MIGRATE_")}
    program = (
        "import os, sys; os.chdir(sys.argv[1]); os.rmdir(sys.argv[1]); "
        "sys.argv = ['pebble-migrate', *sys.argv[2:]]; "
        "from pebble_migrate._entry import main; main()"
    )
    ran = subprocess.run(
        [sys.executable, "-c", program, str(gone), "status", "--json", *common(project)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["initialized"] is False


def test_help_into_a_closed_pipe_says_nothing(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "pebble_migrate", "status", "--help"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    err = child.stderr.read()
    child.wait(timeout=60)
    assert b"Error" not in err and b"Traceback" not in err


@pytest.mark.parametrize("command", [["status"], ["history"], ["create", "x", "--dry-run"]])
def test_a_bad_backup_older_than_is_refused_up_front_naming_the_file(
    project: Path, command: list[str]
) -> None:
    (project / "pyproject.toml").write_text('[tool.pebble-migrate]\nbackup-older-than = "30x"\n')

    refused = run(*command, *common(project), cwd=project)

    assert refused.returncode == 2
    assert "pyproject.toml: [tool.pebble-migrate] backup-older-than must be like" in (
        refused.stderr
    )


def test_up_create_dry_run_under_a_file_refuses_as_the_real_run_does(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    (tmp_path / "migrations").mkdir()
    for extra in (["--dry-run"], []):
        refused = run("up", "--create", *extra, "-d", "afile/x", "-m", "migrations", cwd=tmp_path)
        assert refused.returncode == 2
        assert "afile is a file, not a directory" in refused.stderr
    assert (tmp_path / "afile").is_file()


def test_terminal_escapes_in_a_migrations_error_are_shown_escaped(tmp_path: Path) -> None:
    create_database(tmp_path / "app.db", {b"k": b"\x1b]0;pwned\x07\x1b[2J"})
    (tmp_path / "migrations").mkdir()
    write_migration(
        tmp_path / "migrations",
        "1700000001_bad",
        "def up(ctx):\n    for k, v in ctx.scan(prefix=b'k'):\n"
        "        raise ValueError('bad record ' + v.decode())\n",
    )
    argv = ["-d", "app.db", "-m", "migrations"]

    failed = run("up", *argv, cwd=tmp_path)
    shown = run("status", *argv, cwd=tmp_path).stdout + run("history", *argv, cwd=tmp_path).stdout

    assert failed.returncode == 6
    for text in (failed.stderr, shown):
        assert "\x1b" not in text and "\x07" not in text
        assert "\\x1b]0;pwned\\x07" in text
