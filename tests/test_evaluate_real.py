"""The extra evaluation on the shared real datasets after real (tiny, CPU) Ultralytics trainings.

What is checked against an independent reference: the object counts per bucket (each dataset's
SOURCE.md), Ultralytics' figures (the trainer's own final validation of best.pt, stock Ultralytics),
and faster-coco-eval's figures (reproduced by the resampling code, or no interval is reported).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from conftest import SHARED, leaky_golfball, needs_shared

from flows.engine.plan.buckets import EvaluationSettings
from flows.engine.records.evaluation import Evaluation

GOLF = SHARED / "datasets" / "golfball_small" / "data.yaml"
LUNAR = SHARED / "datasets" / "lunar_crater_small" / "data.yaml"
GOLF_VAL_BUCKETS = [61, 18, 34, 9, 0]
LUNAR_VAL_BUCKETS = [767, 500, 178, 58, 31]
"""Boxes per longest side (all, < 16, 16–32, 32–64, ≥ 64 px) of each val split, from SOURCE.md."""

pytestmark = needs_shared


def train_tiny(
    project: Path, data: Path, *, epochs: int, imgsz: int, fraction: float = 1.0
) -> tuple[Path, tuple]:
    """Train yolo11n from scratch on CPU (nothing downloaded); its best.pt and the final validation's
    four figures (Ultralytics' stock validator on best.pt, as the trainer runs it)."""
    os.environ["YOLO_OFFLINE"] = "1"
    from ultralytics import YOLO

    model = YOLO("yolo11n.yaml")
    final = model.train(
        data=str(data),
        epochs=epochs,
        imgsz=imgsz,
        batch=16,
        workers=0,
        device="cpu",
        plots=False,
        amp=False,
        seed=0,
        fraction=fraction,
        project=str(project),
        name="run",
        exist_ok=True,
        verbose=False,
    )
    best = project / "run" / "weights" / "best.pt"
    assert best.is_file()
    return best, tuple(float(v) for v in final.box.mean_results())


FINAL_VAL_BATCH = 32
"""The trainer validates with twice the training batch (16 here); the child passes it to evaluate."""


def check_evaluation(evaluation: Evaluation, *, images: int, buckets: list[int]) -> None:
    """What every real evaluation must show: counts, intervals, reproduced COCO figures, a JSON round trip."""
    assert evaluation.images == images
    assert evaluation.note == ""  # the numpy figures equal the validator's own
    sizes = evaluation.sizes
    assert sizes is not None
    assert [c.objects for c in sizes.sizes] == buckets
    assert sizes.reproduced, sizes.note
    for cell in sizes.sizes:
        if cell.objects:
            assert cell.map50_95 is not None and cell.map50_95_ci is not None
            assert cell.map50_95_ci.low <= cell.map50_95_ci.high
        else:
            assert cell.map50_95 is None
    intervals = evaluation.intervals
    assert intervals is not None and intervals.resamples == 1000 and intervals.level == 0.95
    for metric in ("precision", "recall", "map50", "map50_95"):
        interval = intervals.get(metric)
        assert interval is not None and 0.0 <= interval.low <= interval.high <= 1.0
    assert evaluation.coco_minus_ultralytics is not None and math.isfinite(evaluation.coco_minus_ultralytics)
    assert Evaluation.model_validate_json(evaluation.model_dump_json()) == evaluation


@pytest.mark.integration
def test_golfball_evaluation_after_a_short_training(tmp_path):
    """One epoch on a quarter of golfball at 160 px, then the evaluation: the SOURCE.md counts per
    bucket, intervals on every figure, and Ultralytics' figures equal to the stock validator's."""
    from tasks.trainers.evaluate import evaluate

    best, final = train_tiny(tmp_path / "train", GOLF, epochs=1, imgsz=160, fraction=0.25)
    evaluation = evaluate(
        best, GOLF, imgsz=160, device="cpu", batch=FINAL_VAL_BATCH, save_dir=tmp_path / "eval"
    )
    check_evaluation(evaluation, images=36, buckets=GOLF_VAL_BUCKETS)
    ours = tuple(evaluation.overall.get(m) for m in ("precision", "recall", "map50", "map50_95"))
    assert ours == pytest.approx(final, abs=1e-9)
    exported = json.loads(Path(evaluation.predictions_json).read_text(encoding="utf-8"))
    assert {e["file_name"] for e in exported} <= {
        Path(p).name for p in (GOLF.parent / "images" / "val").iterdir()
    }
    assert evaluation.seconds["bootstrap"] < 30
    check_clean_figures(best, tmp_path)


def check_clean_figures(best: Path, tmp_path: Path) -> None:
    """The @clean figures leave out the val images the near-duplicate check finds in train (the copies
    among them), and equal a validation of the val split without those images (one image per batch,
    so no image's letterbox depends on its neighbours)."""
    from flows.engine.data.near_duplicates import find_near_duplicates
    from flows.engine.plan.leakage import LeakageSettings
    from tasks.trainers.evaluate import evaluate

    rule = LeakageSettings()
    data, copies = leaky_golfball(tmp_path / "leaky")
    splits = {s: sorted((tmp_path / "leaky" / "images" / s).iterdir()) for s in ("train", "val")}
    found = find_near_duplicates(splits, rule)
    leaked = {
        p
        for p in splits["val"]
        if any(p.name in (Path(q.first).name, Path(q.second).name) for q in found.pairs if q.cross)
    }
    assert set(copies) <= leaked and found.val_in_train == len(leaked)
    evaluation = evaluate(best, data, imgsz=160, device="cpu", batch=1, leakage=rule)
    clean = evaluation.clean
    assert (
        clean is not None and clean.left_out == len(leaked) and clean.images == 36 + len(copies) - len(leaked)
    )
    kept = tmp_path / "clean_val.txt"
    kept.write_text("\n".join(str(p) for p in splits["val"] if p not in leaked))
    reference_yaml = tmp_path / "clean.yaml"
    reference_yaml.write_text(
        f"train: {tmp_path / 'leaky' / 'images' / 'train'}\nval: {kept}\nnames:\n  0: golf_ball\n"
    )
    reference = evaluate(best, reference_yaml, imgsz=160, device="cpu", batch=1)
    for metric in ("precision", "recall", "map50", "map50_95"):
        assert clean.get(metric) == pytest.approx(reference.overall.get(metric), abs=1e-9), metric
        assert clean.interval(metric) is not None


@pytest.mark.slow
def test_lunar_crater_evaluation_after_a_short_training(tmp_path):
    """Dense tiny objects (about 70 per image, two thirds under 16 px), variable image sizes: the
    evaluation still counts every bucket as SOURCE.md does and reproduces the evaluator's figures."""
    from tasks.trainers.evaluate import evaluate

    best, final = train_tiny(tmp_path / "train", LUNAR, epochs=3, imgsz=320)
    evaluation = evaluate(
        best, LUNAR, imgsz=320, device="cpu", batch=FINAL_VAL_BATCH, save_dir=tmp_path / "eval"
    )
    check_evaluation(evaluation, images=12, buckets=LUNAR_VAL_BUCKETS)
    ours = tuple(evaluation.overall.get(m) for m in ("precision", "recall", "map50", "map50_95"))
    assert ours == pytest.approx(final, abs=1e-9)


@pytest.mark.slow
def test_standalone_command_with_coco_buckets(tmp_path, capsys):
    """``python -m tasks.trainers.evaluate`` on any best.pt: COCO's area buckets, the JSON record."""
    from tasks.trainers.evaluate import main

    best, _ = train_tiny(tmp_path / "train", GOLF, epochs=1, imgsz=160, fraction=0.25)
    out = tmp_path / "evaluation.json"
    assert (
        main(
            [
                str(best),
                str(GOLF),
                "--imgsz",
                "160",
                "--device",
                "cpu",
                "--preset",
                "coco",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    evaluation = Evaluation.model_validate_json(out.read_text(encoding="utf-8"))
    assert evaluation.settings == EvaluationSettings(preset="coco")
    assert [c.bucket for c in evaluation.sizes.sizes] == ["all", "small", "medium", "large"]
    assert evaluation.predictions_json is None  # no --save-dir: the validator's folder is removed
    assert "| size | objects | AP50-95" in capsys.readouterr().out
