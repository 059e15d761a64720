"""Early gate decisions on real curves: false stops and epochs saved, per curve and threshold and per tree.

Why this exists: the safe policy of ``flows/engine/decisions/early.py`` must never stop a phase that
would have passed, and must still save GPU time. This script measures both on the 18 recorded runs of
``../shared/curves`` and writes the tables of docs/EARLY_DECISIONS.md.

(a) Pairs. For every curve (cut at its planned ``epochs``; its gate figure = the metric at the epoch of
    best fitness, as best.pt) and every threshold ``final + gap`` (gaps in ``GAPS``, both signs, 0
    included: a threshold equal to the final figure passes), the epoch at which each policy's bound
    first falls below the threshold. A pass pair that is stopped is a false stop; a fail pair saves
    ``planned - stop`` epochs. In-sample: the shipped constants (fitted on all 18 curves). Held-out:
    for each curve, the scale fitted on the OTHER 17 times the policy's reserve, applied to that curve.
(b) Trees. A seeded generator builds whole-tree scenarios of the shipped plan (phase1 -> gate1 -> phase2
    -> gate2 -> phase3 search -> gate3): for each phase a completed curve with its own planned epochs,
    an ``offset_map50_95`` that puts its final figure ``gap`` away from the gate's minimum, images/s and
    NVML peaks around the gate's bounds; 9 trials of 20 epochs from any curve. Each scenario is walked
    twice with the real engine (``walk_tree`` + ``ReplayTrainer``): naively, and with the gates' early
    policy applied in ``on_epoch`` through ``EarlyTracker``. Reported: same terminal (and path), GPU-epochs
    as a share of the naive walk, overall and where a gate is lost.

Run:  .venv/bin/python benchmarks/early_decisions.py [--scenarios 300] [--seed 0] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flows.engine.decisions.early import (  # noqa: E402
    AGGRESSIVE_MIN_FRACTION,
    FITTED_SCALES,
    SAFE_RESERVES,
    EarlyDecision,
    EarlyTracker,
    MetricRule,
    RecordedCurve,
    fit_scale,
    judging_gate,
    metric_upper_bound,
    read_recorded_curve,
    reference_speeds,
    required_scale,
    rule_for,
)

CURVES = REPO.parent / "shared" / "curves"
PLAN = REPO / "configs" / "fod_plan.yaml"
DATA = REPO.parent / "shared" / "datasets" / "golfball_small" / "data.yaml"
GAPS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1)
"""Threshold minus final figure, in metric points; each is used with both signs (0 once: a pass)."""
METRICS = ("map50_95", "map50", "recall", "precision")
POLICIES = ("safe", "aggressive")
FIT_FRACTION = 0.3
"""The calibration fits scales from 30 % of the schedule on (``MetricRule``'s default)."""

TRIAL_EPOCHS = 20
PHASE_GAP = (-0.10, 0.05)
"""Range of (final figure - gate minimum) drawn for each phase: a third of the phases pass."""
SPEEDUP_RANGE = (0.10, 0.40)
"""Phase 2's training speed-up over Phase 1 (the gate wants >= 0.25)."""
VRAM_RANGE = (15.0, 23.0)
"""Phase 2's NVML peak, GB (the gate wants <= 20)."""


# ----------------------------------------------------------------------------- (a) pairs


def curve_names() -> list[str]:
    """The recorded runs, in numeric order."""
    return [str(n) for n in sorted(int(p.stem) for p in CURVES.glob("*.csv"))]


def load_curves(metric: str) -> list[RecordedCurve]:
    """Every shared curve as the calibration reads it, for one gated metric."""
    return [
        read_recorded_curve(CURVES / f"{n}.csv", CURVES / f"{n}.args.yaml", metric) for n in curve_names()
    ]


def bounds_of(curve: RecordedCurve, rule: MetricRule) -> list[float | None]:
    """The rule's bound after each epoch 1..K-1 (None where it may not decide)."""
    return [
        metric_upper_bound(curve.values[:k], curve.epochs_planned, rule, curve.close_mosaic)
        for k in range(1, len(curve.values))
    ]


def stop_epoch(bounds: Sequence[float | None], threshold: float) -> int | None:
    """The first epoch whose bound is below the threshold (what ``decide`` would stop at)."""
    return next((k for k, b in enumerate(bounds, start=1) if b is not None and b < threshold), None)


def thresholds(final: float) -> list[tuple[float, float]]:
    """(gap, threshold) pairs around a final figure, kept inside 0..1."""
    gaps = sorted({g for gap in GAPS for g in (gap, -gap)})
    return [(g, final + g) for g in gaps if 0.0 <= final + g <= 1.0]


@dataclass
class PairStats:
    """False stops and savings of one policy over (curve, threshold) pairs."""

    passes: int = 0
    false_stops: int = 0
    fails: int = 0
    saved: list[float] = field(default_factory=list)
    by_gap: dict[float, list[float]] = field(default_factory=dict)
    false_by_curve: Counter = field(default_factory=Counter)

    def add(self, curve: RecordedCurve, gap: float, threshold: float, stop: int | None) -> None:
        """Count one pair."""
        if threshold <= curve.final:
            self.passes += 1
            if stop is not None:
                self.false_stops += 1
                self.false_by_curve[curve.name] += 1
            return
        self.fails += 1
        share = 0.0 if stop is None else (curve.epochs_planned - stop) / curve.epochs_planned
        self.saved.append(share)
        self.by_gap.setdefault(gap, []).append(share)

    def summary(self) -> dict[str, Any]:
        """The figures of the table."""
        return {
            "pass_pairs": self.passes,
            "false_stops": self.false_stops,
            "false_stop_rate": self.false_stops / self.passes if self.passes else 0.0,
            "fail_pairs": self.fails,
            "saved_share_mean": float(np.mean(self.saved)) if self.saved else 0.0,
            "saved_share_by_gap": {f"{g:+.3f}": float(np.mean(v)) for g, v in sorted(self.by_gap.items())},
            "false_stops_by_curve": dict(self.false_by_curve),
        }


def held_out_rule(
    curves: Sequence[RecordedCurve], left_out: str, policy: str, metric: str
) -> MetricRule | None:
    """The policy's rule with its scale fitted on every curve but ``left_out`` (same reserve)."""
    shipped = rule_for(policy, metric)  # type: ignore[arg-type]
    if shipped is None:
        return None
    others = [c for c in curves if c.name != left_out]
    fitted = fit_scale(others, MetricRule(scale=1.0, min_fraction=FIT_FRACTION))
    factor = SAFE_RESERVES[metric] if policy == "safe" else 1.0
    return shipped.model_copy(update={"scale": max(fitted * factor, 1e-9)})


def pair_benchmark(metric: str) -> dict[str, Any]:
    """(a) for one metric: per policy, in-sample and held-out false stops and savings."""
    curves = load_curves(metric)
    out: dict[str, Any] = {"metric": metric, "curves": [c.name for c in curves]}
    fit = MetricRule(scale=1.0, min_fraction=FIT_FRACTION)
    out["fitted_scale"] = fit_scale(curves, fit)
    out["required_scale"] = {c.name: required_scale(c, fit) for c in curves}
    for policy in POLICIES:
        for mode in ("in_sample", "held_out"):
            stats = PairStats()
            for curve in curves:
                rule = (
                    rule_for(policy, metric)  # type: ignore[arg-type]
                    if mode == "in_sample"
                    else held_out_rule(curves, curve.name, policy, metric)
                )
                bounds = bounds_of(curve, rule) if rule is not None else []
                for gap, threshold in thresholds(curve.final):
                    stats.add(curve, gap, threshold, stop_epoch(bounds, threshold))
            out[f"{policy}_{mode}"] = stats.summary()
    return out


RESERVES = (1.0, 1.1, 1.25, 1.5)
"""Reserves over the fitted mAP50-95 scale compared in the sensitivity table (the safe policy: 1.25)."""


def reserve_sensitivity(metric: str = "map50_95") -> dict[str, dict[str, Any]]:
    """False stops and savings of the mAP50-95 bound for other reserves, in-sample and held-out."""
    curves = load_curves(metric)
    fit = MetricRule(scale=1.0, min_fraction=FIT_FRACTION)
    needs = {c.name: required_scale(c, fit) for c in curves}
    out = {}
    for reserve in RESERVES:
        row = {}
        for mode in ("in_sample", "held_out"):
            stats = PairStats()
            for curve in curves:
                others = [v for name, v in needs.items() if name != curve.name or mode == "in_sample"]
                rule = fit.model_copy(update={"scale": max(others) * reserve})
                bounds = bounds_of(curve, rule)
                for gap, threshold in thresholds(curve.final):
                    stats.add(curve, gap, threshold, stop_epoch(bounds, threshold))
            row[mode] = stats.summary()
        out[f"{reserve:g}"] = row
    return out


def reserve_table(sensitivity: dict[str, dict[str, Any]]) -> str:
    """Markdown: the reserve's price and what it buys."""
    lines = ["| reserve | false stops in-sample | held-out | epochs saved on fail pairs (in-sample) |"]
    lines.append("|---|---|---|---|")
    for reserve, row in sensitivity.items():
        ins, out = row["in_sample"], row["held_out"]
        stops = f"{ins['false_stops']}/{ins['pass_pairs']} | {out['false_stops']}/{out['pass_pairs']}"
        lines.append(f"| {reserve} | {stops} | {ins['saved_share_mean']:.1%} |")
    return "\n".join(lines)


FRACTIONS = (0.1, 0.2, 0.25, 0.3, 0.4)
"""Earliest decision points (fraction of the schedule) compared in the sensitivity table."""


def fraction_sensitivity(metric: str = "map50_95") -> dict[str, dict[str, Any]]:
    """Why decisions wait for 30 % of the schedule: the fit, its held-out worst case and the savings
    (fit x 1.25, in-sample) when deciding from earlier or later."""
    curves = load_curves(metric)
    out = {}
    for fraction in FRACTIONS:
        rule = MetricRule(scale=1.0, min_fraction=fraction)
        needs = {c.name: required_scale(c, rule) for c in curves}
        ratios = {c.name: needs[c.name] / max(v for n, v in needs.items() if n != c.name) for c in curves}
        worst = max(ratios, key=ratios.__getitem__)
        stats = PairStats()
        scaled = rule.model_copy(update={"scale": max(needs.values()) * SAFE_RESERVES[metric]})
        for curve in curves:
            bounds = bounds_of(curve, scaled)
            for gap, threshold in thresholds(curve.final):
                stats.add(curve, gap, threshold, stop_epoch(bounds, threshold))
        out[f"{fraction:g}"] = {
            "fitted_scale": max(needs.values()),
            "binding_curve": max(needs, key=needs.__getitem__),
            "held_out_worst": ratios[worst],
            "held_out_worst_curve": worst,
            "saved_share_mean": stats.summary()["saved_share_mean"],
        }
    return out


def fraction_table(sensitivity: dict[str, dict[str, Any]]) -> str:
    """Markdown: the earliest decision point's price."""
    lines = [
        "| decide from | fitted scale (binding curve) | held-out worst ratio (curve) | saved, fit x 1.25 |"
    ]
    lines.append("|---|---|---|---|")
    for fraction, row in sensitivity.items():
        fitted = f"{row['fitted_scale']:.3f} ({row['binding_curve']})"
        worst = f"{row['held_out_worst']:.2f} ({row['held_out_worst_curve']})"
        lines.append(f"| {float(fraction):.0%} | {fitted} | {worst} | {row['saved_share_mean']:.1%} |")
    return "\n".join(lines)


def speed_stability(after: Sequence[int] = (2, 4, 9)) -> dict[str, dict[str, float]]:
    """(c) How far the early images/s (median of epochs 2..1+n) is from the whole run's (epochs 2..N),
    from the records' ``time`` column: 1 / seconds per epoch, as a fraction (+0.05: early is 5 % faster).

    These times include validation (the engine's images/s does not), so they are a pessimistic stand-in.
    """
    from flows.engine.records.results_csv import epoch_durations, read_results_csv

    out = {}
    for name in curve_names():
        durations = [d for d in epoch_durations(read_results_csv(CURVES / f"{name}.csv")) if d > 0]
        if len(durations) < 12:
            continue
        whole = float(np.median(durations[1:]))
        out[name] = {str(n): whole / float(np.median(durations[1 : 1 + n])) - 1.0 for n in after}
    return out


# ----------------------------------------------------------------------------- (b) whole trees


@dataclass(frozen=True)
class CurveInfo:
    """What the generator needs to know of a recorded run."""

    name: str
    rows: int
    epochs: int
    final: float
    seconds_per_epoch: float | None
    """Median of the epochs after the first, from the record's ``time`` column (None: no clock)."""

    @property
    def completed(self) -> bool:
        """True when the record holds every planned epoch (usable as a full phase)."""
        return self.rows >= self.epochs


def curve_infos() -> list[CurveInfo]:
    """Rows, planned epochs and the final mAP50-95 of every curve."""
    from flows.engine.records.results_csv import epoch_durations, read_results_csv

    infos = []
    for curve in load_curves("map50_95"):
        records = read_results_csv(CURVES / f"{curve.name}.csv")
        durations = [d for d in epoch_durations(records[: curve.epochs_planned]) if d > 0]
        clock = float(np.median(durations[1:])) if len(durations) > 1 else None
        infos.append(CurveInfo(curve.name, len(records), curve.epochs_planned, curve.final, clock))
    return infos


@dataclass
class Scenario:
    """One generated tree: per-node replay entries and epochs, and the gaps drawn (for the report)."""

    seed: int
    entries: dict[str, Any]
    epochs: dict[str, int]
    gaps: dict[str, float]
    speedup: float
    vram2: float


def phase_entry(info: CurveInfo, minimum: float, gap: float) -> dict[str, Any]:
    """A replay entry whose final mAP50-95 is ``gap`` away from the gate's minimum."""
    offset = float(np.clip(minimum + gap - info.final, -1.0, 1.0))
    return {"csv": f"{info.name}.csv", "offset_map50_95": round(offset, 6)}


def speed_entry(info: CurveInfo, images_per_s: float, *, timed: bool) -> dict[str, Any]:
    """Throughput of a phase: constant, or (timed) derived per epoch from the record's own clock with
    ``train_images`` chosen so that the run's median is ``images_per_s``."""
    if timed and info.seconds_per_epoch is not None:
        return {"train_images": max(round(images_per_s * info.seconds_per_epoch), 1)}
    return {"images_per_s": round(images_per_s, 3)}


def make_scenario(seed: int, infos: Sequence[CurveInfo], *, timed: bool = False) -> Scenario:
    """Draw one tree: curves, gaps to the gates' minima, images/s and VRAM near the bounds.

    ``timed``: Phases 1 and 2 replay curves with a ``time`` column and take their per-epoch images/s
    from it (real epoch-to-epoch variation, validation included), so speed-up decisions meet noise.
    """
    rng = np.random.default_rng(seed)
    phases = [i for i in infos if i.completed]
    clocked = [i for i in phases if i.seconds_per_epoch is not None] if timed else phases
    pools = {"phase1": clocked, "phase2": clocked, "phase3": phases}
    pick = {node: pool[int(rng.integers(len(pool)))] for node, pool in pools.items()}
    gaps = {node: float(rng.uniform(*PHASE_GAP)) for node in pick}
    ips1 = float(rng.uniform(30.0, 60.0))
    speedup = float(rng.uniform(*SPEEDUP_RANGE))
    vram2 = float(rng.uniform(*VRAM_RANGE))
    e1 = phase_entry(pick["phase1"], 0.915, gaps["phase1"]) | speed_entry(pick["phase1"], ips1, timed=timed)
    e1 |= {"nvml_peak_used_gb": round(float(rng.uniform(14.0, 22.0)), 3)}
    e2 = phase_entry(pick["phase2"], 0.905, gaps["phase2"])
    e2 |= speed_entry(pick["phase2"], ips1 * (1 + speedup), timed=timed)
    e2 |= {"nvml_peak_used_gb": round(vram2, 3)}
    trials = []
    for _ in range(9):
        info = infos[int(rng.integers(len(infos)))]
        trials.append(phase_entry(info, 0.915, float(rng.uniform(*PHASE_GAP))) | {"images_per_s": 40.0})
    full = phase_entry(pick["phase3"], 0.915, gaps["phase3"]) | {"images_per_s": 40.0}
    entries = {"phase1": e1, "phase2": e2, "phase3": {"trials": trials, "full": full}}
    epochs = {node: info.epochs for node, info in pick.items()}
    return Scenario(seed, entries, epochs, gaps, speedup, vram2)


def scenario_plan(base: Any, scenario: Scenario, policy: str) -> Any:
    """The shipped plan with the scenario's epochs per phase and every gate's early policy set."""
    from flows.engine.plan.schema import GateNode, SearchNode, TrainNode

    nodes = {}
    for name, node in base.nodes.items():
        update: dict[str, Any] = {}
        if isinstance(node, TrainNode) and name in scenario.epochs:
            update = {"args": {**node.args, "epochs": scenario.epochs[name]}}
        elif isinstance(node, SearchNode):
            update = {"full_epochs": scenario.epochs[name], "trial_epochs": TRIAL_EPOCHS}
        elif isinstance(node, GateNode):
            update = {"early": node.early.model_copy(update={"policy": policy})}
        nodes[name] = node.model_copy(update=update)
    return base.model_copy(update={"nodes": nodes})


class ReplayExecutor:
    """The walk's executor: the replay trainer, an epoch counter and, when asked, early decisions.

    Like the flow's train task: the gate that judges a phase (or a search's full run) watches its
    epochs through an ``EarlyTracker``; trials are left alone (they are the pruner's business).
    """

    def __init__(
        self, plan: Any, replay: Any, *, early: bool, rules: dict[str, MetricRule] | None = None
    ) -> None:
        from tasks.trainers.replay import ReplayTrainer

        self.plan = plan
        self.rules = rules
        self.trainer = ReplayTrainer(replay)
        self.early = early
        self.results: dict[str, Any] = {}
        self.epochs = 0
        self.decisions: list[EarlyDecision] = []

    def train(self, spec: Any) -> Any:
        """Run one training, counting its epochs; stop it when its gate is lost (early walks)."""
        tracker = self.tracker_for(spec)

        def on_epoch(event: Any) -> None:
            self.epochs += 1
            if tracker is not None:
                tracker(event)

        result = self.trainer.train(spec, on_epoch)
        if tracker is not None and tracker.decision is not None:
            self.decisions.append(tracker.decision)
        if spec.trial is None:
            self.results[spec.node] = result
        return result

    def tracker_for(self, spec: Any) -> EarlyTracker | None:
        """The judging gate's tracker for a phase or a full run; None for trials and naive walks."""
        judged = judging_gate(self.plan, spec.node) if self.early and spec.trial is None else None
        if judged is None:
            return None
        name, gate = judged
        close = int(spec.args.get("close_mosaic", 10) or 0)
        speeds = reference_speeds(gate, self.results)
        return EarlyTracker(gate, speeds, gate_name=name, close_mosaic=close, rules=self.rules)

    def gate(self, result: Any) -> None:
        """Gates are read from the walk's state."""

    def enter(self, node: str, index: int) -> None:
        """Progress is not needed here."""


def base_config() -> Any:
    """The shipped plan, validated once (the dataset only has to pass the checks; nothing trains)."""
    from flows.engine.config import OptimizeRequest, prepare

    return prepare(
        OptimizeRequest(plan=PLAN, data=DATA, replay=REPO / "tests" / "replays" / "keep_baseline.yaml")
    )


TREE_VARIANTS = ("safe", "aggressive", "safe held-out", "aggressive held-out")
"""Early walks per scenario. Held-out: the mAP50-95 scale is fitted on the curves that the scenario's
phases do NOT replay (times the policy's reserve), so no phase is judged by a rule fitted on its curve."""


def walk(cfg: Any, scenario: Scenario, variant: str, work: Path, needs: dict[str, float]) -> dict[str, Any]:
    """Walk one scenario with the real engine; the terminal, path, epochs and early decisions."""
    from flows.engine.decisions.walk import walk_tree
    from flows.engine.records.replay_spec import ReplaySpec

    policy = variant.split(maxsplit=1)[0]
    plan = scenario_plan(cfg.plan, scenario, policy)
    replay = ReplaySpec.model_validate({"nodes": scenario.entries}, context={"base_dir": CURVES})
    ex = ReplayExecutor(plan, replay, early=policy != "off", rules=held_out_rules(scenario, variant, needs))
    state = walk_tree(cfg.model_copy(update={"plan": plan}), work, ex)
    return {
        "terminal": state.terminal,
        "path": list(state.path),
        "epochs": ex.epochs,
        "lost": [g.node for g in state.gates if g.outcome == "fail"],
        "decisions": [d.model_dump() for d in ex.decisions],
    }


def held_out_rules(scenario: Scenario, variant: str, needs: dict[str, float]) -> dict[str, MetricRule] | None:
    """For a held-out variant: the mAP50-95 rule fitted without the scenario's phase curves."""
    if not variant.endswith("held-out"):
        return None
    policy = variant.split(maxsplit=1)[0]
    used = {scenario.entries[n]["csv"].removesuffix(".csv") for n in ("phase1", "phase2")}
    used.add(scenario.entries["phase3"]["full"]["csv"].removesuffix(".csv"))
    fitted = max(v for name, v in needs.items() if name not in used)
    factor = SAFE_RESERVES["map50_95"] if policy == "safe" else 1.0
    return {"map50_95": MetricRule(scale=fitted * factor)}


def ceiling_epochs(row: dict[str, Any]) -> int:
    """GPU-epochs of an oracle that knows every final figure but waits as the rules do: a lost VRAM
    condition at epoch 1, a speed-up lost beyond the tolerance after the stable epochs, a lost metric at
    30 % of the schedule; the best any rule of this family can do on the scenario."""
    naive, lost, epochs = row["off"]["epochs"], row["off"]["lost"], row["epochs"]
    saved = 0
    for gate, node in (("gate1", "phase1"), ("gate2", "phase2"), ("gate3", "phase3")):
        if gate not in lost:
            continue
        n = epochs[node]
        stops = [math.ceil(FIT_FRACTION * n)] if row["gaps"][node] < 0 else []
        if node == "phase2" and row["vram2"] > 20.0:
            stops.append(1)
        if node == "phase2" and row["speedup"] < 0.25 - 0.05:
            stops.append(3)
        saved += n - min(stops) if stops else 0
    return naive - saved


def tree_benchmark(
    n: int, seed: int, *, timed: bool = False, variants: Sequence[str] = TREE_VARIANTS
) -> dict[str, Any]:
    """(b): every scenario walked naively and with each early variant."""
    cfg, infos = base_config(), curve_infos()
    fit = MetricRule(scale=1.0, min_fraction=FIT_FRACTION)
    needs = {c.name: required_scale(c, fit) for c in load_curves("map50_95")}
    rows = []
    scratch = Path("/dev/shm") if Path("/dev/shm").is_dir() else None  # many small fsync'ed files
    with tempfile.TemporaryDirectory(prefix="early-bench-", dir=scratch) as tmp:
        for i in range(n):
            scenario = make_scenario(seed * 100_000 + i, infos, timed=timed)
            row: dict[str, Any] = {
                "seed": scenario.seed,
                "epochs": scenario.epochs,
                "gaps": scenario.gaps,
                "speedup": scenario.speedup,
                "vram2": scenario.vram2,
                "curves": phase_curves(scenario),
            }
            for variant in ("off", *variants):
                folder = Path(tmp) / f"{i}-{variant.replace(' ', '-')}"
                row[variant] = walk(cfg, scenario, variant, folder, needs)
            row["ceiling_epochs"] = ceiling_epochs(row)
            rows.append(row)
    summary = {v: tree_summary(rows, v) for v in variants}
    lost = [r for r in rows if r["off"]["lost"]]
    summary["ceiling"] = {
        "gate_lost_share_total": ceiling_share(lost),
        "all_share_total": ceiling_share(rows),
    }
    return {"scenarios": rows, "summary": summary}


def phase_curves(scenario: Scenario) -> dict[str, str]:
    """Which recorded run each phase replays (a search: its full run)."""
    return {node: entry.get("csv") or entry["full"]["csv"] for node, entry in scenario.entries.items()}


def ceiling_share(rows: Sequence[dict[str, Any]]) -> float:
    """The oracle's GPU-epochs as a share of the naive walks'."""
    naive = sum(r["off"]["epochs"] for r in rows)
    return sum(r["ceiling_epochs"] for r in rows) / naive if naive else 1.0


def share_cell(part: dict[str, Any]) -> str:
    """One table cell: total share (n, mean of per-scenario shares)."""
    if not part.get("n"):
        return "–"
    return f"{part['share_total']:.1%} (n={part['n']}, mean {part['share_mean']:.1%})"


def tree_summary(rows: Sequence[dict[str, Any]], policy: str) -> dict[str, Any]:
    """Same terminal rate and GPU-epoch shares, overall and where the naive walk loses a gate."""

    def share(subset: Sequence[dict[str, Any]]) -> dict[str, float]:
        if not subset:
            return {"n": 0}
        naive = sum(r["off"]["epochs"] for r in subset)
        early = sum(r[policy]["epochs"] for r in subset)
        ratios = [r[policy]["epochs"] / r["off"]["epochs"] for r in subset]
        return {"n": len(subset), "share_total": early / naive, "share_mean": float(np.mean(ratios))}

    lost = [r for r in rows if r["off"]["lost"]]
    terminals = sorted({r["off"]["terminal"] for r in rows})
    by_terminal = {t: share([r for r in rows if r["off"]["terminal"] == t]) for t in terminals}
    checks = Counter(d["check"] for r in rows for d in r[policy]["decisions"])
    decisions = [d for r in rows for d in r[policy]["decisions"]]
    hours = [d["gpu_hours_saved"] for d in decisions if d["gpu_hours_saved"] is not None]
    return {
        "scenarios": len(rows),
        "same_terminal": sum(r[policy]["terminal"] == r["off"]["terminal"] for r in rows) / len(rows),
        "same_path": sum(r[policy]["path"] == r["off"]["path"] for r in rows) / len(rows),
        "mismatches": [r["seed"] for r in rows if r[policy]["terminal"] != r["off"]["terminal"]],
        "all": share(rows),
        "gate_lost": share(lost),
        "no_gate_lost": share([r for r in rows if not r["off"]["lost"]]),
        "by_naive_terminal": by_terminal,
        "decisions_by_check": dict(checks),
        "gpu_hours_saved_where_timed": float(sum(hours)),
    }


# ----------------------------------------------------------------------------- report


def machine() -> dict[str, str]:
    """Date, machine and commit, for the results table."""

    def run(*cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO).stdout.strip()

    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return {
        "date": run("date"),
        "nproc": run("nproc"),
        "cpu": names[0] if names else platform.processor(),
        "commit": run("git", "rev-parse", "--short", "HEAD"),
        "python": platform.python_version(),
    }


def pair_table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown: per metric and policy, false stops and savings, in-sample and held-out."""
    lines = [
        "| metric | policy | check | false stops / pass pairs | mean share of epochs saved on fail pairs |",
        "|---|---|---|---|---|",
    ]
    for res in results:
        for policy in POLICIES:
            for mode in ("in_sample", "held_out"):
                s = res[f"{policy}_{mode}"]
                stops = f"{s['false_stops']}/{s['pass_pairs']} ({s['false_stop_rate']:.1%})"
                check = mode.replace("_", "-")
                lines.append(
                    f"| {res['metric']} | {policy} | {check} | {stops} | {s['saved_share_mean']:.1%} |"
                )
    return "\n".join(lines)


def gap_table(res: dict[str, Any]) -> str:
    """Markdown: share of epochs saved on fail pairs by gap (threshold above the final figure)."""
    gaps = [g for g in res["safe_in_sample"]["saved_share_by_gap"]]
    lines = ["| policy | " + " | ".join(gaps) + " |", "|---|" + "---|" * len(gaps)]
    for policy in POLICIES:
        for mode in ("in_sample", "held_out"):
            by = res[f"{policy}_{mode}"]["saved_share_by_gap"]
            cells = " | ".join(f"{by[g]:.0%}" for g in gaps)
            lines.append(f"| {policy} {mode.replace('_', '-')} | {cells} |")
    return "\n".join(lines)


def tree_table(summary: dict[str, Any]) -> str:
    """Markdown: the whole-tree figures per policy."""
    lines = [
        "| walk | scenarios | same terminal | same path | GPU-epochs vs naive: all | gate lost | none lost |",
        "|---|---|---|---|---|---|---|",
    ]
    for policy, s in summary.items():
        if policy == "ceiling":
            continue
        same = f"{s['same_terminal']:.1%} | {s['same_path']:.1%}"
        shares = " | ".join(share_cell(s[part]) for part in ("all", "gate_lost", "no_gate_lost"))
        lines.append(f"| {policy} | {s['scenarios']} | {same} | {shares} |")
    ceiling = summary["ceiling"]
    all_share, lost_share = ceiling["all_share_total"], ceiling["gate_lost_share_total"]
    lines.append(
        f"| ceiling (oracle, same waiting rules) | | | | {all_share:.1%} | {lost_share:.1%} | 100.0% |"
    )
    return "\n".join(lines)


def speed_table(stability: dict[str, dict[str, float]]) -> str:
    """Markdown: early images/s against the whole run's, per curve with a time column."""
    counts = next(iter(stability.values())).keys() if stability else []
    lines = ["| curve | " + " | ".join(f"epochs 2–{1 + int(n)}" for n in counts) + " |"]
    lines.append("|---|" + "---|" * len(counts))
    for name, row in stability.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[n]:+.1%}" for n in counts) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run (a) and (b), print the Markdown tables, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--timed-scenarios", type=int, default=100, help="scenarios with clocked speeds")
    parser.add_argument("--skip-trees", action="store_true")
    args = parser.parse_args(argv)
    if not CURVES.is_dir():
        print(f"no recorded curves at {CURVES}", file=sys.stderr)
        return 2
    started = time.time()
    report: dict[str, Any] = {
        "machine": machine(),
        "gaps": GAPS,
        "fitted_scales_shipped": FITTED_SCALES,
        "safe_reserves": SAFE_RESERVES,
        "aggressive_min_fraction": AGGRESSIVE_MIN_FRACTION,
    }
    report["pairs"] = [pair_benchmark(metric) for metric in METRICS]
    report["speed_stability"] = speed_stability()
    report["reserve_sensitivity"] = reserve_sensitivity()
    report["fraction_sensitivity"] = fraction_sensitivity()
    print(json.dumps(report["machine"]))
    print(pair_table(report["pairs"]))
    print()
    print(gap_table(report["pairs"][0]))
    for res in report["pairs"]:
        print(f"{res['metric']}: fitted scale {res['fitted_scale']:.4f}")
    print(speed_table(report["speed_stability"]))
    print(reserve_table(report["reserve_sensitivity"]))
    print(fraction_table(report["fraction_sensitivity"]))
    if not args.skip_trees:
        report["trees"] = tree_benchmark(args.scenarios, args.seed)
        print()
        print(tree_table(report["trees"]["summary"]))
        print(json.dumps(report["trees"]["summary"], indent=1))
    if not args.skip_trees and args.timed_scenarios:
        timed = tree_benchmark(args.timed_scenarios, args.seed + 1, timed=True, variants=("safe",))
        report["timed_trees"] = timed
        print()
        print("speeds from the records' clocks:")
        print(tree_table(timed["summary"]))
        print(json.dumps(timed["summary"], indent=1))
    report["seconds"] = time.time() - started
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    print(f"done in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
