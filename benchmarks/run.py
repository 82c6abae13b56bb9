"""`make bench` / `make bench-quick`: run every benchmark and write the reports.

    python benchmarks/run.py --quick     # minutes: small sizes, no 1 GB / 10M-key runs
    python benchmarks/run.py             # the long runs reported in docs/benchmarks.md

Reports go to benchmarks/results/ (quick runs to benchmarks/results/quick/, so they never
overwrite the long-run numbers the docs quote).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(args: list[str]) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    out = HERE / "results" / ("quick" if args.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    quick = ["--quick"] if args.quick else []
    run(
        [str(HERE / "bench_scan.py"), *quick, "--output", str(out / "scan.md")]
        + ([] if args.quick else ["--memory", "100000,1000000,10000000"])
    )
    run([str(HERE / "bench_backup.py"), *quick, "--output", str(out / "backup.md")])
    run([str(HERE / "bench_startup.py"), *quick, "--output", str(out / "startup.md")])


if __name__ == "__main__":
    main()
