"""The I/O fault matrix: one failing system call, in every phase, then recovery.

An LD_PRELOAD shim (faultshim.c, compiled here) makes the N-th call of one group (write,
fsync, rename, link, open, unlink) that touches the database or its backups fail with
ENOSPC, EIO or EDQUOT, across every thread, RocksDB's included. For each phase (backup,
migrate, rollback, restore, validate, cleanup) and group, a counting run finds how many
such calls the phase makes; then each cell fails one of them and checks: a documented exit
code, `Error: ...` and no traceback, `status` still works, and once the fault is gone the
tool's own recovery brings the data to before or after the phase, exactly.

CI runs each (phase, group) cell once, at the middle call, with the errno taking turns;
`PEBBLE_MIGRATE_FAULTS=all` runs every errno at the first, middle and last call (the figures
in docs/reliability.md). Real full disks (a tmpfs) and EFBIG (RLIMIT_FSIZE) have their own
cells. The shim needs a C compiler; without one the matrix is skipped, saying why.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import tmpfs
from tests.crash.test_kill_sweep import (
    MID,
    TAG,
    _applied,
    _many_backups,
    _project,
    _with_backup_of_before,
    cli,
    digest,
)

pytestmark = pytest.mark.slow

GROUPS = ("write", "fsync", "rename", "link", "open", "unlink")
ERRNOS = {"ENOSPC": errno.ENOSPC, "EIO": errno.EIO, "EDQUOT": errno.EDQUOT}
DOCUMENTED = {0, 1, 2, 3, 4, 5, 6, 7, 130, 143}
EVERYTHING = os.environ.get("PEBBLE_MIGRATE_FAULTS") == "all"
TALLY: dict[str, int] = {}


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the fault shim (cc/gcc): the matrix cannot run here")
    out = tmp_path_factory.mktemp("shim") / "shim.so"
    source = Path(__file__).with_name("faultshim.c")
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(out), str(source), "-ldl"], check=True
    )
    return out


@dataclass
class Phase:
    """A command whose I/O is made to fail, and how the tool recovers from that."""

    name: str
    prepare: Callable[[Path], None]
    argv: Callable[[Path], list[str]]
    recover: Callable[[Path], None]
    outcomes: str  # "after": recovery reaches the phase's result; "before"; "either"


def _status(root: Path) -> dict[str, object]:
    result = cli(root, "status", "--json")
    assert result.returncode in (0, 3, 4), result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


def _resume(*argv: str) -> Callable[[Path], None]:
    def recover(root: Path) -> None:
        if _status(root)["status"] == "dirty":
            assert cli(root, "force-clean", "--yes").returncode == 0
        done = cli(root, *argv)
        assert done.returncode == 0, (argv, done.stderr)

    return recover


def _backups_hold(root: Path) -> None:
    _status(root)
    done = cli(root, "backup", "create")
    assert done.returncode == 0, done.stderr
    for entry in json.loads(cli(root, "backup", "list", "--json").stdout):
        if entry["kind"] == "backup":
            verified = cli(root, "backup", "verify", entry["id"])
            assert verified.returncode == 0, verified.stderr


def _restored(root: Path) -> None:
    _status(root)  # settles a restore left halfway
    assert not list(root.glob(".*restore-journal*"))


def _first_backup(root: Path) -> str:
    listed = json.loads(cli(root, "backup", "list", "--json").stdout)
    return str(next(e["id"] for e in listed if e["kind"] == "backup"))


PHASES = [
    Phase("backup", _applied, lambda r: ["backup", "create", "--copy"], _backups_hold, "before"),
    Phase(
        "migrate",
        _project,
        lambda r: ["up", "--no-backup", "--chunk-records", "7"],
        _resume("up", "--no-backup"),
        "after",
    ),
    Phase(
        "rollback",
        _applied,
        lambda r: ["down", "0", "--yes", "--no-backup", "--chunk-records", "7"],
        _resume("down", "0", "--yes", "--no-backup"),
        "after",
    ),
    Phase(
        "restore",
        _with_backup_of_before,
        lambda r: ["backup", "restore", _first_backup(r), "--force"],
        _restored,
        "either",
    ),
    Phase("validate", _applied, lambda r: ["validate", "--deep"], lambda r: None, "before"),
    Phase(
        "cleanup",
        _many_backups,
        lambda r: ["backup", "cleanup", "--keep", "1", "--force"],
        _backups_hold,
        "before",
    ),
]


def _faulty(shim: Path, root: Path, phase: Phase, group: str, nth: int, code: int, log: Path):
    env = {
        "LD_PRELOAD": str(shim),
        "FAULT_CALL": group,
        "FAULT_PREFIX": str(root),
        "FAULT_NTH": str(nth),
        "FAULT_ERRNO": str(code),
        "FAULT_LOG": str(log),
    }
    return cli(root, *phase.argv(root), env=env)


def _count(shim: Path, base: Path, phase: Phase, group: str, work: Path) -> int:
    trial = work / f"count-{group}"
    shutil.copytree(base, trial, symlinks=True)
    log = work / f"count-{group}.log"
    _faulty(shim, trial, phase, group, 0, 0, log)
    counts = [int(line.split()[1]) for line in log.read_text().splitlines() if "count" in line]
    shutil.rmtree(trial)
    return max(counts, default=0)


def _cells(count: int, turn: int) -> list[tuple[str, int]]:
    names = list(ERRNOS)
    if not EVERYTHING:
        return [(names[turn % len(names)], max(1, (count + 1) // 2))]
    nths = sorted({1, (count + 1) // 2, count})
    return [(name, n) for name in names for n in nths]


@pytest.mark.parametrize("phase", PHASES, ids=[p.name for p in PHASES])
def test_a_failing_system_call_is_reported_and_recovered_from(
    shim: Path, tmp_path: Path, phase: Phase
) -> None:
    base = tmp_path / "base"
    base.mkdir()
    phase.prepare(base)
    before = digest(base / "app.db")
    reference = tmp_path / "reference"
    shutil.copytree(base, reference, symlinks=True)
    ran = cli(reference, *phase.argv(reference))
    assert ran.returncode in (0, 7), ran.stderr
    after = digest(reference / "app.db")
    allowed = {"after": {after}, "before": {before}, "either": {before, after}}[phase.outcomes]

    for turn, group in enumerate(GROUPS):
        count = _count(shim, base, phase, group, tmp_path)
        if count == 0:
            TALLY[f"{phase.name}/{group}: not used"] = 1
            continue
        for name, nth in _cells(count, turn):
            trial = tmp_path / f"{group}-{name}-{nth}"
            shutil.copytree(base, trial, symlinks=True)
            log = tmp_path / f"{group}-{name}-{nth}.log"
            result = _faulty(shim, trial, phase, group, nth, ERRNOS[name], log)
            where = (phase.name, group, name, nth)
            assert result.returncode in DOCUMENTED, (where, result.returncode, result.stderr)
            assert "Traceback" not in result.stderr, (where, result.stderr)
            if result.returncode not in (0, 7):
                assert "Error: " in result.stderr, (where, result.stderr)
            phase.recover(trial)
            assert digest(trial / "app.db") in allowed, where
            TALLY[f"{phase.name}/{group}/{name}"] = TALLY.get(f"{phase.name}/{group}/{name}", 0) + 1
            shutil.rmtree(trial)


SYNCING = [p for p in PHASES if p.name != "validate"]  # validate reads only: no fsync


@pytest.mark.parametrize("phase", SYNCING, ids=[p.name for p in SYNCING])
def test_a_failing_last_sync_while_closing_is_not_a_failure(
    shim: Path, tmp_path: Path, phase: Phase
) -> None:
    """The last fsync of a phase is RocksDB syncing the directory as the database closes,
    after every write was committed (the long matrix found `backup create` printing a
    traceback here). The command's own result stands; the close is only a warning."""
    base = tmp_path / "base"
    base.mkdir()
    phase.prepare(base)
    count = _count(shim, base, phase, "fsync", tmp_path)
    assert count > 0
    trial = tmp_path / "trial"
    shutil.copytree(base, trial, symlinks=True)
    result = _faulty(shim, trial, phase, "fsync", count, errno.ENOSPC, tmp_path / "log")
    assert result.returncode in DOCUMENTED, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    phase.recover(trial)


def test_a_real_full_disk_in_every_phase_is_recovered_from(tmp_path: Path) -> None:
    """ENOSPC from a filesystem that is really full (a tmpfs), not an injected one."""
    for phase in (PHASES[0], PHASES[1], PHASES[3]):
        with tmpfs(tmp_path / phase.name, "6m") as mount:
            root = mount / "work"
            root.mkdir()
            phase.prepare(root)
            filler = mount / "filler"
            with filler.open("wb") as handle:
                try:
                    while True:
                        handle.write(b"\0" * 65536)
                except OSError:
                    pass
            result = cli(root, *phase.argv(root))
            assert result.returncode in DOCUMENTED, result.stderr
            assert "Traceback" not in result.stderr
            filler.unlink()
            phase.recover(root)


def test_efbig_from_a_file_size_limit_is_recovered_from(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    _project(root)
    limit = 64 * 1024

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    (root / "migrations" / f"{MID}.py").write_text(
        TAG.replace('value + b"+"', 'value + b"+" * 4000')
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pebble_migrate",
            "up",
            "--no-backup",
            "-d",
            str(root / "app.db"),
            "-m",
            str(root / "migrations"),
        ],
        capture_output=True,
        text=True,
        preexec_fn=small_files,
        # Coverage measurement of the child would write its data under the same limit.
        env={k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")},
        timeout=120,
        check=False,
    )
    assert result.returncode in DOCUMENTED, result.stderr
    assert "Traceback" not in result.stderr
    _resume("up", "--no-backup")(root)


def teardown_module() -> None:
    target = os.environ.get("PEBBLE_MIGRATE_FAULTS_TALLY")
    if target:
        Path(target).write_text(json.dumps(TALLY, indent=2, sort_keys=True))
