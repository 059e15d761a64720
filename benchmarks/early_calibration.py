"""Calibrate the early metric bound: nonconformity scores of real runs, split-conformal quantiles at a
stated risk, and the choice of the bound's shape by cross-validation over repositories.

A run's score is the most headrooms its gate figure still rose above the best so far, over every epoch
the rule may decide at:

    score = max over decision epochs k of (final − best_k) / headroom_k      (0 when it never rose)

The bound ``best_k + q × headroom_k`` is below the final figure at some decision epoch exactly when the
score exceeds ``q``. For n calibration runs and a new run exchangeable with them, ``q`` = the
⌈(n + 1)(1 − risk)⌉-th smallest score makes that happen with probability at most ``risk``
(split-conformal prediction; infinite when ⌈(n + 1)(1 − risk)⌉ > n: too few runs for that risk).

Only the benchmark and the tests import this module; the engine reads the constants it produced.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from flows.engine.decisions.early import (
    BoundShape,
    MetricRule,
    headroom_terms,
    may_decide,
    metric_series,
)
from flows.engine.records.results import EpochRecord
from flows.engine.records.results_csv import best_epoch


@dataclass(frozen=True)
class Curve:
    """One run as the calibration reads it, for one gated metric."""

    name: str
    group: str
    """Its repository: runs of one repository are held out together."""
    values: tuple[float | None, ...]
    """The metric of epochs 1, 2, ... (None: no figure that epoch), cut at the planned epochs."""
    final: float
    """The gate's figure: the metric at the epoch with the best fitness over the run (best.pt)."""
    epochs_planned: int
    close_mosaic: int


def curve_of(
    name: str, group: str, records: Sequence[EpochRecord], epochs_planned: int, close_mosaic: int, metric: str
) -> Curve | None:
    """A run as a calibration curve for ``metric``; None when best.pt has no figure for it."""
    run = tuple(records[:epochs_planned])
    best = best_epoch(run)
    figure = None if best is None else getattr(best, metric)
    if figure is None:
        return None
    return Curve(name, group, tuple(metric_series(run, metric)), float(figure), epochs_planned, close_mosaic)


@dataclass(frozen=True)
class Terms:
    """A curve's best so far and headroom terms at each epoch the rule may decide (precomputed once per
    window: any shape's headroom is a weighted sum of them)."""

    epochs: np.ndarray
    best: np.ndarray
    terms: np.ndarray
    """Rows: decision epochs; columns: rise, noise, left, mosaic."""


def decision_terms(curve: Curve, rule: MetricRule) -> Terms:
    """Best so far and headroom terms after each epoch at which ``rule`` may decide."""
    epochs, best, rows = [], [], []
    last = min(len(curve.values), curve.epochs_planned - 1)
    for k in range(1, last + 1):
        prefix = curve.values[:k]
        if not may_decide(prefix, curve.epochs_planned, rule):
            continue
        terms = headroom_terms(
            prefix, curve.epochs_planned, rule.shape.window_fraction, curve.close_mosaic, rule.min_epochs
        )
        if terms is None:
            continue
        epochs.append(k)
        best.append(max(v for v in prefix if v is not None))
        rows.append(tuple(terms))
    return Terms(
        np.array(epochs, dtype=int), np.array(best, dtype=float), np.array(rows, dtype=float).reshape(-1, 4)
    )


def weights(shape: BoundShape) -> np.ndarray:
    """The shape's weights in the order of ``HeadroomTerms``."""
    return np.array([shape.slope_weight, shape.noise_weight, shape.floor, shape.mosaic_lift])


def score(curve: Curve, terms: Terms, shape: BoundShape) -> float:
    """The curve's nonconformity score under ``shape`` (see the module docstring)."""
    if not len(terms.epochs):
        return 0.0
    rise = curve.final - terms.best
    room = terms.terms @ weights(shape)
    above = rise > 0
    if np.any(above & (room <= 0)):
        return math.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(above, rise / np.where(room > 0, room, 1.0), 0.0)
    return float(ratios.max())


def conformal_quantile(scores: Iterable[float], risk: float) -> float:
    """The split-conformal quantile: the ⌈(n + 1)(1 − risk)⌉-th smallest score (inf: too few scores)."""
    ordered = sorted(scores)
    rank = math.ceil((len(ordered) + 1) * (1 - risk) - 1e-9)
    return ordered[rank - 1] if rank <= len(ordered) else math.inf


def bounds(terms: Terms, shape: BoundShape, quantile: float) -> np.ndarray:
    """The bound at each decision epoch."""
    if not math.isfinite(quantile):
        return np.full(len(terms.epochs), math.inf)
    return np.minimum(1.0, terms.best + quantile * (terms.terms @ weights(shape)))


def schedule_saved(curve: Curve, stop: int | None) -> float:
    """The share of the curve's schedule that stopping at ``stop`` saves (None: not stopped, 0)."""
    return 0.0 if stop is None else (curve.epochs_planned - stop) / curve.epochs_planned


def stop_epoch(terms: Terms, bound: np.ndarray, threshold: float) -> int | None:
    """The first decision epoch whose bound is below the threshold (where ``decide`` would stop)."""
    below = np.flatnonzero(bound < threshold)
    return int(terms.epochs[below[0]]) if len(below) else None


# ----------------------------------------------------------------------------- pairs


GAPS = (0.002, 0.005, 0.01, 0.02, 0.05)
"""Threshold minus final figure, in metric points, on both sides; 0 is a pass pair too (a gate passes at
its minimum), the hardest one."""


def pair_gaps() -> list[float]:
    """The gaps of the pairs: −0.05 … 0 … +0.05."""
    return sorted({0.0, *GAPS, *(-g for g in GAPS)})


@dataclass
class Pairs:
    """False stops and savings over (curve, threshold) pairs."""

    passes: int = 0
    false_stops: int = 0
    fails: int = 0
    saved: float = 0.0
    """Sum over fail pairs of the share of the schedule saved."""
    curves_false: int = 0
    """Curves with at least one false stop."""
    curves: int = 0

    def add(self, other: Pairs) -> None:
        """Count another set of pairs in."""
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def saved_share(self) -> float:
        """Mean share of the schedule saved on the fail pairs."""
        return self.saved / self.fails if self.fails else 0.0


def curve_pairs(curve: Curve, terms: Terms, shape: BoundShape, quantile: float) -> Pairs:
    """Pairs of one curve: thresholds at ``final + gap`` (kept inside 0..1)."""
    found = Pairs(curves=1)
    bound = bounds(terms, shape, quantile)
    wrong = False
    for gap in pair_gaps():
        threshold = curve.final + gap
        if not 0.0 <= threshold <= 1.0:
            continue
        stop = stop_epoch(terms, bound, threshold)
        if gap <= 0:
            found.passes += 1
            if stop is not None:
                found.false_stops += 1
                wrong = True
        else:
            found.fails += 1
            found.saved += schedule_saved(curve, stop)
    found.curves_false = int(wrong)
    return found


def clopper_pearson_upper(failures: int, trials: int, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound of a binomial rate (exact, Clopper–Pearson)."""
    from scipy.stats import beta

    if trials == 0:
        return 1.0
    if failures >= trials:
        return 1.0
    return float(beta.ppf(confidence, failures + 1, trials - failures))


# ----------------------------------------------------------------------------- fitting


@dataclass(frozen=True)
class Fitted:
    """A shape with its quantile on a set of curves, and what it does on them."""

    shape: BoundShape
    min_fraction: float
    quantile: float
    scores: tuple[float, ...]


def rule_with(
    shape: BoundShape, min_fraction: float, quantile: float = 1.0, risk: float = 0.01
) -> MetricRule:
    """A metric rule of this shape (the quantile matters only when deciding)."""
    return MetricRule(shape=shape, quantile=quantile, risk=risk, min_fraction=min_fraction)


def fit(
    curves: Sequence[Curve], terms: Sequence[Terms], shape: BoundShape, min_fraction: float, risk: float
) -> Fitted:
    """The conformal quantile of ``shape`` on these curves (their terms for ``min_fraction``)."""
    scores = tuple(score(c, t, shape) for c, t in zip(curves, terms, strict=True))
    return Fitted(shape, min_fraction, conformal_quantile(scores, risk), scores)


def evaluate(curves: Sequence[Curve], terms: Sequence[Terms], shape: BoundShape, quantile: float) -> Pairs:
    """Pairs of every curve under one rule."""
    total = Pairs()
    for curve, t in zip(curves, terms, strict=True):
        total.add(curve_pairs(curve, t, shape, quantile))
    return total


def folds_by_group(curves: Sequence[Curve], k: int) -> list[list[int]]:
    """Curve indices in ``k`` folds, every group (repository) whole in one fold, groups dealt in name order
    of a stable hash so that folds are blind to the curves' content."""
    import hashlib

    groups = sorted({c.group for c in curves}, key=lambda g: hashlib.sha256(g.encode()).hexdigest())
    fold_of = {g: i % k for i, g in enumerate(groups)}
    return [[i for i, c in enumerate(curves) if fold_of[c.group] == f] for f in range(k)]


def cross_validate(
    curves: Sequence[Curve],
    terms: Sequence[Terms],
    shape: BoundShape,
    min_fraction: float,
    risk: float,
    k: int,
) -> Pairs:
    """Fit on k−1 folds of repositories, count pairs on the k-th; summed over the folds.

    A fold has fewer runs than the whole half, too few for a finite quantile at a small risk; it is fitted
    at ``1 / (m + 1)`` for m runs instead (its largest score) when that is the larger risk."""
    total = Pairs()
    for held in folds_by_group(curves, k):
        held_set = set(held)
        train = [i for i in range(len(curves)) if i not in held_set]
        fold_risk = max(risk, 1.0 / (len(train) + 1))
        fitted = fit([curves[i] for i in train], [terms[i] for i in train], shape, min_fraction, fold_risk)
        total.add(evaluate([curves[i] for i in held], [terms[i] for i in held], shape, fitted.quantile))
    return total
