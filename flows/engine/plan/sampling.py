"""Choose which points of a discrete hyper-parameter space a search node trains.

``sample_trials(space, method, max_trials, seed=..., n_trials=...)`` returns the distinct points of a
fixed design: ``grid`` (the whole product, refused over budget), ``orthogonal`` (a Taguchi array),
``latin`` (a seeded balanced Latin hypercube over the levels) or ``random`` (seeded, without
replacement); ``describe_design`` says it in one line. Deterministic for a seed, so a resumed or
re-run flow trains the same trials. What each design is for: docs/SEARCH.md. Pure Python and numpy.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal, get_args

import numpy as np

Method = Literal["grid", "orthogonal", "latin", "random"]
METHODS: tuple[str, ...] = get_args(Method)

# How many seeded Latin-hypercube candidates are scored; capped for big designs (see _candidate_count).
LATIN_CANDIDATES = 200
_LATIN_SCORE_BUDGET = 20_000_000  # ~ candidates x n^2 x factors numpy element operations

Trial = dict[str, object]
IndexRow = tuple[int, ...]


class SamplingError(ValueError):
    """The space, budget or method cannot give a design; the message says what to change."""


# --------------------------------------------------------------------------- orthogonal arrays
# Standard Taguchi arrays, one row per string, levels written 1-based as in the printed tables.
# L4/L8 are the GF(2) arrays (columns A, B, AB, C, AC, BC, ABC); L9/L16/L25 the GF(p) arrays
# (a, b, b+a, b+2a, ...); L27 the GF(3) array in Taguchi's column order; L18 the mixed 2^1 x 3^7
# array. tests/test_sampling.py checks that every pair of columns is balanced.
_ARRAY_TEXT: dict[str, str] = {
    "L4": "111 122 212 221",
    "L8": "1111111 1112222 1221122 1222211 2121212 2122121 2211221 2212112",
    "L9": "1111 1222 1333 2123 2231 2312 3132 3213 3321",
    "L16": "11111 12222 13333 14444 21234 22143 23412 24321 31342 32431 33124 34213 41423 42314 43241 44132",
    "L18": "11111111 11222222 11333333 12112233 12223311 12331122 13121323 13232131 13313212 "
    "21133221 21211332 21322113 22123132 22231213 22312321 23132312 23213123 23321231",
    "L25": "111111 122222 133333 144444 155555 212345 223451 234512 245123 251234 "
    "313524 324135 335241 341352 352413 414253 425314 431425 442531 453142 "
    "515432 521543 532154 543215 554321",
    "L27": "1111111111111 1111222222222 1111333333333 1222111222333 1222222333111 1222333111222 "
    "1333111333222 1333222111333 1333333222111 2123123123123 2123231231231 2123312312312 "
    "2231123231312 2231231312123 2231312123231 2312123312231 2312231123312 2312312231123 "
    "3132132132132 3132213213213 3132321321321 3213132213321 3213213321132 3213321132213 "
    "3321132321213 3321213132321 3321321213132",
}


@dataclass(frozen=True)
class OrthogonalArray:
    """A Taguchi array with 0-based levels; ``column_levels[j]`` is how many levels column j has."""

    name: str
    rows: tuple[IndexRow, ...]
    column_levels: tuple[int, ...]

    @property
    def runs(self) -> int:
        return len(self.rows)

    def signature(self) -> str:
        """Taguchi's short form, e.g. ``3^4`` or ``2^1 x 3^7``."""
        counts = Counter(self.column_levels)
        return " x ".join(f"{levels}^{n}" for levels, n in sorted(counts.items()))


@cache
def orthogonal_arrays() -> tuple[OrthogonalArray, ...]:
    """All hard-coded arrays, smallest first (parsed lazily: nothing runs at import)."""
    arrays = []
    for name, text in _ARRAY_TEXT.items():
        rows = tuple(tuple(int(ch) - 1 for ch in word) for word in text.split())
        column_levels = tuple(max(column) + 1 for column in zip(*rows, strict=True))
        arrays.append(OrthogonalArray(name, rows, column_levels))
    return tuple(sorted(arrays, key=lambda array: array.runs))


# --------------------------------------------------------------------------- validation
def _validate_space(space: Mapping[str, Sequence[object]]) -> dict[str, list[object]]:
    """Return the space as plain lists, refusing shapes that would silently give wrong trials."""
    if not space:
        raise SamplingError("search space is empty: give at least one parameter with its levels")
    checked: dict[str, list[object]] = {}
    for name, levels in space.items():
        if not isinstance(name, str) or not name:
            raise SamplingError(f"parameter names must be non-empty strings, got {name!r}")
        # A bare string or number is the usual YAML slip (`lr0: 0.01` instead of `lr0: [0.01]`).
        if isinstance(levels, str | bytes) or not isinstance(levels, Sequence):
            raise SamplingError(f"parameter {name!r}: levels must be a list, got {levels!r}")
        values = list(levels)
        if not values:
            raise SamplingError(f"parameter {name!r} has no levels")
        for i, value in enumerate(values):
            # Pairwise equality rather than a set, so unhashable levels (lists) are allowed too.
            if any(_same_level(value, earlier) for earlier in values[:i]):
                raise SamplingError(f"parameter {name!r} lists the level {value!r} twice")
        checked[name] = values
    return checked


def _same_level(a: object, b: object) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # e.g. numpy arrays compared element-wise
        return a is b


def _validate_counts(max_trials: int, n_trials: int | None) -> None:
    if isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1:
        raise SamplingError(f"max_trials must be a positive integer, got {max_trials!r}")
    if n_trials is None:
        return
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise SamplingError(f"n_trials must be a positive integer, got {n_trials!r}")
    if n_trials > max_trials:
        raise SamplingError(f"n_trials {n_trials} > max_trials {max_trials}")


# --------------------------------------------------------------------------- public API
def sample_trials(
    space: Mapping[str, Sequence[object]],
    method: Method,
    max_trials: int,
    seed: int = 0,
    n_trials: int | None = None,
) -> list[Trial]:
    """Return the distinct trials (parameter -> level, the space's own objects) the design picks.

    ``n_trials`` (default ``max_trials``) sizes ``latin`` and ``random`` designs; ``grid`` and
    ``orthogonal`` are sized by the space itself, so giving it there is an error rather than
    silently ignored. The order is deterministic for a seed.
    """
    levels = _validate_space(space)
    _validate_counts(max_trials, n_trials)
    rows = _design_rows(levels, method, max_trials, seed, n_trials)
    return [_to_trial(levels, row) for row in rows]


def describe_design(
    space: Mapping[str, Sequence[object]],
    method: Method,
    max_trials: int,
    seed: int = 0,
    n_trials: int | None = None,
) -> str:
    """One line for reports and dry runs, e.g.
    ``latin hypercube, 9 trials of 243 grid points, seed 0; each level of each factor 3 times``.

    Built from the very rows :func:`sample_trials` returns, so the line cannot drift from the
    design; raises the same :class:`SamplingError` when the design is impossible.
    """
    levels = _validate_space(space)
    _validate_counts(max_trials, n_trials)
    rows = _design_rows(levels, method, max_trials, seed, n_trials)
    total = _grid_size(levels)
    balance = _balance_text(levels, rows)
    if method == "grid":
        shape = " x ".join(str(len(values)) for values in levels.values())
        return f"full grid, {len(rows)} trials ({shape} levels); {balance}"
    if method == "orthogonal":
        array, assignment = _choose_array(levels)
        return f"{_orthogonal_text(levels, array, assignment, len(rows), total)}; {balance}"
    if method == "latin":
        if len(rows) == total:
            return f"latin hypercube, space has only {total} points: all {total} trials; {balance}"
        return f"latin hypercube, {len(rows)} trials of {total} grid points, seed {seed}; {balance}"
    if len(rows) == total:
        return f"random sample, space has only {total} points: all {total} trials; {balance}"
    return f"random sample, {len(rows)} distinct trials of {total} grid points, seed {seed}; {balance}"


# --------------------------------------------------------------------------- dispatch
def _design_rows(
    levels: dict[str, list[object]], method: str, max_trials: int, seed: int, n_trials: int | None
) -> list[IndexRow]:
    """Level-index rows for a validated space (index j of a factor means ``levels[name][j]``)."""
    if method not in METHODS:
        raise SamplingError(f"unknown sampling method {method!r}; choose one of {', '.join(METHODS)}")
    if method in ("grid", "orthogonal") and n_trials is not None:
        raise SamplingError(
            f"n_trials applies to latin and random only; a {method} design's size is fixed by the space"
        )
    counts = [len(values) for values in levels.values()]
    if method == "grid":
        return _grid_rows(counts, max_trials)
    if method == "orthogonal":
        return _orthogonal_rows(levels, max_trials)
    n = n_trials if n_trials is not None else max_trials
    if method == "latin":
        return _latin_rows(counts, n, seed)
    return _random_rows(counts, n, seed)


def _to_trial(levels: dict[str, list[object]], row: IndexRow) -> Trial:
    return {name: values[index] for (name, values), index in zip(levels.items(), row, strict=True)}


def _grid_size(levels: Mapping[str, Sequence[object]]) -> int:
    return math.prod(len(values) for values in levels.values())


def _all_rows(counts: Sequence[int]) -> list[IndexRow]:
    """The full grid in stable order: first factor slowest, levels in the order they were given."""
    return list(itertools.product(*(range(k) for k in counts)))


# --------------------------------------------------------------------------- grid
def _grid_rows(counts: Sequence[int], max_trials: int) -> list[IndexRow]:
    total = math.prod(counts)
    if total > max_trials:
        shape = " x ".join(str(k) for k in counts)
        raise SamplingError(
            f"full grid has {total} points ({shape} levels) > max_trials {max_trials}; "
            "use method orthogonal or latin to cover every level with fewer trials"
        )
    return _all_rows(counts)


# --------------------------------------------------------------------------- orthogonal
def _choose_array(levels: dict[str, list[object]]) -> tuple[OrthogonalArray, dict[int, int]]:
    """Smallest array whose columns hold every non-constant factor; returns factor -> column.

    Prefers arrays where every factor's level count equals its column's. Only when none
    exists may a factor sit on a column with more levels (standard dummy-level assignment:
    the extra column levels repeat the factor's first levels). Constant factors need no column.
    """
    counts = [len(values) for values in levels.values()]
    varying = [i for i, k in enumerate(counts) if k > 1]
    widest = max((counts[i] for i in varying), default=1)
    largest_column = max(max(array.column_levels) for array in orthogonal_arrays())
    if widest > largest_column:
        names = [name for name, values in levels.items() if len(values) == widest]
        raise SamplingError(
            f"{names[0]!r} has {widest} levels; the orthogonal arrays here have at most "
            f"{largest_column} levels per column; use latin or random"
        )
    # Exact fits first: folding dummy levels costs balance, so L18 (3^7) beats L16 (4^5) for 3-level factors.
    for exact in (True, False):
        for array in orthogonal_arrays():
            assignment = _assign_columns(counts, varying, array, exact=exact)
            if assignment is not None:
                return array, assignment
    largest = orthogonal_arrays()[-1]
    raise SamplingError(
        f"{_factor_summary(counts)} do not fit any orthogonal array up to {largest.name} "
        f"({largest.signature()}); use latin or drop a factor"
    )


def _assign_columns(
    counts: Sequence[int], varying: Sequence[int], array: OrthogonalArray, *, exact: bool
) -> dict[int, int] | None:
    """Greedy: widest factors first, each on the narrowest free column that can hold it.

    Column level counts are nested thresholds, so this greedy matching fails only when no
    assignment exists. ``exact`` allows only columns with exactly the factor's level count.
    """
    free = sorted(range(len(array.column_levels)), key=lambda j: (array.column_levels[j], j))
    assignment: dict[int, int] = {}
    for factor in sorted(varying, key=lambda i: (-counts[i], i)):
        need = counts[factor]
        column = next((j for j in free if _column_holds(array.column_levels[j], need, exact)), None)
        if column is None:
            return None
        free.remove(column)
        assignment[factor] = column
    return assignment


def _column_holds(column_levels: int, factor_levels: int, exact: bool) -> bool:
    return column_levels == factor_levels if exact else column_levels >= factor_levels


def _orthogonal_rows(levels: dict[str, list[object]], max_trials: int) -> list[IndexRow]:
    counts = [len(values) for values in levels.values()]
    array, assignment = _choose_array(levels)
    rows: list[IndexRow] = []
    seen: set[IndexRow] = set()
    for array_row in array.rows:
        # Dummy levels (column level >= factor levels) fold back onto the factor's first levels.
        row = tuple(array_row[assignment[i]] % k if i in assignment else 0 for i, k in enumerate(counts))
        if row not in seen:  # folding dummy levels can repeat a run; train it once
            seen.add(row)
            rows.append(row)
    if len(rows) > max_trials:
        raise SamplingError(
            f"{_factor_summary(counts)} need {array.name} ({array.runs} runs) > max_trials {max_trials}; "
            "use latin or drop a factor"
        )
    return rows


def _factor_summary(counts: Sequence[int]) -> str:
    """``5 factors at 3 levels`` or ``4 factors (3 at 3 levels, 1 at 2 levels)``; constants not counted."""
    varying = [k for k in counts if k > 1]
    by_levels = sorted(Counter(varying).items(), reverse=True)
    noun = "factor" if len(varying) == 1 else "factors"
    if len(by_levels) == 1:
        return f"{len(varying)} {noun} at {by_levels[0][0]} levels"
    parts = ", ".join(f"{n} at {k} levels" for k, n in by_levels)
    return f"{len(varying)} {noun} ({parts})"


def _orthogonal_text(
    levels: dict[str, list[object]], array: OrthogonalArray, assignment: dict[int, int], n: int, total: int
) -> str:
    names = list(levels)
    placed = ", ".join(f"{names[i]}->col {j + 1}" for i, j in sorted(assignment.items()))
    dummies = [names[i] for i, j in assignment.items() if array.column_levels[j] > len(levels[names[i]])]
    text = f"Taguchi {array.name} orthogonal array ({array.signature()}), {n} trials of {total} grid points"
    text += f" ({placed})" if placed else ""
    if dummies:
        text += f"; dummy levels for {', '.join(sorted(dummies))}"
    return text


# --------------------------------------------------------------------------- latin hypercube
def _latin_rows(counts: Sequence[int], n: int, seed: int) -> list[IndexRow]:
    """Best of several balanced Latin-hypercube candidates, repaired to distinct points.

    Each factor's column holds every level floor(n/k) or ceil(n/k) times (which levels get the
    extra run is seeded), shuffled independently. Candidates are ranked by distinct points,
    then by how many level pairs of factor pairs they cover, then by maximin distance.
    """
    total = math.prod(counts)
    if n >= total:  # the whole grid is already perfectly balanced
        return _all_rows(counts)
    rng = np.random.default_rng(seed)
    best, best_score = None, None
    for _ in range(_candidate_count(n, len(counts))):
        design = np.column_stack([_balanced_column(rng, k, n) for k in counts])
        score = _latin_score(design, counts)
        if best_score is None or score > best_score:
            best, best_score = design, score
    assert best is not None
    return _make_distinct(best, rng)


def _candidate_count(n: int, factors: int) -> int:
    per_candidate = max(1, n * n * factors)
    return max(1, min(LATIN_CANDIDATES, _LATIN_SCORE_BUDGET // per_candidate))


def _balanced_column(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    base = np.repeat(np.arange(k), n // k)
    extra = rng.choice(k, size=n % k, replace=False)
    return rng.permutation(np.concatenate([base, extra]))


def _latin_score(design: np.ndarray, counts: Sequence[int]) -> tuple[int, int, float]:
    distinct = len({tuple(row) for row in design.tolist()})
    coverage = 0
    for a, b in itertools.combinations(range(design.shape[1]), 2):
        coverage += len(np.unique(design[:, a] * counts[b] + design[:, b]))
    scale = np.array([max(k - 1, 1) for k in counts], dtype=float)
    positions = design / scale
    gaps = positions[:, None, :] - positions[None, :, :]
    distances = np.sqrt((gaps**2).sum(axis=-1))
    np.fill_diagonal(distances, np.inf)
    return distinct, coverage, float(distances.min()) if len(design) > 1 else 0.0


def _make_distinct(design: np.ndarray, rng: np.random.Generator) -> list[IndexRow]:
    """Swap levels between runs within a column (keeps balance) until every run is distinct.

    Greedy improving swaps first; when stuck, a seeded random swap shakes the design. Only
    reached when all candidates repeat a point, i.e. small spaces with n close to the grid size.
    """
    rows = [list(row) for row in design.tolist()]
    tally = Counter(tuple(row) for row in rows)
    for _ in range(10_000):
        repeated = [i for i, row in enumerate(rows) if tally[tuple(row)] > 1]
        if not repeated:
            return [tuple(row) for row in rows]
        if not _improve_once(rows, tally, repeated):
            column = int(rng.integers(len(rows[0])))
            i, j = (int(x) for x in rng.choice(len(rows), size=2, replace=False))
            _swap(rows, tally, i, j, column)
    raise SamplingError("could not make the latin design's trials distinct; use random")  # pragma: no cover


def _improve_once(rows: list[list[int]], tally: Counter, repeated: Sequence[int]) -> bool:
    before = len(tally)
    for i in repeated:
        for column in range(len(rows[i])):
            for j in range(len(rows)):
                if rows[j][column] == rows[i][column]:
                    continue
                _swap(rows, tally, i, j, column)
                if len(tally) > before:
                    return True
                _swap(rows, tally, i, j, column)  # undo
    return False


def _swap(rows: list[list[int]], tally: Counter, i: int, j: int, column: int) -> None:
    for r in (i, j):
        key = tuple(rows[r])
        tally[key] -= 1
        if not tally[key]:
            del tally[key]
    rows[i][column], rows[j][column] = rows[j][column], rows[i][column]
    for r in (i, j):
        tally[tuple(rows[r])] += 1


# --------------------------------------------------------------------------- random
def _random_rows(counts: Sequence[int], n: int, seed: int) -> list[IndexRow]:
    """Uniform without replacement; rejection sampling so huge spaces are never enumerated."""
    total = math.prod(counts)
    if n >= total:
        return _all_rows(counts)
    rng = np.random.default_rng(seed)
    if 2 * n > total:  # dense: a permutation of the (small) grid is cheaper than rejections
        grid = _all_rows(counts)
        return [grid[int(i)] for i in rng.permutation(total)[:n]]
    rows: list[IndexRow] = []
    seen: set[IndexRow] = set()
    while len(rows) < n:
        row = tuple(int(rng.integers(k)) for k in counts)
        if row not in seen:
            seen.add(row)
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- reporting
def _balance_text(levels: dict[str, list[object]], rows: Sequence[IndexRow]) -> str:
    """How often each level of each factor is tried: the property a reader checks first."""
    spans = {}
    for position, (name, values) in enumerate(levels.items()):
        if len(values) == 1:
            continue
        tally = Counter(row[position] for row in rows)
        per_level = [tally.get(index, 0) for index in range(len(values))]
        spans[name] = (min(per_level), max(per_level))
    if not spans:
        return "every parameter constant"
    unique = set(spans.values())
    if len(unique) == 1:
        return f"each level of each factor {_span_text(*unique.pop())}"
    return "levels tried: " + ", ".join(f"{name} {_span_text(*span)}" for name, span in spans.items())


def _span_text(low: int, high: int) -> str:
    if low == high:
        return f"{low} time" if low == 1 else f"{low} times"
    return f"{low}-{high} times"
