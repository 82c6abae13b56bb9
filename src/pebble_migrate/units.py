"""Byte sizes, ages and durations: parsing them from users and showing them to users."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_AGE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def format_bytes(n: float) -> str:
    """Return a byte count as a short human string (1.5 MiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def parse_age(text: str) -> timedelta:
    """Return the age in `30d`, `24h`, `2w`, `90m` or `45s`; raise ValueError otherwise."""
    match = _AGE.match(text)
    if match is None:
        raise ValueError(
            f"cannot read {text!r} as an age; use a number and a unit, like 30d, 24h, 2w"
        )
    digits = match.group(1)
    # Anything past a century is a slip of the keyboard (and past what a datetime can
    # subtract); the digit count keeps int() from parsing thousands of them.
    seconds = int(digits) * _AGE_UNITS[match.group(2)] if len(digits) <= 12 else None
    if seconds is None or seconds > _AGE_MAX_S:
        raise ValueError(f"{text[:40]!r} is more than 100 years; use a shorter age, like 365d")
    return timedelta(seconds=seconds)


_AGE_MAX_S = 100 * 366 * 86400


def format_age(delta: timedelta) -> str:
    """Return a timedelta as the largest whole unit (`3d`, `5h`, `12m`, `40s`)."""
    seconds = max(0, int(delta.total_seconds()))
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def format_duration(seconds: float) -> str:
    """Return a run time for history tables (`12ms`, `3.4s`, `2m05s`)."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def utc_now() -> datetime:
    """Return the current time in UTC; the one clock tests may replace."""
    return datetime.now(UTC)


def format_time(moment: datetime | None) -> str:
    """Return a UTC time as `2023-11-14 22:13:20 UTC`, or `-` for none."""
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def version_time(version: int) -> str:
    """Return the UTC time a version (a Unix timestamp) stands for."""
    if version <= 0:
        return "-"
    return format_time(datetime.fromtimestamp(version, UTC))


_CONTROL = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f"  # C0 and C1 control characters (ESC, CR, NEL, ...)
    r"\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # marks that reorder text
    r"\u2028\u2029"  # line and paragraph separators (line breaks to many readers)
    r"\u180e\u200b\ufeff\ufff9-\ufffb]"  # invisible: zero width, annotation marks
)
"""Characters that would let text from data drive the terminal or disguise itself: control
characters, the bidirectional overrides and isolates ("Trojan Source"), Unicode line
separators, and invisible marks."""


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str) -> str:
    """Return `text` with terminal control characters (escape sequences included) and
    text-reordering marks shown as `\\xNN` / `\\uNNNN`, so text that came from data (an
    exception's message, a record read from disk) cannot drive the operator's terminal or
    disguise itself. Newlines and tabs stay."""
    return _CONTROL.sub(_escaped, text)


def one_line(text: str) -> str:
    """`printable(text)` with newlines and tabs shown as `\\n` and `\\t` too: for a table
    cell or a one-line message, where a line break from data could pass for a line of
    its own (a fake `Error:` or backup row)."""
    return printable(text).replace("\n", "\\n").replace("\t", "\\t")
