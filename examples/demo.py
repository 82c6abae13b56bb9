"""`make demo`: the product's main job end to end, on a real RocksDB under ./demo-data."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "demo-data"
DB = "demo-data/app.db"
APP = "examples/notes_app/app.py"
MIGRATIONS = "examples/notes_app/migrations"
CLI = str(Path(sys.executable).with_name("pebble-migrate"))


def step(title: str) -> None:
    bold, plain = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")
    print(f"\n{bold}== {title}{plain}", flush=True)


def run(*args: str, expect: int = 0) -> None:
    shown = " ".join(("pebble-migrate" if a == CLI else a) for a in args)
    print(f"$ {shown}", flush=True)
    code = subprocess.run(args, cwd=ROOT).returncode
    if code != expect:
        sys.exit(f"demo: `{shown}` exited {code}, expected {expect}")


def cli(*args: str, expect: int = 0) -> None:
    run(CLI, *args, "-d", DB, "-m", MIGRATIONS, expect=expect)


def main() -> None:
    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir()
    step("An application's database, written before any migration existed")
    run(sys.executable, APP, "seed", DB)
    step("What would change? (status, then a dry run: nothing is touched)")
    cli("status")
    cli("status", "--check", expect=3)
    cli("up", "--dry-run")
    step("Apply: a backup first, then each migration, with scans committed in chunks")
    cli("up")
    step("History and validation")
    cli("history")
    cli("validate", "--verbose")
    step("Roll back to 1700000000 (the target stays applied), then look again")
    cli("down", "1700000000", "--yes")
    cli("status")
    step("The application starts: the startup API brings the database up to date")
    run(sys.executable, APP, "serve", DB)
    cli("status", "--check")
    step("Backups taken along the way (restore any with `backup restore ID --force`)")
    cli("backup", "list")
    print("\nDemo finished: the database is at ./demo-data/app.db.")


if __name__ == "__main__":
    main()
