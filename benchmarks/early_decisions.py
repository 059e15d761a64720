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
    NVML peaks around the gate's bounds; Phase 3's nine trials a search of benchmarks/pruned_search.py
    (drawn from its held-out pool), and the full run of each trial's point shifted by what that point is
    worth. Each scenario is walked by the real engine (``walk_tree`` + ``ReplayTrainer``; every training
    under its own ``Stoppers(spec)``: trial pruner and prefix end, monitors, early decision; the study on
    Optuna's in-memory storage, or ``--storage sqlite``) in the variants of ``VARIANTS``: naive (the seed
    plan: no early decisions, short trials, the full run restarted), the shipped engine (safe, prefix
    trials, the best continues), each component alone, with successive halving, aggressive, held-out.
    GPU-epochs are the epochs the trainer delivered. Reported: same terminal (and path) as the naive
    walk, GPU-epochs as a share of its, overall, where a gate is lost and per role.
(c) Throughput: early images/s against the whole run's, from the records' clocks.

Run:  .venv/bin/python benchmarks/early_decisions.py [--scenarios 300] [--timed-scenarios 100] [--seed 0]
      [--skip-pairs | --skip-trees] [--variants ...] [--storage memory|sqlite] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
import uuid
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
    MetricRule,
    RecordedCurve,
    fit_scale,
    metric_upper_bound,
    read_recorded_curve,
    required_scale,
    rule_for,
)
from flows.engine.decisions.stoppers import Stoppers  # noqa: E402

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


SEARCH_SEED = 9
"""Seed of ``pruned_search.make_search`` for the scenarios' Phase 3 trials (mixed with the scenario's)."""
TRIAL_IMAGES_PER_S = 40.0


def pruned_search() -> Any:
    """benchmarks/pruned_search.py, loaded once: its search generator makes the scenarios' trials."""
    name = "bench_pruned_search"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "pruned_search.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


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
    """One generated tree: per-node replay entries and epochs, and what was drawn (for the report)."""

    seed: int
    entries: dict[str, Any]
    """Replay entries: phase1, phase2, and phase3's trials and the full run of the exhaustive pick."""
    epochs: dict[str, int]
    gaps: dict[str, float]
    speedup: float
    vram2: float
    full_by_trial: tuple[dict[str, Any], ...] = ()
    """Phase 3's full run of each trial's point, by trial number (empty: ``entries``' full run for any)."""
    search: dict[str, Any] = field(default_factory=dict)
    """How the trials were made: family, base and partner curves, spread, scores, the exhaustive pick."""


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


def make_scenario(
    seed: int,
    infos: Sequence[CurveInfo],
    search_curves: dict[str, Any],
    trial_dir: Path,
    *,
    timed: bool = False,
) -> Scenario:
    """Draw one tree: curves, gaps to the gates' minima, images/s and VRAM near the bounds, and a search.

    Phases 1 and 2 and Phase 3's full run replay completed records (``infos``) shifted to ``gap`` from
    their gate's minimum. Phase 3's nine trials are a search of ``pruned_search.make_search`` drawn from
    its held-out pool (the pruner's settings were calibrated on the other pool), written as results.csv
    files into ``trial_dir``. The full run of trial i is the full-run record shifted by what trial i's
    point is worth against the exhaustive pick's (ratio of the trials' noise-free scores), so a pruned
    search that picks another trial changes the full run's figure as a worse or better point would.

    ``timed``: Phases 1 and 2 replay curves with a ``time`` column and take their per-epoch images/s
    from it (real epoch-to-epoch variation, validation included), so speed-up decisions meet noise.
    """
    from tasks.trainers.replay import format_results_csv

    ps = pruned_search()
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
    family = ps.FAMILIES[int(rng.integers(len(ps.FAMILIES)))]
    search = ps.make_search(search_curves, ps.HELD_OUT, "prefix", family, seed, SEARCH_SEED)
    scores = [ps.score_of(t) for t in search.trials]
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))  # the study's choice: first on ties
    trials = []
    for number, records in enumerate(search.trials):
        path = trial_dir / f"{seed}-trial-{number:02d}.csv"
        path.write_text(format_results_csv(records), encoding="utf-8")
        trials.append({"csv": str(path), "images_per_s": TRIAL_IMAGES_PER_S})
    final3 = 0.915 + gaps["phase3"]
    worth = [t / search.true_scores[best] - 1.0 for t in search.true_scores]
    full_by_trial = tuple(
        phase_entry(pick["phase3"], 0.915, gaps["phase3"] + final3 * w) | {"images_per_s": TRIAL_IMAGES_PER_S}
        for w in worth
    )
    entries = {"phase1": e1, "phase2": e2, "phase3": {"trials": trials, "full": full_by_trial[best]}}
    epochs = {node: info.epochs for node, info in pick.items()}
    drawn = {
        "family": family,
        "base": search.base,
        "partners": list(search.partners),
        "spread": search.spread,
        "scores": scores,
        "true_scores": list(search.true_scores),
        "exhaustive_pick": best,
    }
    return Scenario(seed, entries, epochs, gaps, speedup, vram2, full_by_trial, drawn)


@dataclass(frozen=True)
class Variant:
    """How a scenario is walked: the gates' early policy and Phase 3's search settings."""

    name: str
    early: str = "off"
    """Every gate's ``early.policy``."""
    schedule: str = "short"
    """Phase 3's ``trial_schedule``."""
    full_run: str = "restart"
    pruner: str = "none"
    """``none`` or ``successive_halving`` (its calibrated defaults: min_resource 10, reduction_factor 2)."""
    held_out: bool = False
    """The mAP50-95 rule's scale fitted without the curves the scenario's phases replay."""
    seeded_continue: bool = False
    """A continued full run's early decision is given its first epochs (``Stoppers(spec, history)``).
    The train task does not do this today: its history is only kept for a resume of the same training."""

    @property
    def search(self) -> str:
        """Phase 3's settings in words."""
        return f"{self.schedule}, {self.full_run}, {self.pruner.replace('successive_halving', 'SH')}"


SEARCH: dict[str, Any] = {"schedule": "prefix", "full_run": "continue"}
"""The shipped plan's Phase 3: prefix trials, the best continues from its checkpoint."""
SH: dict[str, Any] = {"pruner": "successive_halving"}
VARIANTS = (
    Variant("naive"),
    Variant("early only", early="safe"),
    Variant("search only", **SEARCH),
    Variant("search only + SH", **SEARCH, **SH),
    Variant("engine", early="safe", **SEARCH),
    Variant("engine + SH", early="safe", **SEARCH, **SH),
    Variant("engine, held-out", early="safe", **SEARCH, held_out=True),
    Variant("engine + SH, held-out", early="safe", **SEARCH, **SH, held_out=True),
    Variant("engine, continued run seeded", early="safe", **SEARCH, seeded_continue=True),
    Variant("engine + SH, continued run seeded", early="safe", **SEARCH, **SH, seeded_continue=True),
    Variant("aggressive engine + SH", early="aggressive", **SEARCH, **SH),
    Variant("aggressive engine + SH, held-out", early="aggressive", **SEARCH, **SH, held_out=True),
)
"""Walks per scenario; the first is the naive walk every other is compared with. naive: the seed plan
(no early decisions, 9 short trials, the full run restarted); engine: the shipped plan (safe, prefix
trials, the best continues, no pruner)."""
VARIANT = {v.name: v for v in VARIANTS}


def without_early(variant: Variant) -> str | None:
    """The walk with the same Phase 3 settings and no early decisions (the naive walk for the seed's)."""
    same = (variant.schedule, variant.full_run, variant.pruner)
    return next(
        (
            v.name
            for v in VARIANTS
            if v.early == "off" and not v.held_out and (v.schedule, v.full_run, v.pruner) == same
        ),
        None,
    )


TIMED_VARIANTS = (
    "naive",
    "early only",
    "search only",
    "search only + SH",
    "engine",
    "engine + SH",
    "engine + SH, continued run seeded",
)


def scenario_plan(base: Any, scenario: Scenario, variant: Variant, storage: str | None) -> Any:
    """The shipped plan with the scenario's epochs per phase, the variant's early policy on every gate
    and its search settings on Phase 3 (``storage``: the study's; None: SQLite in the run folder)."""
    from flows.engine.plan.schema import GateNode, SearchNode, TrainNode
    from flows.engine.plan.search_settings import NoPruner, SuccessiveHalvingSettings

    pruner = NoPruner() if variant.pruner == "none" else SuccessiveHalvingSettings(kind="successive_halving")
    nodes = {}
    for name, node in base.nodes.items():
        update: dict[str, Any] = {}
        if isinstance(node, TrainNode) and name in scenario.epochs:
            update = {"args": {**node.args, "epochs": scenario.epochs[name]}}
        elif isinstance(node, SearchNode):
            update = {
                "full_epochs": scenario.epochs[name],
                "trial_epochs": TRIAL_EPOCHS,
                "trial_schedule": variant.schedule,
                "full_run": variant.full_run,
                "pruner": pruner,
            }
            if storage is not None:  # Optuna's in-memory storage (a reference the plan file cannot name)
                update["study"] = node.study.model_copy(update={"storage": storage})
        elif isinstance(node, GateNode):
            update = {"early": node.early.model_copy(update={"policy": variant.early})}
        nodes[name] = node.model_copy(update=update)
    return base.model_copy(update={"nodes": nodes})


class EngineExecutor:
    """The walk's executor, wired as the flow's train task is (without Prefect): the replay trainer, with
    the spec's own ``Stoppers`` as ``on_epoch`` (trial pruner and prefix end, monitors, early decision).

    GPU-epochs are counted from the events the trainer delivers, per role (a continued full run
    delivers only the epochs after its checkpoint). ``full_runs``: Phase 3's full run per trial number
    (the winner's is replayed; empty: the SPEC's); ``space``: the search's factors (to tell the winner
    from the full run's arguments); ``rules``: held-out metric rules; ``seed_continued``: see
    ``Variant.seeded_continue``.
    """

    def __init__(
        self,
        replay: Any,
        *,
        space: Sequence[str] = (),
        full_runs: Sequence[Any] = (),
        rules: dict[str, MetricRule] | None = None,
        seed_continued: bool = False,
    ) -> None:
        from tasks.trainers.replay import ReplayTrainer

        self.replay = replay
        self.trainer = ReplayTrainer(replay)
        self.space = tuple(space)
        self.full_runs = tuple(full_runs)
        self.rules = rules
        self.seed_continued = seed_continued
        self.epochs: Counter = Counter()
        self.decisions: list[EarlyDecision] = []
        self.points: dict[int, dict[str, Any]] = {}
        self.winner: int | None = None

    @property
    def total(self) -> int:
        """GPU-epochs delivered so far."""
        return sum(self.epochs.values())

    def train(self, spec: Any) -> Any:
        """Run one training as the train task does: its stoppers see every epoch and may stop it."""
        trainer = self.trainer
        if spec.role == "full":
            self.winner = self.winner_of(spec)
            trainer = self.trainer_for(spec.node, self.winner)
        history = self.continued_history(spec, trainer) if self.seed_continued else ()
        stoppers = Stoppers(spec, history, rules=self.rules)

        def on_epoch(event: Any) -> None:
            self.epochs[spec.role] += 1
            stoppers(event)

        result = trainer.train(spec, on_epoch)
        if stoppers.early_decision is not None:
            self.decisions.append(stoppers.early_decision)
        if spec.role == "trial":
            self.points[spec.trial] = {k: spec.args.get(k) for k in self.space}
        return result

    def winner_of(self, spec: Any) -> int | None:
        """The trial whose point the full run trains (its arguments on the search's factors)."""
        point = {k: spec.args.get(k) for k in self.space}
        matches = [n for n, p in sorted(self.points.items()) if p == point]
        if len(matches) > 1:
            raise RuntimeError(f"trials {matches} share the full run's point {point}: winner unknown")
        return matches[0] if matches else None

    def trainer_for(self, node: str, winner: int | None) -> Any:
        """The replay trainer whose full run for ``node`` is the winner's."""
        from tasks.trainers.replay import ReplayTrainer

        if not self.full_runs or winner is None:
            return self.trainer
        entry = self.replay.nodes[node].model_copy(update={"full": self.full_runs[winner]})
        return ReplayTrainer(self.replay.model_copy(update={"nodes": {**self.replay.nodes, node: entry}}))

    def continued_history(self, spec: Any, trainer: Any) -> list[Any]:
        """For a continued full run: the events of its own first epochs (those of the checkpoint it
        continues), replayed into a scratch folder and not counted; nothing for any other training."""
        from flows.engine.decisions.monitors import StopTraining
        from tasks.trainers.replay import resumed_epochs

        done = resumed_epochs(spec) if spec.continue_from is not None and spec.early is not None else 0
        if done <= 0:
            return []
        events: list[Any] = []

        def collect(event: Any) -> None:
            events.append(event)
            if event.record.epoch >= done:
                raise StopTraining("history collected")

        scratch = Path(spec.run_dir).parent / f"{Path(spec.run_dir).name}-history"
        update = {
            "continue_from": None,
            "run_dir": scratch,
            "early": None,
            "trial_hook": None,
            "monitors": (),
        }
        trainer.train(spec.model_copy(update=update), collect)
        return events

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


def scenario_replays(scenario: Scenario) -> tuple[Any, tuple[Any, ...]]:
    """The scenario's replay SPEC and Phase 3's full run per trial, validated once for all its walks."""
    from flows.engine.records.replay_spec import ReplaySpec, RunEntry

    context = {"base_dir": CURVES}
    replay = ReplaySpec.model_validate({"nodes": scenario.entries}, context=context)
    full = tuple(RunEntry.model_validate(e, context=context) for e in scenario.full_by_trial)
    return replay, full


def walk(
    cfg: Any,
    scenario: Scenario,
    variant: Variant | str,
    work: Path,
    needs: dict[str, float] | None = None,
    *,
    replays: tuple[Any, tuple[Any, ...]] | None = None,
    storage: str = "memory",
) -> dict[str, Any]:
    """Walk one scenario with the real engine (``walk_tree``); terminal, path, epochs, decisions, search.

    ``storage``: ``memory`` (Optuna's in-memory storage, one per walk) or ``sqlite`` (the engine's
    default: optuna.db in the search's folder of the run)."""
    from flows.engine.decisions.walk import walk_tree
    from flows.engine.plan.schema import SearchNode

    variant = VARIANT[variant] if isinstance(variant, str) else variant
    replay, full_runs = replays or scenario_replays(scenario)
    ref = f"memory:early-bench-{uuid.uuid4().hex}" if storage == "memory" else None
    plan = scenario_plan(cfg.plan, scenario, variant, ref)
    search = next(n for n in plan.nodes.values() if isinstance(n, SearchNode))
    ex = EngineExecutor(
        replay,
        space=tuple(search.space),
        full_runs=full_runs,
        rules=held_out_rules(scenario, variant, needs or {}),
        seed_continued=variant.seeded_continue,
    )
    state = walk_tree(cfg.model_copy(update={"plan": plan}), work, ex)
    return {
        "terminal": state.terminal,
        "path": list(state.path),
        "epochs": ex.total,
        "epochs_by": dict(ex.epochs),
        "lost": [g.node for g in state.gates if g.outcome == "fail"],
        "decisions": [d.model_dump(mode="json") for d in ex.decisions],
        "winner": ex.winner,
        "trials": [{"state": t.state, "epochs": t.epochs} for t in state.search_trials],
    }


def held_out_rules(
    scenario: Scenario, variant: Variant, needs: dict[str, float]
) -> dict[str, MetricRule] | None:
    """For a held-out variant: the mAP50-95 rule fitted without the scenario's phase curves."""
    if not variant.held_out:
        return None
    fitted = max(v for name, v in needs.items() if name not in phase_curve_names(scenario))
    factor = SAFE_RESERVES["map50_95"] if variant.early == "safe" else 1.0
    return {"map50_95": MetricRule(scale=fitted * factor)}


def phase_curve_names(scenario: Scenario) -> set[str]:
    """The recorded runs the scenario's Phases 1 and 2 and Phase 3's full run replay."""
    return {Path(c).stem for c in phase_curves(scenario).values()}


def phase_curves(scenario: Scenario) -> dict[str, str]:
    """Which recorded run each phase replays (a search: its full run)."""
    return {node: entry.get("csv") or entry["full"]["csv"] for node, entry in scenario.entries.items()}


def ceiling_epochs(row: dict[str, Any], *, continued: bool = False) -> int:
    """GPU-epochs of an oracle that knows every final figure but waits as the rules do: a lost VRAM
    condition at epoch 1, a speed-up lost beyond the tolerance after the stable epochs, a lost metric at
    30 % of the schedule; the best any rule of this family can do on the scenario (trials untouched).

    ``continued``: Phase 3's full run continues the best trial's 20 epochs (it trains the rest; a
    decision due before its first epoch is taken at its first)."""
    naive = row["naive"]
    total = naive["epochs"]
    for gate, node in (("gate1", "phase1"), ("gate2", "phase2"), ("gate3", "phase3")):
        if node not in naive["path"]:
            continue
        n = row["epochs"][node]
        stops = []
        if gate in naive["lost"]:
            stops = [math.ceil(FIT_FRACTION * n)] if row["gaps"][node] < 0 else []
            if node == "phase2" and row["vram2"] > 20.0:
                stops.append(1)
            if node == "phase2" and row["speedup"] < 0.25 - 0.05:
                stops.append(3)
        trained = min(stops) if stops else n
        if node == "phase3" and continued:
            trained = max(trained - TRIAL_EPOCHS, 1) if stops else n - TRIAL_EPOCHS
        total -= n - trained
    return total


def tree_benchmark(
    n: int,
    seed: int,
    *,
    timed: bool = False,
    variants: Sequence[str] = tuple(VARIANT),
    storage: str = "memory",
    log: bool = True,
) -> dict[str, Any]:
    """(b): every scenario walked by every variant (the first: naive)."""
    cfg, infos = base_config(), curve_infos()
    search_curves = pruned_search().load_curves()
    fit = MetricRule(scale=1.0, min_fraction=FIT_FRACTION)
    needs = {c.name: required_scale(c, fit) for c in load_curves("map50_95")}
    chosen = [VARIANT[v] for v in variants]
    assert chosen[0].name == "naive", "the naive walk comes first"
    rows = []
    started = time.time()
    scratch = Path("/dev/shm") if Path("/dev/shm").is_dir() else None  # many small files
    with tempfile.TemporaryDirectory(prefix="early-bench-", dir=scratch) as tmp:
        trial_dir = Path(tmp) / "trial-curves"
        trial_dir.mkdir()
        for i in range(n):
            scenario = make_scenario(seed * 100_000 + i, infos, search_curves, trial_dir, timed=timed)
            replays = scenario_replays(scenario)
            row: dict[str, Any] = {
                "seed": scenario.seed,
                "epochs": scenario.epochs,
                "gaps": scenario.gaps,
                "speedup": scenario.speedup,
                "vram2": scenario.vram2,
                "curves": phase_curves(scenario),
                "search": scenario.search,
            }
            for variant in chosen:
                folder = Path(tmp) / f"{i}-{variant.name.replace(' ', '-').replace(',', '')}"
                row[variant.name] = walk(
                    cfg, scenario, variant, folder, needs, replays=replays, storage=storage
                )
            row["ceiling_epochs"] = ceiling_epochs(row)
            row["ceiling_continued_epochs"] = ceiling_epochs(row, continued=True)
            rows.append(row)
            if log and (i + 1) % 25 == 0:
                print(f"  {i + 1}/{n} scenarios, {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    summary: dict[str, Any] = {v.name: tree_summary(rows, v) for v in chosen[1:]}
    lost = [r for r in rows if r["naive"]["lost"]]
    summary["ceiling"] = {
        key: {"gate_lost_share_total": ceiling_share(lost, key), "all_share_total": ceiling_share(rows, key)}
        for key in ("ceiling_epochs", "ceiling_continued_epochs")
    }
    naive_terminals = Counter(r["naive"]["terminal"] for r in rows)
    return {
        "scenarios": rows,
        "summary": summary,
        "naive_terminals": dict(naive_terminals),
        "naive_epochs_by": {
            part: dict(sum((Counter(r["naive"]["epochs_by"]) for r in subset), Counter()))
            for part, subset in (("all", rows), ("gate_lost", lost))
        },
        "seconds": time.time() - started,
        "storage": storage,
    }


def ceiling_share(rows: Sequence[dict[str, Any]], key: str = "ceiling_epochs") -> float:
    """The oracle's GPU-epochs as a share of the naive walks'."""
    naive = sum(r["naive"]["epochs"] for r in rows)
    return sum(r[key] for r in rows) / naive if naive else 1.0


def share_cell(part: dict[str, Any]) -> str:
    """One table cell: total share (n, mean of per-scenario shares)."""
    if not part.get("n"):
        return "–"
    return f"{part['share_total']:.1%} (n={part['n']}, mean {part['share_mean']:.1%})"


ROLES = ("phase", "trial", "full")
"""Epoch counters of a walk: Phases 1 and 2, Phase 3's trials, Phase 3's full run."""


def tree_summary(rows: Sequence[dict[str, Any]], variant: Variant) -> dict[str, Any]:
    """Same terminal rate and GPU-epoch shares against the naive walk, overall and where it loses a gate;
    epochs per role; the search's choice against the naive walk's."""
    name = variant.name

    def share(subset: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not subset:
            return {"n": 0}
        naive = sum(r["naive"]["epochs"] for r in subset)
        walked = sum(r[name]["epochs"] for r in subset)
        ratios = [r[name]["epochs"] / r["naive"]["epochs"] for r in subset]
        by_role = {}
        for role in ROLES:
            base = sum(r["naive"]["epochs_by"].get(role, 0) for r in subset)
            mine = sum(r[name]["epochs_by"].get(role, 0) for r in subset)
            by_role[role] = mine / base if base else None
        return {
            "n": len(subset),
            "share_total": walked / naive,
            "share_mean": float(np.mean(ratios)),
            "by_role": by_role,
        }

    lost = [r for r in rows if r["naive"]["lost"]]
    searched = [r for r in rows if r["naive"]["winner"] is not None and r[name]["winner"] is not None]
    twin = without_early(variant) if variant.early != "off" else None
    twin = twin if twin is not None and rows and twin in rows[0] else None
    decisions = [d for r in rows for d in r[name]["decisions"]]
    checks = Counter(f"{d['subject']}:{d['check']}" for d in decisions)
    return {
        "variant": {k: getattr(variant, k) for k in ("early", "schedule", "full_run", "pruner", "held_out")}
        | {"seeded_continue": variant.seeded_continue},
        "scenarios": len(rows),
        "same_terminal": sum(r[name]["terminal"] == r["naive"]["terminal"] for r in rows) / len(rows),
        "same_path": sum(r[name]["path"] == r["naive"]["path"] for r in rows) / len(rows),
        "without_early": twin,
        "same_terminal_without_early": (
            sum(r[name]["terminal"] == r[twin]["terminal"] for r in rows) / len(rows) if twin else None
        ),
        "mismatches": [
            {"seed": r["seed"], "naive": r["naive"]["terminal"], "walk": r[name]["terminal"]}
            for r in rows
            if r[name]["terminal"] != r["naive"]["terminal"]
        ],
        "all": share(rows),
        "gate_lost": share(lost),
        "no_gate_lost": share([r for r in rows if not r["naive"]["lost"]]),
        "searches": len(searched),
        "same_winner": (
            sum(r[name]["winner"] == r["naive"]["winner"] for r in searched) / len(searched)
            if searched
            else None
        ),
        "decisions_by_check": dict(sorted(checks.items())),
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
    """Markdown: the whole-tree figures per walk, against the naive walk."""
    lines = [
        "| walk | early | Phase 3 (trials, full run, pruner) | same terminal | same path "
        "| same terminal as without early decisions | GPU-epochs vs naive: all | gate lost | none lost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        if name == "ceiling":
            continue
        v = VARIANT[name]
        early = v.early + (", held-out" if v.held_out else "") + (", seeded" if v.seeded_continue else "")
        twin = s["same_terminal_without_early"]
        twin_cell = "–" if twin is None else f"{twin:.1%} ({s['without_early']})"
        same = f"{s['same_terminal']:.1%} | {s['same_path']:.1%} | {twin_cell}"
        shares = " | ".join(share_cell(s[part]) for part in ("all", "gate_lost", "no_gate_lost"))
        lines.append(f"| {name} | {early} | {v.search} | {same} | {shares} |")
    labels = {
        "ceiling_epochs": "ceiling: oracle early decisions, full run restarted",
        "ceiling_continued_epochs": "ceiling: oracle early decisions, best trial continued",
    }
    for key, label in labels.items():
        c = summary["ceiling"][key]
        shares = f"{c['all_share_total']:.1%} | {c['gate_lost_share_total']:.1%}"
        lines.append(f"| {label} | | no pruner | | | | {shares} | |")
    return "\n".join(lines)


def role_table(summary: dict[str, Any], naive_epochs: dict[str, int]) -> str:
    """Markdown: where a walk saves, on the scenarios where a gate is lost: each role's epochs as a share
    of the naive walk's epochs of that role, and the total."""
    total = sum(naive_epochs.values())
    head = " | ".join(f"{label} ({naive_epochs.get(role, 0)})" for role, label in ROLE_LABELS.items())
    lines = [
        f"| walk | {head} | all ({total}) | same winner as naive |",
        "|---|" + "---|" * (len(ROLE_LABELS) + 2),
    ]
    for name, s in summary.items():
        if name == "ceiling" or not s["gate_lost"].get("n"):
            continue
        by = s["gate_lost"]["by_role"]
        cells = " | ".join("–" if by[r] is None else f"{by[r]:.1%}" for r in ROLE_LABELS)
        winner = "–" if s["same_winner"] is None else f"{s['same_winner']:.1%} of {s['searches']}"
        lines.append(f"| {name} | {cells} | {s['gate_lost']['share_total']:.1%} | {winner} |")
    return "\n".join(lines)


ROLE_LABELS = {"phase": "Phases 1-2", "trial": "Phase 3 trials", "full": "Phase 3 full run"}


def decision_lines(summary: dict[str, Any]) -> str:
    """Plain lines: early decisions per subject and check, and any changed terminal, per walk."""
    lines = []
    for name, s in summary.items():
        if name == "ceiling":
            continue
        checks = ", ".join(f"{k} {v}" for k, v in s["decisions_by_check"].items()) or "none"
        changed = "; ".join(f"seed {m['seed']}: {m['naive']} -> {m['walk']}" for m in s["mismatches"])
        changed = f"; changed terminals: {changed}" if changed else ""
        lines.append(f"- {name}: early stops {checks}{changed}")
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
    """Run (a), (c) and (b), print the Markdown tables, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--timed-scenarios", type=int, default=100, help="scenarios with clocked speeds")
    parser.add_argument("--skip-trees", action="store_true")
    parser.add_argument("--skip-pairs", action="store_true", help="only (b): the whole trees")
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANT), choices=list(VARIANT), help="walks (naive is added)"
    )
    parser.add_argument(
        "--storage",
        choices=("memory", "sqlite"),
        default="memory",
        help="the search's Optuna study: in memory, or the engine's default optuna.db in the run folder",
    )
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
    print(json.dumps(report["machine"]))
    if not args.skip_pairs:
        report["pairs"] = [pair_benchmark(metric) for metric in METRICS]
        report["speed_stability"] = speed_stability()
        report["reserve_sensitivity"] = reserve_sensitivity()
        report["fraction_sensitivity"] = fraction_sensitivity()
        print(pair_table(report["pairs"]))
        print()
        print(gap_table(report["pairs"][0]))
        for res in report["pairs"]:
            print(f"{res['metric']}: fitted scale {res['fitted_scale']:.4f}")
        print(speed_table(report["speed_stability"]))
        print(reserve_table(report["reserve_sensitivity"]))
        print(fraction_table(report["fraction_sensitivity"]))
    variants = ["naive", *(v for v in args.variants if v != "naive")]
    runs = [("trees", args.scenarios, args.seed, False, variants)]
    if args.timed_scenarios:
        timed_variants = ["naive", *(v for v in TIMED_VARIANTS if v in variants and v != "naive")]
        runs.append(("timed_trees", args.timed_scenarios, args.seed + 1, True, timed_variants))
    for key, n, seed, timed, chosen in [] if args.skip_trees else runs:
        result = tree_benchmark(n, seed, timed=timed, variants=chosen, storage=args.storage)
        report[key] = result
        print()
        print(f"{key}: {n} scenarios, {result['seconds']:.0f} s; naive terminals {result['naive_terminals']}")
        print(tree_table(result["summary"]))
        print()
        print("gate lost, by role:")
        print(role_table(result["summary"], result["naive_epochs_by"]["gate_lost"]))
        print()
        print(decision_lines(result["summary"]))
    report["seconds"] = time.time() - started
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    print(f"done in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
