"""Early gate decisions: stop a running phase once the gate that will judge it can no longer pass.

Why: a plan of three 100-epoch phases and a search costs days of GPU time, and a phase whose gate is
already lost (VRAM over its bound, too slow, or an accuracy it cannot reach in the epochs left) trains
on for nothing. After every epoch, ``decide`` asks of each condition of the judging gate whether it is
already lost, and only ever answers "lost" (never "passed": an early stop makes the phase incomplete,
so a gate that requires ``completed`` is never passed early, and a gate is only stopped for when some
other condition is lost).

What settles when (docs/EARLY_DECISIONS.md has the derivation and the benchmark):

- **VRAM**: the figure a gate reads is a peak over the whole run; a per-epoch reading over the bound
  can only grow, so the condition is lost the epoch it is seen.
- **speed-up**: the run's images/s is the median over the epochs after the first; once
  ``speed_after_epochs`` epochs after the warm-up one are measured, a speed-up below its minimum by
  more than the plan's ``speed_tolerance`` is lost.
- **metric** (the gate reads it at the epoch with the best Ultralytics fitness): from 30 % of the
  schedule on, an upper bound on that figure from the curve so far, ``best so far + scale × headroom``,
  where the headroom adds the curve's recent slope extrapolated over the epochs left, its epoch-to-epoch
  noise, a floor that shrinks with the schedule left (LR decay) and a lift for the mosaic-off epochs
  still ahead (``close_mosaic``). ``scale`` is calibrated per metric on the 18 recorded curves of
  ``../shared/curves`` (``fit_scale``) and checked leave-one-curve-out; the safe policy adds a reserve
  on top and has no rule for precision (its figure at the best-fitness epoch does not follow the curve).
- **divergence**: never decided early. A run diverges when its NaN recoveries are exhausted, and then
  the trainer ends it by itself; a recovery that worked is no sign of a lost gate.
- **completed**: never a reason to stop (it would be a decision made by stopping).

An unknown figure (no GPU: no VRAM; no reference phase; no metric) never decides anything.

Pure: numpy, pydantic and PyYAML (to read a curve's args.yaml for calibration); no Prefect, torch or GPU;
nothing happens at import time.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml
from pydantic import Field

from flows.engine.base import Frozen
from flows.engine.decisions.gates import fmt
from flows.engine.decisions.monitors import StopTraining
from flows.engine.plan.schema import (
    EarlyDecisions,
    EarlyPolicy,
    GateNode,
    MetricCheck,
    MetricName,
    Plan,
    SearchNode,
    SpeedupCheck,
    TrainNode,
    VramCheck,
)
from flows.engine.records.results import (
    ConditionRow,
    EarlyCheck,
    EarlyDecision,
    EarlyRule,
    EpochEvent,
    EpochRecord,
)
from flows.engine.records.results_csv import best_epoch, epoch_durations, read_results_csv

DEFAULT_CLOSE_MOSAIC = 10
"""Ultralytics' ``close_mosaic``: mosaic augmentation is switched off for the last 10 epochs."""

FITTED_SCALES: dict[str, float] = {"map50_95": 0.356, "map50": 0.459, "precision": 1.452, "recall": 0.363}
"""``fit_scale`` of ``BOUND_SHAPE`` per metric on the 18 curves of ../shared/curves, rounded up: the
smallest scale whose bound covers every curve's final best.pt figure from 30 % of its schedule on.
benchmarks/early_decisions.py recomputes them and tests/test_early.py checks them."""

SAFE_RESERVES: dict[str, float] = {"map50_95": 1.25, "recall": 1.25, "map50": 1.62}
"""The safe policy's factor over the fitted scale: max(1.25, 1.1 × the held-out worst case). Leave one
curve out, a scale fitted on 17 curves covered the 18th up to a factor of 1.005 (mAP50-95), 1.008
(recall) and 1.47 (mAP50, curve 17). Precision has no safe rule: its figure at the best-fitness epoch
jumps with the confidence threshold (curve 27 needs 4.2 times the scale the other 17 need)."""


class BoundShape(Frozen):
    """The headroom of the metric bound: what the rest of the schedule may still add, before scaling.

    headroom = slope_weight × (recent slope per epoch, if rising) × epochs left
             + noise_weight × (epoch-to-epoch scatter around that trend)
             + floor × (fraction of the schedule left)
             + mosaic_lift (while no mosaic-off epoch has been seen yet)
    All terms are in metric units and do not change when a curve is shifted up or down.
    """

    slope_weight: float = Field(default=1.0, ge=0)
    noise_weight: float = Field(default=3.0, ge=0)
    floor: float = Field(default=0.1, ge=0)
    mosaic_lift: float = Field(default=0.02, ge=0)
    window_fraction: float = Field(default=0.5, gt=0, le=1)
    """The trend is fitted on the last ``window_fraction`` of the epochs so far (at least ``min_epochs``)."""


BOUND_SHAPE = BoundShape()


class MetricRule(Frozen):
    """A metric bound of one policy: its shape, its scale, and from when on it may decide."""

    shape: BoundShape = BOUND_SHAPE
    scale: float = Field(gt=0)
    min_fraction: float = Field(default=0.3, ge=0, le=1)
    """No decision before this fraction of the planned epochs: early curves (warm-up, from-scratch
    plateaus) say nothing about where they end (docs/EARLY_DECISIONS.md)."""
    min_epochs: int = Field(default=5, ge=3)
    """Nor before this many epochs with a figure: a trend needs points."""
    min_level: float = Field(default=0.05, ge=0, le=1)
    """Nor while the best so far is below this: the curve has not started to learn yet. A model trained
    from scratch can sit near 0 for a while (curve 19 until 15 % of its schedule) and then climb at a
    rate no flat stretch predicts."""


AGGRESSIVE_MIN_FRACTION = 0.3
"""The aggressive policy decides from the same 30 % of the schedule on, with the bare fitted scale (no
reserve): it covers all 18 calibration curves, and stops phases that would have passed on curves that
need more (held out, 1 pair of 126 for mAP50-95). Deciding from 20 % instead stops 14 % of the pass
pairs (docs/EARLY_DECISIONS.md)."""


def rule_for(policy: EarlyPolicy, metric: MetricName) -> MetricRule | None:
    """The metric rule of a policy for one metric; None: this policy never decides on it early."""
    if policy == "safe" and metric in SAFE_RESERVES:
        return MetricRule(scale=FITTED_SCALES[metric] * SAFE_RESERVES[metric])
    if policy == "aggressive":
        return MetricRule(scale=FITTED_SCALES[metric], min_fraction=AGGRESSIVE_MIN_FRACTION)
    return None


class RecordedCurve(Frozen):
    """One recorded run as the calibration reads it: the gated metric per epoch and what the gate saw."""

    name: str
    values: tuple[float | None, ...]
    """The metric of epochs 1, 2, ... (None: no figure that epoch)."""
    final: float
    """The gate's figure: the metric at the epoch with the best fitness over the whole run."""
    epochs_planned: int
    close_mosaic: int = DEFAULT_CLOSE_MOSAIC


# ----------------------------------------------------------------------------- the metric bound


def metric_series(records: Iterable[EpochRecord], metric: MetricName) -> list[float | None]:
    """The metric per epoch; an epoch whose four metrics are all exactly 0 has no figure.

    Such an epoch is a validation that found nothing (curve 1, epoch 2 of ../shared/curves), not a
    collapse of the model: counting it as 0 would bend the trend down and the bound with it.
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


def headroom(
    values: Sequence[float | None], epochs_planned: int, shape: BoundShape, close_mosaic: int, min_points: int
) -> float | None:
    """Unscaled headroom after ``len(values)`` epochs, or None when the window holds too few figures."""
    epoch = len(values)
    width = min(epoch, max(min_points, math.ceil(shape.window_fraction * epoch)))
    points = [(i, v) for i, v in enumerate(values[epoch - width :]) if v is not None]
    if len(points) < min_points or len(points) < 3:
        return None
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    residuals = y - (intercept + slope * x)
    noise = float(np.sqrt((residuals**2).sum() / (len(points) - 2)))
    left = epochs_planned - epoch
    return (
        shape.slope_weight * max(float(slope), 0.0) * left
        + shape.noise_weight * noise
        + shape.floor * left / epochs_planned
        + (shape.mosaic_lift if mosaic_ahead(epoch, epochs_planned, close_mosaic) else 0.0)
    )


def metric_upper_bound(
    values: Sequence[float | None],
    epochs_planned: int,
    rule: MetricRule,
    close_mosaic: int = DEFAULT_CLOSE_MOSAIC,
) -> float | None:
    """The most the gate's figure can reach by the end, from the epochs so far; None: too early to say.

    ``values`` are the metric of epochs 1..k (all of them: a bound from a tail would miss the best so far).
    """
    epoch = len(values)
    known = [v for v in values if v is not None]
    if not known or epoch >= epochs_planned or epoch < decidable_from(epochs_planned, rule):
        return None
    if max(known) < rule.min_level:
        return None
    room = headroom(values, epochs_planned, rule.shape, close_mosaic, rule.min_epochs)
    if room is None:
        return None
    return min(1.0, max(known) + rule.scale * room)


# ----------------------------------------------------------------------------- calibration


def recorded_curve(
    name: str,
    records: Sequence[EpochRecord],
    epochs_planned: int,
    close_mosaic: int = DEFAULT_CLOSE_MOSAIC,
    metric: MetricName = "map50_95",
) -> RecordedCurve:
    """A run cut at its planned epochs (a resumed record can hold more rows), with its gate figure."""
    run = tuple(records[:epochs_planned])
    best = best_epoch(run)
    if best is None or getattr(best, metric) is None:
        raise ValueError(f"{name}: no epoch has a {metric} figure")
    return RecordedCurve(
        name=name,
        values=tuple(metric_series(run, metric)),
        final=float(getattr(best, metric)),
        epochs_planned=epochs_planned,
        close_mosaic=close_mosaic,
    )


def read_recorded_curve(csv: Path, args_yaml: Path, metric: MetricName = "map50_95") -> RecordedCurve:
    """A results.csv with its args.yaml (``epochs``, ``close_mosaic``) as a calibration curve."""
    args = yaml.safe_load(Path(args_yaml).read_text(encoding="utf-8")) or {}
    close = args.get("close_mosaic", DEFAULT_CLOSE_MOSAIC)
    return recorded_curve(
        Path(csv).stem, read_results_csv(Path(csv)), int(args["epochs"]), int(close or 0), metric
    )


def required_scale(curve: RecordedCurve, rule: MetricRule) -> float:
    """The smallest scale at which the rule's bound covers the curve's final figure at every epoch it
    may decide (0: never needed; infinity: no scale does, the headroom was 0 while the curve still rose)."""
    needed = 0.0
    start = decidable_from(curve.epochs_planned, rule)
    for epoch in range(start, len(curve.values)):
        prefix = curve.values[:epoch]
        known = [v for v in prefix if v is not None]
        if not known or curve.final <= max(known) or max(known) < rule.min_level:
            continue
        room = headroom(prefix, curve.epochs_planned, rule.shape, curve.close_mosaic, rule.min_epochs)
        if room is None:
            continue
        needed = max(needed, (curve.final - max(known)) / room if room > 0 else math.inf)
    return needed


def fit_scale(curves: Iterable[RecordedCurve], rule: MetricRule) -> float:
    """The smallest scale that covers every curve: the calibration of the bound (``rule.scale`` unused)."""
    return max((required_scale(c, rule) for c in curves), default=0.0)


def held_out_ratios(curves: Sequence[RecordedCurve], rule: MetricRule) -> dict[str, float]:
    """Leave one curve out: the scale it needs over the scale fitted on all the others (≤ 1: covered)."""
    needs = {c.name: required_scale(c, rule) for c in curves}
    ratios = {}
    for curve in curves:
        rest = max((needs[c.name] for c in curves if c.name != curve.name), default=0.0)
        ratios[curve.name] = needs[curve.name] / rest if rest > 0 else math.inf
    return ratios


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
        elif isinstance(cond, MetricCheck) and from_epoch_one(history):
            rule = rules.get(cond.metric) if rules is not None else rule_for(settings.policy, cond.metric)
            found = None if rule is None else metric_lost(cond, history, epochs_planned, rule, close_mosaic)
        if found is not None:
            return record_decision(gate, gate_name, history, epochs_planned, *found)
    return None


Lost = tuple[EarlyCheck, str, float, float, float, str]
"""(check, condition label, observed, bound, threshold, why) of a condition found lost."""


def vram_lost(cond: VramCheck, history: Sequence[EpochEvent]) -> Lost | None:
    """Lost once a reading is over the bound: the run's peak can only be higher."""
    peak = vram_peak_so_far(history, cond.figure)
    if peak is None or peak <= cond.max_gb:
        return None
    why = f"VRAM ({cond.figure}) reached {peak:.2f} GB, over {cond.max_gb:g} GB; the run's peak only grows"
    return ("vram", f"VRAM ({cond.figure}) GB", peak, peak, cond.max_gb, why)


def speedup_lost(
    cond: SpeedupCheck,
    history: Sequence[EpochEvent],
    reference: Mapping[str, float | None],
    settings: EarlyDecisions,
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
    return ("speedup", label, speedup, speedup + settings.speed_tolerance, cond.min, why)


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
        f"{cond.metric} can reach at most {bound:.4f} by epoch {epochs_planned} "
        f"(best so far {best:.4f}), below the minimum {cond.min:.4f}"
    )
    return ("metric", cond.metric, best, bound, cond.min, why)


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
        epochs_saved=saved,
        seconds_per_epoch=per_epoch,
        seconds_saved=seconds,
        gpu_hours_saved=hours,
        reason=reason,
    )


def decision_row(decision: EarlyDecision) -> ConditionRow:
    """The gate-table line that says the phase was stopped early and why (the gate fails with it)."""
    if decision.check == "vram":
        observed, threshold = f"{decision.observed:.2f} GB so far", f"≤ {decision.threshold:g}"
    elif decision.check == "speedup":
        observed, threshold = f"{decision.observed:+.1%} so far", f"≥ {decision.threshold:+.0%}"
    else:
        observed = f"at most {fmt(decision.bound)} (best {fmt(decision.observed)})"
        threshold = f"≥ {decision.threshold:.4f}"
    return ConditionRow(
        condition=f"early decision: {decision.condition}",
        observed=observed,
        threshold=threshold,
        verdict="fail",
        passed=False,
        note=decision.reason,
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
