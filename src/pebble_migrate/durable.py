"""Durable filesystem steps: fsync'd writes, atomic renames and directory exchange."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any

from pebble_migrate.faults import kill_point

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
ENV_NO_EXCHANGE = "PEBBLE_MIGRATE_NO_RENAME_EXCHANGE"
"""Set (to anything but empty) to act as if RENAME_EXCHANGE were unavailable: the crash
tests use it to exercise the two-renames fallback on kernels that do support it."""


def fsync_path(path: Path) -> None:
    """Flush a file's content, or a directory's entries (creations, renames), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        raise OSError(exc.errno, f"fsync failed: {exc.strerror}", str(path)) from None
    finally:
        os.close(fd)


fsync_dir = fsync_path
fsync_file = fsync_path


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON via a temporary file, fsync and rename, so readers see all or nothing."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        kill_point("json-written")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


_FICLONE = 0x40049409  # _IOW(0x94, 9, int): share the source's blocks, copy-on-write


def clone_or_copy(source: Path, target: Path, mode: int = 0o644) -> str:
    """Write `target` as an independent copy of `source` (a new inode), fsynced; return
    "reflink" when the filesystem cloned it (FICLONE: instant, blocks shared copy-on-write,
    so a write to one never reaches the other), "copy" when the bytes were copied."""
    with source.open("rb") as src:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            how = "reflink"
            try:
                fcntl.ioctl(fd, _FICLONE, src.fileno())
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise
                how = "copy"
                with os.fdopen(os.dup(fd), "wb") as out:
                    shutil.copyfileobj(src, out, 1024 * 1024)
            os.fsync(fd)
        finally:
            os.close(fd)
    return how


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE).

    Returns False when the kernel, libc or filesystem does not support it; raises OSError
    for any other failure.
    """
    renameat2 = None if os.environ.get(ENV_NO_EXCHANGE) else _renameat2()
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    import ctypes  # only here and in _renameat2: every command imports this module

    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _renameat2() -> Any:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn
