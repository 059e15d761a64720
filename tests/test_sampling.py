"""Tests for flows.engine.plan.sampling: which trials a search node trains."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.engine.plan.sampling import (
    METHODS,
    SamplingError,
    describe_design,
    orthogonal_arrays,
    sample_trials,
)

# The shipped plan's search space: 5 parameters x 3 levels = 243 grid points, 9 trials.
PLAN_SPACE: dict[str, list[object]] = {
    "lr0": [0.008, 0.01, 0.012],
    "warmup_epochs": [3, 5, 7],
    "box": [8, 10, 12],
    "dfl": [1.5, 2.0, 2.5],
    "scale": [0.6, 0.7, 0.8],
}
FOUR_FACTORS = {name: PLAN_SPACE[name] for name in list(PLAN_SPACE)[:4]}

EXPECTED_ARRAYS = {  # name -> (runs, sorted column level counts)
    "L4": (4, [2] * 3),
    "L8": (8, [2] * 7),
    "L9": (9, [3] * 4),
    "L16": (16, [4] * 5),
    "L18": (18, [2] + [3] * 7),
    "L25": (25, [5] * 6),
    "L27": (27, [3] * 13),
}


def as_keys(trials: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [tuple(trial.items()) for trial in trials]


def assert_valid(trials: list[dict[str, object]], space: dict[str, list[object]]) -> None:
    """Every trial names every parameter once, with one of the space's own level objects, no repeats."""
    for trial in trials:
        assert list(trial) == list(space)
        for name, value in trial.items():
            assert any(value is level for level in space[name]), (name, value)
    assert len(set(as_keys(trials))) == len(trials)


def level_counts(trials: list[dict[str, object]], name: str) -> Counter:
    return Counter(trial[name] for trial in trials)


# --------------------------------------------------------------------------- orthogonal arrays
def test_hard_coded_arrays_have_the_standard_shapes() -> None:
    arrays = {array.name: array for array in orthogonal_arrays()}
    assert set(arrays) == set(EXPECTED_ARRAYS)
    for name, (runs, column_levels) in EXPECTED_ARRAYS.items():
        assert arrays[name].runs == runs, name
        assert sorted(arrays[name].column_levels) == column_levels, name
    assert [array.runs for array in orthogonal_arrays()] == sorted(
        runs for runs, _ in EXPECTED_ARRAYS.values()
    )
    assert arrays["L18"].signature() == "2^1 x 3^7"


@pytest.mark.parametrize("array", orthogonal_arrays(), ids=lambda array: array.name)
def test_every_pair_of_columns_is_balanced(array) -> None:
    """Strength 2: each pair of columns shows every level combination equally often."""
    assert len(set(array.rows)) == array.runs
    for a, b in itertools.combinations(range(len(array.column_levels)), 2):
        pairs = Counter((row[a], row[b]) for row in array.rows)
        combos = array.column_levels[a] * array.column_levels[b]
        assert len(pairs) == combos, (array.name, a, b)
        assert set(pairs.values()) == {array.runs // combos}, (array.name, a, b)


def test_l9_on_four_factors_is_orthogonal() -> None:
    trials = sample_trials(FOUR_FACTORS, "orthogonal", max_trials=9)
    assert len(trials) == 9
    assert_valid(trials, FOUR_FACTORS)
    for a, b in itertools.combinations(FOUR_FACTORS, 2):
        pairs = Counter((trial[a], trial[b]) for trial in trials)
        assert len(pairs) == 9 and set(pairs.values()) == {1}, (a, b)
    assert describe_design(FOUR_FACTORS, "orthogonal", 9).startswith(
        "Taguchi L9 orthogonal array (3^4), 9 trials"
    )


def test_orthogonal_rejects_five_three_level_factors_in_nine_trials() -> None:
    with pytest.raises(SamplingError) as error:
        sample_trials(PLAN_SPACE, "orthogonal", max_trials=9)
    assert (
        str(error.value)
        == "5 factors at 3 levels need L18 (18 runs) > max_trials 9; use latin or drop a factor"
    )


def test_orthogonal_five_three_level_factors_use_l18_balanced() -> None:
    trials = sample_trials(PLAN_SPACE, "orthogonal", max_trials=18)
    assert len(trials) == 18
    assert_valid(trials, PLAN_SPACE)
    for a, b in itertools.combinations(PLAN_SPACE, 2):
        assert set(Counter((t[a], t[b]) for t in trials).values()) == {2}
    assert "L18" in describe_design(PLAN_SPACE, "orthogonal", 18)


def test_orthogonal_mixed_levels_and_constants() -> None:
    space = {"flip": [True, False], "a": [1, 2, 3], "b": ["x", "y", "z"], "fixed": [640]}
    trials = sample_trials(space, "orthogonal", max_trials=18)
    assert_valid(trials, space)
    assert len(trials) == 18  # L18: the 2-level column and two 3-level columns, all exact
    assert all(trial["fixed"] == 640 for trial in trials)
    assert set(level_counts(trials, "flip").values()) == {9}
    assert set(Counter((t["flip"], t["a"]) for t in trials).values()) == {3}


def test_orthogonal_dummy_levels_when_no_exact_fit() -> None:
    """A 2-level and a 4-level factor: no array has both column kinds, so the 2-level one is folded."""
    space = {"a": [1, 2], "b": [1, 2, 3, 4]}
    trials = sample_trials(space, "orthogonal", max_trials=16)
    assert_valid(trials, space)
    assert len(trials) == 8  # folding repeats runs; each is trained once
    assert "dummy levels for a" in describe_design(space, "orthogonal", 16)


def test_orthogonal_refuses_more_levels_than_any_array_has() -> None:
    with pytest.raises(SamplingError, match="6 levels"):
        sample_trials({"a": list(range(6))}, "orthogonal", max_trials=50)
    with pytest.raises(SamplingError, match="do not fit any orthogonal array"):
        sample_trials({f"p{i}": [0, 1, 2, 3, 4] for i in range(7)}, "orthogonal", max_trials=100)


# --------------------------------------------------------------------------- grid
def test_grid_is_the_full_product_in_stable_order() -> None:
    space = {"a": [1, 2], "b": ["x", "y", "z"]}
    trials = sample_trials(space, "grid", max_trials=6)
    assert [(t["a"], t["b"]) for t in trials] == list(itertools.product([1, 2], ["x", "y", "z"]))
    assert sample_trials(space, "grid", max_trials=6, seed=5) == trials
    assert describe_design(space, "grid", 6).startswith("full grid, 6 trials (2 x 3 levels)")


def test_grid_rejection_names_its_size_and_the_alternatives() -> None:
    with pytest.raises(SamplingError) as error:
        sample_trials(PLAN_SPACE, "grid", max_trials=9)
    message = str(error.value)
    assert "243 points" in message and "max_trials 9" in message
    assert "orthogonal" in message and "latin" in message


# --------------------------------------------------------------------------- latin
def test_latin_balances_every_level_of_the_plan_space() -> None:
    trials = sample_trials(PLAN_SPACE, "latin", max_trials=9)
    assert len(trials) == 9
    assert_valid(trials, PLAN_SPACE)
    for name, levels in PLAN_SPACE.items():
        assert level_counts(trials, name) == dict.fromkeys(levels, 3), name
    assert describe_design(PLAN_SPACE, "latin", 9, seed=0) == (
        "latin hypercube, 9 trials of 243 grid points, seed 0; each level of each factor 3 times"
    )


def test_latin_uneven_counts_differ_by_at_most_one() -> None:
    trials = sample_trials(PLAN_SPACE, "latin", max_trials=12, n_trials=7, seed=3)
    assert len(trials) == 7
    for name in PLAN_SPACE:
        counts = level_counts(trials, name)
        assert sorted(counts.values()) == [2, 2, 3], name


def test_latin_covers_level_pairs_better_than_one_shuffle() -> None:
    """The candidate search is worth having: the chosen design covers many factor-level pairs."""
    trials = sample_trials(PLAN_SPACE, "latin", max_trials=9)
    covered = sum(len({(t[a], t[b]) for t in trials}) for a, b in itertools.combinations(PLAN_SPACE, 2))
    assert covered >= 75  # of at most 10 pairs x 9 combos = 90; a single balanced shuffle averages ~69


def test_latin_small_space_returns_the_whole_grid() -> None:
    space = {"a": [1, 2], "b": [3, 4]}
    assert as_keys(sample_trials(space, "latin", max_trials=9)) == as_keys(
        sample_trials(space, "grid", max_trials=9)
    )


def test_latin_near_full_space_is_still_distinct_and_balanced() -> None:
    space = {"a": [1, 2, 3], "b": [1, 2, 3]}
    for seed in range(30):
        trials = sample_trials(space, "latin", max_trials=8, seed=seed)
        assert len(trials) == 8
        assert_valid(trials, space)
        assert sorted(level_counts(trials, "a").values()) == [2, 3, 3]


# --------------------------------------------------------------------------- random
def test_random_draws_distinct_points() -> None:
    trials = sample_trials(PLAN_SPACE, "random", max_trials=40)
    assert len(trials) == 40
    assert_valid(trials, PLAN_SPACE)


def test_random_dense_and_tiny_spaces() -> None:
    space = {"a": [1, 2, 3], "b": [1, 2, 3]}
    dense = sample_trials(space, "random", max_trials=8, seed=1)
    assert len(dense) == 8
    assert_valid(dense, space)
    whole = sample_trials(space, "random", max_trials=20)
    assert as_keys(whole) == as_keys(sample_trials(space, "grid", max_trials=9))


def test_random_huge_space_is_not_enumerated() -> None:
    space = {f"p{i}": list(range(10)) for i in range(30)}  # 10^30 points
    trials = sample_trials(space, "random", max_trials=5)
    assert len(trials) == 5
    assert_valid(trials, space)
    assert "5 distinct trials of 10" in describe_design(space, "random", 5)


# --------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("method", ["latin", "random"])
def test_same_seed_same_trials_different_seed_different_trials(method: str) -> None:
    first = sample_trials(PLAN_SPACE, method, max_trials=9, seed=7)
    assert sample_trials(PLAN_SPACE, method, max_trials=9, seed=7) == first
    assert sample_trials(PLAN_SPACE, method, max_trials=9, seed=8) != first


def test_orthogonal_is_the_same_array_whatever_the_seed() -> None:
    assert sample_trials(FOUR_FACTORS, "orthogonal", 9, seed=0) == sample_trials(
        FOUR_FACTORS, "orthogonal", 9, seed=1
    )


# --------------------------------------------------------------------------- input errors
@pytest.mark.parametrize(
    ("space", "match"),
    [
        ({}, "empty"),
        ({"lr0": []}, "no levels"),
        ({"lr0": [0.01, 0.02, 0.01]}, "twice"),
        ({"lr0": 0.01}, "must be a list"),
        ({"optimizer": "SGD"}, "must be a list"),
    ],
)
def test_bad_spaces_are_refused(space: dict, match: str) -> None:
    with pytest.raises(SamplingError, match=match):
        sample_trials(space, "latin", max_trials=9)


def test_bad_counts_and_methods_are_refused() -> None:
    with pytest.raises(SamplingError, match="n_trials 10 > max_trials 9"):
        sample_trials(PLAN_SPACE, "latin", max_trials=9, n_trials=10)
    with pytest.raises(SamplingError, match="max_trials"):
        sample_trials(PLAN_SPACE, "latin", max_trials=0)
    with pytest.raises(SamplingError, match="unknown sampling method"):
        sample_trials(PLAN_SPACE, "sobol", max_trials=9)  # type: ignore[arg-type]
    with pytest.raises(SamplingError, match="n_trials applies to latin and random"):
        sample_trials({"a": [1, 2]}, "grid", max_trials=9, n_trials=2)
    assert issubclass(SamplingError, ValueError)


def test_single_level_factor_is_a_constant() -> None:
    space = {"imgsz": [640], "lr0": [0.01, 0.02]}
    for method in METHODS:
        trials = sample_trials(space, method, max_trials=4)
        assert [t["imgsz"] for t in trials] == [640, 640], method
        assert {t["lr0"] for t in trials} == {0.01, 0.02}, method
    assert describe_design({"imgsz": [640]}, "latin", 4).endswith("every parameter constant")


def test_unhashable_levels_keep_their_identity() -> None:
    shapes = [[32, 32], [64, 64]]
    trials = sample_trials({"shape": shapes, "lr0": [0.01, 0.02]}, "latin", max_trials=2)
    assert all(any(t["shape"] is s for s in shapes) for t in trials)


# --------------------------------------------------------------------------- properties
LEVEL = st.one_of(st.integers(-50, 50), st.floats(0.0001, 10.0), st.text("abc", min_size=1, max_size=3))
SPACE = st.dictionaries(
    st.text("abcdefgh_", min_size=1, max_size=6),
    st.lists(LEVEL, min_size=1, max_size=5, unique=True).filter(
        lambda levels: all(a != b for a, b in itertools.combinations(levels, 2))
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=100, deadline=None)
@given(
    space=SPACE, method=st.sampled_from(METHODS), max_trials=st.integers(1, 30), seed=st.integers(0, 2**32)
)
def test_property_trials_are_distinct_points_of_the_space(space, method, max_trials, seed) -> None:
    total = math.prod(len(levels) for levels in space.values())
    try:
        trials = sample_trials(space, method, max_trials=max_trials, seed=seed)
    except SamplingError:
        assert method in ("grid", "orthogonal")  # only these have a size the budget can refuse
        return
    assert_valid(trials, space)
    assert 1 <= len(trials) <= max_trials
    if method == "grid":
        assert len(trials) == total
    if method in ("latin", "random"):
        assert len(trials) == min(max_trials, total)
    if method == "latin":  # balance: within a factor, level counts differ by at most one
        for name, levels in space.items():
            counts = [level_counts(trials, name).get(level, 0) for level in levels]
            assert max(counts) - min(counts) <= 1, name
    assert sample_trials(space, method, max_trials=max_trials, seed=seed) == trials
