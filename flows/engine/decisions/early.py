"""Early gate decisions: stop a running phase once the gate that will judge it can no longer pass.

``tracker_for(spec.early)`` gives the ``EarlyTracker`` a training's ``on_epoch`` feeds; it raises
``StopTraining`` when ``decide`` finds a condition of the judging gate already lost: VRAM over its bound,
a speed-up that cannot be reached, or a metric whose upper bound at the policy's risk,
``best so far + quantile × headroom(curve so far)``, is below the minimum. It only ever answers "lost",
never "passed". The rule, its calibration (``benchmarks/early_calibration.py``, which produced the
constants below) and its figures: docs/EARLY_DECISIONS.md. Pure: numpy and pydantic.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
from pydantic import Field

from flows.engine.base import Frozen
from flows.engine.decisions.monitors import StopTraining
from flows.engine.plan.schema import (
    EarlyPolicy,
    EarlySettings,
    GateNode,
    MetricCheck,
    MetricName,
    Plan,
    SearchNode,
    SpeedupCheck,
    TrainNode,
    VramCheck,
)
from flows.engine.plan.ultra_defaults import ultralytics_default
from flows.engine.records.results import (
    EarlyCheck,
    EarlyDecision,
    EarlyRule,
    EpochEvent,
    EpochRecord,
)
from flows.engine.records.results_csv import epoch_durations

DEFAULT_CLOSE_MOSAIC: int = ultralytics_default("close_mosaic")
"""Ultralytics' default ``close_mosaic``: mosaic augmentation is switched off for the last 10 epochs."""


class HeadroomTerms(NamedTuple):
    """What the curve so far says about the rest of its schedule, each in metric units (but ``left`` and
    ``mosaic``), unchanged when the curve is shifted up or down."""

    rise: float
    """The recent trend's slope (if rising) times the epochs left."""
    noise: float
    """The scatter of the recent epochs around that trend (residual standard deviation)."""
    left: float
    """The share of the schedule left: LR decay keeps lifting curves that look flat."""
    mosaic: float
    """1 while no mosaic-off epoch has been trained yet (they often lift the curve), else 0."""


class BoundShape(Frozen):
    """How the headroom weighs its terms (chosen on the calibration half; docs/EARLY_DECISIONS.md)."""

    slope_weight: float = Field(default=1.0, ge=0)
    noise_weight: float = Field(default=3.0, ge=0)
    floor: float = Field(default=0.1, ge=0)
    mosaic_lift: float = Field(default=0.02, ge=0)
    window_fraction: float = Field(default=0.5, gt=0, le=1)
    """The trend is fitted on the last ``window_fraction`` of the epochs so far (at least ``min_epochs``)."""

    def combine(self, terms: HeadroomTerms) -> float:
        """The headroom these weights give to the terms."""
        return (
            self.slope_weight * terms.rise
            + self.noise_weight * terms.noise
            + self.floor * terms.left
            + self.mosaic_lift * terms.mosaic
        )


class MetricRule(Frozen):
    """A metric bound of one policy: its shape, its quantile and risk, and from when on it may decide."""

    shape: BoundShape = BoundShape()
    quantile: float = Field(ge=0)
    """Headrooms added to the best so far: the conformal quantile of the calibration runs' scores."""
    risk: float = Field(gt=0, lt=1)
    """The stated probability that the bound is below the final figure at some decision epoch of a new
    run (exchangeable with the calibration runs): the most often a phase that would pass is stopped."""
    min_fraction: float = Field(default=0.3, ge=0, le=1)
    """No decision before this fraction of the planned epochs: early curves (warm-up, from-scratch
    plateaus) say little about where they end."""
    min_epochs: int = Field(default=5, ge=3)
    """Nor before this many epochs with a figure: a trend needs points."""
    min_level: float = Field(default=0.05, ge=0, le=1)
    """Nor while the best so far is below this: the curve has not started to learn yet."""


POLICY_RISK: dict[str, float] = {"safe": 0.01, "aggressive": 0.05}
"""The risk each policy states: the bound of ``safe`` is wrong on at most 1 % of new runs."""

BOUND_SHAPE = BoundShape(slope_weight=1.0, noise_weight=2.0, floor=0.0, mosaic_lift=0.0, window_fraction=0.5)
MIN_FRACTION = 0.5
CALIBRATED_QUANTILES: dict[str, dict[str, float]] = {
    "map50_95": {"aggressive": 1.0628},
    "map50": {"aggressive": 0.7683},
    "recall": {"safe": 3.0265, "aggressive": 0.6504},
    "precision": {"safe": 0.8202, "aggressive": 0.4008},
}
"""Per metric and policy: the conformal quantile of the calibration half's scores at the policy's risk,
kept only where that rule met its target on the report half (false-stop rate ≤ the risk, its 95 % upper
bound ≤ twice it; benchmarks/early_decisions.py computes both, tests/test_early_corpus.py checks them).
A metric or policy missing here is never decided early: on the corpus the safe rule did not meet its
target, so the shipped plan's metric conditions are not decided early (docs/EARLY_DECISIONS.md)."""


def rule_for(policy: EarlyPolicy, metric: MetricName) -> MetricRule | None:
    """The metric rule of a policy for one metric; None: this policy never decides on it early (no
    finite quantile at its risk, or the metric was not calibrated)."""
    quantile = CALIBRATED_QUANTILES.get(metric, {}).get(policy)
    if quantile is None or not math.isfinite(quantile):
        return None
    return MetricRule(
        shape=BOUND_SHAPE, quantile=quantile, risk=POLICY_RISK[policy], min_fraction=MIN_FRACTION
    )


# ----------------------------------------------------------------------------- the metric bound


def metric_series(records: Iterable[EpochRecord], metric: MetricName) -> list[float | None]:
    """The metric per epoch; an epoch whose four metrics are all exactly 0 has no figure.

    Such an epoch is a validation that found nothing, not a collapse of the model: counting it as 0 would
    bend the trend down and the bound with it.
    """
    series: list[float | None] = []
    for record in records:
        figures = (record.precision, record.recall, record.map50, record.map50_95)
        blank = all(value == 0.0 for value in figures)
        series.append(None if blank else getattr(record, metric))
    return series


def decidable_from(epochs_planned: int, rule: MetricRule) -> int:
    """The first epoch at which the rule may decide."""
    return max(rule.min_epochs, math.ceil(rule.min_fraction * epochs_planned))


def mosaic_ahead(epoch: int, epochs_planned: int, close_mosaic: int) -> bool:
    """True while no mosaic-off epoch has been trained yet (Ultralytics turns mosaic off for the last
    ``close_mosaic`` epochs, which often lifts the curve)."""
    return close_mosaic > 0 and epoch <= epochs_planned - close_mosaic


def headroom_terms(
    values: Sequence[float | None],
    epochs_planned: int,
    window_fraction: float,
    close_mosaic: int,
    min_points: int,
) -> HeadroomTerms | None:
    """The headroom's terms after ``len(values)`` epochs, or None when the window holds too few figures."""
    epoch = len(values)
    width = min(epoch, max(min_points, math.ceil(window_fraction * epoch)))
    points = [(i, v) for i, v in enumerate(values[epoch - width :]) if v is not None]
    if len(points) < min_points or len(points) < 3:
        return None
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    residuals = y - (intercept + slope * x)
    left = epochs_planned - epoch
    return HeadroomTerms(
        rise=max(float(slope), 0.0) * left,
        noise=float(np.sqrt((residuals**2).sum() / (len(points) - 2))),
        left=left / epochs_planned,
        mosaic=1.0 if mosaic_ahead(epoch, epochs_planned, close_mosaic) else 0.0,
    )


def may_decide(values: Sequence[float | None], epochs_planned: int, rule: MetricRule) -> bool:
    """True when the rule may decide after ``len(values)`` epochs: late enough, before the end, and the
    curve has started to learn."""
    epoch = len(values)
    known = [v for v in values if v is not None]
    if not known or epoch >= epochs_planned or epoch < decidable_from(epochs_planned, rule):
        return False
    return max(known) >= rule.min_level


def metric_upper_bound(
    values: Sequence[float | None],
    epochs_planned: int,
    rule: MetricRule,
    close_mosaic: int = DEFAULT_CLOSE_MOSAIC,
) -> float | None:
    """The most the gate's figure can reach by the end, at the rule's risk; None: too early to say.

    ``values`` are the metric of epochs 1..k (all of them: a bound from a tail would miss the best so far).
    """
    if not may_decide(values, epochs_planned, rule):
        return None
    terms = headroom_terms(values, epochs_planned, rule.shape.window_fraction, close_mosaic, rule.min_epochs)
    if terms is None:
        return None
    best = max(v for v in values if v is not None)
    return min(1.0, best + rule.quantile * rule.shape.combine(terms))


# ----------------------------------------------------------------------------- the conditions


def speedup_so_far(history: Sequence[EpochEvent], reference: float | None, after: int) -> float | None:
    """The speed-up measured so far (median images/s after the first measured epoch, as PhaseResult has
    it, over the reference phase's images/s), once ``after`` epochs past the warm-up one are measured;
    else None."""
    speeds = [e.images_per_s for e in history if e.images_per_s is not None and e.images_per_s > 0]
    if not reference or len(speeds) < after + 1:
        return None
    return statistics.median(speeds[1:]) / reference - 1.0


def vram_peak_so_far(history: Sequence[EpochEvent], figure: str) -> float | None:
    """The highest reading so far of the figure a VRAM condition reads (``both``: the larger)."""
    nvml = [e.nvml_used_gb for e in history if e.nvml_used_gb is not None]
    torch_peak = [e.torch_reserved_gb for e in history if e.torch_reserved_gb is not None]
    chosen = {"nvml_peak": nvml, "torch_peak": torch_peak, "both": nvml + torch_peak}[figure]
    return max(chosen) if chosen else None


def seconds_per_epoch(history: Sequence[EpochEvent]) -> float | None:
    """Observed wall seconds per epoch (median of the epochs after the first), from the records' clock."""
    durations = [d for d in epoch_durations([e.record for e in history]) if d > 0]
    if not durations:
        return None
    return statistics.median(durations[1:] or durations)


def from_epoch_one(history: Sequence[EpochEvent]) -> bool:
    """True when the history holds every epoch from the first: a metric bound needs the best so far."""
    return bool(history) and [e.record.epoch for e in history] == list(range(1, len(history) + 1))


# ----------------------------------------------------------------------------- the decision


def decide(
    gate: GateNode,
    history: Sequence[EpochEvent],
    epochs_planned: int,
    reference: Mapping[str, float | None],
    *,
    close_mosaic: int = DEFAULT_CLOSE_MOSAIC,
    gate_name: str | None = None,
    rules: Mapping[str, MetricRule] | None = None,
) -> EarlyDecision | None:
    """The first condition of ``gate`` that the epochs so far have already lost, or None.

    ``history``: the subject's events from epoch 1 on; ``reference``: images/s of finished phases by
    node (for speed-up conditions; ``reference_speeds`` builds it from results); ``close_mosaic``: the
    run's Ultralytics argument; ``rules``: metric → rule in place of the policy's (the benchmark's
    held-out checks). Settled conditions (VRAM) are looked at first, then speed-up, then metrics.
    """
    settings = gate.early
    if settings.policy == "off" or not history or history[-1].record.epoch >= epochs_planned:
        return None
    ordered = sorted(gate.conditions, key=lambda c: {"vram": 0, "speedup": 1, "metric": 2}.get(c.check, 3))
    for cond in ordered:
        found = None
        if isinstance(cond, VramCheck):
            found = vram_lost(cond, history)
        elif isinstance(cond, SpeedupCheck):
            found = speedup_lost(cond, history, reference, settings)
        elif isinstance(cond, MetricCheck) and cond.images == "all" and from_epoch_one(history):
            # the epochs' figures count every image: they bound nothing about the @clean figure
            rule = rules.get(cond.metric) if rules is not None else rule_for(settings.policy, cond.metric)
            found = None if rule is None else metric_lost(cond, history, epochs_planned, rule, close_mosaic)
        if found is not None:
            return record_decision(gate, gate_name, history, epochs_planned, *found)
    return None


Lost = tuple[EarlyCheck, str, float, float, float, str, float | None]
"""(check, condition label, observed, bound, threshold, why, risk) of a condition found lost; the risk is
the bound's (metric conditions; None: settled by its nature)."""


def vram_lost(cond: VramCheck, history: Sequence[EpochEvent]) -> Lost | None:
    """Lost once a reading is over the bound: the run's peak can only be higher."""
    peak = vram_peak_so_far(history, cond.figure)
    if peak is None or peak <= cond.max_gb:
        return None
    why = f"VRAM ({cond.figure}) reached {peak:.2f} GB, over {cond.max_gb:g} GB; the run's peak only grows"
    return ("vram", f"VRAM ({cond.figure}) GB", peak, peak, cond.max_gb, why, None)


def speedup_lost(
    cond: SpeedupCheck,
    history: Sequence[EpochEvent],
    reference: Mapping[str, float | None],
    settings: EarlySettings,
) -> Lost | None:
    """Lost when the stable speed-up is below the minimum by more than the plan's tolerance."""
    speedup = speedup_so_far(history, reference.get(cond.vs), settings.speed_after_epochs)
    if speedup is None or speedup + settings.speed_tolerance >= cond.min:
        return None
    why = (
        f"speed-up vs {cond.vs} is {speedup:+.1%} after {len(history)} epochs, below {cond.min:+.0%} "
        f"by more than the tolerance of {settings.speed_tolerance:.0%} points"
    )
    label = f"speed-up vs {cond.vs} ({cond.figure})"
    return ("speedup", label, speedup, speedup + settings.speed_tolerance, cond.min, why, None)


def metric_lost(
    cond: MetricCheck,
    history: Sequence[EpochEvent],
    epochs_planned: int,
    rule: MetricRule,
    close_mosaic: int,
) -> Lost | None:
    """Lost when the metric's upper bound for the end of the run is below the minimum."""
    values = metric_series((e.record for e in history), cond.metric)
    bound = metric_upper_bound(values, epochs_planned, rule, close_mosaic)
    if bound is None or bound >= cond.min:
        return None
    best = max(v for v in values if v is not None)
    why = (
        f"{cond.metric} can reach at most {bound:.4f} by epoch {epochs_planned} at {rule.risk:.0%} risk "
        f"(best so far {best:.4f}), below the minimum {cond.min:.4f}"
    )
    return ("metric", cond.metric, best, bound, cond.min, why, rule.risk)


def record_decision(
    gate: GateNode,
    gate_name: str | None,
    history: Sequence[EpochEvent],
    epochs_planned: int,
    check: EarlyCheck,
    condition: str,
    observed: float,
    bound: float,
    threshold: float,
    why: str,
    risk: float | None,
) -> EarlyDecision:
    """The decision record: what was lost, and what stopping now saves (from the observed epoch time)."""
    epoch = history[-1].record.epoch
    saved = epochs_planned - epoch
    per_epoch = seconds_per_epoch(history)
    seconds = None if per_epoch is None else per_epoch * saved
    hours = None if seconds is None else seconds / 3600.0
    cost = "" if hours is None else f", ≈ {hours:.2f} GPU-hours"
    reason = (
        f"early decision ({gate.early.policy}) at epoch {epoch}/{epochs_planned}: {why}; "
        f"{gate_name or 'the gate'} cannot pass; stopping saves {saved} epochs{cost}"
    )
    return EarlyDecision(
        gate=gate_name,
        subject=gate.subject,
        policy=gate.early.policy,
        check=check,
        condition=condition,
        epoch=epoch,
        epochs_planned=epochs_planned,
        observed=observed,
        bound=bound,
        threshold=threshold,
        risk=risk,
        epochs_saved=saved,
        seconds_per_epoch=per_epoch,
        seconds_saved=seconds,
        gpu_hours_saved=hours,
        reason=reason,
    )


def judging_gate(plan: Plan, node: str) -> tuple[str, GateNode] | None:
    """The gate that will judge ``node``'s result: the node's ``next``, when it is a gate on ``node``.

    For a search this is the gate of its full run; its trials are the pruner's business.
    """
    train = plan.nodes.get(node)
    if not isinstance(train, TrainNode | SearchNode):
        return None
    gate = plan.nodes.get(train.next)
    if isinstance(gate, GateNode) and gate.subject == node:
        return train.next, gate
    return None


def reference_speeds(gate: GateNode, results: Mapping[str, object]) -> dict[str, float | None]:
    """Images/s of the phases the gate's speed-up conditions compare with (finished results by node)."""
    return {
        cond.vs: getattr(results.get(cond.vs), "images_per_s", None)
        for cond in gate.conditions
        if isinstance(cond, SpeedupCheck)
    }


def tracker_for(check: EarlyRule, history: Iterable[EpochEvent] = ()) -> EarlyTracker:
    """The tracker a training's ``on_epoch`` feeds, from what its spec carries."""
    return EarlyTracker(
        check.gate,
        check.reference_images_per_s,
        gate_name=check.gate_name,
        close_mosaic=check.close_mosaic,
        history=history,
    )


class EarlyTracker:
    """Fed one epoch at a time from ``on_epoch``: raises ``StopTraining`` once the gate is lost.

    ``history`` seeds epochs trained before a resume (a metric bound needs every epoch from the first;
    without them the tracker decides only on VRAM and speed-up).
    """

    def __init__(
        self,
        gate: GateNode,
        reference: Mapping[str, float | None],
        *,
        gate_name: str | None = None,
        close_mosaic: int = DEFAULT_CLOSE_MOSAIC,
        history: Iterable[EpochEvent] = (),
        rules: Mapping[str, MetricRule] | None = None,
    ) -> None:
        self.gate = gate
        self.reference = reference
        self.gate_name = gate_name
        self.close_mosaic = close_mosaic
        self.history: list[EpochEvent] = list(history)
        self.rules = rules
        self.decision: EarlyDecision | None = None

    def observe(self, event: EpochEvent) -> EarlyDecision | None:
        """Add the epoch; return the decision when the gate can no longer pass (the same one afterwards).

        An epoch trained again (after a resume from an earlier checkpoint) replaces its old record and
        every later one."""
        self.history = [e for e in self.history if e.record.epoch < event.record.epoch]
        self.history.append(event)
        if self.decision is None:
            self.decision = decide(
                self.gate,
                self.history,
                event.epochs_planned,
                self.reference,
                close_mosaic=self.close_mosaic,
                gate_name=self.gate_name,
                rules=self.rules,
            )
        return self.decision

    def __call__(self, event: EpochEvent) -> None:
        """The ``on_epoch`` hook: stop the phase after this epoch when its gate is lost."""
        decision = self.observe(event)
        if decision is not None:
            raise StopTraining(decision.reason)
