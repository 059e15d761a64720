"""Early gate decisions: the metric bound on the real shared curves, and the decision over a gate's
conditions on small synthetic histories (settled VRAM, stable speed-up, unknown figures, flags-only
gates, policy off)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPLAYS, ROOT, SHARED, SHIPPED_PLAN, needs_shared

from flows.engine.decisions import early
from flows.engine.decisions.early import (
    BoundShape,
    EarlyTracker,
    MetricRule,
    decidable_from,
    decide,
    judging_gate,
    metric_series,
    metric_upper_bound,
    rule_for,
)
from flows.engine.decisions.gates import decision_row, evaluate_gate
from flows.engine.decisions.monitors import StopTraining
from flows.engine.plan.schema import GateNode
from flows.engine.records.results import EpochEvent, EpochRecord, TrainSpec
from flows.engine.records.results_csv import best_epoch, read_results_csv

CURVES = SHARED / "curves"
needs_curves = pytest.mark.skipif(not CURVES.is_dir(), reason=f"../shared/curves not found at {CURVES}")
NAMES = tuple(str(n) for n in range(1, 36, 2))
"""The 18 recorded runs: 1.csv, 3.csv, ... 35.csv."""


def gate(*conditions: dict, policy: str = "safe", **early) -> GateNode:
    """A gate on subject ``p`` with the given conditions and early-decision settings."""
    return GateNode.model_validate(
        {
            "kind": "gate",
            "subject": "p",
            "conditions": list(conditions),
            "early": {"policy": policy, **early},
            "on_pass": "yes",
            "on_fail": "no",
        }
    )


def event(epoch: int, planned: int = 100, **kw) -> EpochEvent:
    """One epoch's event; ``record`` fields (map50_95, time_s...) and event fields go in ``kw``."""
    fields = ("precision", "recall", "map50", "map50_95", "time_s")
    record = EpochRecord(epoch=epoch, **{k: kw.pop(k) for k in fields if k in kw})
    return EpochEvent(node="p", epochs_planned=planned, record=record, **kw)


def shared_run(name: str) -> tuple[list[EpochRecord], int, int, float]:
    """A shared curve cut at its planned epochs: records, planned epochs, close_mosaic, best.pt mAP50-95."""
    args = yaml.safe_load((CURVES / f"{name}.args.yaml").read_text(encoding="utf-8"))
    planned = int(args["epochs"])
    records = list(read_results_csv(CURVES / f"{name}.csv")[:planned])
    return records, planned, int(args.get("close_mosaic", 10) or 0), best_epoch(records).map50_95


def replay_events(name: str, *, offset: float = 0.0) -> list[EpochEvent]:
    """A shared curve (cut at its planned epochs) as the events a replay streams."""
    records, planned, _, _ = shared_run(name)
    return [
        EpochEvent(
            node="p",
            epochs_planned=planned,
            record=r.model_copy(update={"map50_95": None if r.map50_95 is None else r.map50_95 + offset}),
        )
        for r in records
    ]


def first_decision(g: GateNode, events: list[EpochEvent], reference=None, close_mosaic: int = 10, rules=None):
    """Feed the events one by one, as on_epoch does; the first decision, or None (``rules``: metric rules
    in place of the shipped policy's)."""
    tracker = EarlyTracker(g, reference or {}, close_mosaic=close_mosaic, rules=rules)
    for e in events:
        if (found := tracker.observe(e)) is not None:
            return found
    return None


RULE = MetricRule(shape=BoundShape(), quantile=0.5, risk=0.01)
"""A metric rule of known constants (the ``known_rule`` fixture's), for the tests of the bound's mechanics;
the shipped constants are the calibration's: tests/test_early_corpus.py checks them."""
RULES = {"map50_95": RULE}

VRAM = {"check": "vram", "max_gb": 20, "figure": "nvml_peak"}
COMPLETED = {"check": "completed"}
SPEED = {"check": "speedup", "vs": "ref", "min": 0.25}


# ----------------------------------------------------------------------------- settled and early-settling


def test_vram_over_its_bound_is_lost_the_epoch_it_is_seen():
    g = gate(VRAM, COMPLETED)
    ok = [event(1, nvml_used_gb=19.5), event(2, nvml_used_gb=20.0)]
    assert first_decision(g, ok) is None  # at the bound passes (≤)
    found = first_decision(g, [*ok, event(3, nvml_used_gb=20.4)])
    assert (found.check, found.epoch, found.epochs_saved) == ("vram", 3, 97)
    assert found.observed == pytest.approx(20.4) and found.threshold == 20
    assert "20.40 GB, over 20 GB" in found.reason


def test_vram_figure_picks_the_reading_and_unknown_never_decides():
    torch_only = [event(1, torch_reserved_gb=25.0, nvml_used_gb=None)]
    assert first_decision(gate(VRAM), torch_only) is None  # nvml unknown: no decision
    assert first_decision(gate({**VRAM, "figure": "torch_peak"}), torch_only).observed == 25.0
    both = [event(1, torch_reserved_gb=19.0, nvml_used_gb=21.0)]
    assert first_decision(gate({**VRAM, "figure": "both"}), both).observed == 21.0
    assert first_decision(gate(VRAM), [event(1), event(2)]) is None


def test_speedup_is_decided_after_the_stable_epochs_and_beyond_the_tolerance():
    ref = {"ref": 40.0}
    g = gate(SPEED, COMPLETED, speed_tolerance=0.05, speed_after_epochs=2)
    slow = [event(e, images_per_s=46.0) for e in range(1, 6)]  # +15 %: 10 points short, over the 5 tolerated
    found = first_decision(g, slow, ref)
    assert found.check == "speedup" and found.epoch == 3  # warm-up epoch 1, then 2 stable epochs
    assert found.observed == pytest.approx(0.15) and found.threshold == 0.25
    within = [event(e, images_per_s=49.0) for e in range(1, 30)]  # +22.5 %: short by less than 5 points
    assert first_decision(g, within, ref) is None


def test_speedup_ignores_the_warm_up_epoch_and_unknown_figures():
    ref = {"ref": 40.0}
    g = gate(SPEED)
    warm_up = [event(1, images_per_s=5.0)] + [event(e, images_per_s=50.0) for e in range(2, 20)]
    assert first_decision(g, warm_up, ref) is None  # +25 % after the first epoch
    assert first_decision(g, [event(e, images_per_s=20.0) for e in range(1, 10)], {}) is None  # no reference
    no_ref_speed = {"ref": None}
    assert first_decision(g, [event(e, images_per_s=20.0) for e in range(1, 10)], no_ref_speed) is None
    assert first_decision(g, [event(e) for e in range(1, 10)], ref) is None  # subject's speed unknown


def test_flags_only_gate_and_policy_off_never_stop():
    hopeless = [event(e, map50_95=0.01, nvml_used_gb=80.0) for e in range(1, 100)]
    flags = gate({"check": "no_divergence"}, COMPLETED)
    assert first_decision(flags, hopeless) is None
    off = gate(VRAM, {"check": "metric", "metric": "map50_95", "min": 0.9}, COMPLETED, policy="off")
    assert first_decision(off, hopeless) is None
    assert first_decision(gate(VRAM, COMPLETED, policy="off"), hopeless) is None


def test_unknown_metric_never_decides_and_nothing_is_decided_at_the_last_epoch():
    g = gate({"check": "metric", "metric": "map50_95", "min": 0.9})
    assert first_decision(g, [event(e) for e in range(1, 100)]) is None
    done = [event(e, map50_95=0.1) for e in range(1, 101)]
    assert decide(g, done, 100, {}) is None  # the last epoch: nothing left to save


def test_metric_needs_the_epochs_from_the_first():
    """A history that starts after a resume misses the best so far: metrics wait, VRAM does not."""
    resumed = [event(e, map50_95=0.1, nvml_used_gb=10.0) for e in range(40, 60)]
    metric = gate({"check": "metric", "metric": "map50_95", "min": 0.9})
    assert first_decision(metric, resumed) is None
    assert first_decision(gate(VRAM), [*resumed, event(60, nvml_used_gb=30.0)]).epoch == 60


def test_decision_record_estimates_the_gpu_time_saved():
    g = gate(VRAM, COMPLETED)
    history = [event(e, time_s=50.0 + 30.0 * e, nvml_used_gb=10.0) for e in range(1, 5)]  # 30 s per epoch
    found = first_decision(g, [*history, event(5, time_s=200.0, nvml_used_gb=22.0)])
    assert found.epochs_saved == 95
    assert found.seconds_per_epoch == pytest.approx(30.0)
    assert found.gpu_hours_saved == pytest.approx(95 * 30.0 / 3600)
    row = decision_row(found)
    assert (row.verdict, row.passed) == ("fail", False) and row.condition.startswith("early decision")


def test_tracker_raises_stop_training_with_the_reason():
    tracker = EarlyTracker(gate(VRAM, COMPLETED), {})
    tracker(event(1, nvml_used_gb=10.0))
    with pytest.raises(StopTraining) as stop:
        tracker(event(2, nvml_used_gb=21.0))
    assert stop.value.reason == tracker.decision.reason and "epoch 2/100" in stop.value.reason


# ----------------------------------------------------------------------------- the metric bound


def test_all_zero_epoch_has_no_figure():
    records = [
        EpochRecord(epoch=1, precision=0.3, recall=0.3, map50=0.27, map50_95=0.09),
        EpochRecord(epoch=2, precision=0.0, recall=0.0, map50=0.0, map50_95=0.0),
        EpochRecord(epoch=3, precision=0.0, recall=0.1, map50=0.0, map50_95=0.0),
    ]
    assert metric_series(records, "map50_95") == [0.09, None, 0.0]


def test_bound_moves_with_a_shifted_curve_and_waits_for_its_first_epoch():
    values = [0.1 + 0.3 * (1 - math.exp(-e / 15)) + 0.004 * (-1) ** e for e in range(1, 41)]
    rule = RULE
    base = metric_upper_bound(values, 100, rule)
    assert base is not None and base > max(values)
    assert metric_upper_bound([v + 0.2 for v in values], 100, rule) == pytest.approx(base + 0.2)
    assert metric_upper_bound(values[: decidable_from(100, rule) - 1], 100, rule) is None
    assert decidable_from(100, rule) == math.ceil(100 * rule.min_fraction)


def test_bound_waits_while_the_curve_has_not_started_to_learn():
    flat = [0.002] * 50  # a model from scratch before its take-off
    assert metric_upper_bound(flat, 100, RULE) is None


def test_mosaic_lift_counts_until_the_mosaic_off_epochs_begin():
    values = [0.5 + 0.001 * e for e in range(1, 91)]
    rule = MetricRule(shape=BoundShape(mosaic_lift=0.02), quantile=0.5, risk=0.01)
    with_lift = metric_upper_bound(values, 100, rule, close_mosaic=10)
    without = metric_upper_bound(values, 100, rule, close_mosaic=0)
    assert with_lift - without == pytest.approx(rule.quantile * rule.shape.mosaic_lift)
    seen = [*values, 0.6]  # epoch 91 trained without mosaic: the lift is seen
    assert metric_upper_bound(seen, 100, rule, close_mosaic=10) == pytest.approx(
        metric_upper_bound(seen, 100, rule, close_mosaic=0)
    )


def test_a_metric_without_a_finite_quantile_is_never_decided(monkeypatch):
    assert rule_for("off", "map50_95") is None
    monkeypatch.setitem(early.CALIBRATED_QUANTILES, "map50", {"safe": 2.0, "aggressive": 1.0})
    rule = rule_for("safe", "map50")
    assert (rule.quantile, rule.risk, rule_for("aggressive", "map50").risk) == (2.0, 0.01, 0.05)
    assert rule.shape == early.BOUND_SHAPE and rule.min_fraction == early.MIN_FRACTION
    monkeypatch.setitem(early.CALIBRATED_QUANTILES, "recall", {"safe": math.inf})
    assert rule_for("safe", "recall") is None and rule_for("aggressive", "recall") is None
    g = gate({"check": "metric", "metric": "recall", "min": 0.99}, COMPLETED)
    assert first_decision(g, [event(e, recall=0.2) for e in range(1, 99)]) is None


@needs_curves
def test_no_shared_curve_is_stopped_at_its_own_final_figure():
    """Threshold = the final best.pt figure (a pass, by the narrowest margin): the safe rule, calibrated on
    the corpus (none of these 18 runs is in it), stops none of them."""
    if rule_for("safe", "map50_95") is None:
        pytest.skip("the shipped safe policy never decides on mAP50-95 (docs/EARLY_DECISIONS.md says why)")
    for name in NAMES:
        _, _, close_mosaic, final = shared_run(name)
        g = gate({"check": "metric", "metric": "map50_95", "min": final}, COMPLETED)
        assert first_decision(g, replay_events(name), close_mosaic=close_mosaic) is None, name


@needs_curves
def test_a_curve_far_below_its_minimum_stops_at_the_first_decidable_epoch():
    events = replay_events("23")  # best.pt 0.8271 after 100 epochs
    g = gate({"check": "metric", "metric": "map50_95", "min": 0.99}, COMPLETED)
    found = first_decision(g, events, rules=RULES)
    first = decidable_from(100, RULE)
    assert (found.check, found.epoch, found.epochs_saved) == ("metric", first, 100 - first)
    assert found.observed < found.bound < 0.99 and found.risk == 0.01
    clean = gate({"check": "metric", "metric": "map50_95", "min": 0.99, "images": "clean"}, COMPLETED)
    assert first_decision(clean, events, rules=RULES) is None  # the epochs' figures bound no @clean one


@needs_curves
def test_a_curve_close_below_its_minimum_runs_longer_than_one_far_below():
    events = replay_events("25")  # best.pt 0.7715 at epoch 100
    far = first_decision(gate({"check": "metric", "metric": "map50_95", "min": 0.87}), events, rules=RULES)
    near = first_decision(gate({"check": "metric", "metric": "map50_95", "min": 0.79}), events, rules=RULES)
    assert far is not None and (near is None or near.epoch > far.epoch)


def test_replayed_phase_stops_and_its_gate_fails(tmp_path):
    """Wired like the train task: the tracker in on_epoch stops the replay; the gate then fails."""
    from tasks.trainers.replay import ReplayTrainer

    g = gate({"check": "metric", "metric": "map50_95", "min": 0.99}, COMPLETED)
    tracker = EarlyTracker(g, {}, gate_name="gate1", rules=RULES)
    spec = TrainSpec(plan="p", node="p", model=Path("m.yaml"), data=Path("d.yaml"), args={"epochs": 100},
                     run_dir=tmp_path / "p")  # fmt: skip
    result = ReplayTrainer.from_file(REPLAYS / "keep_baseline.yaml").train(spec, tracker)  # k012.csv
    assert result.status == "stopped" and result.epochs_done == tracker.decision.epoch == 30
    assert result.reason == tracker.decision.reason
    assert evaluate_gate("gate1", g, result, {}).outcome == "fail"


def test_judging_gate_is_the_next_gate_on_the_node(shipped_plan_doc):
    from flows.engine.plan.schema import Plan

    plan = Plan.model_validate(shipped_plan_doc)
    assert judging_gate(plan, "phase1")[0] == "gate1"
    assert judging_gate(plan, "phase2")[0] == "gate2"
    assert judging_gate(plan, "phase3")[0] == "gate3"  # the search's full run
    assert judging_gate(plan, "gate1") is None and judging_gate(plan, "nope") is None


# ----------------------------------------------------------------------------- the benchmark's walk


def load_benchmark():
    """benchmarks/early_decisions.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_early", ROOT / "benchmarks" / "early_decisions.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@needs_shared
def test_engine_walk_reaches_the_naive_terminal_with_fewer_epochs(tmp_path, known_rule):
    """The benchmark's executor runs every training under its own ``Stoppers(spec)``. Phase 1 far below
    its gate, Phase 2 over its VRAM bound, Phase 3 passes: the naive walk (seed settings) and the engine's
    (shipped: safe, prefix trials, the best continues) both deploy Phase 3; the engine stops Phase 1 at
    30 % and Phase 2 after its first epoch, its prefix trials at 20 epochs (trial hook), and its full run
    delivers only the 30 epochs after the best trial's checkpoint."""
    bench = load_benchmark()
    assert bench.PLAN == SHIPPED_PLAN and known_rule == RULE
    entries = {
        "phase1": {"csv": "23.csv", "offset_map50_95": -0.1, "images_per_s": 40.0},  # 0.727 vs 0.915
        "phase2": {"csv": "13.csv", "offset_map50_95": 0.25, "images_per_s": 60.0, "nvml_peak_used_gb": 22.0},
        "phase3": {"trials": {"csv": "35.csv", "images_per_s": 40.0},
                   "full": {"csv": "29.csv", "images_per_s": 40.0}},  # 0.930 ≥ 0.915
    }  # fmt: skip
    scenario = bench.Scenario(seed=0, entries=entries, epochs={"phase1": 100, "phase2": 100, "phase3": 50},
                              gaps={}, speedup=0.5, vram2=22.0, curves_dir=CURVES)  # fmt: skip
    cfg = bench.base_config()
    naive = bench.walk(cfg, scenario, "naive", tmp_path / "naive")
    engine = bench.walk(cfg, scenario, "engine", tmp_path / "engine")
    assert naive["terminal"] == engine["terminal"] == "deploy_phase3"
    assert naive["epochs_by"] == {"phase": 100 + 100, "trial": 9 * 20, "full": 50}
    assert naive["epochs"] == 100 + 100 + 9 * 20 + 50
    assert [(d["subject"], d["check"], d["epoch"]) for d in engine["decisions"]] == [
        ("phase1", "metric", 30),
        ("phase2", "vram", 1),
    ]
    assert engine["decisions"][0]["risk"] == RULE.risk
    assert engine["epochs_by"] == {"phase": 30 + 1, "trial": 9 * 20, "full": 50 - 20}
    assert [t["state"] for t in engine["trials"]] == ["complete"] * 9
    assert naive["winner"] == engine["winner"] == 0  # every trial replays 35.csv: all tie, the first wins


@needs_shared
def test_generated_scenario_walks_with_the_pruner_and_the_winners_full_run(tmp_path, known_rule):
    """A generated scenario from the corpus's report half, every gate lost: successive halving prunes
    trials (their epochs are what the trainer delivered), and the full run, continued from the winner's
    checkpoint, is stopped on its metric once the rule may decide (it is given the trial's epochs)."""
    bench = load_benchmark()
    runs = bench.load_corpus().half("report")
    infos, curves = bench.curve_infos(runs), bench.pruned_search().load_curves()
    lost = {"phase1": -0.05, "phase2": -0.05, "phase3": -0.1}
    scenario = bench.make_scenario(5, infos, curves, tmp_path, gaps=lost)
    assert scenario.gaps == lost
    cfg, replays = bench.base_config(), bench.scenario_replays(scenario)
    naive, pruned = (
        bench.walk(cfg, scenario, name, tmp_path / str(i), replays=replays)
        for i, name in enumerate(("naive", "engine + SH"))
    )
    full = scenario.epochs["phase3"]
    assert naive["terminal"] == pruned["terminal"] == "keep_baseline"
    assert naive["winner"] == scenario.search["exhaustive_pick"]
    assert naive["epochs_by"]["trial"] == 9 * 20 and naive["epochs_by"]["full"] == full
    assert "pruned" in [t["state"] for t in pruned["trials"]]
    assert pruned["epochs_by"]["trial"] == sum(t["epochs"] for t in pruned["trials"]) < 9 * 20
    [stop] = [d for d in pruned["decisions"] if d["subject"] == "phase3"]
    assert stop["check"] == "metric" and stop["epoch"] >= max(math.ceil(RULE.min_fraction * full), 21)
    assert pruned["epochs_by"]["full"] == stop["epoch"] - 20
