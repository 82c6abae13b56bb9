"""The support modules' edges: pyproject settings (config), counting keys for progress
(counting), scan cursors and run records (cursor), durable file steps (durable), the
start-up check (startup) and `validate` (validation).

Everything runs against real RocksDB directories under tmp_path; where a failure cannot be
produced for real (a disk error, a libc without renameat2), the OS call is made to fail.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import rocksdict

import pebble_migrate as pm
from pebble_migrate import commands, counting, cursor, durable, store
from pebble_migrate.config import ProjectConfig, find_pyproject, load_project_config
from pebble_migrate.context import ChunkPolicy
from pebble_migrate.counting import KeyCount, count_keys
from pebble_migrate.cursor import RunRecord, ScanCursor
from pebble_migrate.errors import CorruptStateError, UsageError
from pebble_migrate.state import META_KEY
from pebble_migrate.store import STATE_CF
from pebble_migrate.testing import contents, create_database
from pebble_migrate.validation import validate
from tests.conftest import Invoke, migration, registry_of, snapshot
from tests.test_startup import _startup

MID = "1700000000_job"
KEYS = {b"k:%03d" % i: b"v" for i in range(60)}


def _opts(reg: pm.Registry, **kwargs: Any) -> pm.StartupOptions:
    opts = pm.default_startup_options()
    opts.registry = reg
    opts.handle_signals = False
    opts.chunk_policy = ChunkPolicy(records=10)
    for key, value in kwargs.items():
        setattr(opts, key, value)
    return opts


def _run_opts() -> commands.RunOptions:
    return commands.RunOptions(policy=ChunkPolicy(10), handle_signals=False)


def _failing_scans(stop: bytes, *names: str) -> Any:
    """An `up` that runs each named scan over k:*, the last one failing at `stop`."""

    def up(ctx: Any) -> None:
        for name in names:
            for key, value in ctx.scan(prefix=b"k:", name=name):
                if name == names[-1] and key == stop:
                    raise RuntimeError(f"failing at {key!r}")
                ctx.put(key, value + b"+")

    return up


# --- config ----------------------------------------------------------------------------


def _pyproject(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pyproject.toml"
    path.write_text(text)
    return path


def test_settings_resolve_paths_against_the_pyproject_directory(tmp_path: Path) -> None:
    path = _pyproject(
        tmp_path / "proj",
        "[tool.pebble-migrate]\n"
        'database = "data/db"\nmigrations = "mig"\nbackup-dir = "/abs/backups"\n'
        'backup-keep = 3\nbackup-older-than = "30d"\nbackup-mode = "copy"\n',
    )
    deep = tmp_path / "proj" / "src" / "pkg"
    deep.mkdir(parents=True)
    assert find_pyproject(deep) == path
    assert load_project_config(deep) == ProjectConfig(
        source=path,
        database=str(tmp_path / "proj" / "data" / "db"),
        migrations=str(tmp_path / "proj" / "mig"),
        backup_dir="/abs/backups",
        backup_keep=3,
        backup_older_than="30d",
        backup_mode="copy",
    )


def test_no_pyproject_with_the_table_gives_defaults(tmp_path: Path) -> None:
    _pyproject(tmp_path / "proj", '[project]\nname = "app"\n')
    assert find_pyproject(tmp_path / "proj") is None
    assert load_project_config(tmp_path / "proj") == ProjectConfig()


@pytest.mark.parametrize("tool", ["5", '"pebble-migrate"', "[1, 2]"])
def test_a_pyproject_whose_tool_key_is_not_a_table_is_not_ours(tmp_path: Path, tool: str) -> None:
    """`tool = 5` is valid TOML: such a file has no settings for us (it used to crash
    with a TypeError, or an AttributeError when the value was a string)."""
    _pyproject(tmp_path, '[tool.pebble-migrate]\ndatabase = "db"\n')
    _pyproject(tmp_path / "sub", f"tool = {tool}\n")
    found = load_project_config(tmp_path / "sub")
    assert found.source == tmp_path / "pyproject.toml"
    assert found.database == str(tmp_path / "db")


def test_a_pyproject_whose_tool_key_is_not_a_table_does_not_crash_the_cli(
    invoke: Invoke, db_path: Path, tmp_path: Path
) -> None:
    (tmp_path / "pyproject.toml").write_text('tool = "pebble-migrate"\n')
    result = invoke("status", "-d", str(db_path))
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output


def test_a_pyproject_that_is_not_toml_is_named(tmp_path: Path) -> None:
    path = _pyproject(tmp_path, "[tool.pebble-migrate\n")
    with pytest.raises(UsageError) as info:
        load_project_config(tmp_path)
    assert info.value.message.startswith(f"cannot read {path}: ")


def test_an_unreadable_pyproject_is_named_with_the_os_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _pyproject(tmp_path, '[tool.pebble-migrate]\ndatabase = "db"\n')
    real = Path.read_text

    def failing(self: Path, *args: Any, **kwargs: Any) -> str:
        if self == path:
            raise OSError(errno.EIO, "Input/output error", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", failing)
    with pytest.raises(UsageError) as info:
        load_project_config(tmp_path)
    assert info.value.message == f"cannot read {path}: [Errno 5] Input/output error: '{path}'"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[tool]\npebble-migrate = 5\n", "[tool.pebble-migrate] must be a table"),
        (
            "[tool.pebble-migrate]\ndatabse = 'db'\nzeta = 1\n",
            "unknown key(s) in [tool.pebble-migrate]: databse, zeta",
        ),
        (
            "[tool.pebble-migrate]\ndatabase = 5\n",
            "[tool.pebble-migrate] database must be a string",
        ),
        (
            "[tool.pebble-migrate]\nmigrations = ['a']\n",
            "[tool.pebble-migrate] migrations must be a string",
        ),
        (
            "[tool.pebble-migrate]\nbackup-keep = 0\n",
            "[tool.pebble-migrate] backup-keep must be a positive integer",
        ),
        (
            "[tool.pebble-migrate]\nbackup-keep = '2'\n",
            "[tool.pebble-migrate] backup-keep must be a positive integer",
        ),
        (
            "[tool.pebble-migrate]\nbackup-keep = true\n",
            "[tool.pebble-migrate] backup-keep must be a positive integer",
        ),
        (
            "[tool.pebble-migrate]\nbackup-older-than = 30\n",
            '[tool.pebble-migrate] backup-older-than must be like "30d", not 30',
        ),
        (
            "[tool.pebble-migrate]\nbackup-mode = 'hardlink'\n",
            '[tool.pebble-migrate] backup-mode must be "link" or "copy", not \'hardlink\'',
        ),
    ],
)
def test_a_malformed_setting_is_refused_naming_the_file_and_key(
    tmp_path: Path, body: str, message: str
) -> None:
    path = _pyproject(tmp_path, body)
    with pytest.raises(UsageError) as info:
        load_project_config(tmp_path)
    assert info.value.message == f"{path}: {message}"


def test_an_unknown_key_lists_the_known_ones(tmp_path: Path) -> None:
    _pyproject(tmp_path, "[tool.pebble-migrate]\ndb = 'x'\n")
    with pytest.raises(UsageError) as info:
        load_project_config(tmp_path)
    assert info.value.hint == (
        "Known keys: allow-out-of-order, backup-dir, backup-keep, backup-mode, "
        "backup-older-than, database, migrations."
    )


# --- counting --------------------------------------------------------------------------


def _big_database(path: Path) -> Path:
    """A database whose key estimate is above counting.INLINE_LIMIT (so counted aside)."""
    db = rocksdict.Rdict(str(path), rocksdict.Options(raw_mode=True))
    try:
        batch = rocksdict.WriteBatch(raw_mode=True)
        for i in range(counting.INLINE_LIMIT + 10_000):
            batch.put(b"k:%06d" % i, b"")
        db.write(batch)
        del batch
        db.flush()
    finally:
        store.close_database(db)
    return path


def _read_only(path: Path) -> rocksdict.Rdict:
    return rocksdict.Rdict(
        str(path),
        rocksdict.Options(raw_mode=True),
        access_type=rocksdict.AccessType.read_only(False),
    )


def _wait(count: KeyCount) -> int | None:
    child = count._child
    assert child is not None, "the count was expected to run in a child process"
    child.wait(timeout=120)
    return count.poll()


def test_a_large_range_is_counted_by_a_child_process(tmp_path: Path) -> None:
    path = _big_database(tmp_path / "big")
    view = _read_only(path)
    try:
        count = KeyCount.start(view, str(path), b"k:010000", b"k:050000")
        try:
            assert _wait(count) == 40_000
            assert count.poll() == 40_000  # known from now on
        finally:
            count.close()
    finally:
        view.close()


def test_a_counting_child_that_fails_leaves_the_total_unknown(tmp_path: Path) -> None:
    path = _big_database(tmp_path / "big")
    view = _read_only(path)
    try:
        count = KeyCount.start(view, str(tmp_path / "no-such-view"), None, None)
        try:
            assert _wait(count) is None
        finally:
            count.close()
    finally:
        view.close()


def test_closing_a_running_count_stops_its_child(tmp_path: Path) -> None:
    path = _big_database(tmp_path / "big")
    view = _read_only(path)
    try:
        count = KeyCount.start(view, str(path), None, None)
        child = count._child
        assert child is not None
        count.close()  # at once: the child is still starting its interpreter
        assert child.returncode == -signal.SIGKILL
        assert child.stdout is not None and child.stdout.closed
        assert count.poll() is None
        count.close()  # a second close is harmless
    finally:
        view.close()


def test_without_an_interpreter_to_start_progress_has_no_total(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _big_database(tmp_path / "big")
    view = _read_only(path)
    try:
        monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
        count = KeyCount.start(view, str(path), None, None)
        assert count.poll() is None
        count.close()
    finally:
        view.close()


def test_a_count_given_a_child_without_output_reads_no_total() -> None:
    child = subprocess.Popen([sys.executable, "-c", "print(5)"], stdout=subprocess.DEVNULL)
    count = KeyCount(child=child)
    child.wait(timeout=60)
    assert count.poll() is None
    count.close()


def test_a_small_range_is_counted_at_once(tmp_path: Path) -> None:
    path = create_database(tmp_path / "db", KEYS)
    view = _read_only(path)
    try:
        count = KeyCount.start(view, str(path), b"k:010", None)
        assert count.total == 50
        assert count.poll() == 50
        count.close()
    finally:
        view.close()


def test_the_counting_child_prints_the_count_of_its_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = create_database(tmp_path / "db", KEYS)
    bounds = json.dumps([cursor.encode_key(b"k:010"), cursor.encode_key(b"k:025")])
    counting._main([str(path), bounds])
    assert capsys.readouterr().out == "15\n"
    done = subprocess.run(
        [sys.executable, "-m", "pebble_migrate.counting", str(path), json.dumps([None, None])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stdout) == (0, "60\n")


def test_counting_a_pickle_mode_range_stops_at_keys_of_another_type(tmp_path: Path) -> None:
    path = create_database(tmp_path / "db", {"a": 1, "b": 2, 1: 3, 2: 4}, raw=False)
    db = rocksdict.Rdict(str(path), access_type=rocksdict.AccessType.read_only(False))
    try:
        assert count_keys(db, "a", "z") == 2  # the int keys after the strs do not compare
        assert count_keys(db, None, None) == 4
    finally:
        db.close()


# --- cursor ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, b"\x00k", "user:1", 42, -7, 1.5, True, False])
def test_every_key_type_round_trips_through_json(key: Any) -> None:
    encoded = json.loads(json.dumps(cursor.encode_key(key)))
    decoded = cursor.decode_key(encoded)
    assert decoded == key
    assert type(decoded) is type(key)


def test_a_key_of_another_type_cannot_be_a_scan_position() -> None:
    with pytest.raises(UsageError) as info:
        cursor.encode_key((1, 2))
    assert "a key of type tuple ((1, 2))" in info.value.message
    assert info.value.hint == "Bound the scan (prefix=, or start=/end=) to keys of those types."


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1], "a key must be an object with one field, found [1]"),
        ({"b": "AA==", "s": "x"}, "a key must be an object with one field"),
        ({"i": True}, "unknown key encoding {'i': True}"),
        ({"t": 1}, "unknown key encoding {'t': 1}"),
        ({"x": "y"}, "unknown key encoding {'x': 'y'}"),
    ],
)
def test_a_malformed_key_encoding_is_a_type_error(data: Any, message: str) -> None:
    with pytest.raises(TypeError) as info:
        cursor.decode_key(data)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("key", "shown"),
    [(b"user:42", "b'user:42'"), (b"\x00\xff", "0x00ff"), ("user", "'user'"), (7, "7")],
)
def test_keys_are_shown_printable_or_as_hex(key: Any, shown: str) -> None:
    assert cursor.show_key(key) == shown


def _record(**changes: Any) -> dict[str, Any]:
    scan = ScanCursor("users", b"u:", b"u;", "0" * 32, after=b"u:7", count=7, total=10)
    data = cursor.encode_record(RunRecord(MID, "apply", 2, {"users": scan}, None))
    for path, value in changes.items():
        where = data
        *parents, last = path.split(".")
        for part in parents:
            where = where[part]
        where[last] = value
    return data


def test_a_run_record_round_trips_with_its_partial_keys() -> None:
    scan = ScanCursor("users", "a", None, None, after="m", count=3, total=None, done=False)
    record = RunRecord(MID, "rollback", 1, {"users": scan}, {"users": 5})
    back = cursor.decode_record(json.loads(json.dumps(cursor.encode_record(record))))
    assert back == record
    assert back.describe() == "scan 'users' after 'm' (3)"  # a scan with its own name is named
    assert cursor.decode_record(_record()).describe() == "scan 'users' after b'u:7' (7 of ~10)"


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({"action": "sideways"}, "ValueError: unknown action 'sideways'"),
        ({"migration_id": 5}, "TypeError: expected a string, found 5"),
        ({"scans.users.token": "XYZ"}, "ValueError: scan 'users' has a malformed view token"),
        ({"scans.users.token": 7}, "ValueError: scan 'users' has a malformed view token"),
        ({"scans.users.done": "no"}, "TypeError: scan 'users': done must be true or false"),
        ({"scans.users.count": -1}, "TypeError: expected a count, found -1"),
        ({"scans.users.total": True}, "TypeError: expected a count, found True"),
        ({"loose": 2**63}, "TypeError: expected a count, found 9223372036854775808"),
        ({"partial": {"../x": None}}, "ValueError: malformed scan name '../x'"),
    ],
)
def test_a_malformed_run_record_is_corrupt_state_naming_the_field(
    changes: dict[str, Any], detail: str
) -> None:
    with pytest.raises(CorruptStateError) as info:
        cursor.decode_record(_record(**changes))
    assert detail in info.value.message


def test_a_scan_name_that_is_not_a_string_is_corrupt_state() -> None:
    data = _record()
    data["scans"] = {5: data["scans"]["users"]}
    with pytest.raises(CorruptStateError) as info:
        cursor.decode_record(data)
    assert "ValueError: malformed scan name 5" in info.value.message


# --- durable ---------------------------------------------------------------------------


def test_a_failed_fsync_of_a_json_file_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "meta.json"
    target.write_text('{"old": true}')

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError, match="Input/output error") as info:
        durable.write_json_atomic(target, {"new": True})
    assert info.value.errno == errno.EIO
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]
    assert json.loads(target.read_text()) == {"old": True}


def test_a_failed_fsync_names_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "journal.json"
    target.write_text("{}")

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError, match="fsync failed: Input/output error") as info:
        durable.fsync_path(target)
    assert (info.value.errno, info.value.filename) == (errno.EIO, str(target))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_clone_that_runs_out_of_space_is_not_retried_as_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"x" * 4096)

    def full(fd: int, request: int, arg: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(durable.fcntl, "ioctl", full)
    with pytest.raises(OSError, match=os.strerror(code)) as info:
        durable.clone_or_copy(source, tmp_path / "target")
    assert info.value.errno == code
    assert (tmp_path / "target").read_bytes() == b""  # nothing copied after the refusal


def test_a_clone_the_filesystem_refuses_is_copied(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    how = durable.clone_or_copy(source, tmp_path / "target", 0o600)
    assert how in ("reflink", "copy")
    assert (tmp_path / "target").read_bytes() == source.read_bytes()
    assert (tmp_path / "target").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.EINVAL, errno.ENOTSUP])
def test_an_exchange_the_kernel_does_not_support_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")

    def unsupported(*args: Any) -> int:
        ctypes.set_errno(code)
        return -1

    monkeypatch.setattr(durable, "_renameat2", lambda: unsupported)
    assert durable.exchange(tmp_path / "a", tmp_path / "b") is False
    assert (tmp_path / "a").read_text() == "a"


def test_an_exchange_of_a_missing_path_names_both_paths(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    with pytest.raises(FileNotFoundError) as info:
        durable.exchange(tmp_path / "a", tmp_path / "missing")
    assert info.value.errno == errno.ENOENT
    assert (info.value.filename, info.value.filename2) == (
        str(tmp_path / "a"),
        str(tmp_path / "missing"),
    )


def test_a_libc_without_renameat2_means_no_exchange(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class OldLibc:
        """A C library from before renameat2 (glibc < 2.28)."""

    monkeypatch.setattr(ctypes, "CDLL", lambda *args, **kwargs: OldLibc())
    assert durable._renameat2() is None
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    assert durable.exchange(tmp_path / "a", tmp_path / "b") is False
    assert (tmp_path / "b").read_text() == "b"


def test_exchange_swaps_two_directories(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "from-a").touch()
    (tmp_path / "b").mkdir()
    assert durable.exchange(tmp_path / "a", tmp_path / "b") is True
    assert os.listdir(tmp_path / "b") == ["from-a"]
    assert os.listdir(tmp_path / "a") == []


# --- startup ---------------------------------------------------------------------------


def test_startup_settles_a_restore_that_was_killed_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = create_database(tmp_path / "db", {b"seed": b"1"})
    reg = registry_of(migration("1700000000_a"))
    _startup(path, _opts(reg, run_migrations=True))
    backup = pm.create_backup(path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_MIGRATE_")}
    env["PEBBLE_MIGRATE_KILL_AT"] = "restore-swapped"
    restore = [sys.executable, "-m", "pebble_migrate", "backup", "restore", backup.id]
    killed = subprocess.run(
        [*restore, "-d", str(path), "--force"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert any(".restore-journal" in n for n in os.listdir(tmp_path)), os.listdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="pebble_migrate"):
        assert _startup(path, _opts(reg)) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "restore" in warnings[0], warnings
    assert not any(".restore" in n for n in os.listdir(tmp_path)), os.listdir(tmp_path)


def test_startup_refuses_a_partly_applied_migration_whose_code_is_gone(tmp_path: Path) -> None:
    path = create_database(tmp_path / "db", KEYS)
    with pytest.raises(pm.MigrationFailed):
        commands.up(
            path,
            registry_of(migration(MID, up=_failing_scans(b"k:030", "default"))),
            options=_run_opts(),
        )
    pm.force_clean(path)  # clean, the cursor kept: partly applied
    before = snapshot(path)
    with pytest.raises(pm.NotCleanError) as info:
        _startup(path, _opts(registry_of(migration("1700100000_other")), run_migrations=True))
    assert info.value.message.startswith(f"partly-applied: {MID}, after b'k:029' (30")
    assert info.value.message.endswith("no migration here would finish it.")
    assert info.value.hint == "See `pebble-migrate status --verbose`."
    assert snapshot(path) == before


def _edit_state(path: Path, **fields: Any) -> None:
    db = rocksdict.Rdict(str(path))
    try:
        cf = db.get_column_family(STATE_CF)
        record = json.loads(cf[META_KEY])
        record.update(fields)
        cf[META_KEY] = json.dumps(record).encode()
        del cf
    finally:
        db.close()


def test_startup_refuses_a_status_that_nothing_here_would_finish(tmp_path: Path) -> None:
    path = create_database(tmp_path / "db", {b"seed": b"1"})
    reg = registry_of(migration("1700000000_a"))
    _startup(path, _opts(reg, run_migrations=True))
    _edit_state(path, status="migrating", in_progress=None)
    before = snapshot(path)
    with pytest.raises(pm.NotCleanError) as info:
        _startup(path, _opts(reg, run_migrations=True, cli_name="app-migrate"))
    assert info.value.message == (
        "the database status is migrating, and no migration here would finish it."
    )
    assert info.value.hint == "See `app-migrate status --verbose`."
    assert snapshot(path) == before


def test_startup_refuses_a_path_that_is_not_the_open_database(tmp_path: Path) -> None:
    path = create_database(tmp_path / "db", {b"seed": b"1"})
    other = create_database(tmp_path / "other", {b"seed": b"2"})
    before = snapshot(other)
    with pytest.raises(UsageError) as info:
        _startup_at(path, other)
    assert info.value.message == (
        f"db_path {other} is not the directory of the open database ({path})."
    )
    assert snapshot(other) == before


def _startup_at(opened_path: Path, given: Path) -> Any:
    db = rocksdict.Rdict(str(opened_path))
    try:
        return pm.check_and_run_startup_migrations(db, given, _opts(registry_of()))
    finally:
        db.close()


def test_startup_refuses_when_the_paths_cannot_be_compared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = create_database(tmp_path / "db", {b"seed": b"1"})

    def failing(a: Any, b: Any) -> bool:
        raise OSError(errno.EIO, "Input/output error", str(a))

    monkeypatch.setattr(os.path, "samefile", failing)
    with pytest.raises(UsageError) as info:
        _startup_at(path, path)
    assert "is not the directory of the open database" in info.value.message


def _interrupting(ctx: Any) -> None:
    """Send SIGTERM to this process midway, then keep it pending from there on."""
    for key, value in ctx.scan(prefix=b"k:"):
        ctx.put(key, value + b"+")
        if key == b"k:020":
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def _interrupted_startup(path: Path, handler: Any) -> tuple[pm.MigrationInterrupted, bool]:
    """Run a start-up that SIGTERM interrupts with `handler` installed before it; return
    the error and whether a SIGTERM was redelivered (held pending by the blocked mask)."""
    previous = signal.signal(signal.SIGTERM, handler)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    try:
        with pytest.raises(pm.MigrationInterrupted) as info:
            _startup(
                path,
                _opts(
                    registry_of(migration(MID, up=_interrupting)),
                    run_migrations=True,
                    handle_signals=True,
                ),
            )
        assert signal.getsignal(signal.SIGTERM) is handler  # the app's handler is back
        redelivered = signal.SIGTERM in signal.sigpending()
        if redelivered:
            signal.sigwait({signal.SIGTERM})  # take it, or unblocking would end pytest
        return info.value, redelivered
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGTERM, previous)


def test_a_stop_with_the_default_sigterm_action_is_redelivered_to_end_the_process(
    tmp_path: Path,
) -> None:
    path = create_database(tmp_path / "db", KEYS)
    error, redelivered = _interrupted_startup(path, signal.SIG_DFL)
    assert error.exit_code == 143
    assert redelivered  # the process would now end by SIGTERM, as it asked for
    assert sum(v == b"v+" for v in contents(path)["default"].values()) == 21  # k:000..k:020


def test_a_stop_with_sigterm_ignored_is_not_redelivered(tmp_path: Path) -> None:
    path = create_database(tmp_path / "db", KEYS)
    error, redelivered = _interrupted_startup(path, signal.SIG_IGN)
    assert error.exit_code == 143
    assert not redelivered
    assert sum(v == b"v+" for v in contents(path)["default"].values()) == 21


def test_startup_backups_apply_the_retention(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = create_database(tmp_path / "db", {b"seed": b"1"})
    backups = tmp_path / "backups"
    ids = ["1700000000_a", "1700100000_b", "1700200000_c"]
    with caplog.at_level(logging.INFO, logger="pebble_migrate"):
        for n in range(1, 4):
            reg = registry_of(*(migration(mid) for mid in ids[:n]))
            _startup(
                path,
                _opts(
                    reg,
                    run_migrations=True,
                    backup_enabled=True,
                    backup_dir=str(backups),
                    backup_keep=1,
                ),
            )
    left = pm.list_backups(path, backup_dir=backups)
    assert [b.trigger for b in left] == ["1700100000_b", "1700200000_c"]
    removed = [r.getMessage() for r in caplog.records if "retention removed" in r.getMessage()]
    assert len(removed) == 1, removed
    assert left[0].id not in removed[0] and left[1].id not in removed[0]


# --- validation ------------------------------------------------------------------------


def test_validate_says_a_database_without_state_needs_up(db_path: Path) -> None:
    report = validate(db_path, registry_of(migration("1700000000_a")))
    state = next(c for c in report.checks if c.name == "state")
    assert (state.ok, state.detail) == (False, "no migration state recorded yet")
    assert report.way_out == (
        "Run `pebble-migrate up` to apply the migrations (it records the state)."
    )


def test_deep_validate_checks_the_view_of_each_scan_left_halfway(tmp_path: Path) -> None:
    path = create_database(tmp_path / "db", KEYS)
    reg = registry_of(migration(MID, up=_failing_scans(b"k:030", "first", "second")))
    with pytest.raises(pm.MigrationFailed):
        commands.up(path, reg, options=_run_opts())
    report = validate(path, reg, deep=True)
    by_name = {c.name: c for c in report.checks}
    assert f"view {MID}/apply-second" in by_name
    assert f"view {MID}/apply-first" not in by_name  # finished: nothing resumes from it
    assert (by_name[f"view {MID}/apply-second"].ok, by_name[f"view {MID}/apply-second"].detail) == (
        True,
        "intact",
    )
    assert by_name["table files"].ok and by_name["write-ahead log"].ok
    assert not by_name["progress"].ok
    assert by_name["progress"].detail.startswith(
        f"partly applied: {MID} (scan 'second' after b'k:029'"
    )
