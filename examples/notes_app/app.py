"""A tiny application on RocksDB: the example the demo migrates.

python examples/notes_app/app.py seed PATH     # create a database in the old shape
python examples/notes_app/app.py serve PATH    # start: check and run migrations first
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import rocksdict

import pebble_migrate

MIGRATIONS = Path(__file__).parent / "migrations"

PEOPLE = [
    ("Ada Lovelace", "ada@example.org"),
    ("Grace Hopper", "grace@example.org"),
    ("Alan Turing", "alan@example.org"),
    ("Edsger Dijkstra", "edsger@example.org"),
    ("Barbara Liskov", "barbara@example.org"),
]


def seed(path: str) -> None:
    """Create the database as version 1 of the app wrote it (before any migration)."""
    db = rocksdict.Rdict(path, rocksdict.Options(raw_mode=True))
    try:
        for n in range(2000):
            name, email = PEOPLE[n % len(PEOPLE)]
            user = {"name": name, "email": email.replace("@", f"+{n}@")}
            db[b"user:%06d" % n] = json.dumps(user).encode()
        for n in range(300):
            db[b"legacy:session:%04d" % n] = b"expired"
    finally:
        db.close()
    print(f"seeded {path}: 2000 users, 300 legacy sessions")


def serve(path: str) -> None:
    """What the app does at start-up: bring the database up to date, then serve."""
    logging.basicConfig(level=logging.INFO, format="app: %(message)s")
    # Before opening: finish or undo a restore that was killed midway (a no-op normally).
    pebble_migrate.recover_interrupted_restore(path)
    db = rocksdict.Rdict(path)
    try:
        opts = pebble_migrate.default_startup_options()
        opts.run_migrations = True
        opts.backup_enabled = True
        opts.registry = pebble_migrate.load_migrations(MIGRATIONS)
        pebble_migrate.check_and_run_startup_migrations(db, path, opts)
        state = pebble_migrate.read_state(db)
        print(f"app: serving at schema version {state.current_version} ({state.status})")
    finally:
        db.close()


if __name__ == "__main__":
    {"seed": seed, "serve": serve}[sys.argv[1]](sys.argv[2])
