"""A model-based test: random sequences of operations against a reference of the data.

Hypothesis drives the real CLI over a real database through up (to a target), down,
rerun, force-clean, repair, backup create and restore, copies of the database directory,
other working directories and path spellings, migrations that fail at a key, are
interrupted by SIGINT (also while swallowing every exception), and SIGKILL at named kill
points in a child process. A reference replays every step the database's history records
as finished, with plain Python versions of the migrations, none of them idempotent. After
every operation:

- a refusal (exit 1, 2 or 4) changed nothing, state included;
- whenever the database says it is clean with no run left halfway, its data and applied set
  equal the reference (so nothing was applied twice or skipped);
- `status --check` exits 0 only in that case, with nothing pending.

`PEBBLE_MIGRATE_MODEL_EXAMPLES` and `PEBBLE_MIGRATE_MODEL_STEPS` size the run (CI uses the
defaults); `PEBBLE_MIGRATE_MODEL_TALLY` names a JSON file that receives the counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from pebble_migrate.cli import cli
from pebble_migrate.testing import contents, create_database

KEYS = [b"k:%02d" % i for i in range(24)]
CHUNK = "4"
IDS = ["1700000001_append", "1700000002_index", "1700000003_rename", "1700000004_mark"]
VERSIONS = ["0", *(i.split("_")[0] for i in IDS)]
KILL_POINTS = [
    "step-begin",
    "chunk-before-commit",
    "chunk-after-commit",
    "final-before-validate",
    "final-before-commit",
    "final-after-commit",
]
TALLY: Counter[str] = Counter()

CONTROL = '''
"""Faults the model arms for the next command: fail or SIGINT at a key, swallowing."""
import json
import os
import signal
from pathlib import Path

def _load():
    try:
        return json.loads(Path(os.environ["PM_MODEL_CONTROL"]).read_text())
    except (OSError, ValueError):
        return {}


def at(mid, action, key):
    """Act on a fault armed for this migration, action and key."""
    control = _load()
    if control.get("fail") == [mid, action, key.decode()]:
        raise RuntimeError("failing on purpose at " + key.decode())
    if control.get("sigint") == [mid, action, key.decode()]:
        os.kill(os.getpid(), signal.SIGINT)


def swallowing(mid):
    """Whether this migration wraps its loops in `except Exception: pass`."""
    return _load().get("swallow") == mid


def reach(ctx, scan="default"):
    """Return the last key up committed (ctx.partial), or None when up finished."""
    if ctx.partial is None:
        return None
    last = ctx.partial.get(scan)
    return b"" if last is None else last
'''

APPEND = """
import _control as c

MID = "1700000001_append"


def _up(ctx):
    for key, value in ctx.scan(prefix=b"k:"):
        c.at(MID, "apply", key)
        ctx.put(key, value + b"a")


def up(ctx):
    if c.swallowing(MID):
        try:
            _up(ctx)
        except Exception:
            pass
    else:
        _up(ctx)


def down(ctx):
    last = c.reach(ctx)
    for key, value in ctx.scan(prefix=b"k:"):
        if last is not None and (last == b"" or key > last):
            break
        c.at(MID, "rollback", key)
        ctx.put(key, value[:-1])
"""

INDEX = """
import _control as c

MID = "1700000002_index"


def up(ctx):
    ctx.put(b"c:runs", b"%d" % (int(ctx.get(b"c:runs", b"0")) + 1))
    for key, value in ctx.scan(prefix=b"k:"):
        c.at(MID, "apply", key)
        ctx.put(b"i:" + value + b":" + key, b"")
        ctx.put(b"c:total", b"%d" % (int(ctx.get(b"c:total", b"0")) + 1))


def _count_down(ctx, key):
    # An exact inverse of up's count: back to no key at all at zero, so that the rollback
    # of a partly applied run (which the reference never replays) leaves what was there.
    left = int(ctx.get(key)) - 1
    if left:
        ctx.put(key, b"%d" % left)
    else:
        ctx.delete(key)


def down(ctx):
    for key, _ in ctx.scan(prefix=b"i:"):
        c.at(MID, "rollback", key.rsplit(b":", 2)[-2] + b":" + key.rsplit(b":", 1)[-1])
        ctx.delete(key)
        _count_down(ctx, b"c:total")
    _count_down(ctx, b"c:runs")


def validate(ctx):
    total = int(ctx.get(b"c:total", b"0"))
    indexed = sum(1 for _ in ctx.scan(prefix=b"i:"))
    return [] if indexed <= total else [f"{indexed} index keys, total {total}"]
"""

RENAME = """
import _control as c

MID = "1700000003_rename"
dependencies = ["1700000001_append"]


def up(ctx):
    for key, value in ctx.scan(prefix=b"k:"):
        c.at(MID, "apply", key)
        ctx.put(b"r:" + key[2:], value)
        ctx.delete(key)


def down(ctx):
    for key, value in ctx.scan(prefix=b"r:"):
        c.at(MID, "rollback", b"k:" + key[2:])
        ctx.put(b"k:" + key[2:], value)
        ctx.delete(key)
"""

MARK = """
import _control as c

MID = "1700000004_mark"


def _up(ctx):
    for key, value in ctx.scan(prefix=b"r:"):
        c.at(MID, "apply", b"k:" + key[2:])
        ctx.put(key, value + b"m")


def up(ctx):
    if c.swallowing(MID):
        try:
            _up(ctx)
        except Exception:
            pass
    else:
        _up(ctx)


def down(ctx):
    last = c.reach(ctx)
    for key, value in ctx.scan(prefix=b"r:"):
        if last is not None and (last == b"" or key > last):
            break
        c.at(MID, "rollback", b"k:" + key[2:])
        ctx.put(key, value[:-1])
"""


# --- the reference: the same migrations in plain Python ------------------------------


def _append(data: dict[bytes, bytes], undo: bool) -> None:
    for key in [k for k in data if k.startswith(b"k:")]:
        data[key] = data[key][:-1] if undo else data[key] + b"a"


def _count_down(data: dict[bytes, bytes], key: bytes) -> None:
    left = int(data[key]) - 1
    if left:
        data[key] = b"%d" % left
    else:
        del data[key]


def _index(data: dict[bytes, bytes], undo: bool) -> None:
    if undo:
        for key in [k for k in data if k.startswith(b"i:")]:
            del data[key]
            _count_down(data, b"c:total")
        _count_down(data, b"c:runs")
        return
    data[b"c:runs"] = b"%d" % (int(data.get(b"c:runs", b"0")) + 1)
    for key in sorted(k for k in data if k.startswith(b"k:")):
        data[b"i:" + data[key] + b":" + key] = b""
        data[b"c:total"] = b"%d" % (int(data.get(b"c:total", b"0")) + 1)


def _rename(data: dict[bytes, bytes], undo: bool) -> None:
    source, target = (b"r:", b"k:") if undo else (b"k:", b"r:")
    for key in [k for k in data if k.startswith(source)]:
        data[target + key[2:]] = data.pop(key)


def _mark(data: dict[bytes, bytes], undo: bool) -> None:
    for key in [k for k in data if k.startswith(b"r:")]:
        data[key] = data[key][:-1] if undo else data[key] + b"m"


REFERENCE = dict(zip(IDS, (_append, _index, _rename, _mark), strict=True))


@dataclass
class Reference:
    """What the data must be, given the steps the database's history says finished."""

    data: dict[bytes, bytes]
    applied: set[str] = field(default_factory=set)
    seen: int = 0  # history records already replayed

    def replay(self, records: list[dict[str, Any]]) -> None:
        """Apply the finished steps among new history records."""
        for record in records:
            mid, kind = record["id"], record["kind"]
            if not record["success"] or mid not in REFERENCE:
                continue
            if kind in ("apply", "rerun"):
                if kind == "apply":
                    assert mid not in self.applied, f"{mid} recorded applied twice"
                REFERENCE[mid](self.data, False)
                self.applied.add(mid)
            elif kind == "rollback" and mid in self.applied:
                REFERENCE[mid](self.data, True)
                self.applied.discard(mid)

    def copy(self) -> Reference:
        """Return an independent copy (for a backup)."""
        return Reference(dict(self.data), set(self.applied), self.seen)


# --- the machine -----------------------------------------------------------------------


class Operations(RuleBasedStateMachine):
    """Operations an operator runs, in any order, checked against the reference."""

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="pm-model-"))
        self.migrations = self.root / "project" / "migrations"
        self.migrations.mkdir(parents=True)
        for name, body in (
            ("_control", CONTROL),
            (IDS[0], APPEND),
            (IDS[1], INDEX),
            (IDS[2], RENAME),
            (IDS[3], MARK),
        ):
            (self.migrations / f"{name}.py").write_text(textwrap.dedent(body))
        start = {key: b"v%d" % (i % 3) for i, key in enumerate(KEYS)}
        self.db = create_database(self.root / "data" / "app.db", start)
        self.elsewhere = self.root / "elsewhere"
        self.elsewhere.mkdir()
        self.ref = Reference(dict(start))
        self.backups: list[tuple[str, Reference]] = []
        self.copies = 0
        self.spelling = "absolute"
        self.cwd = self.root
        self.runner = CliRunner()
        self.last_code = 0
        self.halfway = False
        self.old_cwd = Path.cwd()
        os.environ["PM_MODEL_CONTROL"] = str(self.root / "project" / "control.json")

    def teardown(self) -> None:
        os.chdir(self.old_cwd)
        os.environ.pop("PM_MODEL_CONTROL", None)
        shutil.rmtree(self.root, ignore_errors=True)

    # --- plumbing ------------------------------------------------------------------

    def _db_arg(self) -> str:
        """The database path as this step spells it."""
        if self.spelling == "relative":
            return os.path.relpath(self.db, self.cwd)
        if self.spelling == "slash":
            return f"{self.db}/"
        if self.spelling == "link":
            link = self.root / f"link-{self.db.name}"
            if not link.is_symlink():
                link.symlink_to(self.db)
            return str(link)
        if self.spelling == "dot" and self.cwd == self.db:
            return "."
        return str(self.db)

    def _common(self) -> list[str]:
        return [
            "-d",
            self._db_arg(),
            "-m",
            str(self.migrations),
            "--backup-dir",
            str(self.root / "backups"),
        ]

    def _control(self, **faults: Any) -> None:
        (self.root / "project" / "control.json").write_text(json.dumps(faults))

    def _cli(self, *args: str, faults: dict[str, Any] | None = None) -> int:
        """Run the CLI in this process, from this step's working directory."""
        self._control(**(faults or {}))
        before = contents(self.db, state=True)
        os.chdir(self.cwd)
        try:
            result = self.runner.invoke(cli, [*args, *self._common()], catch_exceptions=False)
        finally:
            os.chdir(self.old_cwd)
            self._control()
        code = result.exit_code
        assert code in (0, 1, 2, 3, 4, 6, 7, 130), (args, code, result.output)
        assert "Traceback" not in result.stderr, result.stderr
        if code in (1, 2, 4):
            assert contents(self.db, state=True) == before, (args, code, result.stderr)
            TALLY["refusals"] += 1
        TALLY[f"exit {code}"] += 1
        self.last_code = code
        return code

    def _cli_killed(self, point: str, occurrence: int, args: list[str]) -> None:
        """Run the CLI in a child process that dies by SIGKILL at a named point."""
        env = {**os.environ, "PEBBLE_MIGRATE_KILL_AT": f"{point}:{occurrence}"}
        proc = subprocess.run(
            [sys.executable, "-m", "pebble_migrate", *args, *self._common()],
            cwd=self.cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode in (0, 1, 2, 3, 4, 6, -signal.SIGKILL), proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        TALLY["kills" if proc.returncode == -signal.SIGKILL else "kill point not reached"] += 1

    def _json(self, *args: str) -> Any:
        os.chdir(self.cwd)
        try:
            result = self.runner.invoke(
                cli, [*args, "--json", *self._common()], catch_exceptions=False
            )
        finally:
            os.chdir(self.old_cwd)
        assert result.exit_code in (0, 3, 4), (args, result.output)
        return json.loads(result.stdout), result.exit_code

    # --- rules ---------------------------------------------------------------------

    def _fault(self, data: st.DataObject, candidates: list[str], action: str) -> dict[str, Any]:
        """Draw a fault (or none) for a migration among `candidates`, at a drawn key."""
        kinds = ["fail", "sigint", "sigint-swallowed"] if action == "apply" else ["fail", "sigint"]
        fault = data.draw(st.sampled_from([*kinds, None]))
        if fault is None or not candidates:
            return {}
        mid = data.draw(st.sampled_from(candidates))
        key = data.draw(st.sampled_from(KEYS)).decode()
        TALLY[f"fault {fault} in {action}"] += 1
        faults: dict[str, Any] = {fault.split("-", maxsplit=1)[0]: [mid, action, key]}
        if fault == "sigint-swallowed":
            faults["swallow"] = mid
        return faults

    def _place(self, data: st.DataObject) -> None:
        """Draw the working directory and the spelling of the database path."""
        where = data.draw(st.sampled_from(["root", "elsewhere", "database"]))
        self.cwd = {"root": self.root, "elsewhere": self.elsewhere, "database": self.db}[where]
        self.spelling = data.draw(st.sampled_from(["absolute", "relative", "slash", "link", "dot"]))

    @initialize(version=st.sampled_from([None, *VERSIONS[1:]]))
    def start(self, version: str | None) -> None:
        chosen = [version] if version else []
        self._cli("up", *chosen, "--yes", "--no-backup", "--chunk-records", CHUNK)

    @rule(data=st.data())
    def up(self, data: st.DataObject) -> None:
        self._place(data)
        version = data.draw(st.sampled_from([None, *VERSIONS[1:]]))
        status, _ = self._json("status")
        faults = self._fault(data, status["pending"], "apply")
        chosen = [version] if version else []
        self._cli("up", *chosen, "--yes", "--no-backup", "--chunk-records", CHUNK, faults=faults)

    @rule(data=st.data())
    def down(self, data: st.DataObject) -> None:
        self._place(data)
        status, _ = self._json("status")
        faults = self._fault(data, sorted(status["applied"]), "rollback")
        top = int(faults["fail" if "fail" in faults else "sigint"][0][:10]) if faults else None
        version = data.draw(st.sampled_from([v for v in VERSIONS if top is None or int(v) < top]))
        self._cli("down", version, "--yes", "--no-backup", "--chunk-records", CHUNK, faults=faults)

    @rule(data=st.data(), mid=st.sampled_from(IDS), allow_later=st.booleans())
    def rerun(self, data: st.DataObject, mid: str, allow_later: bool) -> None:
        self._place(data)
        later = ["--allow-later"] if allow_later else []
        self._cli("rerun", mid, "--yes", "--no-backup", "--chunk-records", CHUNK, *later)

    @rule(data=st.data(), then_up=st.booleans())
    def force_clean(self, data: st.DataObject, then_up: bool) -> None:
        """The recovery guide's manual recovery: force-clean, then (often) up."""
        self._place(data)
        self._cli("force-clean", "--yes")
        if then_up:
            self._cli("up", "--yes", "--no-backup", "--chunk-records", CHUNK)

    @precondition(lambda self: self.halfway)
    @rule(data=st.data())
    def recover(self, data: st.DataObject) -> None:
        """While a run is left halfway, an operator tries one of the ways out, maybe with
        another fault on the way."""
        self._place(data)
        way = data.draw(st.sampled_from(["up", "down", "force-clean", "rerun"]))
        status, _ = self._json("status")
        mid = status["left_halfway"]
        if way == "up":
            faults = self._fault(data, [mid], "apply")
            self._cli("up", "--yes", "--no-backup", "--chunk-records", CHUNK, faults=faults)
        elif way == "down":
            faults = self._fault(data, [mid], "rollback")
            below = [v for v in VERSIONS if int(v) < int(mid[:10])]
            version = data.draw(st.sampled_from(below))
            self._cli(
                "down", version, "--yes", "--no-backup", "--chunk-records", CHUNK, faults=faults
            )
        elif way == "force-clean":
            self.force_clean(data, then_up=data.draw(st.booleans()))
        else:
            self._cli(
                "rerun", mid, "--yes", "--no-backup", "--allow-later", "--chunk-records", CHUNK
            )

    @rule()
    def repair(self) -> None:
        self._cli("repair", "--yes")

    @rule()
    def backup(self) -> None:
        if self._cli("backup", "create") == 0:
            listed, _ = self._json("backup", "list")
            snapshot = self.ref.copy()
            snapshot.seen = self._history_length()
            self.backups.append((listed[-1]["id"], snapshot))

    @precondition(lambda self: bool(self.backups))
    @rule(data=st.data())
    def restore(self, data: st.DataObject) -> None:
        self._place(data)
        backup_id, snapshot = data.draw(st.sampled_from(self.backups))
        if self._cli("backup", "restore", backup_id, "--force") == 0:
            self.ref = snapshot.copy()
            TALLY["restores"] += 1

    @rule()
    def copy_the_database(self) -> None:
        self.copies += 1
        copy = self.db.parent / f"copy-{self.copies}.db"
        subprocess.run(["cp", "-a", str(self.db), str(copy)], check=True)
        self.db = copy
        TALLY["copies"] += 1

    @rule(
        data=st.data(),
        point=st.sampled_from(KILL_POINTS),
        occurrence=st.integers(1, 6),
        down=st.booleans(),
    )
    def killed(self, data: st.DataObject, point: str, occurrence: int, down: bool) -> None:
        self._place(data)
        command = ["down", "0"] if down else ["up"]
        self._cli_killed(
            point, occurrence, [*command, "--yes", "--no-backup", "--chunk-records", CHUNK]
        )

    # --- the oracle ----------------------------------------------------------------

    def _history_length(self) -> int:
        records, _ = self._json("history")
        return len(records["history"])

    @invariant()
    def matches_the_reference(self) -> None:
        history, _ = self._json("history")
        records = history["history"]
        assert len(records) >= self.ref.seen, "history went backwards"
        self.ref.replay(records[self.ref.seen :])
        self.ref.seen = len(records)
        status, _ = self._json("status")
        check = self._check_code()
        clean = status["status"] == "clean" and status["situation"] == "clean"
        self.halfway = status["left_halfway"] is not None
        if clean:
            TALLY["clean checks"] += 1
            data = contents(self.db)["default"]
            assert data == self.ref.data, _diff(data, self.ref.data)
            assert set(status["applied"]) == self.ref.applied
        if check == 0:
            assert clean and not status["pending"]
        if clean and not status["pending"]:
            assert check == 0
        TALLY["steps"] += 1

    def _check_code(self) -> int:
        os.chdir(self.cwd)
        try:
            result = self.runner.invoke(cli, ["status", "--check", *self._common()])
        finally:
            os.chdir(self.old_cwd)
        assert result.exit_code in (0, 3, 4), result.output
        return result.exit_code


def _diff(got: dict[bytes, bytes], want: dict[bytes, bytes]) -> str:
    keys = sorted(set(got) | set(want))
    wrong = [(k, got.get(k), want.get(k)) for k in keys if got.get(k) != want.get(k)]
    return f"{len(wrong)} keys differ, first: {wrong[:5]}"


Operations.TestCase.settings = settings(
    max_examples=int(os.environ.get("PEBBLE_MIGRATE_MODEL_EXAMPLES", "12")),
    stateful_step_count=int(os.environ.get("PEBBLE_MIGRATE_MODEL_STEPS", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestOperations = Operations.TestCase


def teardown_module() -> None:
    """Write the counts where a long run asked for them."""
    target = os.environ.get("PEBBLE_MIGRATE_MODEL_TALLY")
    if target:
        with contextlib.suppress(OSError):
            Path(target).write_text(json.dumps(dict(TALLY), indent=2, sort_keys=True))
