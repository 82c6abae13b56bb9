"""Single-file backup archives (tar + gzip) for shipping a backup elsewhere."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import tarfile
import zlib
from collections.abc import Generator, Iterator
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import IO

from pebble_migrate import store
from pebble_migrate.backup import (
    ARCHIVE_SUFFIX,
    DATA,
    META,
    META_LIMIT,
    BackupCorrupt,
    BackupInfo,
    NotABackup,
    decode_info,
    disk_error,
    remove_backup,
)
from pebble_migrate.durable import fsync_dir, fsync_file
from pebble_migrate.errors import InsufficientSpace
from pebble_migrate.faults import kill_point

_CHUNK = 1024 * 1024
# What a damaged or foreign file raises while it is read as a .tar.gz.
_UNREADABLE = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


def archive_backup(info: BackupInfo) -> BackupInfo:
    """Pack a backup directory into `<id>.tar.gz` beside it, then remove the directory."""
    root = info.path.parent
    free = store.free_space(root)
    if free is not None and free < info.size_bytes:
        raise InsufficientSpace(str(root), free, info.size_bytes, f"archiving backup {info.id}")
    final = root / f"{info.id}{ARCHIVE_SUFFIX}"
    tmp = root / f".tmp-{info.id}{ARCHIVE_SUFFIX}-{os.getpid()}"
    try:
        with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
            _add_file(tar, info.path / META, META)  # first, so listing reads only the head
            for f in info.files:
                _add_file(tar, info.path / DATA / f.name, f"{DATA}/{f.name}")
        fsync_file(tmp)
        kill_point("archive-written")
        tmp.rename(final)
        fsync_dir(root)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise disk_error(exc, root, info.size_bytes) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    remove_backup(info)
    return replace(info, path=final, archive=True)


def _add_file(tar: tarfile.TarFile, path: Path, name: str) -> None:
    """Add a regular file as a regular member, even when it shares its inode with another
    (a scan view's table files are hard links of the checkpoint's): every member stands
    alone, which is all a restore accepts."""
    with path.open("rb") as handle:
        st = os.fstat(handle.fileno())
        member = tarfile.TarInfo(name)
        member.size, member.mtime, member.mode = st.st_size, int(st.st_mtime), 0o644
        tar.addfile(member, handle)


_HEADER_LIMIT = 64 * 1024
_EXTENDED = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


class _Bounded(tarfile.TarInfo):
    """A tar header that refuses an extended header (a long name, pax records) larger than
    any real one, before it is read into memory."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED and self.size > _HEADER_LIMIT:
            raise tarfile.HeaderError(f"an extended header of {self.size} bytes")
        member: tarfile.TarInfo = super()._proc_member(archive)  # type: ignore[misc]
        return member


def _open(path: Path) -> tarfile.TarFile:
    return tarfile.open(path, "r:gz", tarinfo=_Bounded)


def read_archive_info(path: Path) -> BackupInfo:
    """Return the BackupInfo stored at the head of an archive; raise NotABackup."""
    try:
        with _open(path) as tar:
            member = tar.next()
            if member is None or member.name != META or not member.isfile():
                raise NotABackup(str(path), f"the archive does not start with {META}")
            if member.size > META_LIMIT:
                raise NotABackup(str(path), f"its {META} is larger than {META_LIMIT} bytes")
            handle = tar.extractfile(member)
            data = json.load(io.TextIOWrapper(handle)) if handle else None
    except (*_UNREADABLE, OSError, ValueError) as exc:
        raise NotABackup(str(path), f"not a readable .tar.gz archive ({exc})") from None
    return decode_info(data, path, str(path), archive=True)


def _members(info: BackupInfo) -> Generator[tuple[str, IO[bytes]], None, None]:
    """Yield (name under db/, readable stream) for each database file of the archive, each
    checked from its header alone before a byte of it is read: a regular file, under db/,
    recorded in backup.json, of its recorded size."""
    recorded = {f.name: f for f in info.files}
    seen: set[str] = set()
    try:
        with _open(info.path) as tar:
            for member in tar:
                if member.name == META and not seen:
                    seen.add(META)
                    continue
                name = PurePosixPath(member.name)
                parts = name.parts
                if not member.isfile() or len(parts) < 2 or parts[0] != DATA or ".." in parts:
                    raise NotABackup(str(info.path), f"unexpected entry {member.name!r:.120}")
                inner = "/".join(parts[1:])
                if inner in seen:
                    raise BackupCorrupt(info.id, inner, "appears twice in the archive")
                seen.add(inner)
                expected = recorded.get(inner)
                if expected is None:
                    raise BackupCorrupt(info.id, inner, "is not part of the backup")
                if member.size != expected.size:
                    raise BackupCorrupt(
                        info.id, inner, f"has {member.size} bytes, {expected.size} recorded"
                    )
                source = tar.extractfile(member)
                assert source is not None  # tarfile gives every regular member a stream
                yield inner, source
    except _UNREADABLE as exc:
        raise NotABackup(str(info.path), f"the archive is damaged ({exc})") from None


def _read(info: BackupInfo, source: IO[bytes]) -> Iterator[bytes]:
    # Decompression errors surface here, in the middle of a member.
    while True:
        try:
            chunk = source.read(_CHUNK)
        except _UNREADABLE as exc:
            raise NotABackup(str(info.path), f"the archive is damaged ({exc})") from None
        if not chunk:
            return
        yield chunk


def _check_member(info: BackupInfo, name: str, size: int, digest: str, seen: set[str]) -> None:
    expected = {f.name: f for f in info.files}[name]  # `_members` yields recorded names only
    if size != expected.size:  # pragma: no cover - tarfile yields exactly the size _members checked
        raise BackupCorrupt(info.id, name, f"has {size} bytes, {expected.size} recorded")
    if digest != expected.sha256:
        raise BackupCorrupt(info.id, name, "does not match its recorded checksum")
    seen.add(name)


def _check_complete(info: BackupInfo, seen: set[str]) -> None:
    for f in sorted(info.files, key=lambda f: f.name):
        if f.name not in seen:
            raise BackupCorrupt(info.id, f.name, "is missing")


def verify_archive(info: BackupInfo) -> None:
    """Raise BackupCorrupt unless every recorded file is in the archive, intact."""
    seen: set[str] = set()
    with contextlib.closing(_members(info)) as members:
        for name, source in members:
            digest, size = hashlib.sha256(), 0
            for chunk in _read(info, source):
                digest.update(chunk)
                size += len(chunk)
            _check_member(info, name, size, digest.hexdigest(), seen)
    _check_complete(info, seen)


def extract_archive(info: BackupInfo, target: Path, mode: int = 0o644) -> None:
    """Extract the database files of an archive into `target` (which must not exist),
    checking each member's header first and its size and SHA-256 as it is written, never
    writing past its recorded size; files get permissions `mode`; raise BackupCorrupt."""
    from pebble_migrate.restore import dir_mode

    target.mkdir(parents=True, mode=dir_mode(mode))
    seen: set[str] = set()
    recorded = {f.name: f.size for f in info.files}
    with contextlib.closing(_members(info)) as members:
        for name, source in members:
            dest = target.joinpath(*name.split("/"))
            dest.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode(mode))
            digest, size = hashlib.sha256(), 0
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as out:
                for chunk in _read(info, source):
                    size += len(chunk)
                    if size > recorded[name]:  # pragma: no cover - tarfile stops at that size
                        raise BackupCorrupt(info.id, name, "is longer than recorded")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            _check_member(info, name, size, digest.hexdigest(), seen)
            kill_point("restore-file")
    _check_complete(info, seen)
