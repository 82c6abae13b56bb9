"""The console script's entry point: Ctrl+C while the CLI is still loading is an
interruption like any other (`Error: interrupted.`, exit 130), never a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    """Load the CLI and run it."""
    try:
        from pebble_migrate.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("Error: interrupted before anything was done.\n")
        sys.exit(130)
    run()
