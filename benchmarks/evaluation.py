"""How wide the intervals are and what the evaluation costs: bootstrap time, COCO-vs-Ultralytics gap.

Why this exists: issue 10 asks that every gated figure carry a bootstrap interval (≥ 1,000 resamples
over validation images) that costs seconds, not minutes, for a validation set of a few thousand
images, and that the COCO evaluator's overall mAP50-95 be compared with Ultralytics' on the same
predictions. Two parts, written to one JSON file and printed as Markdown rows for docs/EVALUATION.md:

1. ``synthetic``: a seeded FOD-like validation set of ``--images`` images (default 3,000; about 3
   objects per image of 6–96 px longest side, small ones found less often, ~20 low-confidence false
   positives per image, 1280×720). Its per-image matches are COCO's greedy matching at size range
   ``all`` (the rule Ultralytics 8.4 uses too). Timed: the overall bootstrap (Ultralytics' four
   figures), faster-coco-eval on the set, the per-bucket bootstrap (setup and resamples), and, with
   ``--cpp-reference N``, N resamples through faster-coco-eval's own C++ accumulation, which is what a
   bootstrap without the numpy rewrite would cost.
2. ``real``: ``tasks.trainers.evaluate.evaluate`` on each given best.pt and its shared dataset
   (``--golf-weights``/``--golf-imgsz``, ``--lunar-weights``/``--lunar-imgsz``; or ``--train-epochs N``
   trains yolo11n from scratch on CPU first): interval widths, figures per bucket, timings, COCO − UL.
   docs/EVALUATION.md used golfball 20 epochs at 320 and lunar 40 epochs at 640 (batch 8).

Run:  YOLO_OFFLINE=1 nice -n 10 .venv/bin/python benchmarks/evaluation.py --out evaluation.json \\
          [--golf-weights runs/golf/weights/best.pt --lunar-weights runs/lunar/weights/best.pt]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "datasets"
DATASETS = {
    "golfball_small": SHARED / "golfball_small" / "data.yaml",
    "lunar_crater_small": SHARED / "lunar_crater_small" / "data.yaml",
}


def synthetic_set(n_images: int, seed: int) -> tuple[Any, Any]:
    """(GroundTruth, Predictions) of a seeded FOD-like validation set."""
    from flows.engine.metrics.sizes import GroundTruth, LabeledImage, Predictions

    rng = np.random.default_rng(seed)
    images, cls, xywh, score = [], [], [], []
    for i in range(n_images):
        n = rng.poisson(3)
        side = np.exp(rng.uniform(np.log(6), np.log(96), n))
        wh = np.stack((side, side * rng.uniform(0.5, 1.0, n)), 1)
        xy = rng.uniform(0, [1280 - 100, 720 - 100], (n, 2))
        gt_cls = rng.integers(0, 3, n)
        images.append(LabeledImage(f"/synthetic/{i}.jpg", 1280, 720, gt_cls, np.concatenate((xy, wh), 1)))
        found = rng.random(n) < np.where(side < 16, 0.4, np.where(side < 32, 0.7, 0.85))
        jitter = rng.normal(0, 0.08, (n, 4)) * side[:, None]
        tp_boxes = np.concatenate((xy + jitter[:, :2], np.maximum(1, wh + jitter[:, 2:])), 1)[found]
        n_fp = rng.poisson(20)
        fp_boxes = np.concatenate((rng.uniform(0, [1200, 650], (n_fp, 2)), rng.uniform(4, 80, (n_fp, 2))), 1)
        cls.append(np.concatenate((gt_cls[found], rng.integers(0, 3, n_fp))))
        xywh.append(np.concatenate((tp_boxes, fp_boxes)).reshape(-1, 4))
        score.append(
            np.concatenate((rng.uniform(0.3, 1.0, found.sum()), rng.uniform(0.001, 0.5, n_fp))).round(5)
        )
    return GroundTruth(tuple(images), {0: "bolt", 1: "stone", 2: "wire"}), Predictions(
        tuple(cls), tuple(xywh), tuple(score)
    )


def match_stats_of(gt: Any, predictions: Any) -> Any:
    """Ultralytics-style per-image stats: COCO's greedy matching per class, no size range."""
    from flows.engine.metrics.bootstrap import MatchStats
    from flows.engine.metrics.coco_resample import IOU_THRESHOLDS, bbox_iou, match_image

    images = []
    for im, c, b, s in zip(gt.images, predictions.cls, predictions.xywh, predictions.score, strict=True):
        tp = np.zeros((len(c), 10), bool)
        for k in np.unique(np.concatenate((c, im.cls))):
            d = np.flatnonzero(c == k)
            d = d[np.argsort(-s[d], kind="mergesort")]
            g = im.cls == k
            if len(d) and g.any():
                matched, _ = match_image(bbox_iou(b[d], im.xywh[g]), np.zeros(g.sum(), bool), IOU_THRESHOLDS)
                tp[d] = matched.T
        images.append({"tp": tp, "conf": s, "pred_cls": c.astype(float), "target_cls": im.cls.astype(float)})
    return MatchStats.from_images(images)


def timed(fn: Any, repeats: int) -> tuple[Any, dict[str, list[float]]]:
    """Run ``fn`` ``repeats`` times; its last result, every wall time and every CPU time of this process.

    Both: on a shared machine the wall time includes waiting for a core, the CPU time does not.
    """
    times: dict[str, list[float]] = {"wall_s": [], "cpu_s": []}
    result = None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        times["wall_s"].append(time.perf_counter() - wall)
        times["cpu_s"].append(time.process_time() - cpu)
    return result, times


def cpp_reference_seconds(gt: Any, predictions: Any, settings: Any, resamples: int) -> float | None:
    """Seconds per resample of faster-coco-eval's own accumulation over resampled per-image results."""
    if resamples <= 0:
        return None
    import faster_coco_eval.faster_eval_api_cpp as cpp
    from faster_coco_eval import COCO, COCOeval_faster

    from flows.engine.metrics.sizes import area_range, coco_inputs, coco_records

    inputs = coco_inputs(gt, predictions, settings.measure)
    anns, dets = coco_records(inputs)
    coco_gt = COCO(
        {
            "images": [{"id": i + 1, "width": 1280, "height": 720} for i in range(len(inputs))],
            "annotations": anns,
            "categories": [{"id": k + 1, "name": str(k)} for k in range(3)],
        }
    )
    coco_dt = coco_gt.loadRes(dets)
    ranges = {b.name: list(area_range(b)) for b in settings.buckets}
    ev = COCOeval_faster(
        coco_gt, coco_dt, iouType="bbox", ranges=ranges, separate_eval=True, print_function=lambda *_: None
    )
    ev.params.maxDets = [300]
    ev.evaluate()
    per_image = np.array(ev._evalImgs_cpp, dtype=object).reshape(3, len(ranges) + 1, len(inputs))
    params = copy.deepcopy(ev._paramsEval)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for _ in range(resamples):
        cpp.COCOevalAccumulate(
            params, list(per_image[:, :, rng.integers(0, len(inputs), len(inputs))].ravel())
        )
    return (time.perf_counter() - started) / resamples


def bench_synthetic(n_images: int, resamples: int, repeats: int, cpp_resamples: int) -> dict[str, Any]:
    """Timings and widths on the synthetic set."""
    from flows.engine.metrics.bootstrap import bootstrap_intervals
    from flows.engine.metrics.sizes import evaluate_sizes
    from flows.engine.plan.buckets import EvaluationSettings

    settings = EvaluationSettings(resamples=resamples)
    gt, predictions = synthetic_set(n_images, seed=0)
    stats = match_stats_of(gt, predictions)
    intervals, overall_times = timed(lambda: bootstrap_intervals(stats, resamples=resamples, seed=0), repeats)
    report, size_times = timed(lambda: evaluate_sizes(gt, predictions, settings, max_det=300), repeats)
    return {
        "images": n_images,
        "objects": len(stats.target_cls),
        "predictions": len(stats.conf),
        "resamples": resamples,
        "overall_bootstrap": overall_times,
        "overall_figures": stats.summary()._asdict(),
        "overall_intervals": intervals.model_dump(mode="json"),
        "sizes_total": size_times,
        "sizes_coco_s": report.coco_seconds,
        "sizes_bootstrap_s": report.bootstrap_seconds,
        "sizes": report.model_dump(mode="json"),
        "cpp_accumulate_s_per_resample": cpp_reference_seconds(gt, predictions, settings, cpp_resamples),
    }


def train_yolo11n_from_scratch(data: Path, epochs: int, imgsz: int, batch: int, work: Path) -> Path:
    """yolo11n from scratch on CPU, the recipe docs/EVALUATION.md used."""
    from ultralytics import YOLO

    YOLO("yolo11n.yaml").train(
        data=str(data), epochs=epochs, imgsz=imgsz, batch=batch, workers=0, device="cpu", plots=False,
        amp=False, seed=0, project=str(work), name=data.parent.name, exist_ok=True,
    )  # fmt: skip
    return work / data.parent.name / "weights" / "best.pt"


def bench_real(name: str, weights: Path, imgsz: int, resamples: int) -> dict[str, Any]:
    """The evaluation of one best.pt on its shared dataset."""
    from flows.engine.plan.buckets import EvaluationSettings
    from tasks.trainers.evaluate import evaluate

    evaluation = evaluate(
        weights, DATASETS[name], imgsz=imgsz, device="cpu", settings=EvaluationSettings(resamples=resamples)
    )
    return {"weights": str(weights), "imgsz": imgsz, "evaluation": evaluation.model_dump(mode="json"),
            "coco_minus_ultralytics": evaluation.coco_minus_ultralytics}  # fmt: skip


def machine() -> dict[str, Any]:
    """Date, commit, CPU: what the numbers depend on."""
    cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8") if Path("/proc/cpuinfo").is_file() else ""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), ""
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit.stdout.strip(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model or platform.processor(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "versions": {p: metadata.version(p) for p in ("numpy", "ultralytics", "faster-coco-eval", "torch")},
    }


def width(interval: dict | None) -> str:
    """``0.0123`` or a dash."""
    return "–" if interval is None else f"{interval['high'] - interval['low']:.4f}"


def markdown(result: dict[str, Any]) -> list[str]:
    """Rows for docs/EVALUATION.md."""
    lines = []
    syn = result.get("synthetic")
    if syn:
        lines += [
            f"synthetic: {syn['images']} images, {syn['objects']} objects, {syn['predictions']} predictions, "
            f"{syn['resamples']} resamples: overall bootstrap median "
            f"{statistics.median(syn['overall_bootstrap']['wall_s']):.2f} s wall, "
            f"{statistics.median(syn['overall_bootstrap']['cpu_s']):.2f} s CPU; "
            "sizes (evaluator + bootstrap) median "
            f"{statistics.median(syn['sizes_total']['wall_s']):.2f} s wall, "
            f"{statistics.median(syn['sizes_total']['cpu_s']):.2f} s CPU (last run: faster-coco-eval "
            f"{syn['sizes_coco_s']:.2f} s, bootstrap {syn['sizes_bootstrap_s']:.2f} s wall); "
            f"C++ accumulate per resample {syn['cpp_accumulate_s_per_resample']}",
        ]
    for name, real in result.get("real", {}).items():
        ev = real["evaluation"]
        iv = ev["intervals"]
        lines.append(
            f"| {name} | {ev['images']} | "
            + " | ".join(
                f"{ev['overall'][m]:.4f} ± {width(iv[m])}"
                for m in ("precision", "recall", "map50", "map50_95")
            )
            + f" | {real['coco_minus_ultralytics']:+.4f} | {ev['seconds'].get('validate', 0):.1f} / "
            f"{ev['seconds'].get('bootstrap', 0):.2f} / {ev['seconds'].get('sizes', 0):.2f} s |"
        )
        for cell in ev["sizes"]["sizes"]:
            ap = "–" if cell["map50_95"] is None else f"{cell['map50_95']:.4f}"
            lines.append(
                f"|   {cell['label']} | {cell['objects']} | AP50-95 {ap} width "
                f"{width(cell['map50_95_ci'])} | recall width {width(cell['recall_ci'])} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpp-reference", type=int, default=0, metavar="N")
    parser.add_argument("--golf-weights", type=Path)
    parser.add_argument("--lunar-weights", type=Path)
    parser.add_argument("--golf-imgsz", type=int, default=320)
    parser.add_argument("--lunar-imgsz", type=int, default=640)
    parser.add_argument(
        "--train-epochs", type=int, default=0, help="train missing weights first (yolo11n, CPU)"
    )
    parser.add_argument("--work", type=Path, default=Path("runs/bench-evaluation"))
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--out", type=Path)
    ns = parser.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    result: dict[str, Any] = {"machine": machine(), "real": {}}
    if not ns.skip_synthetic:
        result["synthetic"] = bench_synthetic(ns.images, ns.resamples, ns.repeats, ns.cpp_reference)
    runs = (  # the training batch of each set as docs/EVALUATION.md trained it
        ("golfball_small", ns.golf_weights, ns.golf_imgsz, 16),
        ("lunar_crater_small", ns.lunar_weights, ns.lunar_imgsz, 8),
    )
    for name, given, imgsz, batch in runs:
        trained = (
            train_yolo11n_from_scratch(DATASETS[name], ns.train_epochs, imgsz, batch, ns.work)
            if given is None and ns.train_epochs
            else None
        )
        weights = given or trained
        if weights is not None:
            result["real"][name] = bench_real(name, weights, imgsz, ns.resamples)
    print("\n".join(markdown(result)))
    if ns.out:
        ns.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
