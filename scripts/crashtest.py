"""Kill a long migration again and again; prove it never applies anything twice.

Loads N keys, then runs a migration with a transform that is NOT idempotent (it appends
to each value, deletes every tenth key and writes an index key) in a child process,
SIGKILLs it at random moments, at instrumented points just before and just after a chunk
commit, and during the graceful shutdown that follows a SIGINT; restarts it (by the CLI's
`up`, or by an application calling the startup API) until it completes; then compares
the database key by key with the content computed independently here.

    python scripts/crashtest.py --quick            # CI: 30,000 keys, >= 25 kills
    python scripts/crashtest.py --keys 1000000 --kills 200

Exit status 0 when every trial ends with zero mismatches.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import rocksdict

MIGRATION = '''
"""Append '+' to every k: value, drop every tenth, index and count the rest.

Nothing here is idempotent: the append reads the live value, and the per-bucket counters
are read-modify-write, so a key processed twice leaves a visible trace.
"""

def up(ctx):
    for key, value in ctx.scan(prefix=b"k:"):
        number = int(key[2:])
        bucket = b"count:%06d" % (number // 1000)
        ctx.put(bucket, b"%d" % (int(ctx.get(bucket, b"0")) + 1))
        if number % 10 == 0:
            ctx.delete(key)
        else:
            ctx.put(key, ctx.get(key) + b"+")
            ctx.put(b"idx:" + value[:8] + b":" + key[2:], b"")
'''

APP = """
import sys
import pebble_migrate as pm

db_path, migrations = sys.argv[1], sys.argv[2]
opts = pm.default_startup_options()
opts.run_migrations = True
opts.registry = pm.load_migrations(migrations)
opts.check_disk_space = False
opts.chunk_policy = pm.ChunkPolicy(records=int(sys.argv[3]))
db = pm.open_database(db_path)  # as rocksdict.Rdict(db_path), and mends what a kill left
try:
    pm.check_and_run_startup_migrations(db, db_path, opts)
finally:
    db.close()
"""

SIGINT_EXITS = (0, 130, -signal.SIGINT)
POINTS = ("chunk-before-commit", "chunk-after-commit", "final-before-commit", "final-after-commit")


@dataclass
class Tally:
    """What happened across all trials."""

    trials: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    restarts_cli: int = 0
    restarts_app: int = 0
    mismatches: int = 0
    checked_keys: int = 0

    def kill(self, kind: str) -> None:
        self.kills[kind] = self.kills.get(kind, 0) + 1

    @property
    def total_kills(self) -> int:
        return sum(self.kills.values())


def value_of(i: int) -> bytes:
    """Return the starting value of key i (deterministic, so expected content is cheap)."""
    return b"%08x" % ((i * 2654435761) & 0xFFFFFFFF) + b"-payload"


def load(db_path: Path, keys: int) -> None:
    """Create the database with `keys` keys under k:."""
    db = rocksdict.Rdict(str(db_path), rocksdict.Options(raw_mode=True))
    batch = rocksdict.WriteBatch(raw_mode=True)
    for i in range(keys):
        batch.put(b"k:%09d" % i, value_of(i))
        if len(batch) >= 50_000:
            db.write(batch)
            batch = rocksdict.WriteBatch(raw_mode=True)
    db.write(batch)
    del batch
    db.close()


def expected(keys: int) -> dict[bytes, bytes]:
    """Return the content the migration must produce, computed without pebble_migrate."""
    result: dict[bytes, bytes] = {}
    for i in range(keys):
        bucket = b"count:%06d" % (i // 1000)
        result[bucket] = b"%d" % (int(result.get(bucket, b"0")) + 1)
        if i % 10 == 0:
            continue
        value = value_of(i)
        result[b"k:%09d" % i] = value + b"+"
        result[b"idx:" + value[:8] + b":" + b"%09d" % i] = b""
    return result


def actual(db_path: Path) -> dict[bytes, bytes]:
    """Read the default column family key by key, checking the iterator's status."""
    db = rocksdict.Rdict(str(db_path), access_type=rocksdict.AccessType.read_only(False))
    it = db.iter()
    it.seek_to_first()
    found: dict[bytes, bytes] = {}
    while it.valid():
        found[it.key()] = it.value()
        it.next()
    it.status()
    del it
    db.close()
    return found


def status_of(db_path: Path) -> dict[str, object]:
    """Return `pebble-migrate status --json` for the database."""
    out = subprocess.run(
        [sys.executable, "-m", "pebble_migrate", "status", "--json", "-d", str(db_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    data: dict[str, object] = json.loads(out.stdout)
    return data


class Trial:
    """One migration from load to completion, killed as often as the plan says."""

    def __init__(self, work: Path, args: argparse.Namespace, rng: random.Random, tally: Tally):
        self.work, self.args, self.rng, self.tally = work, args, rng, tally
        self.db = work / "db"
        self.migrations = work / "migrations"
        self.app = work / "app.py"

    def setup(self) -> None:
        self.migrations.mkdir(parents=True)
        (self.migrations / "1700000000_plus_index.py").write_text(textwrap.dedent(MIGRATION))
        self.app.write_text(APP)
        load(self.db, self.args.keys)

    def command(self) -> list[str]:
        chunk = str(self.args.chunk)
        if self.rng.random() < 0.5:
            self.tally.restarts_app += 1
            return [sys.executable, str(self.app), str(self.db), str(self.migrations), chunk]
        self.tally.restarts_cli += 1
        return [
            sys.executable,
            "-m",
            "pebble_migrate",
            "up",
            "-d",
            str(self.db),
            "-m",
            str(self.migrations),
            "--yes",
            "--no-backup",
            "--chunk-records",
            chunk,
        ]

    def run_once(self, kind: str) -> bool:
        """Start the migration; kill it the way `kind` says. Return True if it completed."""
        env = dict(os.environ)
        point = ""
        if kind == "point":
            point = self.rng.choice(POINTS)
            chunks = max(1, int(self.left * self.args.keys) // self.args.chunk)
            n = 1 if point.startswith("final") else self.rng.randint(1, chunks)
            self.left = max(0.05, self.left - n * self.args.chunk / self.args.keys)
            env["PEBBLE_MIGRATE_KILL_AT"] = f"{point}:{n}"
        proc = subprocess.Popen(
            self.command(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            if kind == "random":
                return self._kill_after(proc, self._delay(), "random")
            if kind == "signal":
                return self._interrupt_then_kill(proc)
            return self._wait(proc, point)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def _wait(self, proc: subprocess.Popen[str], kind: str) -> bool:
        _, err = proc.communicate()
        if proc.returncode == -signal.SIGKILL:
            self.tally.kill(f"point:{kind}")  # kind is the kill point's name
            return False
        if proc.returncode != 0:
            raise SystemExit(f"migration failed (exit {proc.returncode}):\n{err}")
        return True

    def _kill_after(
        self, proc: subprocess.Popen[str], delay: float, label: str, ok: tuple[int, ...] = (0,)
    ) -> bool:
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.tally.kill(label)
            return False
        if proc.returncode not in ok:
            raise SystemExit(f"migration failed (exit {proc.returncode}):\n{proc.stderr.read()}")
        return proc.returncode == 0

    def _interrupt_then_kill(self, proc: subprocess.Popen[str]) -> bool:
        try:
            proc.wait(timeout=self._delay())
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            # Kill it while it commits the buffered chunk and records the interruption.
            # 130: the CLI stopped gracefully; -SIGINT: the app re-raised the signal as asked.
            return self._kill_after(
                proc, self.rng.uniform(0.0, 0.05), "during-sigint-shutdown", SIGINT_EXITS
            )
        if proc.returncode not in SIGINT_EXITS:
            raise SystemExit(f"migration failed (exit {proc.returncode}):\n{proc.stderr.read()}")
        return proc.returncode == 0

    def _delay(self) -> float:
        """Pick a kill time inside the work still left, and count that work as done."""
        into = self.rng.uniform(0.0, self.window.work * self.left)
        self.left = max(0.05, self.left - into / self.window.work)
        return self.window.startup + into

    def run(self, window: Window) -> None:
        self.window = window
        self.left = 1.0  # the fraction of the migration still to do, roughly
        self.setup()
        done = False
        while not done:
            kind = self.rng.choices(["random", "point", "signal"], weights=[5, 4, 1])[0]
            done = self.run_once(kind)
            if not done and self.tally.total_kills >= self.args.kills and self.args.stop_early:
                kind = "finish"
                done = self._finish()
        self.verify()

    def _finish(self) -> bool:
        out = subprocess.run(self.command(), capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"final run failed (exit {out.returncode}):\n{out.stderr}")
        return True

    def verify(self) -> None:
        want = expected(self.args.keys)
        got = actual(self.db)
        self.tally.checked_keys += len(want)
        bad = sum(1 for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        status = status_of(self.db)
        if status["status"] != "clean" or status["pending"] or status.get("partial"):
            bad += 1
            print(f"  state not clean after completion: {status}", file=sys.stderr)
        self.tally.mismatches += bad
        self.tally.trials += 1


@dataclass(frozen=True)
class Window:
    """When, after starting the child, the migration is actually working."""

    startup: float
    work: float


def calibrate(args: argparse.Namespace, work: Path) -> Window:
    """Time one uninterrupted run, and one with nothing to do (start-up cost)."""
    trial = Trial(work / "calibrate", args, random.Random(0), Tally())
    trial.setup()
    start = time.monotonic()
    trial._finish()
    full = time.monotonic() - start
    start = time.monotonic()
    trial._finish()
    startup = time.monotonic() - start
    return Window(startup, max(0.05, full - startup))


def main() -> int:
    # Started in the background by a shell (`make crashtest-kills &`), this process and its
    # children would ignore SIGINT, and the trials that send one would test nothing (the
    # app would finish, or stop without the signal handed back). Children of a process
    # with a handler start with the default action, as a foreground run has.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--kills", type=int, default=50, help="stop once this many kills happened")
    parser.add_argument("--chunk", type=int, default=1000, help="records per chunk commit")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="CI size: 30,000 keys, 25 kills")
    parser.add_argument("--work", type=Path, default=None, help="keep databases here")
    parser.add_argument("--report", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args()
    if args.quick:
        args.keys, args.kills, args.chunk = 30_000, 25, 500
    args.stop_early = True
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    tally = Tally()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pebble-crashtest-", dir=args.work) as tmp:
        work = Path(tmp)
        window = calibrate(args, work)
        print(
            f"seed {seed}; {args.keys} keys; start-up {window.startup:.2f}s, "
            f"migration {window.work:.2f}s",
            flush=True,
        )
        n = 0
        while tally.total_kills < args.kills:
            n += 1
            Trial(work / f"trial{n}", args, rng, tally).run(window)
            print(
                f"trial {n}: kills so far {tally.total_kills}, mismatches {tally.mismatches}",
                flush=True,
            )
    took = time.monotonic() - started
    summary = json.dumps(
        {
            "seed": seed,
            "keys": args.keys,
            "chunk": args.chunk,
            "trials": tally.trials,
            "kills": tally.total_kills,
            "kills_by_kind": tally.kills,
            "restarts_cli": tally.restarts_cli,
            "restarts_app": tally.restarts_app,
            "checked_keys": tally.checked_keys,
            "mismatches": tally.mismatches,
            "seconds": round(took, 1),
        },
        indent=2,
        sort_keys=True,
    )
    print(summary)
    if args.report is not None:
        args.report.write_text(summary + "\n")
    return 1 if tally.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
