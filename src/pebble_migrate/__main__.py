"""`python -m pebble_migrate`: the same as the `pebble-migrate` command."""

from pebble_migrate._entry import main

main()
