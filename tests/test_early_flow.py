"""Early gate decisions in the walk (issue 9 §1): the judging gate's policy reaches the training, the
phase stops, the gate fails with the decision in its table, and the tree goes on.

The rule itself is tested in ``test_early.py``, its calibration on the corpus in ``test_early_corpus.py``;
the walks here decide with known constants (the ``known_rule`` fixture).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPLAYS, SHIPPED_PLAN

from flows.engine.config import OptimizeRequest, prepare
from flows.engine.decisions.walk import train_spec

pytestmark = pytest.mark.usefixtures("prefect_server")

TWO_PHASES = {
    "plan": "early-test",
    "baseline": {"name": "base", "map50_95": 0.5},
    "defaults": {"imgsz": 64, "batch": 8, "workers": 0, "device": "cpu", "plots": False, "seed": 0},
    "start": "phase1",
    "nodes": {
        "phase1": {"kind": "train", "model": "yolo11n-p2.yaml", "args": {"epochs": 3}, "next": "phase2"},
        "phase2": {"kind": "train", "base": "phase1", "args": {"epochs": 6}, "next": "gate2"},
        "gate2": {
            "kind": "gate",
            "subject": "phase2",
            "conditions": [{"check": "speedup", "vs": "phase1", "min": 3.0}],
            "early": {"policy": "safe"},
            "on_pass": "deploy",
            "on_fail": "keep",
        },
        "deploy": {"kind": "deploy", "phase": "phase2"},
        "keep": {"kind": "keep_baseline"},
    },
}


def test_spec_carries_the_judging_gate_only_when_its_policy_is_on(demo_data, tmp_path):
    cfg = prepare(OptimizeRequest(plan=SHIPPED_PLAN, data=demo_data))
    spec = train_spec(cfg, tmp_path, "phase2", {})
    assert spec.early is not None and spec.early.gate_name == "gate2"
    assert spec.early.reference_images_per_s == {"phase1": None}, "phase1 has not trained"
    plan = tmp_path / "off.yaml"
    doc = yaml.safe_load(SHIPPED_PLAN.read_text(encoding="utf-8"))
    doc["nodes"]["gate2"]["early"] = {"policy": "off"}
    plan.write_text(yaml.safe_dump(doc), encoding="utf-8")
    assert train_spec(prepare(OptimizeRequest(plan=plan, data=demo_data)), tmp_path, "phase2").early is None


def test_continued_full_run_decides_from_its_trials_first_epoch(demo_data, tmp_path, known_rule):
    """The full run that continues Phase 3's best trial (keep_baseline: every node replays curve k012)
    starts its history with that trial's 20 epochs, so its early decision falls where Phase 1's did
    on the same curve (epoch 30); from its own epochs alone a metric bound could never be decided."""
    from flows.fod_flow import optimize

    runs = tmp_path / "runs"
    decision = optimize(
        OptimizeRequest(
            plan=SHIPPED_PLAN, data=demo_data, runs_dir=runs, replay=REPLAYS / "keep_baseline.yaml"
        )
    )
    phase1, full = decision.phases[0], next(p for p in decision.phases if p.node == "phase3")
    assert full.early_decision is not None and phase1.early_decision is not None
    assert (full.early_decision.gate, full.early_decision.epoch) == ("gate3", phase1.early_decision.epoch)
    log = runs / decision.run_id / "phases" / "phase3" / "full" / "epochs.jsonl"
    events = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert [e["record"]["epoch"] for e in events] == list(range(1, full.early_decision.epoch + 1))
    assert {e["node"] for e in events} == {"phase3"} and decision.terminal == "keep_baseline"


def first_stop(rule) -> tuple[int, int]:
    """Where the pure bound on the curve keep_baseline replays for Phase 1 (its default, corpus curve
    k012) first falls below gate1's 0.915: (epoch, epochs saved)."""
    from flows.engine.decisions.early import metric_series, metric_upper_bound
    from flows.engine.records.replay_spec import load_replay_spec
    from flows.engine.records.results_csv import read_results_csv

    default = load_replay_spec(REPLAYS / "keep_baseline.yaml").default
    assert default is not None and default.csv.name == "k012.csv"
    values = metric_series(read_results_csv(default.csv)[:100], "map50_95")
    for k in range(1, 100):
        bound = metric_upper_bound(values[:k], 100, rule)
        if bound is not None and bound < 0.915:
            return k, 100 - k
    raise AssertionError("the bound never falls below 0.915")


def test_replayed_walk_stops_lost_phases_and_keeps_the_terminal(demo_data, tmp_path, known_rule):
    """keep_baseline replayed with the shipped plan's safe decisions (``known_rule``'s constants): same
    terminal, far fewer epochs."""
    from flows.fod_flow import optimize

    runs = tmp_path / "runs"
    decision = optimize(
        OptimizeRequest(
            plan=SHIPPED_PLAN, data=demo_data, runs_dir=runs, replay=REPLAYS / "keep_baseline.yaml"
        )
    )
    assert decision.terminal == "keep_baseline"
    phase1 = decision.phases[0]
    assert phase1.status == "stopped" and phase1.early_decision is not None
    early = phase1.early_decision
    assert (early.gate, early.check, early.epoch, early.epochs_saved) == (
        "gate1",
        "metric",
        *first_stop(known_rule),
    )
    assert phase1.epochs_done == early.epoch, "stopped right after the epoch that decided"
    assert early.bound < 0.915 and "cannot pass" in early.reason
    gate1 = decision.gates[0]
    assert gate1.outcome == "fail" and gate1.rows[-1].condition == "early decision: map50_95"
    saved = json.loads((runs / decision.run_id / "decision.json").read_text(encoding="utf-8"))
    assert saved["phases"][0]["early_decision"]["epochs_saved"] == early.epochs_saved
    report = (runs / decision.run_id / "REPORT.md").read_text(encoding="utf-8")
    assert "early decision: map50_95" in report


@pytest.mark.integration
def test_real_training_stops_within_one_epoch_and_the_walk_goes_on(demo_data, tmp_path):
    """Phase 2 must be 4× faster than Phase 1 (it cannot: the same model): decided once its speed is stable,
    stopped after that very epoch, its weights kept, the gate failed with the reason, the baseline kept."""
    from flows.fod_flow import optimize_prepared

    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(TWO_PHASES), encoding="utf-8")
    cfg = prepare(OptimizeRequest(plan=plan, data=demo_data, runs_dir=tmp_path / "runs"))
    decision = optimize_prepared(cfg)
    phase1, phase2 = decision.phases
    assert phase1.status == "completed" and phase1.images_per_s
    early = phase2.early_decision
    assert early is not None and early.check == "speedup" and early.epoch == 3, phase2.reason
    assert phase2.status == "stopped" and phase2.epochs_done == early.epoch
    assert early.epochs_saved == 3 and early.seconds_per_epoch and early.gpu_hours_saved is not None
    assert phase2.weights is not None and phase2.weights.is_file() and phase2.weights.name == "best.pt"
    assert phase2.metrics.map50_95 is not None, "best.pt was validated after the stop"
    assert decision.terminal == "keep" and decision.gates[0].rows[-1].condition.startswith("early decision")
    run_dir = Path(cfg.request.runs_dir) / decision.run_id
    journal = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    assert [(e["kind"], e["key"]) for e in journal][:2] == [("train", "phase1"), ("train", "phase2")]
