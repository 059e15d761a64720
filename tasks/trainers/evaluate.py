"""The extra evaluation of a trained best.pt: Ultralytics' validation once more, kept image by image.

Called in the training child right after the final validation; on its own:
``python -m tasks.trainers.evaluate best.pt data.yaml --imgsz 640``. One ``DetectionValidator`` run (the
trainer's own class: the same matching and figures) through a subclass that keeps what the stock
validator throws away: the per-image matches (for the bootstrap) and the exported predictions with
their image files (for the COCO figures by size and class); Ultralytics' own COCO pass is skipped.
What runs and why: docs/EVALUATION.md. Nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MATCH_TOLERANCE = 1e-9


def capturing_validator_class() -> type:
    """A ``DetectionValidator`` that keeps the per-image match statistics and the exported predictions."""
    from ultralytics.models.yolo.detect import DetectionValidator

    class CapturingValidator(DetectionValidator):
        def init_metrics(self, model: Any) -> None:
            super().init_metrics(model)
            self.kept_files: list[str] = []
            self.kept_predictions: list[tuple[str, dict]] = []
            self.kept_stats: dict[str, list] | None = None

        def update_metrics(self, preds: list, batch: dict) -> None:
            super().update_metrics(preds, batch)  # appends one stats entry per image, in this order
            self.kept_files.extend(batch["im_file"][: len(preds)])

        def pred_to_json(self, predn: dict, pbatch: dict) -> None:
            first = len(self.jdict)
            super().pred_to_json(predn, pbatch)
            self.kept_predictions.extend((pbatch["im_file"], entry) for entry in self.jdict[first:])

        def get_stats(self) -> dict:
            self.kept_stats = {k: list(v) for k, v in self.metrics.stats.items()}  # cleared by super()
            return super().get_stats()

        def eval_json(self, stats: dict) -> dict:
            return stats  # the plan's size buckets are evaluated by the engine instead

    return CapturingValidator


def validation_args(
    model: Any, data: Path, imgsz: int, device: str | None, options: dict[str, Any], save_dir: Path
) -> dict[str, Any]:
    """``YOLO.val``'s argument layering (checkpoint → rect → ours → mode), with exports switched on."""
    args = {**model.overrides, "rect": True}
    args.update(
        data=str(data),
        imgsz=imgsz,
        save_json=True,
        plots=False,
        verbose=False,
        project=str(save_dir.parent),
        name=save_dir.name,
        exist_ok=True,
        **{k: v for k, v in options.items() if v is not None},
    )
    if device is not None:
        args["device"] = device
    args["mode"] = "val"
    return args


def match_stats_of(validator: Any) -> Any:
    """The validator's per-image statistics as ``MatchStats`` (images in validation order)."""
    from flows.engine.metrics.bootstrap import MatchStats

    stats = validator.kept_stats or {}
    keys = ("tp", "conf", "pred_cls", "target_cls")
    images = [
        dict(zip(keys, row, strict=True)) for row in zip(*(stats.get(k, []) for k in keys), strict=True)
    ]
    return MatchStats.from_images(images, n_thresholds=int(validator.niou))


def prediction_records(validator: Any) -> list[tuple[str, int, list[float], float]]:
    """(image file, class, xywh px, score) of every exported prediction."""
    to_class = {cat: i for i, cat in enumerate(validator.class_map)}
    return [
        (file, to_class[e["category_id"]], e["bbox"], e["score"]) for file, e in validator.kept_predictions
    ]


def evaluate(
    weights: Path,
    data: Path,
    *,
    imgsz: int,
    device: str | None = None,
    settings: Any = None,
    batch: int | None = None,
    quantize: int | None = None,
    conf: float | None = None,
    iou: float | None = None,
    max_det: int | None = None,
    workers: int | None = 0,
    split: str = "val",
    save_dir: Path | None = None,
    leakage: Any = None,
) -> Any:
    """Validate ``weights`` once on ``data``'s ``split`` and return the ``Evaluation`` (figures + intervals).

    ``settings`` is the plan's ``EvaluationSettings`` (default: FOD buckets, 95 %, 1000 resamples,
    seed 0). Use the final validation's ``batch`` (twice the training batch) to get exactly its figures;
    ``quantize`` is Ultralytics' precision argument (None: fp32, as the trainer's final validation). With
    ``save_dir`` the validator's folder (``predictions.json``) is kept there; without, it is removed.
    With ``leakage`` (the plan's ``LeakageSettings``) the figures are also computed without the images
    that have a near-duplicate in the dataset's train split (``Evaluation.clean``).
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")  # before Ultralytics is imported: nothing may be downloaded
    from ultralytics import YOLO

    from flows.engine.metrics.bootstrap import bootstrap_intervals
    from flows.engine.metrics.sizes import evaluate_sizes, predictions_from_records, read_ground_truth
    from flows.engine.plan.buckets import EvaluationSettings
    from flows.engine.records.evaluation import Evaluation, OverallFigures

    settings = settings if settings is not None else EvaluationSettings()
    keep = save_dir is not None
    # absolute: Ultralytics puts a relative project under its own runs folder
    folder = Path(save_dir).resolve() if keep else Path(tempfile.mkdtemp(prefix="fod-eval-")) / "val"
    seconds: dict[str, float] = {}
    try:
        started = time.perf_counter()
        model = YOLO(str(weights))
        options = {
            "batch": batch,
            "quantize": quantize,
            "conf": conf,
            "iou": iou,
            "max_det": max_det,
            "workers": workers,
            "split": split,
        }
        validator = capturing_validator_class()(
            args=validation_args(model, data, imgsz, device, options, folder), _callbacks=model.callbacks
        )
        validator(model=model.model)
        seconds["validate"] = time.perf_counter() - started
        stats = match_stats_of(validator)
        summary = stats.summary()
        note = agreement_note(summary, validator.metrics.box.mean_results())
        started = time.perf_counter()
        intervals = bootstrap_intervals(
            stats, resamples=settings.resamples, seed=settings.seed, level=settings.confidence
        )
        seconds["bootstrap"] = time.perf_counter() - started
        sizes = None
        if settings.enabled:
            started = time.perf_counter()
            gt = read_ground_truth(validator.kept_files, validator.names)
            predictions = predictions_from_records(gt, prediction_records(validator))
            sizes = evaluate_sizes(gt, predictions, settings, max_det=int(validator.args.max_det))
            seconds["sizes"] = time.perf_counter() - started
        clean = None
        if leakage is not None:
            started = time.perf_counter()
            clean = clean_figures(stats, validator.kept_files, data, leakage, settings, intervals)
            seconds["clean"] = time.perf_counter() - started
        exported = folder / "predictions.json"
        return Evaluation(
            weights=str(weights),
            data=str(data),
            split=split,
            imgsz=int(imgsz),
            images=stats.n_images,
            settings=settings,
            overall=OverallFigures(**{k: finite(v) for k, v in summary._asdict().items()}),
            intervals=intervals,
            sizes=sizes,
            clean=clean,
            predictions_json=str(exported) if keep and exported.is_file() else None,
            seconds=seconds,
            note=note,
        )
    finally:
        if not keep:
            shutil.rmtree(folder.parent, ignore_errors=True)


def clean_figures(
    stats: Any, files: list[str], data: Path, leakage: Any, settings: Any, intervals: Any
) -> Any:
    """Ultralytics' figures and their intervals on the validated images without a near-duplicate in train.

    The rule and the hash cache are the dry run's, so the images left out are the ones it counted.
    With none left out, they are the overall figures and ``intervals`` (no second bootstrap).
    """
    import numpy as np

    from flows.engine.data.dataset import resolve_dataset
    from flows.engine.data.near_duplicates import leaked_images
    from flows.engine.metrics.bootstrap import bootstrap_intervals
    from flows.engine.records.evaluation import CleanFigures, OverallFigures

    train = resolve_dataset(data).images.get("train", [])
    leaked = leaked_images(files, train, leakage)
    keep = np.array([k for k, f in enumerate(files) if Path(f) not in leaked], dtype=np.intp)
    subset = stats.subset(keep)
    if len(keep) < len(files):
        intervals = (
            bootstrap_intervals(
                subset, resamples=settings.resamples, seed=settings.seed, level=settings.confidence
            )
            if len(keep)
            else None
        )
    figures = subset.summary()._asdict() if len(keep) else {}
    return CleanFigures(
        rule=leakage.label,
        images=len(keep),
        left_out=len(files) - len(keep),
        overall=OverallFigures(**{k: finite(v) for k, v in figures.items()}),
        intervals=intervals,
    )


def agreement_note(ours: Any, theirs: Any) -> str:
    """Empty when the numpy figures equal the validator's own; otherwise what differs (never expected)."""
    names = ("precision", "recall", "map50", "map50_95")
    gaps = [
        f"{n} {a:.6f} vs Ultralytics {float(b):.6f}"
        for n, a, b in zip(names, ours, theirs, strict=True)
        if not math.isclose(a, float(b), rel_tol=0, abs_tol=MATCH_TOLERANCE)
    ]
    return "recomputed figures differ from the validator's: " + "; ".join(gaps) if gaps else ""


def finite(value: float) -> float | None:
    """A float, or None when not finite."""
    return float(value) if math.isfinite(value) else None


def main(argv: list[str] | None = None) -> int:
    """Evaluate one best.pt and print the report section; ``--json`` writes the Evaluation."""
    from flows.engine.metrics.render import evaluation_section
    from flows.engine.plan.buckets import EvaluationSettings
    from flows.engine.plan.ultra_defaults import ultralytics_default

    parser = argparse.ArgumentParser(description="Accuracy by object size and class, with intervals")
    parser.add_argument("weights", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--imgsz", type=int, default=ultralytics_default("imgsz"))
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--preset", choices=("fod", "coco"), default="fod")
    parser.add_argument("--save-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    ns = parser.parse_args(argv)
    settings = EvaluationSettings(
        preset=ns.preset, resamples=ns.resamples, seed=ns.seed, confidence=ns.confidence
    )
    result = evaluate(
        ns.weights,
        ns.data,
        imgsz=ns.imgsz,
        device=ns.device,
        batch=ns.batch,
        settings=settings,
        save_dir=ns.save_dir,
    )
    print("\n".join(evaluation_section(str(ns.weights), result)))
    if ns.json is not None:
        from flows.engine.fsutil import atomic_write_text

        atomic_write_text(ns.json, result.model_dump_json(indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
