"""ctx.scan + ctx.put against the loop people write by hand, and memory against size.

    python benchmarks/bench_scan.py --quick          # 100k keys
    python benchmarks/bench_scan.py                  # 500k keys (the issue's comparison)
    python benchmarks/bench_scan.py --memory 100000,10000000

Speed: the same transform (append a byte to every value under a prefix) three ways on
identical copies of one database, best of --repeat runs each:
  hand      items() + WriteBatch, a synced write every 10,000 keys (no resume, no checks)
  hand+iter the same with an iterator and a status() check at the end (what is correct)
  scan      a pebble-migrate migration: ctx.scan + ctx.put, chunked, resumable
Memory: peak RSS of a child process running the scan migration over N keys.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import rocksdict

import pebble_migrate as pm
from pebble_migrate.commands import RunOptions

VALUE = b"x" * 100


def load(path: Path, keys: int) -> None:
    """Create a raw-mode database with `keys` keys under user: and flush it."""
    db = rocksdict.Rdict(str(path), rocksdict.Options(raw_mode=True))
    batch = rocksdict.WriteBatch(raw_mode=True)
    for i in range(keys):
        batch.put(b"user:%010d" % i, VALUE)
        if len(batch) >= 100_000:
            db.write(batch)
            batch = rocksdict.WriteBatch(raw_mode=True)
    db.write(batch)
    del batch
    db.flush()
    db.close()


def hand(path: Path, *, checked: bool) -> None:
    """The loop an engineer writes by hand."""
    db = rocksdict.Rdict(str(path))
    sync = rocksdict.WriteOptions()
    sync.sync = True
    batch = rocksdict.WriteBatch(raw_mode=True)
    if checked:
        it = db.iter()
        it.seek(b"user:")
        while it.valid():
            key = it.key()
            if not key.startswith(b"user:"):
                break
            batch.put(key, it.value() + b"+")
            if len(batch) >= 10_000:
                db.write(batch, sync)
                batch = rocksdict.WriteBatch(raw_mode=True)
            it.next()
        it.status()
        del it
    else:
        for key, value in db.items(from_key=b"user:"):
            if not key.startswith(b"user:"):
                break
            batch.put(key, value + b"+")
            if len(batch) >= 10_000:
                db.write(batch, sync)
                batch = rocksdict.WriteBatch(raw_mode=True)
    db.write(batch, sync)
    del batch
    db.close()


def up(ctx: pm.MigrationContext) -> None:
    """The same transform as a migration."""
    for key, value in ctx.scan(prefix=b"user:"):
        ctx.put(key, value + b"+")


def scan(path: Path) -> None:
    """Run the transform through pebble-migrate."""
    registry = pm.Registry([pm.Migration(id="1700000000_append", up=up)])
    pm.up(path, registry, options=RunOptions(handle_signals=False, check_space=False))


def timed(fn: object, source: Path, work: Path, repeat: int) -> float:
    """Return the best time of `fn` over fresh copies of `source`."""
    best = float("inf")
    for n in range(repeat):
        copy = work / f"copy{n}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(source, copy)
        start = time.perf_counter()
        fn(copy)  # type: ignore[operator]
        best = min(best, time.perf_counter() - start)
        shutil.rmtree(copy)
    return best


def speed(keys: int, repeat: int) -> dict[str, float]:
    """Time the three ways on one database of `keys` keys."""
    with tempfile.TemporaryDirectory(prefix="bench-scan-") as tmp:
        work = Path(tmp)
        source = work / "source"
        load(source, keys)
        return {
            "hand": timed(lambda p: hand(p, checked=False), source, work, repeat),
            "hand+iter": timed(lambda p: hand(p, checked=True), source, work, repeat),
            "scan": timed(scan, source, work, repeat),
        }


ROCKSDB_MEMORY = (
    "rocksdb.cur-size-all-mem-tables",
    "rocksdb.estimate-table-readers-mem",
    "rocksdb.block-cache-usage",
)


def memory_child(path: Path, keys: int, *, trace: bool) -> None:
    """Migrate the database at `path` in this fresh process and print what memory it took.

    The database was loaded by another process, so the peak is the migration's own. With
    `trace`, Python's own allocations are traced too (slower; a separate run).
    """
    if trace:
        tracemalloc.start()
    db = rocksdict.Rdict(str(path))
    opts = pm.default_startup_options()
    opts.run_migrations = True
    opts.check_disk_space = False
    opts.handle_signals = False
    opts.registry = pm.Registry([pm.Migration(id="1700000000_append", up=up)])
    start = time.perf_counter()
    pm.check_and_run_startup_migrations(db, path, opts)
    took = time.perf_counter() - start
    rocks = sum(db.property_int_value(name) or 0 for name in ROCKSDB_MEMORY)
    db.close()
    row = {"keys": keys, "seconds": round(took, 2), "rocksdb_kib": rocks // 1024}
    if trace:
        row["python_peak_kib"] = tracemalloc.get_traced_memory()[1] // 1024
    else:
        row["peak_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(row))


def memory(sizes: list[int]) -> list[dict[str, int]]:
    """Load each size in one child process, migrate copies of it in others, report memory."""
    rows = []
    for keys in sizes:
        with tempfile.TemporaryDirectory(prefix="bench-mem-", dir=os.environ.get("BENCH_DIR")) as t:
            path = Path(t) / "db"
            subprocess.run([sys.executable, __file__, "--load", str(keys), str(path)], check=True)
            row: dict[str, int] = {}
            for mode in ("rss", "trace"):
                copy = Path(t) / mode
                shutil.copytree(path, copy)
                out = subprocess.run(
                    [sys.executable, __file__, "--memory-child", str(keys), str(copy), mode],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                found = json.loads(out.stdout)
                row.update(
                    found if mode == "rss" else {"python_peak_kib": found["python_peak_kib"]}
                )
                shutil.rmtree(copy)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--keys", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory", default="", help="comma-separated key counts")
    parser.add_argument("--memory-child", nargs=3, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--load", nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help="also write a markdown report here")
    args = parser.parse_args()
    if args.load:
        load(Path(args.load[1]), int(args.load[0]))
        return
    if args.memory_child:
        keys, path, mode = args.memory_child
        memory_child(Path(path), int(keys), trace=mode == "trace")
        return
    if args.quick:
        args.keys, args.repeat = 100_000, 1
    result = speed(args.keys, args.repeat)
    report: dict[str, object] = {
        "keys": args.keys,
        "seconds": {k: round(v, 3) for k, v in result.items()},
        "scan_vs_hand": round(result["scan"] / result["hand"], 2),
        "scan_vs_checked_hand": round(result["scan"] / result["hand+iter"], 2),
    }
    if args.memory:
        report["memory"] = memory([int(x) for x in args.memory.split(",")])
    print(json.dumps(report, indent=2))
    if args.output:
        args.output.write_text(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    """Return the report as the markdown page kept in benchmarks/results/."""
    seconds = report["seconds"]
    lines = [
        "# ctx.scan + ctx.put against a hand-written loop",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `python benchmarks/bench_scan.py`"
        f" on {platform.machine()} Linux, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, rocksdict {version('rocksdict')}.",
        "",
        f"{report['keys']:,} keys of 100-byte values; best of the runs; each on a fresh copy.",
        "",
        "| loop | seconds | vs hand |",
        "|---|---:|---:|",
    ]
    for name, label in (
        ("hand", "items() + WriteBatch, synced every 10,000 (no checks)"),
        ("hand+iter", "iterator + status() check + WriteBatch"),
        ("scan", "pebble-migrate: ctx.scan + ctx.put, resumable"),
    ):
        lines.append(f"| {label} | {seconds[name]:.3f} | {seconds[name] / seconds['hand']:.2f} |")
    rows = report.get("memory", [])
    if rows:
        lines += [
            "",
            "Memory of a fresh process migrating a database of N keys (loaded by another):",
            "peak RSS; RocksDB's own memory at the end (memtables, table readers, block cache,",
            "from its properties); and the peak of Python's own allocations (tracemalloc, in a",
            "separate run).",
            "",
            "| keys | peak RSS | RocksDB memory | Python peak | seconds |",
            "|---:|---:|---:|---:|---:|",
        ]
    for row in rows:
        lines.append(
            f"| {row['keys']:,} | {row['peak_kib'] / 1024:.0f} MiB | "
            f"{row['rocksdb_kib'] / 1024:.0f} MiB | {row['python_peak_kib'] / 1024:.1f} MiB | "
            f"{row['seconds']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
