"""Start-up time: what `import pebble_migrate` and the CLI cost a process before any work.

    python benchmarks/bench_startup.py --quick      # 5 runs of each
    python benchmarks/bench_startup.py              # 15 runs of each (the reported numbers)

Each command is started as a fresh process, interleaved with the others so that a change in
the machine's load hits all of them alike; the median wall time of the runs is reported, on
its own and over `python -c pass` measured in the same run (the interpreter's own start).
`status` reads a small real database (1,000 keys, one of two migrations applied), run from
the database's directory (no pyproject.toml). The runs may write bytecode (a
PYTHONDONTWRITEBYTECODE in the environment is dropped for them), so they measure the
package as an installation leaves it, its .pyc files compiled, not a compile per start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

TARGETS = {"import": 0.040, "help": 0.12, "status": 0.12}
"""Issue 10: absolute wall times, interpreter start included."""

MIGRATION = '''"""{doc}"""


def up(ctx):
    for key, value in ctx.scan(prefix=b"user:"):
        ctx.put(key, value + b"{mark}")


def down(ctx):
    for key, value in ctx.scan(prefix=b"user:"):
        ctx.put(key, value[:-1])
'''


def cli_command() -> list[str]:
    """The installed console script beside this interpreter, else `python -m`."""
    script = Path(sys.executable).with_name("pebble-migrate")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "pebble_migrate"]


def prepare(root: Path) -> tuple[Path, Path]:
    """Create a database of 1,000 keys and two migrations, the first of them applied."""
    import rocksdict

    db_path, migrations = root / "db", root / "migrations"
    migrations.mkdir()
    (migrations / "1700000000_first.py").write_text(MIGRATION.format(doc="First.", mark="1"))
    (migrations / "1700100000_second.py").write_text(MIGRATION.format(doc="Second.", mark="2"))
    db = rocksdict.Rdict(str(db_path), rocksdict.Options(raw_mode=True))
    for i in range(1000):
        db[b"user:%06d" % i] = b"x" * 100
    db.flush()
    db.close()
    subprocess.run(
        [*cli_command(), "-d", str(db_path), "-m", str(migrations), "up", "1700000000", "-y"],
        check=True,
        capture_output=True,
    )
    return db_path, migrations


def commands(db_path: Path, migrations: Path) -> dict[str, list[str]]:
    cli = cli_command()
    return {
        "baseline": [sys.executable, "-c", "pass"],
        "import": [sys.executable, "-c", "import pebble_migrate"],
        "help": [*cli, "--help"],
        "status": [*cli, "status", "-d", str(db_path), "-m", str(migrations)],
    }


def child_environment() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def wall(args: list[str], cwd: Path) -> float:
    env = child_environment()
    start = time.perf_counter()
    subprocess.run(
        args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd, env=env
    )
    return time.perf_counter() - start


def measure(runs: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    try:
        cmds = commands(*prepare(root))
        for args in cmds.values():  # warm the page cache and write the .pyc files
            wall(args, root)
        times: dict[str, list[float]] = {name: [] for name in cmds}
        load_before = os.getloadavg()[0]
        for _ in range(runs):
            for name, args in cmds.items():
                times[name].append(wall(args, root))
        load_after = os.getloadavg()[0]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "runs": runs,
        "load": [round(load_before, 2), round(load_after, 2)],
        "median": median,
        "over_baseline": {name: median[name] - median["baseline"] for name in cmds},
        "min": {name: min(values) for name, values in times.items()},
    }


LABELS = {
    "baseline": "`python -c pass`",
    "import": '`python -c "import pebble_migrate"`',
    "help": "`pebble-migrate --help`",
    "status": "`pebble-migrate status` (1,000 keys, 2 migrations)",
}


def markdown(report: dict[str, Any]) -> str:
    """Return the report as the markdown page kept in benchmarks/results/."""
    lines = [
        "# Start-up time",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `python "
        f"benchmarks/bench_startup.py` on {platform.machine()} Linux, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, rocksdict {version('rocksdict')}, click "
        f"{version('click')}, rich {version('rich')}.",
        "",
        f"Median wall time of {report['runs']} fresh processes each (interleaved), bytecode "
        f"cached; load average {report['load'][0]:.2f} at the start, {report['load'][1]:.2f} "
        "at the end (on a busy machine every row grows, the interpreter's own start too).",
        "",
        "| command | median | over `python -c pass` | fastest | target |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in LABELS.items():
        target = TARGETS.get(name)
        lines.append(
            f"| {label} | {report['median'][name] * 1000:.0f} ms | "
            f"{report['over_baseline'][name] * 1000:.0f} ms | "
            f"{report['min'][name] * 1000:.0f} ms | "
            + (f"< {target * 1000:.0f} ms |" if target else "|")
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 runs of each")
    parser.add_argument("--runs", type=int, default=None, help="runs of each (default 15)")
    parser.add_argument("--output", type=Path, help="also write a markdown report here")
    args = parser.parse_args()
    runs = args.runs or (5 if args.quick else 15)
    report = measure(runs)
    print(json.dumps(report, indent=2))
    if args.output:
        args.output.write_text(markdown(report))


if __name__ == "__main__":
    main()
