"""Single-file backup archives (tar + gzip) for shipping a backup elsewhere."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path, PurePosixPath

from pebble_migrate import store
from pebble_migrate.backup import (
    ARCHIVE_SUFFIX,
    DATA,
    META,
    BackupInfo,
    NotABackup,
    decode_info,
    remove_backup,
)
from pebble_migrate.durable import fsync_dir, fsync_file
from pebble_migrate.errors import InsufficientSpace
from pebble_migrate.faults import kill_point


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
            tar.add(info.path / META, arcname=META)  # first, so listing reads only the head
            for f in info.files:
                tar.add(info.path / DATA / f.name, arcname=f"{DATA}/{f.name}")
        fsync_file(tmp)
        tmp.rename(final)
        fsync_dir(root)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    remove_backup(info)
    return replace(info, path=final, archive=True)


def read_archive_info(path: Path) -> BackupInfo:
    """Return the BackupInfo stored at the head of an archive; raise NotABackup."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            member = tar.next()
            if member is None or member.name != META:
                raise NotABackup(str(path), f"the archive does not start with {META}")
            handle = tar.extractfile(member)
            data = json.load(io.TextIOWrapper(handle)) if handle else None
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise NotABackup(str(path), f"not a readable .tar.gz archive ({exc})") from None
    return decode_info(data, path, str(path), archive=True)


def extract_archive(info: BackupInfo, target: Path) -> None:
    """Extract the database files of an archive into `target` (which must not exist)."""
    target.mkdir(parents=True)
    try:
        with tarfile.open(info.path, "r:gz") as tar:
            for member in tar:
                name = PurePosixPath(member.name)
                if member.name == META:
                    continue
                if not member.isfile() or name.parts[0] != DATA or ".." in name.parts:
                    raise NotABackup(str(info.path), f"unexpected entry {member.name!r}")
                dest = target.joinpath(*name.parts[1:])
                dest.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                with dest.open("wb") as out:
                    shutil.copyfileobj(source, out)
                    out.flush()
                    os.fsync(out.fileno())
                kill_point("restore-file")
    except (tarfile.TarError, EOFError) as exc:
        raise NotABackup(str(info.path), f"the archive is damaged ({exc})") from None
