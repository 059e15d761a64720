"""Early gate decisions on real runs of public repositories: calibration, false stops with their upper
confidence bound, savings, and whole trees.

Data: the corpus of benchmarks/curves (``early_corpus.py``), split by repository into a calibration half
and a report half.

(a) Calibration, on the calibration half only: the bound's shape and its first decision point are chosen
    by cross-validation over repositories (``choose_shape``: the most epochs saved on the held-out folds'
    fail pairs among the candidates whose held-out false-stop rate is at most the safe risk); then per
    metric the split-conformal quantile at each policy's risk on the whole half. These are the constants
    of ``flows/engine/decisions/early.py`` (the script says when they differ).
(b) Report, on the report half only (nothing is chosen on it): for every curve and threshold
    ``final + gap`` (``early_calibration.pair_gaps``), the first epoch at which the shipped rule's bound
    is below the threshold. A pass pair (gap ≤ 0) that is stopped is a false stop: its rate with a
    one-sided 95 % Clopper–Pearson upper bound, over pairs and over curves; fail pairs: the share of the
    schedule saved, by gap. The 18 curves of ../shared/curves, when present, are a second held-out set.
(c) Whole trees built from the report half: a seeded generator draws scenarios of the shipped plan
    (phase1 → gate1 → phase2 → gate2 → phase3 search → gate3), each phase a completed report-half run
    with its own planned epochs, its final figure put at ``gap`` from the gate's minimum (gaps as in (b));
    Phase 3's trials a search of benchmarks/pruned_search.py. Each scenario is walked by the real engine
    in the variants of ``VARIANTS``; reported: same terminal as the naive walk and as the same walk
    without early decisions, and GPU-epochs as a share of the naive walk's.
(d) Throughput: early images/s against the whole run's, from the ``time`` column of ../shared/curves.

Run:  .venv/bin/python benchmarks/early_decisions.py [--scenarios 300] [--seed 0]
      [--skip-trees] [--variants ...] [--storage memory|sqlite] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
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
sys.path.insert(0, str(REPO / "benchmarks"))

from early_calibration import (  # noqa: E402
    Curve,
    Pairs,
    Terms,
    bounds,
    clopper_pearson_upper,
    cross_validate,
    curve_of,
    curve_pairs,
    decision_terms,
    fit,
    pair_gaps,
    rule_with,
    schedule_saved,
    stop_epoch,
)
from early_corpus import CORPUS, CorpusRun, load_corpus  # noqa: E402

from flows.engine.decisions.early import (  # noqa: E402
    BOUND_SHAPE,
    CALIBRATED_QUANTILES,
    MIN_FRACTION,
    POLICY_RISK,
    BoundShape,
    EarlyDecision,
    MetricRule,
    rule_for,
)

SHARED_CURVES = REPO.parent / "shared" / "curves"
PLAN = REPO / "configs" / "fod_plan.yaml"
DATA = REPO.parent / "shared" / "datasets" / "golfball_small" / "data.yaml"
METRICS = ("map50_95", "map50", "recall", "precision")
POLICIES = ("safe", "aggressive")
TARGET_FACTOR = 2.0
"""A policy's rule ships when its report-half false-stop rate is ≤ its risk, its 95 % upper bound ≤ 2 × it."""
FOLDS = 5
SHAPES = tuple(
    BoundShape(noise_weight=noise, floor=floor, mosaic_lift=mosaic)
    for noise, floor, mosaic in itertools.product((1.0, 2.0, 3.0, 5.0, 8.0), (0.0, 0.05, 0.1, 0.2, 0.4),
                                                  (0.0, 0.01, 0.02, 0.04))
)  # fmt: skip
"""Candidate shapes, relative to a slope weight of 1 (scaling every weight scales the quantile back)."""
FRACTIONS = (0.2, 0.3, 0.4, 0.5)
"""Candidate first decision points (share of the schedule)."""

TRIAL_EPOCHS = 20
SPEEDUP_RANGE = (0.10, 0.40)
"""Phase 2's training speed-up over Phase 1 (the gate wants >= 0.25)."""
VRAM_RANGE = (15.0, 23.0)
"""Phase 2's NVML peak, GB (the gate wants <= 20)."""


# ----------------------------------------------------------------------------- curves


def corpus_curves(runs: Sequence[CorpusRun], metric: str) -> list[Curve]:
    """The runs as calibration curves of one metric (runs whose best.pt has no such figure left out)."""
    found = (curve_of(r.name, r.repo, r.records, r.epochs_planned, r.close_mosaic, metric) for r in runs)
    return [c for c in found if c is not None]


def shared_curves(metric: str) -> list[Curve]:
    """The 18 curves of ../shared/curves (empty when absent), each its own group."""
    import yaml

    from flows.engine.plan.ultra_defaults import ultralytics_default
    from flows.engine.records.results_csv import read_results_csv

    curves = []
    for csv in sorted(SHARED_CURVES.glob("*.csv"), key=lambda p: int(p.stem)):
        args = yaml.safe_load((SHARED_CURVES / f"{csv.stem}.args.yaml").read_text(encoding="utf-8")) or {}
        close = int(args.get("close_mosaic", ultralytics_default("close_mosaic")) or 0)
        curve = curve_of(
            f"shared-{csv.stem}", csv.stem, read_results_csv(csv), int(args["epochs"]), close, metric
        )
        if curve is not None:
            curves.append(curve)
    return curves


# ----------------------------------------------------------------------------- (a) calibration


def terms_for(curves: Sequence[Curve], min_fraction: float, shape: BoundShape = BOUND_SHAPE) -> list[Terms]:
    """Every curve's decision terms for a first decision point (the window of ``shape``)."""
    rule = rule_with(shape, min_fraction)
    return [decision_terms(c, rule) for c in curves]


def choose_shape(curves: Sequence[Curve], risk: float) -> dict[str, Any]:
    """Cross-validate every candidate shape and first decision point over repositories; the choice saves
    the most on held-out fail pairs among those whose held-out false-stop rate is at most ``risk``."""
    rows = []
    for fraction in FRACTIONS:
        terms = terms_for(curves, fraction)
        for shape in SHAPES:
            cv = cross_validate(curves, terms, shape, fraction, risk, FOLDS)
            rows.append(
                {
                    "min_fraction": fraction,
                    "shape": shape.model_dump(),
                    "false_stops": cv.false_stops,
                    "pass_pairs": cv.passes,
                    "false_rate": cv.false_stops / cv.passes if cv.passes else 0.0,
                    "saved": cv.saved_share,
                }
            )
    allowed = [r for r in rows if r["false_rate"] <= risk]
    best = max(allowed or rows, key=lambda r: (r["saved"], -r["false_rate"]))
    by_fraction = {
        f"{fraction:g}": max(
            (r for r in allowed if r["min_fraction"] == fraction), key=lambda r: r["saved"], default=None
        )
        for fraction in FRACTIONS
    }
    return {"chosen": best, "by_fraction": by_fraction, "candidates": len(rows), "allowed": len(allowed)}


def calibrate(corpus_runs: Sequence[CorpusRun]) -> dict[str, Any]:
    """(a): the shape and first decision point (on mAP50-95), then every metric's quantile per policy."""
    curves = corpus_curves(corpus_runs, "map50_95")
    choice = choose_shape(curves, POLICY_RISK["safe"])
    shape = BoundShape(**choice["chosen"]["shape"])
    fraction = choice["chosen"]["min_fraction"]
    quantiles: dict[str, dict[str, float]] = {}
    scores: dict[str, list[float]] = {}
    for metric in METRICS:
        metric_curves = corpus_curves(corpus_runs, metric)
        terms = terms_for(metric_curves, fraction, shape)
        for policy in POLICIES:
            fitted = fit(metric_curves, terms, shape, fraction, POLICY_RISK[policy])
            quantiles.setdefault(metric, {})[policy] = fitted.quantile
            scores[metric] = sorted(fitted.scores, reverse=True)
    return {
        "curves": len(curves),
        "repos": len({c.group for c in curves}),
        "shape": shape.model_dump(),
        "min_fraction": fraction,
        "quantiles": quantiles,
        "scores": scores,  # per metric, every calibration curve's score, largest first
        "choice": choice,
    }


def constants_text(calibration: dict[str, Any], quantiles: dict[str, dict[str, float]]) -> str:
    """The engine's constants as Python (what flows/engine/decisions/early.py must say): the calibration's
    shape and first decision point, and the ``shippable`` quantiles."""
    shape = ", ".join(f"{k}={v!r}" for k, v in calibration["shape"].items())
    return (
        f"BOUND_SHAPE = BoundShape({shape})\nMIN_FRACTION = {calibration['min_fraction']!r}\n"
        f"CALIBRATED_QUANTILES = {quantiles!r}"
    )


def round_up(value: float, places: int = 4) -> float:
    """Round up (a rounded quantile must still cover every score it was taken from)."""
    if not math.isfinite(value):
        return value
    return math.ceil(value * 10**places) / 10**places


def shipped_matches(calibration: dict[str, Any], quantiles: dict[str, dict[str, float]]) -> bool:
    """True when the engine's constants are this calibration's (and its shippable quantiles)."""
    shipped = {m: dict(by) for m, by in CALIBRATED_QUANTILES.items()}
    return (
        BOUND_SHAPE.model_dump() == calibration["shape"]
        and calibration["min_fraction"] == MIN_FRACTION
        and quantiles == shipped
    )


# ----------------------------------------------------------------------------- (b) report


def candidate_rule(calibration: dict[str, Any], policy: str, metric: str) -> MetricRule | None:
    """The rule the calibration half gives a policy for a metric (None: no finite quantile at its risk)."""
    quantile = calibration["quantiles"].get(metric, {}).get(policy, math.inf)
    if not math.isfinite(quantile):
        return None
    shape = BoundShape(**calibration["shape"])
    return rule_with(shape, calibration["min_fraction"], round_up(quantile), POLICY_RISK[policy])


def meets_target(result: dict[str, Any]) -> bool:
    """The shipping rule: on the report half, the false-stop rate is at most the policy's stated risk and
    its 95 % upper bound at most ``TARGET_FACTOR`` × that risk (safe: 1 % and 2 %, the issue's target)."""
    risk = POLICY_RISK[result["policy"]]
    if result["rule"] is None:
        return False
    return result["false_rate"] <= risk and result["false_upper95"] <= TARGET_FACTOR * risk


def report_pairs(
    curves: Sequence[Curve], policy: str, metric: str, rule: MetricRule | None
) -> dict[str, Any]:
    """A rule of ``policy`` on these curves: false stops with their upper bound, savings by gap."""
    total = Pairs()
    by_gap: dict[str, list[float]] = {}
    false_curves = []
    if rule is None:
        quantile, shape, fraction = math.inf, BOUND_SHAPE, MIN_FRACTION
    else:
        quantile, shape, fraction = rule.quantile, rule.shape, rule.min_fraction
    for curve, terms in zip(curves, terms_for(curves, fraction, shape), strict=True):
        pairs = curve_pairs(curve, terms, shape, quantile)
        total.add(pairs)
        if pairs.curves_false:
            false_curves.append(curve.name)
        bound = bounds(terms, shape, quantile)
        for gap in pair_gaps():
            threshold = curve.final + gap
            if gap > 0 and threshold <= 1.0:
                share = schedule_saved(curve, stop_epoch(terms, bound, threshold))
                by_gap.setdefault(f"{gap:+.3f}", []).append(share)
    return {
        "metric": metric,
        "policy": policy,
        "rule": None if rule is None else {"quantile": rule.quantile, "risk": rule.risk},
        "curves": total.curves,
        "repos": len({c.group for c in curves}),
        "pass_pairs": total.passes,
        "false_stops": total.false_stops,
        "false_rate": total.false_stops / total.passes if total.passes else 0.0,
        "false_upper95": clopper_pearson_upper(total.false_stops, total.passes),
        "curves_false": total.curves_false,
        "curves_false_upper95": clopper_pearson_upper(total.curves_false, total.curves),
        "false_curves": false_curves,
        "fail_pairs": total.fails,
        "saved_share": total.saved_share,
        "saved_by_gap": {
            g: float(np.mean(v)) for g, v in sorted(by_gap.items(), key=lambda kv: float(kv[0]))
        },
    }


def report(runs: Sequence[CorpusRun], calibration: dict[str, Any]) -> list[dict[str, Any]]:
    """(b) The calibration's rule of every policy and metric on the report half, and on the shared curves
    when present; ``shipped``: the engine decides with it (it met its target on the report half)."""
    out = []
    for metric in METRICS:
        sets = [("report half", corpus_curves(runs, metric))]
        if SHARED_CURVES.is_dir():
            sets.append(("../shared/curves", shared_curves(metric)))
        for label, curves in sets:
            for policy in POLICIES:
                rule = candidate_rule(calibration, policy, metric)
                shipped = rule_for(policy, metric) is not None  # type: ignore[arg-type]
                out.append({"set": label, "shipped": shipped, **report_pairs(curves, policy, metric, rule)})
    return out


def shippable(calibration: dict[str, Any], results: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The quantiles the engine may ship: per metric, the policies whose rule met its target on the
    report half."""
    met = {(r["metric"], r["policy"]) for r in results if r["set"] == "report half" and meets_target(r)}
    return {
        metric: {p: round_up(q) for p, q in by.items() if (metric, p) in met}
        for metric, by in calibration["quantiles"].items()
        if any((metric, p) in met for p in by)
    }


def speed_stability(after: Sequence[int] = (2, 4, 9)) -> dict[str, dict[str, float]]:
    """(d) How far the early images/s (median of epochs 2..1+n) is from the whole run's (epochs 2..N),
    from the ``time`` column of ../shared/curves: 1 / seconds per epoch, as a fraction (+0.05: early is
    5 % faster). These times include validation (the engine's images/s does not): a pessimistic stand-in.
    """
    from flows.engine.records.results_csv import epoch_durations, read_results_csv

    out = {}
    for csv in sorted(SHARED_CURVES.glob("*.csv"), key=lambda p: int(p.stem)):
        durations = [d for d in epoch_durations(read_results_csv(csv)) if d > 0]
        if len(durations) < 12:
            continue
        whole = float(np.median(durations[1:]))
        out[csv.stem] = {str(n): whole / float(np.median(durations[1 : 1 + n])) - 1.0 for n in after}
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
    """What the generator needs to know of a completed report-half run."""

    name: str
    epochs: int
    final: float


def curve_infos(runs: Sequence[CorpusRun]) -> list[CurveInfo]:
    """Planned epochs and final mAP50-95 of every completed run (a whole phase to replay)."""
    curves = {c.name: c for c in corpus_curves(runs, "map50_95")}
    return [
        CurveInfo(r.name, r.epochs_planned, curves[r.name].final)
        for r in runs
        if r.completed and r.name in curves
    ]


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
    curves_dir: Path = CORPUS
    """Where the entries' ``csv`` files are (the corpus; a test may replay ../shared/curves)."""


def phase_entry(info: CurveInfo, minimum: float, gap: float) -> dict[str, Any]:
    """A replay entry whose final mAP50-95 is ``gap`` away from the gate's minimum."""
    offset = float(np.clip(minimum + gap - info.final, -1.0, 1.0))
    return {"csv": f"{info.name}.csv", "offset_map50_95": round(offset, 6)}


def make_scenario(
    seed: int,
    infos: Sequence[CurveInfo],
    search_curves: dict[str, Any],
    trial_dir: Path,
    gaps: dict[str, float] | None = None,
) -> Scenario:
    """Draw one tree: curves, gaps to the gates' minima, images/s and VRAM near the bounds, and a search.

    Phases 1 and 2 and Phase 3's full run replay completed report-half runs (``infos``), each shifted to
    a gap from its gate's minimum drawn from the pair gaps (−0.05 … +0.05). Phase 3's nine trials are a
    search of ``pruned_search.make_search`` drawn from its held-out pool, written as results.csv files
    into ``trial_dir``. The full run of trial i is the full-run record shifted by what trial i's point is
    worth against the exhaustive pick's (ratio of the trials' noise-free scores), so a pruned search that
    picks another trial changes the full run's figure as a worse or better point would. ``gaps`` replaces
    the drawn gaps of the phases it names (the draws stay the same).
    """
    from tasks.trainers.replay import format_results_csv

    ps = pruned_search()
    rng = np.random.default_rng(seed)
    gaps_drawn = pair_gaps()
    pick = {node: infos[int(rng.integers(len(infos)))] for node in ("phase1", "phase2", "phase3")}
    gaps = {node: float(gaps_drawn[int(rng.integers(len(gaps_drawn)))]) for node in pick} | (gaps or {})
    ips1 = float(rng.uniform(30.0, 60.0))
    speedup = float(rng.uniform(*SPEEDUP_RANGE))
    vram2 = float(rng.uniform(*VRAM_RANGE))
    e1 = phase_entry(pick["phase1"], 0.915, gaps["phase1"]) | {"images_per_s": round(ips1, 3)}
    e1 |= {"nvml_peak_used_gb": round(float(rng.uniform(14.0, 22.0)), 3)}
    e2 = phase_entry(pick["phase2"], 0.905, gaps["phase2"]) | {"images_per_s": round(ips1 * (1 + speedup), 3)}
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
    Variant("aggressive engine + SH", early="aggressive", **SEARCH, **SH),
)
"""Walks per scenario; the first is the naive walk every other is compared with. naive: the seed plan
(no early decisions, 9 short trials, the full run restarted); engine: the shipped plan (safe, prefix
trials, the best continues and its early decision sees the trial's epochs, no pruner)."""
VARIANT = {v.name: v for v in VARIANTS}


def without_early(variant: Variant) -> str | None:
    """The walk with the same Phase 3 settings and no early decisions (the naive walk for the seed's)."""
    same = (variant.schedule, variant.full_run, variant.pruner)
    return next(
        (v.name for v in VARIANTS if v.early == "off" and (v.schedule, v.full_run, v.pruner) == same), None
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
    """The walk's executor: the engine's own training step (``tasks.step.TrainingStep``, no journal) over
    the replay trainer, so every training runs under its spec's stoppers (trial pruner and prefix end,
    monitors, early decision) as in the flow.

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
        rules: dict[str, Any] | None = None,
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
        """Run one training through the engine's training step: its stoppers see every epoch."""
        from tasks.step import TrainingStep

        trainer = self.trainer
        if spec.role == "full":
            self.winner = self.winner_of(spec)
            trainer = self.trainer_for(spec.node, self.winner)
        history = (lambda s: self.continued_history(s, trainer)) if self.seed_continued else (lambda _: [])
        step = TrainingStep(trainer, rules=self.rules, history=history)

        def count(_: Any) -> None:
            self.epochs[spec.role] += 1

        result = step.run(spec, count)
        self.decisions += step.early_decisions
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
        from tasks.trainers.replay import epochs_already_trained

        done = (
            epochs_already_trained(spec)
            if spec.continue_checkpoint is not None and spec.early is not None
            else 0
        )
        if done <= 0:
            return []
        events: list[Any] = []

        def collect(event: Any) -> None:
            events.append(event)
            if event.record.epoch >= done:
                raise StopTraining("history collected")

        scratch = Path(spec.run_dir).parent / f"{Path(spec.run_dir).name}-history"
        update = {
            "continue_checkpoint": None,
            "run_dir": scratch,
            "early": None,
            "trial_hook": None,
            "monitors": (),
        }
        trainer.train(spec.model_copy(update=update), collect)
        return events

    def train_each(self, next_spec: Any, on_done: Any, workers: Any) -> None:
        """A search's trials one after another."""
        from flows.engine.decisions.walk import train_in_turn

        train_in_turn(self, next_spec, on_done)

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

    context = {"base_dir": scenario.curves_dir}
    replay = ReplaySpec.model_validate({"nodes": scenario.entries}, context=context)
    full = tuple(RunEntry.model_validate(e, context=context) for e in scenario.full_by_trial)
    return replay, full


def walk(
    cfg: Any,
    scenario: Scenario,
    variant: Variant | str,
    work: Path,
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
    ex = EngineExecutor(replay, space=tuple(search.space), full_runs=full_runs, seed_continued=True)
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


def phase_curves(scenario: Scenario) -> dict[str, str]:
    """Which recorded run each phase replays (a search: its full run)."""
    return {node: entry.get("csv") or entry["full"]["csv"] for node, entry in scenario.entries.items()}


def ceiling_epochs(row: dict[str, Any], *, continued: bool = False) -> int:
    """GPU-epochs of an oracle that knows every final figure but waits as the rules do: a lost VRAM
    condition at epoch 1, a speed-up lost beyond the tolerance after the stable epochs, a lost metric at
    the rule's first decision point; the best any rule of this family can do (trials untouched).

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
            stops = [math.ceil(MIN_FRACTION * n)] if row["gaps"][node] < 0 else []
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
    runs: Sequence[CorpusRun],
    n: int,
    seed: int,
    *,
    variants: Sequence[str] = tuple(VARIANT),
    storage: str = "memory",
    log: bool = True,
) -> dict[str, Any]:
    """(c): every scenario walked by every variant (the first: naive)."""
    cfg, infos = base_config(), curve_infos(runs)
    search_curves = pruned_search().load_curves()
    chosen = [VARIANT[v] for v in variants]
    assert chosen[0].name == "naive", "the naive walk comes first"
    rows = []
    started = time.time()
    scratch = Path("/dev/shm") if Path("/dev/shm").is_dir() else None  # many small files
    with tempfile.TemporaryDirectory(prefix="early-bench-", dir=scratch) as tmp:
        trial_dir = Path(tmp) / "trial-curves"
        trial_dir.mkdir()
        for i in range(n):
            scenario = make_scenario(seed * 100_000 + i, infos, search_curves, trial_dir)
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
                row[variant.name] = walk(cfg, scenario, variant, folder, replays=replays, storage=storage)
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
    return {
        "scenarios": rows,
        "summary": summary,
        "naive_terminals": dict(Counter(r["naive"]["terminal"] for r in rows)),
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
        "variant": {k: getattr(variant, k) for k in ("early", "schedule", "full_run", "pruner")},
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


def corpus_table(corpus: Any) -> str:
    """Markdown: runs and repositories per half."""
    lines = [
        "| half | runs | repositories | completed runs | planned epochs (min–median–max) |",
        "|---|---|---|---|---|",
    ]
    for half in ("calibration", "report"):
        runs = corpus.half(half)
        planned = sorted(r.epochs_planned for r in runs)
        spread = f"{planned[0]}–{planned[len(planned) // 2]}–{planned[-1]}" if planned else "–"
        done = sum(r.completed for r in runs)
        lines.append(f"| {half} | {len(runs)} | {len(corpus.repos(half))} | {done} | {spread} |")
    return "\n".join(lines)


def calibration_table(calibration: dict[str, Any]) -> str:
    """Markdown: the chosen shape per first decision point (cross-validated) and the quantiles."""
    lines = [
        "| decide from | best shape (noise, floor, mosaic) | held-out false stops "
        "| held-out saved on fail pairs |",
        "|---|---|---|---|",
    ]
    for fraction, row in calibration["choice"]["by_fraction"].items():
        if row is None:
            lines.append(f"| {float(fraction):.0%} | none within the risk | | |")
            continue
        s = row["shape"]
        lines.append(
            f"| {float(fraction):.0%} | {s['noise_weight']:g}, {s['floor']:g}, {s['mosaic_lift']:g} "
            f"| {row['false_stops']}/{row['pass_pairs']} | {row['saved']:.1%} |"
        )
    lines += [
        "",
        "| metric | safe quantile (1 %) | aggressive quantile (5 %) | largest scores |",
        "|---|---|---|---|",
    ]
    for metric, by in calibration["quantiles"].items():
        top = ", ".join(f"{s:.3f}" for s in calibration["scores"][metric][:5])
        lines.append(f"| {metric} | {by['safe']:.4f} | {by['aggressive']:.4f} | {top} |")
    return "\n".join(lines)


def report_table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown: false stops with their upper bound, and savings, per set, metric and policy."""
    lines = [
        "| set | metric | policy (quantile) | curves (repos) | false stops / pass pairs | 95 % upper bound "
        "| curves with a false stop (upper bound) | saved on fail pairs | shipped |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        shipped = "yes" if r["shipped"] else "no"
        if r["rule"] is None:
            head = f"| {r['set']} | {r['metric']} | {r['policy']} (none) | {r['curves']} ({r['repos']})"
            lines.append(f"{head} | never decides | | | 0 | {shipped} |")
            continue
        lines.append(
            f"| {r['set']} | {r['metric']} | {r['policy']} ({r['rule']['quantile']:.4f}) "
            f"| {r['curves']} ({r['repos']}) "
            f"| {r['false_stops']}/{r['pass_pairs']} ({r['false_rate']:.2%}) | {r['false_upper95']:.2%} "
            f"| {r['curves_false']} ({r['curves_false_upper95']:.1%}) | {r['saved_share']:.1%} | {shipped} |"
        )
    return "\n".join(lines)


def gap_table(results: Sequence[dict[str, Any]], metric: str = "map50_95") -> str:
    """Markdown: share of the schedule saved on fail pairs by how far the threshold is above the final."""
    rows = [r for r in results if r["metric"] == metric and r["rule"] is not None]
    if not rows:
        return ""
    gaps = list(rows[0]["saved_by_gap"])
    lines = ["| set | policy | " + " | ".join(gaps) + " |", "|---|---|" + "---|" * len(gaps)]
    for r in rows:
        lines.append(
            f"| {r['set']} | {r['policy']} | "
            + " | ".join(f"{r['saved_by_gap'][g]:.0%}" for g in gaps)
            + " |"
        )
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
        early = v.early
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
    """Run (a), (b), (d) and (c), print the Markdown tables, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip-trees", action="store_true")
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
    started = time.time()
    corpus = load_corpus()
    out: dict[str, Any] = {"machine": machine(), "dropped": corpus.dropped}
    print(json.dumps(out["machine"]))
    print(corpus_table(corpus))
    calibration = calibrate(corpus.half("calibration"))
    out["calibration"] = calibration
    print(calibration_table(calibration))
    out["report"] = report(corpus.half("report"), calibration)
    print(report_table(out["report"]))
    quantiles = shippable(calibration, out["report"])
    out["shippable"] = quantiles
    print(constants_text(calibration, quantiles))
    if not shipped_matches(calibration, quantiles):
        print("NOTE: the engine's constants differ from this calibration", file=sys.stderr)
    print(gap_table(out["report"]))
    if SHARED_CURVES.is_dir():
        out["speed_stability"] = speed_stability()
    if not args.skip_trees:
        if not SHARED_CURVES.is_dir():
            print(f"no ../shared/curves at {SHARED_CURVES}: Phase 3's trials cannot be made", file=sys.stderr)
            return 2
        variants = ["naive", *(v for v in args.variants if v != "naive")]
        result = tree_benchmark(
            corpus.half("report"), args.scenarios, args.seed, variants=variants, storage=args.storage
        )
        out["trees"] = result
        took = f"{result['seconds']:.0f} s"
        print(f"trees: {args.scenarios} scenarios, {took}; naive terminals {result['naive_terminals']}")
        print(tree_table(result["summary"]))
        print()
        print("gate lost, by role:")
        print(role_table(result["summary"], result["naive_epochs_by"]["gate_lost"]))
        print()
        print(decision_lines(result["summary"]))
    out["seconds"] = time.time() - started
    if args.out:
        args.out.write_text(json.dumps(out, indent=1, default=str), encoding="utf-8")
    print(f"done in {out['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
