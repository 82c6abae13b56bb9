"""Every kill point, at its first, second, middle and last visit, in every path that has one.

For each scenario, a reference run counts how often each point is passed
(`PEBBLE_MIGRATE_KILL_COUNT`) and gives the content after (H1); the content before is H0.
Then, for each point and occurrence, a fresh copy of the set-up is run with
`PEBBLE_MIGRATE_KILL_AT=point:n`, which SIGKILLs the process there, the tool's own recovery
runs (the command again, `status` to settle a restore, ...), and the content, read with a
checked iterator, must be H0 or H1 as the scenario allows. A point that no scenario
reaches fails the sweep.

`PEBBLE_MIGRATE_SWEEP_TALLY=FILE` writes the counts of the run (for docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pebble_migrate.faults import POINTS
from pebble_migrate.testing import contents, create_database

pytestmark = pytest.mark.slow

MID = "1700000000_tag"
KEYS = {b"k:%03d" % i: b"v%d" % (i % 5) for i in range(60)}

# Not idempotent: a key processed twice shows. Two scans and a loose write, so that resume
# skips finished scans, continues the open one and replays the loose write exactly once.
TAG = """
import os
import signal


def up(ctx):
    ctx.put(b"meta:runs", b"%d" % (int(ctx.get(b"meta:runs", b"0")) + 1))
    for key, value in ctx.scan(prefix=b"k:"):
        if os.environ.get("SWEEP_FAIL") == key.decode():
            raise RuntimeError("failing on purpose")
        if os.environ.get("SWEEP_SIGINT") == key.decode():
            os.kill(os.getpid(), signal.SIGINT)
        ctx.put(key, value + b"+")
    for key, value in ctx.scan(prefix=b"k:", name="index"):
        ctx.put(b"i:" + value + b":" + key, b"")


def down(ctx):
    reached = ctx.partial or {}
    for key, value in ctx.scan(prefix=b"k:"):
        if ctx.partial is not None and (reached.get("default") is None or key > reached["default"]):
            break
        ctx.put(key, value[:-1])
    for key, _ in ctx.scan(prefix=b"i:", name="index"):
        ctx.delete(key)
    if ctx.partial is None or "default" in reached:
        ctx.put(b"meta:runs", b"%d" % (int(ctx.get(b"meta:runs")) - 1))


def validate(ctx):
    return []
"""

# Idempotent (it sets a value from the key alone), for `up --from-start`.
SET = """
rerunnable = True


def up(ctx):
    for key, _ in ctx.scan(prefix=b"k:"):
        ctx.put(key, b"set-" + key)
"""

APP = """
import sys
import pebble_migrate as pm
import rocksdict

opts = pm.default_startup_options()
opts.run_migrations = True
opts.backup_enabled = True
opts.check_disk_space = False
opts.registry = pm.load_migrations(sys.argv[2])
opts.chunk_policy = pm.ChunkPolicy(records=7)
db = rocksdict.Rdict(sys.argv[1])
try:
    pm.check_and_run_startup_migrations(db, sys.argv[1], opts)
finally:
    db.close()
"""


def digest(path: Path) -> str:
    """A content hash over every key and value of the app's data, read with a checked
    iterator (the migration state is left out)."""
    data = contents(path)["default"]
    hashed = hashlib.sha256()
    for key in sorted(data):
        hashed.update(b"%d:%s%d:%s" % (len(key), key, len(data[key]), data[key]))
    return hashed.hexdigest()


def cli(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI on the scenario's database (in a child process)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pebble_migrate",
            *args,
            "-d",
            str(root / "app.db"),
            "-m",
            str(root / "migrations"),
        ],
        cwd=root,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@dataclass
class Scenario:
    """One command whose kill points are swept."""

    name: str
    prepare: Callable[[Path], None]
    argv: Callable[[Path], list[str]]
    recover: Callable[[Path], None]
    outcomes: str  # "after" (recovery must reach H1), "either" (H0 or H1), "before" (H0)
    env: dict[str, str] = field(default_factory=dict)


def _project(root: Path, body: str = TAG) -> None:
    create_database(root / "app.db", KEYS)
    (root / "migrations").mkdir()
    (root / "migrations" / f"{MID}.py").write_text(textwrap.dedent(body))


def _applied(root: Path) -> None:
    _project(root)
    done = cli(root, "up", "--no-backup", "--chunk-records", "7")
    assert done.returncode == 0, done.stderr


def _up(*extra: str) -> Callable[[Path], list[str]]:
    return lambda root: ["up", "--chunk-records", "7", *extra]


def _again(*args: str) -> Callable[[Path], None]:
    def recover(root: Path) -> None:
        done = cli(root, *args)
        assert done.returncode == 0, (args, done.stderr)

    return recover


def _finish_rerun(root: Path) -> None:
    again = cli(root, "rerun", MID, "--yes", "--no-backup")
    if again.returncode != 0:  # stopped after the rollback: the hint says `up`
        done = cli(root, "up", "--no-backup")
        assert done.returncode == 0, (again.stderr, done.stderr)


def _settle(root: Path) -> None:
    """Let the next command settle whatever the killed one left (a restore journal)."""
    assert cli(root, "status").returncode in (0, 3, 4)
    assert not list(root.glob(".*restore-journal*"))


def _backups_verify(root: Path) -> None:
    _settle(root)
    listed = json.loads(cli(root, "backup", "list", "--json").stdout)
    for entry in listed:
        if entry["kind"] == "backup":
            verified = cli(root, "backup", "verify", entry["id"])
            assert verified.returncode == 0, verified.stderr


def _failed_then_fixed(root: Path) -> None:
    _settle(root)
    assert cli(root, "force-clean", "--yes").returncode == 0
    done = cli(root, "up", "--no-backup")
    assert done.returncode == 0, done.stderr


def _with_backup_of_before(root: Path) -> None:
    _project(root)
    aside = root / "migration.py"
    (root / "migrations" / f"{MID}.py").rename(aside)
    assert cli(root, "up", "--no-backup").returncode == 0  # the state, and its database id
    aside.rename(root / "migrations" / f"{MID}.py")
    assert cli(root, "backup", "create", "before").returncode == 0
    assert cli(root, "up", "--no-backup").returncode == 0


def _dirty(root: Path) -> None:
    _project(root)
    failed = cli(root, "up", "--no-backup", "--chunk-records", "7", env={"SWEEP_FAIL": "k:030"})
    assert failed.returncode == 6, failed.stderr


def _history_gap(root: Path) -> None:
    _applied(root)
    import rocksdict

    db = rocksdict.Rdict(str(root / "app.db"))
    try:
        cf = db.get_column_family("pebble_migrate")
        del cf[b"history/%012d" % 1]
        del cf
    finally:
        db.close()


def _many_backups(root: Path) -> None:
    _project(root)
    for _ in range(3):
        assert cli(root, "backup", "create").returncode == 0
    first = json.loads(cli(root, "backup", "list", "--json").stdout)[0]["id"]
    for _ in range(2):
        assert cli(root, "backup", "restore", first, "--force").returncode == 0


def _partial_set(root: Path) -> None:
    _project(root, SET)
    stopped = cli(
        root,
        "up",
        "--no-backup",
        "--chunk-records",
        "7",
        env={"PEBBLE_MIGRATE_KILL_AT": "chunk-after-commit:3"},
    )
    assert stopped.returncode == -signal.SIGKILL


def _run_app(root: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(root / "app.py"), str(root / "app.db"), str(root / "migrations")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


SCENARIOS = [
    Scenario("up", _project, _up(), _again("up"), "after"),
    Scenario("up-interrupted", _project, _up(), _again("up"), "after", {"SWEEP_SIGINT": "k:030"}),
    Scenario("up-failing", _project, _up(), _failed_then_fixed, "after", {"SWEEP_FAIL": "k:030"}),
    Scenario(
        "up-from-start",
        _partial_set,
        lambda root: ["up", "--from-start", "--yes", "--chunk-records", "7"],
        _again("up"),
        "after",
    ),
    Scenario(
        "down",
        _applied,
        lambda root: ["down", "0", "--yes", "--chunk-records", "7"],
        _again("down", "0", "--yes"),
        "after",
    ),
    Scenario(
        "rerun",
        _applied,
        lambda root: ["rerun", MID, "--yes", "--chunk-records", "7"],
        _finish_rerun,
        "after",
    ),
    Scenario(
        "startup",
        _project,
        lambda root: [sys.executable, str(root / "app.py")],
        _run_app,
        "after",
    ),
    Scenario("backup", _applied, lambda root: ["backup", "create"], _backups_verify, "before"),
    Scenario(
        "backup-copy",
        _applied,
        lambda root: ["backup", "create", "--copy"],
        _backups_verify,
        "before",
    ),
    Scenario(
        "backup-archive",
        _applied,
        lambda root: ["backup", "create", "--compress"],
        _backups_verify,
        "before",
    ),
    Scenario(
        "restore",
        _with_backup_of_before,
        lambda root: ["backup", "restore", _first_backup(root), "--force"],
        _settle,
        "either",
    ),
    Scenario(
        "restore-two-renames",
        _with_backup_of_before,
        lambda root: ["backup", "restore", _first_backup(root), "--force"],
        _settle,
        "either",
        {"PEBBLE_MIGRATE_NO_RENAME_EXCHANGE": "1"},
    ),
    Scenario(
        "force-clean", _dirty, lambda root: ["force-clean", "--yes"], _failed_then_fixed, "after"
    ),
    Scenario(
        "repair",
        _history_gap,
        lambda root: ["repair", "--yes"],
        _again("repair", "--yes"),
        "before",
    ),
    Scenario(
        "cleanup",
        _many_backups,
        lambda root: ["backup", "cleanup", "--keep", "1", "--force"],
        _backups_verify,
        "before",
    ),
]


def _first_backup(root: Path) -> str:
    listed = json.loads(cli(root, "backup", "list", "--json").stdout)
    return str(next(e["id"] for e in listed if e["kind"] == "backup"))


def _launch(
    scenario: Scenario, root: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    argv = scenario.argv(root)
    if argv[0] == sys.executable:
        return subprocess.run(
            [*argv, str(root / "app.db"), str(root / "migrations")],
            env={**os.environ, **scenario.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    return cli(root, *argv, env={**scenario.env, **env})


def occurrences(count: int) -> list[int]:
    """The visits to kill at: the first, second, middle and last."""
    return sorted({n for n in (1, 2, (count + 1) // 2, count) if 1 <= n <= count})


TALLY: dict[str, object] = {"kills": 0, "points": {}, "scenarios": {}}


@pytest.fixture(scope="module")
def reached() -> dict[str, int]:
    """Which points some scenario reached (filled by the scenario tests)."""
    return {}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_killed_at_every_point_recovers_to_before_or_after(
    tmp_path: Path, scenario: Scenario, reached: dict[str, int]
) -> None:
    base = tmp_path / "base"
    base.mkdir()
    scenario.prepare(base)
    (base / "app.py").write_text(APP)
    before = digest(base / "app.db")

    reference = tmp_path / "reference"
    shutil.copytree(base, reference, symlinks=True)
    counts_file = tmp_path / "counts.json"
    ran = _launch(scenario, reference, {"PEBBLE_MIGRATE_KILL_COUNT": str(counts_file)})
    assert ran.returncode in (0, 6, 130), ran.stderr
    scenario.recover(reference)
    after = digest(reference / "app.db")
    counts: dict[str, int] = json.loads(counts_file.read_text())
    assert counts, f"{scenario.name} passes no kill point"

    kills = 0
    for point, count in sorted(counts.items()):
        reached[point] = reached.get(point, 0) + count
        for n in occurrences(count):
            trial = tmp_path / f"{point}-{n}"
            shutil.copytree(base, trial, symlinks=True)
            killed = _launch(scenario, trial, {"PEBBLE_MIGRATE_KILL_AT": f"{point}:{n}"})
            assert killed.returncode == -signal.SIGKILL, (point, n, killed.stderr)
            scenario.recover(trial)
            got = digest(trial / "app.db")
            allowed = {"after": {after}, "before": {before}, "either": {before, after}}
            assert got in allowed[scenario.outcomes], (scenario.name, point, n)
            kills += 1
            shutil.rmtree(trial)
    TALLY["kills"] = int(TALLY["kills"]) + kills  # type: ignore[call-overload]
    TALLY["scenarios"][scenario.name] = kills  # type: ignore[index]
    for point, count in counts.items():
        TALLY["points"][point] = len(occurrences(count))  # type: ignore[index]


def test_every_kill_point_is_reached(reached: dict[str, int]) -> None:
    """Runs after the scenarios (same module): a point no scenario reaches is untested."""
    missing = sorted(set(POINTS) - set(reached))
    assert not missing, f"kill points never reached: {missing}"


def test_every_kill_point_in_the_code_is_declared() -> None:
    source = Path(__file__).resolve().parents[2] / "src" / "pebble_migrate"
    used = {
        name
        for path in source.rglob("*.py")
        for name in re.findall(r'kill_point\("([^"]+)"\)', path.read_text())
    }
    assert used == set(POINTS)


def teardown_module() -> None:
    target = os.environ.get("PEBBLE_MIGRATE_SWEEP_TALLY")
    if target:
        Path(target).write_text(json.dumps(TALLY, indent=2, sort_keys=True))
