"""The pure planner: ordering, up, down and rerun plans over in-memory migrations."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pebble_migrate.errors import (
    DependencyCycle,
    DuplicateMigration,
    IrreversibleMigration,
    PlanError,
    UnknownDependency,
    UnknownTarget,
)
from pebble_migrate.migration import Migration
from pebble_migrate.plan import (
    Plan,
    Step,
    check,
    order,
    pending,
    plan_down,
    plan_rerun,
    plan_up,
    resolve_version,
    version_of,
)
from tests.conftest import migration, noop

# The spec's example: C depends on the later B, D on A.
A = "1700000000_a"
B = "1700100000_b"
C = "1700050000_c"
D = "1700200000_d"


def ids(migrations: Sequence[Migration]) -> list[str]:
    return [m.id for m in migrations]


def spec_example() -> list[Migration]:
    return [migration(A), migration(B), migration(C, B), migration(D, A)]


def steps_of(plan: Plan) -> list[tuple[str, str, str]]:
    return [(s.action, s.id, s.kind) for s in plan.steps]


# --- order -------------------------------------------------------------------------


def test_order_spec_example() -> None:
    assert ids(order(spec_example())) == [A, B, C, D]


def test_order_spec_example_regardless_of_input_order() -> None:
    a, b, c, d = spec_example()
    for shuffled in ([d, c, b, a], [c, a, d, b], [b, d, a, c]):
        assert ids(order(shuffled)) == [A, B, C, D]


def test_order_diamond() -> None:
    a = "1700000000_a"
    b = "1700030000_b"
    c = "1700020000_c"  # earlier than b
    d = "1700040000_d"
    migrations = [migration(d, b, c), migration(b, a), migration(c, a), migration(a)]
    assert ids(order(migrations)) == [a, c, b, d]


def test_order_without_dependencies_is_by_version() -> None:
    migrations = [migration("1700000300_z"), migration("1700000100_y"), migration("1700000200_x")]
    assert ids(order(migrations)) == ["1700000100_y", "1700000200_x", "1700000300_z"]


def test_order_sorts_by_version_not_by_id_text() -> None:
    # "999999999_..." sorts after "1700000000_..." as text but is the older version.
    migrations = [migration("1700000000_new"), migration("999999999_old")]
    assert ids(order(migrations)) == ["999999999_old", "1700000000_new"]


def test_order_a_dependency_on_a_later_version_pulls_it_forward() -> None:
    early = "1700000000_early"
    late = "1700000500_late"
    middle = "1700000200_middle"
    migrations = [migration(early, late), migration(late), migration(middle)]
    # early waits for late; middle is ready before late by version.
    assert ids(order(migrations)) == [middle, late, early]


def test_order_chain() -> None:
    migrations = [
        migration("1700000001_a", "1700000002_b"),
        migration("1700000002_b", "1700000003_c"),
        migration("1700000003_c"),
    ]
    assert ids(order(migrations)) == ["1700000003_c", "1700000002_b", "1700000001_a"]


def test_order_of_nothing_is_empty() -> None:
    assert order([]) == []


def test_order_returns_the_same_objects() -> None:
    migrations = spec_example()
    result = order(migrations)
    assert all(any(r is m for m in migrations) for r in result)


def test_order_does_not_modify_its_input() -> None:
    migrations = spec_example()
    before = list(migrations)
    order(migrations)
    assert migrations == before


def test_order_a_repeated_dependency_counts_once() -> None:
    migrations = [migration(A), migration(B, A, A)]
    assert ids(order(migrations)) == [A, B]


def test_a_repeated_dependency_does_not_hide_a_cycle() -> None:
    x = "1700000300_x"
    y = "1700000400_y"
    migrations = [migration(A), migration(B, A, A, A), migration(x, y), migration(y, x)]
    with pytest.raises(DependencyCycle) as info:
        order(migrations)
    assert info.value.ids == (x, y, x)


# --- cycles ------------------------------------------------------------------------


def test_two_cycle_names_both_ids() -> None:
    a = "1700000000_a"
    b = "1700000001_b"
    with pytest.raises(DependencyCycle) as info:
        order([migration(a, b), migration(b, a)])
    assert info.value.ids == (a, b, a)
    assert info.value.message == f"dependency cycle: {a} -> {b} -> {a}."
    assert "Remove one of these dependencies so the migrations can be ordered." in str(info.value)


def test_three_cycle_names_every_id_in_dependency_order() -> None:
    a = "1700000000_a"
    b = "1700000001_b"
    c = "1700000002_c"
    # a needs c, c needs b, b needs a
    migrations = [migration(b, a), migration(c, b), migration(a, c)]
    with pytest.raises(DependencyCycle) as info:
        order(migrations)
    assert info.value.ids == (a, c, b, a)
    assert f"{a} -> {c} -> {b} -> {a}" in str(info.value)


def test_cycle_message_leaves_out_migrations_that_only_wait_on_it() -> None:
    waiter = "1700000000_waiter"  # lowest id: the search starts here
    x = "1700000100_x"
    y = "1700000200_y"
    free = "1700000300_free"
    migrations = [migration(waiter, x), migration(x, y), migration(y, x), migration(free)]
    with pytest.raises(DependencyCycle) as info:
        order(migrations)
    assert info.value.ids == (x, y, x)
    assert waiter not in str(info.value)
    assert free not in str(info.value)


def test_cycle_is_reported_even_when_everything_is_in_it() -> None:
    with pytest.raises(DependencyCycle):
        check([migration(A, B), migration(B, C), migration(C, A)])


# --- unknown dependencies and duplicates -------------------------------------------------


def test_unknown_dependency_names_both_ids() -> None:
    missing = "1700000999_missing"
    with pytest.raises(UnknownDependency) as info:
        order([migration(A), migration(B, A, missing)])
    assert info.value.migration_id == B
    assert info.value.missing == (missing,)
    assert info.value.message == f"migration {B} depends on unknown id {missing}."
    assert "Fix the id in its `dependencies`, or add the missing migration." in str(info.value)


def test_several_unknown_dependencies_are_all_named_sorted() -> None:
    with pytest.raises(UnknownDependency) as info:
        order([migration(A, "1700000999_z", "1700000998_y")])
    assert info.value.message == (
        f"migration {A} depends on unknown ids 1700000998_y, 1700000999_z."
    )


def test_duplicate_id_names_it() -> None:
    with pytest.raises(DuplicateMigration) as info:
        order([migration(A), migration(B), migration(A, description="again")])
    assert info.value.ids == (A, A)
    assert info.value.message == f"duplicate migration id: {A}, {A}."
    assert "Give each migration its own timestamp (rename one file)." in str(info.value)


def test_duplicate_version_names_both_ids() -> None:
    first = "1700000000_first"
    second = "1700000000_second"
    with pytest.raises(DuplicateMigration) as info:
        order([migration(first), migration(B), migration(second)])
    assert info.value.ids == (first, second)
    assert info.value.message == f"duplicate migration version: {first}, {second}."


def test_check_passes_on_a_valid_set_and_raises_like_order() -> None:
    assert check(spec_example()) is None
    with pytest.raises(UnknownDependency):
        check([migration(A, "1700000999_gone")])
    with pytest.raises(DuplicateMigration):
        check([migration(A), migration(A)])


# --- helpers: version_of, pending ----------------------------------------------------


def test_version_of() -> None:
    assert version_of([]) == 0
    assert version_of([A]) == 1700000000
    assert version_of([C, A, B]) == 1700100000
    assert version_of(iter([D, A])) == 1700200000


def test_pending_is_order_without_applied() -> None:
    assert ids(pending(spec_example(), set())) == [A, B, C, D]
    assert ids(pending(spec_example(), {A, C})) == [B, D]
    assert pending(spec_example(), {A, B, C, D}) == []


# --- resolve_version ---------------------------------------------------------------


def test_resolve_version_by_version_or_id() -> None:
    migrations = spec_example()
    assert resolve_version(migrations, "1700050000", allow_zero=False) == 1700050000
    assert resolve_version(migrations, C, allow_zero=False) == 1700050000
    assert resolve_version(migrations, f"  {B}\n", allow_zero=False) == 1700100000
    assert resolve_version(migrations, " 1700200000 ", allow_zero=True) == 1700200000


def test_resolve_version_zero() -> None:
    migrations = spec_example()
    assert resolve_version(migrations, "0", allow_zero=True) == 0
    assert resolve_version(migrations, " 0 ", allow_zero=True) == 0
    with pytest.raises(UnknownTarget) as info:
        resolve_version(migrations, "0", allow_zero=False)
    assert "no migration has version or id '0'" in str(info.value)


@pytest.mark.parametrize("target", ["1700000001", "1700000000_other", "a", "", "1700050000_"])
def test_resolve_version_unknown_target(target: str) -> None:
    with pytest.raises(UnknownTarget) as info:
        resolve_version(spec_example(), target, allow_zero=True)
    assert info.value.target == target
    text = str(info.value)
    assert f"no migration has version or id {target!r}." in text
    assert f"Known: {A}, {B}, {C}, {D}" in text
    assert "Run `pebble-migrate status` to see the versions." in text


def test_unknown_target_lists_the_last_five_known() -> None:
    migrations = [migration(f"17000000{i:02d}_m{i}") for i in range(10)]
    with pytest.raises(UnknownTarget) as info:
        resolve_version(migrations, "nope", allow_zero=False)
    listing = ", ".join(f"17000000{i:02d}_m{i}" for i in range(5, 10))
    assert f"Known: {listing}" in str(info.value)
    assert "1700000004_m4" not in str(info.value)


def test_unknown_target_without_migrations() -> None:
    with pytest.raises(UnknownTarget) as info:
        resolve_version([], "1700000000", allow_zero=False)
    assert "Known" not in str(info.value)
    assert "'1700000000'" in str(info.value)


# --- plan_up -----------------------------------------------------------------------


def test_plan_up_everything() -> None:
    plan = plan_up(spec_example(), set())
    assert plan.command == "up"
    assert plan.ids == (A, B, C, D)
    assert steps_of(plan) == [("apply", mid, "apply") for mid in (A, B, C, D)]
    assert plan.from_version == 0
    assert plan.to_version == 1700200000
    assert plan


def test_plan_up_skips_applied() -> None:
    plan = plan_up(spec_example(), {A, B})
    assert plan.ids == (C, D)
    assert plan.from_version == 1700100000
    assert plan.to_version == 1700200000


def test_plan_up_nothing_pending() -> None:
    plan = plan_up(spec_example(), {A, B, C, D})
    assert plan.steps == ()
    assert not plan
    assert plan.from_version == plan.to_version == 1700200000


def test_plan_up_an_older_pending_migration_keeps_the_version() -> None:
    plan = plan_up(spec_example(), {A, B, D})
    assert plan.ids == (C,)
    assert plan.from_version == plan.to_version == 1700200000


def test_plan_up_to_a_target() -> None:
    migrations = [migration("1700000100_a"), migration("1700000200_b"), migration("1700000300_c")]
    plan = plan_up(migrations, set(), 1700000200)
    assert plan.ids == ("1700000100_a", "1700000200_b")
    assert plan.to_version == 1700000200


def test_plan_up_target_between_versions() -> None:
    migrations = [migration("1700000100_a"), migration("1700000300_c")]
    plan = plan_up(migrations, set(), 1700000200)
    assert plan.ids == ("1700000100_a",)
    assert plan.to_version == 1700000100


def test_plan_up_target_below_everything_pending_is_empty() -> None:
    plan = plan_up(spec_example(), {A}, 1700000000)
    assert not plan
    assert plan.from_version == plan.to_version == 1700000000


def test_plan_up_target_resolved_by_id_or_version() -> None:
    migrations = spec_example()
    by_id = plan_up(migrations, set(), resolve_version(migrations, B, allow_zero=False))
    by_version = plan_up(
        migrations, set(), resolve_version(migrations, "1700100000", allow_zero=False)
    )
    assert by_id.ids == by_version.ids == (A, B, C)
    assert by_id.to_version == 1700100000


def test_plan_up_target_includes_pending_dependencies_below_it() -> None:
    plan = plan_up(spec_example(), set(), 1700200000)
    assert plan.ids == (A, B, C, D)


def test_plan_up_target_whose_dependency_lies_above_it() -> None:
    # C (1700050000) needs B (1700100000): cannot stop at C's version.
    with pytest.raises(PlanError) as info:
        plan_up(spec_example(), set(), 1700050000)
    text = str(info.value)
    assert f"cannot stop at version 1700050000: {B} lie above it" in text
    assert "migrations at or below it depend on them" in text
    assert "Choose a later version, or run `pebble-migrate up` with no version." in text


def test_plan_up_target_with_transitive_dependencies_above_it() -> None:
    low = "1700000100_low"
    mid = "1700000500_mid"
    high = "1700000900_high"
    migrations = [migration(low, mid), migration(mid, high), migration(high)]
    with pytest.raises(PlanError) as info:
        plan_up(migrations, set(), 1700000100)
    assert f"{mid}, {high} lie above it" in str(info.value)


def test_plan_up_target_ok_when_the_dependency_above_is_applied() -> None:
    plan = plan_up(spec_example(), {B}, 1700050000)
    assert plan.ids == (A, C)
    assert plan.from_version == plan.to_version == 1700100000


# --- plan_down ---------------------------------------------------------------------


ALL = {A, B, C, D}


def test_plan_down_to_zero_rolls_back_everything_in_reverse_order() -> None:
    plan = plan_down(spec_example(), ALL, 0)
    assert plan.command == "down"
    assert steps_of(plan) == [("rollback", mid, "rollback") for mid in (D, C, B, A)]
    assert plan.from_version == 1700200000
    assert plan.to_version == 0


def test_plan_down_keeps_the_target_version_applied() -> None:
    plan = plan_down(spec_example(), ALL, 1700000000)
    # D is newest; C goes before B because C depends on B; A (the target) stays.
    assert plan.ids == (D, C, B)
    assert plan.to_version == 1700000000


def test_plan_down_newest_first_without_dependencies() -> None:
    migrations = [migration(f"170000000{i}_m{i}") for i in range(1, 6)]
    applied = {m.id for m in migrations}
    plan = plan_down(migrations, applied, 1700000002)
    assert plan.ids == ("1700000005_m5", "1700000004_m4", "1700000003_m3")
    assert plan.from_version == 1700000005
    assert plan.to_version == 1700000002


def test_plan_down_is_reverse_of_order() -> None:
    a = "1700000000_a"
    b = "1700030000_b"
    c = "1700020000_c"
    d = "1700040000_d"
    migrations = [migration(a), migration(b, a), migration(c, a), migration(d, b, c)]
    plan = plan_down(migrations, {a, b, c, d}, 0)
    assert plan.ids == (d, b, c, a)
    assert list(plan.ids) == list(reversed(ids(order(migrations))))


def test_plan_down_only_touches_applied_migrations() -> None:
    plan = plan_down(spec_example(), {A, D}, 0)
    assert plan.ids == (D, A)
    assert plan.from_version == 1700200000


def test_plan_down_above_current_version_is_empty() -> None:
    plan = plan_down(spec_example(), {A}, 1700100000)
    assert not plan
    assert plan.from_version == plan.to_version == 1700000000


def test_plan_down_with_nothing_applied_is_empty() -> None:
    plan = plan_down(spec_example(), set(), 0)
    assert plan.steps == ()
    assert plan.from_version == plan.to_version == 0


def test_plan_down_through_a_migration_without_down() -> None:
    migrations = [migration(A), migration(B), migration(C, B), migration(D, A, down=None)]
    with pytest.raises(IrreversibleMigration) as info:
        plan_down(migrations, ALL, 0)
    assert info.value.ids == (D,)
    text = str(info.value)
    assert f"cannot roll back {D}: no `down` defined." in text
    assert "Choose a target above it" in text
    assert "Nothing was changed." in text


def test_plan_down_names_every_irreversible_migration() -> None:
    migrations = [migration(A, down=None), migration(B, down=None), migration(C, B), migration(D)]
    with pytest.raises(IrreversibleMigration) as info:
        plan_down(migrations, ALL, 0)
    assert info.value.ids == (B, A)
    assert f"cannot roll back {B}, {A}: no `down` defined." in str(info.value)


def test_plan_down_is_fine_when_the_irreversible_one_stays() -> None:
    migrations = [migration(A, down=None), migration(B), migration(C, B), migration(D, A)]
    plan = plan_down(migrations, ALL, 1700000000)
    assert plan.ids == (D, C, B)


def test_plan_down_irreversible_but_not_applied_is_fine() -> None:
    migrations = [migration(A), migration(B), migration(C, B), migration(D, A, down=None)]
    plan = plan_down(migrations, {A, B, C}, 0)
    assert plan.ids == (C, B, A)


def test_plan_down_applied_migration_missing_from_code() -> None:
    gone = "1700300000_gone"
    gone_too = "1700250000_gone_too"
    with pytest.raises(PlanError) as info:
        plan_down(spec_example(), {*ALL, gone, gone_too}, 1700000000)
    text = str(info.value)
    assert f"cannot roll back {gone_too}, {gone}: applied, but not in the migrations" in text
    assert "Restore the migration files" in text
    assert "nothing was changed" in text


def test_plan_down_missing_migration_at_or_below_target_is_ignored() -> None:
    old = "1690000000_old_and_gone"
    plan = plan_down(spec_example(), {old, A, B}, 1690000000)
    assert plan.ids == (B, A)
    assert plan.to_version == 1690000000


def test_plan_down_refuses_when_a_dependent_stays_applied() -> None:
    # Down to C's version rolls back B and D, but C (kept) depends on B.
    with pytest.raises(PlanError) as info:
        plan_down(spec_example(), ALL, 1700050000)
    text = str(info.value)
    assert f"cannot roll back {B}: {C} stays applied and depends on it." in text
    assert f"Choose a target below 1700050000 so {C} is rolled back too." in text


def test_plan_down_below_the_dependent_is_fine() -> None:
    plan = plan_down(spec_example(), ALL, 1700049999)
    assert plan.ids == (D, C, B)


# --- plan_rerun --------------------------------------------------------------------


def test_plan_rerun_rolls_back_then_applies() -> None:
    plan = plan_rerun(spec_example(), ALL, C)
    assert plan.command == "rerun"
    assert steps_of(plan) == [("rollback", C, "rollback"), ("apply", C, "rerun")]
    assert plan.from_version == plan.to_version == 1700200000


def test_plan_rerun_by_version() -> None:
    plan = plan_rerun(spec_example(), ALL, "1700050000")
    assert plan.ids == (C, C)


def test_plan_rerun_rerunnable_with_down_still_rolls_back() -> None:
    migrations = [migration(A, rerunnable=True)]
    plan = plan_rerun(migrations, {A}, A)
    assert steps_of(plan) == [("rollback", A, "rollback"), ("apply", A, "rerun")]


def test_plan_rerun_rerunnable_without_down_only_applies() -> None:
    migrations = [migration(A, down=None, rerunnable=True), migration(B)]
    plan = plan_rerun(migrations, {A, B}, A)
    assert steps_of(plan) == [("apply", A, "rerun")]
    assert plan.from_version == plan.to_version == 1700100000


def test_plan_rerun_irreversible_and_not_rerunnable() -> None:
    migrations = [migration(A, down=None)]
    with pytest.raises(IrreversibleMigration) as info:
        plan_rerun(migrations, {A}, A)
    assert info.value.ids == (A,)
    assert f"cannot roll back {A}: no `down` defined." in str(info.value)


def test_plan_rerun_not_applied() -> None:
    with pytest.raises(PlanError) as info:
        plan_rerun(spec_example(), {A}, B)
    text = str(info.value)
    assert f"{B} is not applied, so there is nothing to rerun." in text
    assert "Run `pebble-migrate up` to apply it." in text


@pytest.mark.parametrize("target", ["1700000001_nope", "1700000001", "nope"])
def test_plan_rerun_unknown_id(target: str) -> None:
    with pytest.raises(UnknownTarget) as info:
        plan_rerun(spec_example(), ALL, target)
    assert info.value.target == target
    assert f"no migration has version or id {target!r}." in str(info.value)
    assert f"Known: {A}, {B}, {C}, {D}" in str(info.value)


# --- Plan and Step -----------------------------------------------------------------


def test_plan_and_step_accessors() -> None:
    m = migration(A)
    step = Step("apply", m, "apply")
    assert step.id == A
    plan = Plan("up", (step,), 0, 1700000000)
    assert plan.ids == (A,)
    assert bool(plan) is True
    assert bool(Plan("up", (), 5, 5)) is False


# --- properties --------------------------------------------------------------------


@st.composite
def dags(draw: st.DrawFn, min_size: int = 0, max_size: int = 12) -> list[Migration]:
    """Random DAGs: unique versions; edges follow a random hidden order, not versions."""
    n = draw(st.integers(min_value=min_size, max_value=max_size))
    versions = draw(
        st.lists(
            st.integers(min_value=946684800, max_value=4102444800),
            min_size=n,
            max_size=n,
            unique=True,
        )
    )
    names = [f"{v}_m{i}" for i, v in enumerate(versions)]
    hidden = draw(st.permutations(range(n)))
    migrations = []
    for pos, i in enumerate(hidden):
        earlier = [names[j] for j in hidden[:pos]]
        deps = draw(st.lists(st.sampled_from(earlier), unique=True)) if earlier else []
        migrations.append(Migration(id=names[i], up=noop, down=noop, dependencies=tuple(deps)))
    return draw(st.permutations(migrations))


def simulate(migrations: Sequence[Migration], result: Sequence[Migration]) -> None:
    """Replay `result`: each step must be the lowest version whose deps are all placed."""
    placed: set[str] = set()
    for m in result:
        ready = [
            x for x in migrations if x.id not in placed and all(d in placed for d in x.dependencies)
        ]
        assert ready, "nothing was ready, yet order() placed a migration"
        assert m.id == min(ready, key=lambda x: x.version).id
        placed.add(m.id)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(dags(), st.randoms(use_true_random=False))
def test_order_properties(migrations: list[Migration], rnd: object) -> None:
    result = order(migrations)
    # a permutation of the input
    assert sorted(ids(result)) == sorted(ids(migrations))
    assert len(result) == len(migrations)
    # every dependency precedes its dependent
    position = {m.id: i for i, m in enumerate(result)}
    for m in migrations:
        for dep in m.dependencies:
            assert position[dep] < position[m.id]
    # lowest ready version first
    simulate(migrations, result)
    # deterministic regardless of input order
    shuffled = list(migrations)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert ids(order(shuffled)) == ids(result)
    assert ids(order(list(reversed(migrations)))) == ids(result)


@settings(max_examples=200)
@given(dags(min_size=2), st.data())
def test_a_back_edge_is_reported_as_a_real_cycle(
    migrations: list[Migration], data: st.DataObject
) -> None:
    result = order(migrations)
    i = data.draw(st.integers(min_value=0, max_value=len(result) - 2))
    j = data.draw(st.integers(min_value=i + 1, max_value=len(result) - 1))
    first, later = result[i], result[j]
    # Each of the two now depends on the other: at least that cycle exists.
    by_id = {m.id: m for m in migrations}
    by_id[later.id] = Migration(
        id=later.id, up=noop, dependencies=tuple(dict.fromkeys([*later.dependencies, first.id]))
    )
    by_id[first.id] = Migration(
        id=first.id, up=noop, dependencies=tuple(dict.fromkeys([*first.dependencies, later.id]))
    )
    changed = list(by_id.values())
    with pytest.raises(DependencyCycle) as info:
        order(changed)
    cycle = info.value.ids
    assert len(cycle) >= 3
    assert cycle[0] == cycle[-1]
    assert len(set(cycle[:-1])) == len(cycle) - 1
    for node, dep in itertools.pairwise(cycle):
        assert dep in by_id[node].dependencies
    assert " -> ".join(cycle) in str(info.value)


@settings(max_examples=200)
@given(dags(), st.data())
def test_plan_up_to_target_property(migrations: list[Migration], data: st.DataObject) -> None:
    applied = set(data.draw(st.lists(st.sampled_from(ids(migrations)))) if migrations else [])
    # applied sets must be closed under dependencies, as a real database's would be
    by_id = {m.id: m for m in migrations}
    stack = list(applied)
    while stack:
        for dep in by_id[stack.pop()].dependencies:
            if dep not in applied:
                applied.add(dep)
                stack.append(dep)
    target = data.draw(st.integers(min_value=946684800, max_value=4102444800))
    todo = [m for m in order(migrations) if m.id not in applied]
    needed: set[str] = set()
    stack = [m.id for m in todo if m.version <= target]
    while stack:
        mid = stack.pop()
        if mid in needed or mid in applied:
            continue
        needed.add(mid)
        stack.extend(by_id[mid].dependencies)
    if any(by_id[mid].version > target for mid in needed):
        with pytest.raises(PlanError):
            plan_up(migrations, applied, target)
        return
    plan = plan_up(migrations, applied, target)
    assert set(plan.ids) == needed
    assert list(plan.ids) == [m.id for m in todo if m.id in needed]
    assert plan.to_version == version_of([*applied, *plan.ids])
    # the plan up with no target applies everything that is pending
    assert set(plan_up(migrations, applied).ids) == {m.id for m in todo}


@settings(max_examples=200)
@given(dags(), st.integers(min_value=946684800, max_value=4102444800))
def test_plan_down_property(migrations: list[Migration], target: int) -> None:
    applied = {m.id for m in migrations}
    undo = {m.id for m in migrations if m.version > target}
    kept = [m for m in migrations if m.id not in undo]
    blocked = any(set(m.dependencies) & undo for m in kept)
    if blocked:
        with pytest.raises(PlanError):
            plan_down(migrations, applied, target)
        return
    plan = plan_down(migrations, applied, target)
    assert set(plan.ids) == undo
    assert list(plan.ids) == [mid for mid in reversed(ids(order(migrations))) if mid in undo]
    # a dependent is always rolled back before what it depends on
    position = {mid: i for i, mid in enumerate(plan.ids)}
    for m in migrations:
        if m.id in undo:
            for dep in set(m.dependencies) & undo:
                assert position[m.id] < position[dep]
    assert plan.to_version == version_of(m.id for m in kept)
    # rolling back then re-applying brings back the same set
    assert set(plan_up(migrations, {m.id for m in kept}).ids) == undo
