"""The crash-test script in its quick mode: at least 25 real SIGKILLs, zero mismatches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "crashtest.py"


def test_quick_crash_test_has_no_mismatches() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout[done.stdout.index("{") :])
    assert report["kills"] >= 25
    assert report["mismatches"] == 0, report
    assert report["checked_keys"] >= report["trials"] * 30_000
    kinds = report["kills_by_kind"]
    assert kinds.get("random", 0) > 0
    assert any(kind.startswith("point:chunk") for kind in kinds), kinds
