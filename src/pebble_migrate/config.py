"""Settings from `[tool.pebble-migrate]` in pyproject.toml, found from the working directory up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pebble_migrate.errors import UsageError

KNOWN_KEYS = {
    "database",
    "migrations",
    "backup-dir",
    "backup-keep",
    "backup-older-than",
    "backup-mode",
    "allow-out-of-order",
}
BACKUP_MODES = ("link", "copy")


@dataclass(frozen=True)
class ProjectConfig:
    """Values read from pyproject.toml; relative paths are resolved against its directory."""

    source: Path | None = None
    database: str | None = None
    migrations: str | None = None
    backup_dir: str | None = None
    backup_keep: int | None = None
    backup_older_than: str | None = None
    backup_mode: str | None = None
    allow_out_of_order: bool | None = None


def find_pyproject(start: Path) -> Path | None:
    """Return the nearest pyproject.toml at or above `start` with a [tool.pebble-migrate]
    table (one without it, like a sub-package's, does not hide its parent's settings)."""
    found = _nearest_table(start)
    return None if found is None else found[0]


def _nearest_table(start: Path) -> tuple[Path, Any] | None:
    """Return the nearest pyproject.toml with a [tool.pebble-migrate] table, and that table
    (each file is read once: the table used is the one that was found)."""
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            tool = _read(candidate).get("tool")
            if isinstance(tool, dict) and "pebble-migrate" in tool:
                return candidate, tool["pebble-migrate"]
    return None


def _read(path: Path) -> dict[str, Any]:
    import tomllib  # only when there is a pyproject.toml: every command loads this module

    try:
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None


def load_project_config(start: Path | None = None) -> ProjectConfig:
    """Return the `[tool.pebble-migrate]` table of the nearest pyproject.toml, if any."""
    if start is None:
        try:
            start = Path.cwd()
        except FileNotFoundError:  # the working directory was deleted: no project around it
            return ProjectConfig()
    found = _nearest_table(start)
    if found is None:
        return ProjectConfig()
    path, table = found
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [tool.pebble-migrate] must be a table")
    unknown = sorted(set(table) - KNOWN_KEYS)
    if unknown:
        raise UsageError(
            f"{path}: unknown key(s) in [tool.pebble-migrate]: {', '.join(unknown)}",
            hint=f"Known keys: {', '.join(sorted(KNOWN_KEYS))}.",
        )
    base = path.parent

    def where(key: str) -> str | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise UsageError(f"{path}: [tool.pebble-migrate] {key} must be a string")
        if not value:
            # Would name the project's own directory: refused, not guessed at.
            raise UsageError(
                f"{path}: [tool.pebble-migrate] {key} is empty; give a path, or remove the key"
            )
        return str(base / value)

    keep = table.get("backup-keep")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise UsageError(f"{path}: [tool.pebble-migrate] backup-keep must be a positive integer")
    older = table.get("backup-older-than")
    if older is not None:
        from pebble_migrate.units import parse_age

        try:
            if not isinstance(older, str):
                raise ValueError("not a string")
            parse_age(older)
        except ValueError:
            raise UsageError(
                f'{path}: [tool.pebble-migrate] backup-older-than must be like "30d", '
                f"not {older!r:.40}"
            ) from None
    mode = table.get("backup-mode")
    if mode is not None and mode not in BACKUP_MODES:
        raise UsageError(
            f'{path}: [tool.pebble-migrate] backup-mode must be "link" or "copy", not {mode!r:.40}'
        )
    allow = table.get("allow-out-of-order")
    if allow is not None and not isinstance(allow, bool):
        raise UsageError(
            f"{path}: [tool.pebble-migrate] allow-out-of-order must be true or false, "
            f"not {allow!r:.40}"
        )
    return ProjectConfig(
        source=path,
        allow_out_of_order=allow,
        backup_mode=mode,
        database=where("database"),
        migrations=where("migrations"),
        backup_dir=where("backup-dir"),
        backup_keep=keep,
        backup_older_than=older,
    )
