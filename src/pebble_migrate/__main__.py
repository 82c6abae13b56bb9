"""`python -m pebble_migrate`: the same as the `pebble-migrate` command."""

from pebble_migrate.cli import main

main()
