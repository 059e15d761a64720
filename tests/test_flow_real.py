"""Real Ultralytics training through the flow, on a real Prefect server (tiny models, CPU)."""

from __future__ import annotations

import json

import pytest
from conftest import GOLFBALL, SHIPPED_PLAN, needs_shared

from flows.engine.config import OptimizeRequest, prepare
from flows.engine.decisions.walk import train_spec


@pytest.mark.usefixtures("prefect_server")
def test_smoke_profile_walks_whole_tree_with_real_training(demo_data, tmp_path):
    """Every node really trains (n-scale P2 models, imgsz 64, 1 epoch): the tiny models cannot reach
    the gates, so the walk goes phase1 → phase2 → 3 trials + full run → keep_baseline."""
    from flows.fod_flow import optimize

    runs = tmp_path / "runs"
    decision = optimize(OptimizeRequest(plan=SHIPPED_PLAN, data=demo_data, profile="smoke", runs_dir=runs))
    assert decision.terminal == "keep_baseline"
    assert [p.node for p in decision.phases] == ["phase1", "phase2", "phase3"]
    assert len(decision.trials) == 3
    for run in (*decision.phases, *decision.trials):
        assert run.status == "completed", run.reason
        assert run.epochs_done == run.epochs_planned == 1
        assert run.weights is not None and run.weights.is_file()
        assert run.metrics.map50_95 is not None and 0.0 <= run.metrics.map50_95 <= 1.0
        assert (run.batch_used, run.accumulate, run.effective_batch) == (4, 2, 8)
    run_dir = runs / decision.run_id
    saved = json.loads((run_dir / "decision.json").read_text(encoding="utf-8"))
    assert saved["phases"][0]["history"][0]["epoch"] == 1
    assert (run_dir / "phases" / "phase1" / "results.csv").is_file()
    assert (run_dir / "phases" / "phase3" / "trial-02" / "phase_result.json").is_file()
    assert (run_dir / "REPORT.md").is_file()


@needs_shared
def test_golfball_validates_and_trains_one_short_epoch(tmp_path):
    """The shipped plan validates against real images; Phase 1's spec trains one short epoch on them."""
    from tasks.trainers.ultra import UltralyticsTrainer

    cfg = prepare(OptimizeRequest(plan=SHIPPED_PLAN, data=GOLFBALL, profile="smoke"))
    spec = train_spec(cfg, tmp_path, "phase1")
    events = []
    result = UltralyticsTrainer().train(spec, events.append)
    assert result.status == "completed", result.reason
    assert [e.record.epoch for e in events] == [1]
    assert result.epochs_done == 1 and result.nbs == 8
    assert result.results_csv is not None and result.results_csv.is_file()


WEIGHTS = GOLFBALL.parents[2] / "weights"


@pytest.mark.skipif(
    not any(WEIGHTS.glob("yolo11n*.pt")), reason=f"no COCO-pretrained yolo11n checkpoint in {WEIGHTS}"
)
def test_pretrained_fine_tune_raises_map(tmp_path):
    """Pretrained layers transfer into the P2 model; a short fine-tune on golf balls shows mAP50-95 rising."""
    from tasks.trainers.ultra import UltralyticsTrainer

    weights = sorted(WEIGHTS.glob("yolo11n*.pt"))[0]
    cfg = prepare(OptimizeRequest(plan=SHIPPED_PLAN, data=GOLFBALL, profile="smoke"))
    spec = train_spec(cfg, tmp_path, "phase1").model_copy(
        update={"pretrained": weights, "args": {**cfg.args_for("phase1"), "epochs": 5, "imgsz": 320}}
    )
    result = UltralyticsTrainer().train(spec, lambda _: None)
    maps = [e.map50_95 or 0.0 for e in result.history]
    assert result.status == "completed", result.reason
    assert maps[-1] > maps[0]
