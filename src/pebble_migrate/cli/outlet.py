"""Standard output and error as the CLI writes them: a stream that goes quiet instead of
failing, and the account of what became of the output, which can decide the exit code.

Kept apart from the renderer so that `main()` can wrap the streams before anything (click's
`--help` included) writes to them, without importing what the renderer needs.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
from typing import Any

from pebble_migrate.errors import EXIT_NOT_CLEAN, EXIT_PENDING, EXIT_VALIDATION_FAILED
from pebble_migrate.units import one_line


class Outlet:
    """A text stream that goes quiet, instead of failing, once it cannot be written: the
    reader of a pipe has gone (`| head -1`), the disk behind a redirect is full. Output is
    a side channel; what the command did to the data decides its exit code.
    """

    def __init__(self, stream: Any, *, stdout: bool = False) -> None:
        self._stream = stream
        self._stdout = stdout
        self.lost: OSError | None = None

    def write(self, text: str) -> int:
        """Write `text`, unless the stream has been lost."""
        if self.lost is None:
            try:
                self._stream.write(text)
            except OSError as exc:
                self._lose(exc)
        return len(text)

    def flush(self) -> None:
        """Flush, unless the stream has been lost."""
        if self.lost is None:
            try:
                self._stream.flush()
            except OSError as exc:
                self._lose(exc)

    def _lose(self, exc: OSError) -> None:
        self.lost = exc
        if self._stdout and OUTPUT.lost is None:
            OUTPUT.lost = exc
        # Point the descriptor at /dev/null, so the interpreter's own flush at exit does
        # not fail on the same pipe (which would print a traceback and exit 120).
        with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def isatty(self) -> bool:
        """Whether the stream is a terminal."""
        try:
            return bool(self._stream.isatty())
        except (OSError, ValueError):
            return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Output:
    """What became of this process's output on stdout: whether it is the command's
    result, and the error that lost it, if one did."""

    def __init__(self) -> None:
        self.is_result = True
        """False once a command that changes something says so (its output reports what
        it did); help, version and the reading commands print their result."""
        self.lost: OSError | None = None

    def exit_code(self, code: int, cli_name: str) -> int:
        """The exit code once output is accounted for. A reader that went away (a closed
        pipe, `| head -1`) took what it wanted; output lost any other way (a full disk, an
        I/O error) is said on stderr, and fails a command whose output is its result, the
        answers of `status --check` and `validate` (3, 4, 7) included: a script must not
        take a missing or cut result for an answer."""
        lost = self.lost
        if lost is None or lost.errno == errno.EPIPE:
            return code
        reason = one_line(lost.strerror or str(lost))
        fails = self.is_result and code in _ANSWERS
        with contextlib.suppress(OSError, ValueError):
            if fails:
                sys.stderr.write(
                    f"Error: the output could not be written to stdout ({reason}): the result "
                    "is missing or cut short.\nFree space where stdout goes, or send it "
                    "elsewhere, then run the command again.\n"
                )
            else:
                sys.stderr.write(
                    f"Warning: the output could not be written to stdout ({reason}): the "
                    "command itself went on, and what it did stands.\nFree space where stdout "
                    f"goes, or send it elsewhere; `{cli_name} status` says where things stand.\n"
                )
            sys.stderr.flush()
        return 1 if fails else code


_ANSWERS = (0, EXIT_PENDING, EXIT_NOT_CLEAN, EXIT_VALIDATION_FAILED)
"""Exit codes that answer the question a reading command was asked."""


OUTPUT = _Output()
"""The output of the command this process runs (one per CLI process)."""
