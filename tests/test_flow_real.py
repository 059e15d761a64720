"""Real Ultralytics training through the flow, on a real Prefect server (tiny models, CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import GOLFBALL, SHIPPED_PLAN, needs_shared

from flows.demo_weights import CHECKPOINT_NAME, MODEL, WEIGHTS_DIR
from flows.engine.config import OptimizeRequest, prepare
from flows.engine.data.dataset import write_dataset_copy
from flows.engine.decisions.walk import train_spec

pytestmark = pytest.mark.integration

DEMO_WEIGHTS = WEIGHTS_DIR / CHECKPOINT_NAME
"""The project's own starting weights (flows/demo_weights.py): yolo11n-p2 trained on synthetic debris."""


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
    write_dataset_copy(cfg.dataset, tmp_path)  # what the flow does first: trainings read this copy
    spec = train_spec(cfg, tmp_path, "phase1")
    events = []
    result = UltralyticsTrainer().train(spec, events.append)
    assert result.status == "completed", result.reason
    assert [e.record.epoch for e in events] == [1]
    assert result.epochs_done == 1 and result.nbs == 8
    assert result.results_csv is not None and result.results_csv.is_file()


def one_class_copy(data_yaml: Path, dest: Path) -> Path:
    """The same images with every debris label merged into one class, ``debris`` (a new label set)."""
    source = data_yaml.parent
    for split in ("train", "val"):
        (dest / "labels" / split).mkdir(parents=True)
        shutil.copytree(source / "images" / split, dest / "images" / split)
        for label in (source / "labels" / split).glob("*.txt"):
            lines = label.read_text(encoding="utf-8").splitlines()
            merged = "".join(f"0 {line.split(' ', 1)[1]}\n" for line in lines if line.strip())
            (dest / "labels" / split / label.name).write_text(merged, encoding="utf-8")
    doc = {"path": str(dest), "train": "images/train", "val": "images/val", "nc": 1, "names": ["debris"]}
    (dest / "data.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return dest / "data.yaml"


def test_pretrained_fine_tune_raises_map(tmp_path):
    """The demo weights, fine-tuned through the project's trainer on a label set they never saw.

    The data: the demo's own images (generated exactly as ``--demo`` does: its val images were never
    trained on, the weights' data has another seed) with the four debris classes merged into one,
    ``debris``, as a single-class FOD detector would be trained. One class against the weights' four:
    the 1x1 class-logit convs (weight and bias at 4 detection levels) cannot transfer and start from
    scratch, every other tensor comes from the checkpoint. So epoch 1 scores near zero, and what the
    transferred backbone and neck know about debris lets three more epochs of Phase 1's settings raise
    mAP50-95 by far more than 0.2; the same training from scratch stays at 0.000 (a YOLO from scratch
    needs hundreds of steps before its first detection on this data).
    """
    from flows.demo_data import generate_demo_dataset
    from fod_models import build_model
    from tasks.trainers.ultra import UltralyticsTrainer

    data = one_class_copy(generate_demo_dataset(tmp_path / "demo"), tmp_path / "one-class")
    cfg = prepare(OptimizeRequest(plan=SHIPPED_PLAN, data=data, profile="smoke"))
    run_dir = tmp_path / "run"
    write_dataset_copy(cfg.dataset, run_dir)
    # the demo profile's Phase 1 numbers: imgsz 160, batch 8 accumulated to 16, no warm-up
    args = {**cfg.args_for("phase1"), "epochs": 4, "imgsz": 160, "batch": 8, "warmup_epochs": 0}
    update = {"pretrained": DEMO_WEIGHTS, "args": args, "effective_batch": 16}
    spec = train_spec(cfg, run_dir, "phase1").model_copy(update=update)
    result = UltralyticsTrainer().train(spec, lambda _: None)
    assert result.status == "completed", result.reason

    total = len(build_model(MODEL, nc=1).state_dict())
    log = (spec.run_dir / "train.log").read_text(encoding="utf-8")
    assert f"Transferred {total - 8}/{total} items" in log, "all but the class logits transfer"
    maps = [e.map50_95 or 0.0 for e in result.history]
    assert len(maps) == 4
    assert maps[-1] > maps[0] + 0.2, maps
