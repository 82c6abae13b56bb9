"""The advice of a failed `dependencies` check fits the situation (issue 10): a missing
dependency below the current version is out of order, and a plain `up` refuses it."""

from __future__ import annotations

from pebble_migrate.migration import Migration
from pebble_migrate.state import State, Status
from pebble_migrate.validation import _state_checks

A, B, C = "1700000001_a", "1700000002_b", "1700000003_c"


def _noop(ctx: object) -> None:
    return None


def _dependencies_check(applied: set[str], needs: dict[str, tuple[str, ...]]) -> tuple[bool, str]:
    migrations = [Migration(id=mid, up=_noop, dependencies=needs.get(mid, ())) for mid in (A, B, C)]
    version = max(int(mid.split("_")[0]) for mid in applied)
    state = State(True, Status.CLEAN, version, frozenset(applied))
    (check,) = [
        c for c in _state_checks(state, migrations, {}, set(applied)) if c.name == "dependencies"
    ]
    return check.ok, check.way_out


def test_a_missing_dependency_below_the_current_version_names_allow_out_of_order() -> None:
    ok, way_out = _dependencies_check({B, C}, {C: (A,)})
    assert not ok
    assert "`pebble-migrate up --allow-out-of-order`" in way_out


def test_a_missing_dependency_above_the_current_version_names_a_plain_up() -> None:
    ok, way_out = _dependencies_check({A, B}, {B: (C,)})
    assert not ok
    assert "`pebble-migrate up`" in way_out and "--allow-out-of-order" not in way_out
