"""Events the library emits while it works; the CLI renders them, the startup API logs them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("pebble_migrate")


@dataclass(frozen=True)
class Event:
    """Something worth telling the operator: a step started, progress, a resume, a backup.

    `kind` is one of: step_start, step_done, step_failed, resume, progress, interrupted,
    backup, notice.
    """

    kind: str
    message: str
    migration_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


Reporter = Callable[[Event], None]


def log_reporter(logger: logging.Logger | None = None) -> Reporter:
    """Return a reporter that writes events to a logger (progress at DEBUG level)."""
    target = logger or log

    def report(event: Event) -> None:
        level = logging.DEBUG if event.kind == "progress" else logging.INFO
        if event.kind in ("step_failed", "interrupted"):
            level = logging.WARNING
        target.log(level, "%s", event.message)

    return report


def null_reporter(event: Event) -> None:
    """Ignore an event."""
