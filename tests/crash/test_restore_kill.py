"""SIGKILL a restore everywhere: the target is always the complete old database or the
complete restored one, and the next command cleans up (keeping the old one when swapped).

The real CLI runs in a child process. `PEBBLE_MIGRATE_KILL_AT=any:N` makes it SIGKILL
itself at the Nth instrumented point; N goes 1, 2, 3, ... until a run completes. Then a
few kills come from outside, at random moments.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pebble_migrate.backup import BackupInfo, create_backup
from pebble_migrate.durable import exchange
from pebble_migrate.restore import recover
from pebble_migrate.testing import Contents, contents
from tests.conftest import Invoke
from tests.test_backup import filled_db, initialize, put
from tests.test_restore import PEBBLE, run_restore

pytestmark = pytest.mark.slow

# Imports the CLI first (most of a child's life), says so, then restores when told to:
# the parent's random kills then land in the restore, not in Python's start-up.
DRIVER = """
import sys
from pebble_migrate.cli import main
print("ready", flush=True)
sys.stdin.readline()
sys.argv = ["pebble-migrate", *sys.argv[1:]]
main()
"""


class Scene:
    """An old database, a backup with different content, and a target to reset."""

    def __init__(self, root: Path) -> None:
        self.original = filled_db(root / "original", flushes=12, per_flush=30)
        initialize(self.original)
        self.backup: BackupInfo = create_backup(self.original, backup_dir=root / "backups")
        self.new: Contents = contents(self.backup.path / "db", state=True)
        put(self.original, {b"k-00-0000": b"changed after the backup", b"late": b"1"})
        self.old: Contents = contents(self.original, state=True)
        assert self.old != self.new
        self.home = root / "site"
        self.target = self.home / "db"
        (root / "a").mkdir()
        (root / "b").mkdir()
        self.exchange_works = exchange(root / "a", root / "b")

    def reset(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir()
        shutil.copytree(self.original, self.target)

    def names(self) -> list[str]:
        return sorted(os.listdir(self.home))

    def check(
        self, invoke: Invoke, what: str, *, discard: bool = False, fallback: bool = False
    ) -> str:
        """Assert the invariant after a kill, recover, assert the cleanup; return which
        database the target holds ("old" or "new")."""
        before = None
        if self.target.exists():
            before = contents(self.target, state=True)
            assert before in (self.old, self.new), f"{what}: the target is half-restored"
        else:
            # Only the two-renames fallback has this window, and its journal covers it.
            assert fallback or not self.exchange_works, f"{what}: the target went missing"
            assert ".db.restore-journal.json" in self.names(), f"{what}: target lost"
        recover(self.target)
        after = contents(self.target, state=True)
        assert after in (self.old, self.new), what
        if before is not None:
            assert after == before, f"{what}: recovery changed which database is there"
        leftovers = [n for n in self.names() if ".restore" in n]
        assert leftovers == [], f"{what}: left {leftovers}"
        kept = [n for n in self.names() if n.startswith("db.pre-restore-")]
        if after == self.new and not discard:
            assert len(kept) == 1, f"{what}: the replaced database was not kept ({kept})"
            assert contents(self.home / kept[0], state=True) == self.old, what
        else:
            assert kept == [], f"{what}: kept {kept}"
        assert self.names() == ["db", *kept], what
        status = invoke("status", "-d", str(self.target))  # the next command just works
        assert status.exit_code == 0, f"{what}: {status.stderr}"
        return "new" if after == self.new else "old"


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    return Scene(tmp_path_factory.mktemp("kill"))


def test_kill_at_every_point_of_a_restore(scene: Scene, invoke: Invoke) -> None:
    outcomes: list[str] = []
    for n in range(1, 200):
        scene.reset()
        run = run_restore(scene.backup.path, scene.target, kill_at=f"any:{n}")
        if run.returncode == 0:
            assert contents(scene.target, state=True) == scene.new
            break
        assert run.returncode == -signal.SIGKILL, f"point {n}: {run.stderr}"
        outcomes.append(scene.check(invoke, f"kill point {n}"))
    else:
        pytest.fail("the restore never completed")
    print(f"{len(outcomes)} kill points: {outcomes}")
    assert len(outcomes) >= 20, f"only {len(outcomes)} kill points"
    # Spread through it: early kills leave the old database, late ones the restored one.
    assert outcomes[0] == "old"
    assert outcomes[-1] == "new"
    assert outcomes.count("new") >= 3


@pytest.mark.parametrize(
    ("point", "discard", "no_exchange"),
    [
        ("restore-swapped:1", True, False),
        ("restore-in-place:1", True, False),
        ("restore-settled:1", True, False),
        ("restore-journal:1", False, True),
        ("json-written:2", False, True),  # the journal rewritten for the fallback
        ("restore-journal-rename:1", False, True),
        ("restore-moved-away:1", False, True),
        ("restore-moved-away:1", True, True),
        ("restore-in-place:1", False, True),
        ("restore-in-place:1", True, True),
        ("restore-settled:1", True, True),
        ("restore-journal-removed:1", False, True),
    ],
)
def test_kill_in_the_swap_with_discard_and_without_exchange(
    scene: Scene, invoke: Invoke, point: str, discard: bool, no_exchange: bool
) -> None:
    scene.reset()
    extra = ["--discard-current"] if discard else []
    run = run_restore(
        scene.backup.path, scene.target, *extra, kill_at=point, no_exchange=no_exchange
    )
    assert run.returncode == -signal.SIGKILL, run.stderr
    what = f"{point} discard={discard} no_exchange={no_exchange}"
    scene.check(invoke, what, discard=discard, fallback=no_exchange)


def _start(scene: Scene) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_MIGRATE_")}
    args = ["backup", "restore", str(scene.backup.path), "-d", str(scene.target), "--force"]
    child = subprocess.Popen(
        [PEBBLE[0], "-c", DRIVER, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child


def _go(child: subprocess.Popen[str]) -> float:
    assert child.stdin is not None
    child.stdin.write("\n")
    child.stdin.flush()
    return time.monotonic()


def test_kill_at_random_moments(scene: Scene, invoke: Invoke) -> None:
    # How long a whole restore takes here, once the CLI is imported.
    scene.reset()
    child = _start(scene)
    started = _go(child)
    assert child.wait(timeout=120) == 0
    duration = time.monotonic() - started
    assert contents(scene.target, state=True) == scene.new

    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    killed = 0
    for attempt in range(10):
        scene.reset()
        child = _start(scene)
        delay = rng.uniform(0, 0.8 * duration)
        _go(child)
        time.sleep(delay)  # not synchronisation: this is the random moment of the kill
        os.kill(child.pid, signal.SIGKILL)
        code = child.wait(timeout=120)
        killed += code == -signal.SIGKILL
        what = f"seed {seed} attempt {attempt}: killed after {delay:.3f}s of {duration:.3f}s"
        print(what, code, scene.check(invoke, what))
    assert killed >= 1, f"seed {seed}: every restore finished before its kill"


def test_a_killed_run_can_be_followed_by_a_full_restore(scene: Scene) -> None:
    scene.reset()
    assert run_restore(scene.backup.path, scene.target, kill_at="restore-swapped:1").returncode
    done = subprocess.run(
        [*PEBBLE, "backup", "restore", str(scene.backup.path), str(scene.target), "--force"],
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_MIGRATE_")},
    )
    assert done.returncode == 0, done.stderr
    assert "First finished an interrupted restore" in done.stderr
    assert contents(scene.target, state=True) == scene.new
    # Two pre-restore copies: the interrupted run's (old) and this run's (the restored one).
    kept = sorted(n for n in scene.names() if n.startswith("db.pre-restore-"))
    assert len(kept) == 2
