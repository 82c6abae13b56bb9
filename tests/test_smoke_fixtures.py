"""The fixtures themselves work on real databases."""

from pathlib import Path

from pebble_migrate.testing import contents, create_database


def test_create_and_read_back(tmp_path: Path) -> None:
    path = create_database(tmp_path / "x", {b"a": b"1", b"b": b"2"})
    assert contents(path) == {"default": {b"a": b"1", b"b": b"2"}}
