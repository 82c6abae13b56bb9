"""Fixtures shared by the CLI tests."""

from tests.cli.test_operator import project  # noqa: F401 - a fixture, found by pytest by name
