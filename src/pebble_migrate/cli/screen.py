"""Text for people: styled spans and aligned columns, written without a rendering library.

Every line the CLI prints goes through a `Screen`; only a progress bar brings in rich (and
while one is on screen, the lines for its stream go through rich's console, above the bar).
Keeping rich off that path is what lets `status` start in a few tens of milliseconds.

Colour follows the conventions terminals and CI systems expect: styles only on a terminal
whose TERM is not `dumb`; `FORCE_COLOR` turns them on anywhere, `NO_COLOR` keeps only bold.
Text is never wrapped or cut: a long line is left whole for the terminal (or the log) to
show, so it can be copied as it is. Control characters are shown escaped (`\\x1b`), so
nothing read from disk can drive the terminal.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence
from typing import Any

from pebble_migrate.units import one_line, printable

_DUMB = ("dumb", "unknown")
"""TERM values of terminals that take neither styles nor cursor movement."""

_SGR = {"bold": "1", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}
"""The styles the CLI uses, as ANSI select-graphic-rendition codes."""


class Styled:
    """Text made of spans, each with a style: "" for none, or words from `_SGR`
    ("bold red"). `str()` of it is the plain text."""

    __slots__ = ("spans",)

    def __init__(self, *parts: str | tuple[str, str] | Styled) -> None:
        self.spans: list[tuple[str, str]] = []
        for part in parts:
            if isinstance(part, Styled):
                self.spans.extend(part.spans)
            elif isinstance(part, tuple):
                self.spans.append(part)
            else:
                self.spans.append((part, ""))

    def __str__(self) -> str:
        return "".join(text for text, _ in self.spans)

    def __add__(self, other: str | Styled) -> Styled:
        return Styled(self, other)

    def __repr__(self) -> str:
        return f"Styled({self.spans!r})"

    def render(self, *, color: bool, bold_only: bool = False) -> str:
        """The text as one line, with ANSI styles when `color` (only bold ones when
        `bold_only`). A line break or tab in it is shown as `\\n` / `\\t`: text from data
        (a path, an error) cannot start a line of its own, such as a fake `Error:`."""
        out: list[str] = []
        for text, style in self.spans:
            safe = one_line(text)
            codes = [_SGR[word] for word in style.split() if word in _SGR]
            if bold_only:
                codes = [code for code in codes if code == _SGR["bold"]]
            if color and codes and safe:
                safe = f"\x1b[{';'.join(codes)}m{safe}\x1b[0m"
            out.append(safe)
        return "".join(out)


def styled(text: str, style: str) -> Styled:
    """`text` in one style."""
    return Styled((text, style))


Cell = str | Styled


def width(text: str) -> int:
    """How many terminal columns `text` takes: wide (East Asian) characters two, combining
    marks none."""
    if text.isascii():
        return len(text)
    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in text
    )


def columns(
    rows: Sequence[Sequence[Cell]], *, header: Sequence[str] = (), gap: int = 2, edge: int = 0
) -> list[Styled]:
    """Lay `rows` out in left-aligned columns `gap` spaces apart, `edge` spaces in, with an
    optional bold header line; no line ends in spaces."""
    # A cell is one line: a line break (or tab) in it, from data, is shown escaped.
    table: list[list[Styled]] = []
    if header:
        table.append([styled(name, "bold") for name in header])
    table.extend(
        [Styled(*((one_line(text), style) for text, style in Styled(cell).spans)) for cell in row]
        for row in rows
    )
    if not table:
        return []
    count = max(len(row) for row in table)
    widths = [0] * count
    for row in table:
        for n, cell in enumerate(row):
            widths[n] = max(widths[n], width(str(cell)))
    lines: list[Styled] = []
    for row in table:
        line = Styled(" " * edge)
        for n, cell in enumerate(row):
            if n:
                line.spans.append((" " * gap, ""))
            line.spans.extend(cell.spans)
            line.spans.append((" " * (widths[n] - width(str(cell))), ""))
        _trim(line)
        lines.append(line)
    return lines


def _trim(line: Styled) -> None:
    """Drop the spaces at the end of `line`."""
    while line.spans:
        text, style = line.spans[-1]
        kept = text.rstrip(" ")
        if kept:
            line.spans[-1] = (kept, style)
            return
        line.spans.pop()


def wants_color(stream: Any) -> tuple[bool, bool]:
    """Whether to style output to `stream`, and whether to keep only bold (`NO_COLOR`)."""
    env = os.environ
    try:
        terminal = bool(stream.isatty())
    except (OSError, ValueError):
        terminal = False
    on = bool(env.get("FORCE_COLOR")) or (terminal and env.get("TERM", "").lower() not in _DUMB)
    return on, bool(env.get("NO_COLOR"))


class Screen:
    """Where lines for people go: one standard stream."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.color, self.bold_only = wants_color(stream)
        self.live: Any = None
        """rich's console of a progress bar on this stream, while one is on screen."""

    @property
    def is_terminal(self) -> bool:
        """Whether the stream is a terminal."""
        try:
            return bool(self.stream.isatty())
        except (OSError, ValueError):
            return False

    @property
    def can_redraw(self) -> bool:
        """Whether a line can be redrawn in place (a progress bar): a terminal that is
        not `TERM=dumb` (which cannot move the cursor)."""
        return self.is_terminal and os.environ.get("TERM", "").lower() not in _DUMB

    def print(self, text: Cell = "") -> None:
        """Write `text` as one line (see `Styled.render`)."""
        line = text if isinstance(text, Styled) else Styled(text)
        if self.live is not None:
            from rich.text import Text

            self.live.print(Text.assemble(*((one_line(t), s) for t, s in line.spans)))
            return
        self.stream.write(line.render(color=self.color, bold_only=self.bold_only) + "\n")
        self.stream.flush()

    def block(self, text: str) -> None:
        """Write `text` as the lines it has (a traceback for `-v`), control characters
        escaped, unstyled."""
        if self.live is not None:
            from rich.text import Text

            self.live.print(Text(printable(text)))
            return
        self.stream.write(printable(text).rstrip("\n") + "\n")
        self.stream.flush()

    def lines(self, lines: Sequence[Styled]) -> None:
        """Write each of `lines`."""
        for line in lines:
            self.print(line)
