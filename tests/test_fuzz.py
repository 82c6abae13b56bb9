"""Fuzzing: command lines, migration files and state records made of hostile pieces.

Whatever Hypothesis throws at it, the CLI never raises an uncaught exception, exits only
with a documented code, prints no traceback, and a command it rejects leaves the database
(every column family, the state included) exactly as it was.

CI runs 1,000 examples of each (3,000 in all); `PEBBLE_MIGRATE_FUZZ_EXAMPLES` sets the count for a
long run, and `PEBBLE_MIGRATE_FUZZ_TALLY` names a JSON file that receives the counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import rocksdict
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pebble_migrate.cli import cli
from pebble_migrate.state import CURSOR_PREFIX, HISTORY_PREFIX, META_KEY
from pebble_migrate.store import STATE_CF
from pebble_migrate.testing import contents, create_database

DOCUMENTED = {0, 1, 2, 3, 4, 5, 6, 7, 130, 143}
REFUSED = {1, 2, 4, 5, 7}
"""Exit codes of a command that did nothing (6, a migration that failed, ran until then)."""
EXAMPLES = int(os.environ.get("PEBBLE_MIGRATE_FUZZ_EXAMPLES", "1000"))
TALLY: Counter[str] = Counter()
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=False,
)

GOOD = '''"""Plus."""
def up(ctx):
    for k, v in ctx.scan(prefix=b"k:"):
        ctx.put(k, v + b"+")


def down(ctx):
    for k, v in ctx.scan(prefix=b"k:"):
        ctx.put(k, v[:-1])
'''

COMMANDS = [
    ["status"],
    ["status", "--check"],
    ["history"],
    ["validate"],
    ["validate", "--deep"],
    ["up"],
    ["down"],
    ["rerun"],
    ["force-clean"],
    ["repair"],
    ["stamp"],
    ["stamp", "0"],
    ["down", "--steps"],
    ["validate", "1700000000"],
    ["create"],
    ["backup", "create"],
    ["backup", "list"],
    ["backup", "verify"],
    ["backup", "restore"],
    ["backup", "cleanup"],
]
FLAGS = [
    "--yes",
    "-y",
    "--dry-run",
    "-n",
    "--json",
    "-v",
    "--check",
    "--create",
    "--from-start",
    "--no-backup",
    "--no-validate",
    "--allow-later",
    "--allow-out-of-order",
    "--steps",
    "--deep",
    "--copy",
    "--compress",
    "--force",
    "-f",
    "--other-database",
    "--discard-current",
    "--chunk-records",
    "--chunk-bytes",
    "--history",
    "--limit",
    "--older-than",
    "--keep",
    "-d",
    "-m",
    "--backup-dir",
    "--help",
    "--bogus",
]

WEIRD_TEXT = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            ".",
            "..",
            "./",
            "../..",
            "db",
            "./db/",
            "db/..",
            "a b",
            "ünï cödé",
            "line\nbreak",
            "tab\there",
            "[/]",
            "[bold red]x[/]",
            "-1",
            "0",
            "1",
            "1e999",
            "99999999999999999999",
            "1700000000",
            "1700000000_plus",
            "1700000000_nope",
            "30d",
            "0s",
            "1y",
            "99999999999999w",
            "-5m",
            "NaN",
            "inf",
            "\x00",
            "💥",
            "20261129T000000Z",
            "../../etc/passwd",
            "/dev/null",
            "migrations",
            "db.backups",
        ]
    ),
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        max_size=12,
    ),
)


_TEMPLATE: list[Path] = []


def _template() -> Path:
    """One database made once and copied into every example (creating is the slow part)."""
    if not _TEMPLATE:
        root = Path(tempfile.mkdtemp(prefix="pm-fuzz-template-"))
        _TEMPLATE.append(create_database(root / "db", {b"k:%02d" % i: b"v" for i in range(20)}))
    return _TEMPLATE[0]


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    """A fresh database, its migrations and a working directory three levels below the
    root, so that `..` in a fuzzed path still lands inside the sandbox (one per example)."""
    root = Path(tempfile.mkdtemp(prefix="pm-fuzz-"))
    cwd = root / "a" / "b" / "c"
    cwd.mkdir(parents=True)
    shutil.copytree(_template(), cwd / "db")
    (cwd / "migrations").mkdir()
    (cwd / "migrations" / "1700000000_plus.py").write_text(GOOD)
    old = Path.cwd()
    os.chdir(cwd)
    try:
        yield cwd
    finally:
        os.chdir(old)
        shutil.rmtree(root, ignore_errors=True)


def _state_of(path: Path) -> Any:
    try:
        return contents(path, state=True)
    except Exception as exc:  # noqa: BLE001 - a damaged database is compared by its error
        return f"unreadable: {type(exc).__name__}"


def _run(cwd: Path, argv: list[str]) -> None:
    """Run one command line and check every promise about how it may end."""
    db = cwd / "db"
    before = _state_of(db)
    result = CliRunner().invoke(cli, argv, catch_exceptions=True)
    code = result.exit_code
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        raise AssertionError(f"{argv!r} raised {type(exc).__name__}: {exc}") from exc
    assert code in DOCUMENTED, (argv, code, result.output)
    assert "Traceback" not in result.output or "-v" in argv, (argv, result.output)
    if code in REFUSED:
        assert _state_of(db) == before, (argv, code, result.output)
        TALLY["rejected"] += 1
    TALLY[f"exit {code}"] += 1
    TALLY["examples"] += 1


@FUZZ
@given(
    command=st.sampled_from(COMMANDS),
    pieces=st.lists(st.one_of(st.sampled_from(FLAGS), WEIRD_TEXT), max_size=6),
    database=st.one_of(st.just("db"), WEIRD_TEXT),
)
def test_command_lines(command: list[str], pieces: list[str], database: str) -> None:
    with workspace() as cwd:
        _run(cwd, [*command, *pieces, "-d", database, "-m", "migrations"])


FRAGMENTS = [
    GOOD,
    "def up(ctx):\n    raise ValueError('x')\n",
    "def up(ctx)\n    pass\n",
    "up = 5\n",
    "async def up(ctx):\n    pass\n",
    "def up(ctx):\n    yield 1\n",
    "def up(ctx):\n    pass\ndependencies = 'x'\n",
    "def up(ctx):\n    pass\ndependencies = ['1700000001_b']\n",
    "def up(ctx):\n    pass\nrerunnable = 'yes'\n",
    "import nonexistent_module\n",
    "raise SystemExit(3)\n",
    "def up(ctx):\n    ctx.scan(prefix=b'k:')\n",
    "def up(ctx):\n    for k, v in ctx.scan(start=0.0, end=1.0):\n        pass\n",
    "def up(ctx):\n    import sys; sys.exit(0)\n",
    "description = 5\ndef up(ctx):\n    pass\n",
    "",
    "[/]\n",
]
NAMES = st.one_of(
    st.sampled_from(
        [
            "1700000001_b",
            "1700000002_c",
            "1700000000_plus",
            "0000000001_x",
            "99_y",
            "abc",
            "1700000003-hyphen",
            "_helper",
            "1700000004_ünï",
            "1700000005_[x]",
        ]
    ),
    st.from_regex(r"1[0-9]{9}_[a-z]{1,8}", fullmatch=True),
)


@FUZZ
@given(
    files=st.dictionaries(NAMES, st.sampled_from(FRAGMENTS), max_size=4),
    command=st.sampled_from([["status"], ["up"], ["validate"], ["down", "0", "--yes"]]),
)
def test_migration_directories(files: dict[str, str], command: list[str]) -> None:
    with workspace() as cwd:
        folder = cwd / "migrations"
        for name, body in files.items():
            try:
                (folder / f"{name}.py").write_text(body)
            except (OSError, ValueError):
                continue
        _run(cwd, [*command, "-d", "db", "-m", "migrations"])


JSONISH = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=False),
        st.sampled_from(
            [
                "clean",
                "dirty",
                "migrating",
                "rollback",
                "1700000000_plus",
                "[/]",
                "../../etc",
                "apply",
                "rollback",
                "2026-01-01T00:00:00+00:00",
                "",
            ]
        ),
        st.text(max_size=8),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
META_FIELDS = [
    "format",
    "status",
    "current_version",
    "applied",
    "last_migration",
    "last_migration_at",
    "in_progress",
    "last_error",
    "database_id",
    "history_count",
]


@FUZZ
@given(
    key=st.sampled_from(["meta", "history", "cursor"]),
    field=st.sampled_from([*META_FIELDS, None]),
    value=JSONISH,
    raw=st.one_of(st.none(), st.binary(max_size=16)),
    command=st.sampled_from(
        [
            ["status"],
            ["up"],
            ["history"],
            ["down", "0", "--yes"],
            ["force-clean", "--yes"],
            ["repair", "--yes"],
            ["stamp", "0", "--yes"],
            ["down", "--steps", "1", "--yes"],
            ["validate"],
        ]
    ),
)
def test_state_records(
    key: str, field: str | None, value: Any, raw: bytes | None, command: list[str]
) -> None:
    with workspace() as cwd:
        _damage_state(cwd / "db", key, field, value, raw)
        _run(cwd, [*command, "-d", "db", "-m", "migrations"])


def _damage_state(db: Path, key: str, field: str | None, value: Any, raw: bytes | None) -> None:
    applied = CliRunner().invoke(cli, ["up", "-d", str(db), "-m", "migrations", "--no-backup"])
    assert applied.exit_code == 0, applied.output
    handle = rocksdict.Rdict(str(db))
    try:
        cf = handle.get_column_family(STATE_CF)
        target = {
            "meta": META_KEY,
            "history": HISTORY_PREFIX + b"%012d" % 1,
            "cursor": CURSOR_PREFIX + b"1700000000_plus/apply",
        }[key]
        if raw is not None:
            cf[target] = raw
        elif field is None or key != "meta":
            cf[target] = json.dumps(value).encode()
        else:
            record = json.loads(cf[META_KEY])
            record[field] = value
            cf[target] = json.dumps(record).encode()
        del cf
    finally:
        handle.close()


def teardown_module() -> None:
    for made in _TEMPLATE:
        shutil.rmtree(made.parent, ignore_errors=True)
    target = os.environ.get("PEBBLE_MIGRATE_FUZZ_TALLY")
    if target:
        Path(target).write_text(json.dumps(dict(TALLY), indent=2, sort_keys=True))
