"""Accuracy by object size and by class: COCO-style evaluation of one validation's predictions.

``evaluate_sizes(gt, predictions, settings)`` gives AP50-95, AP50 and recall per size bucket, per class
and per class × bucket from faster-coco-eval (the C++ port of pycocotools that Ultralytics itself runs),
sizes in pixels of the original image: every ground-truth box and detection gets the bucket measure as
its COCO ``area``. Intervals come from ``coco_resample``, reported only when it reproduces the
evaluator's figures on the observed set (``SizeReport.reproduced``). ``read_ground_truth`` and
``predictions_from_records`` build the inputs. docs/EVALUATION.md. PIL and faster-coco-eval are
imported inside the functions that need them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flows.engine.data.labels import image_size, label_path, read_labels
from flows.engine.metrics.bootstrap import percentile_interval, resample_counts
from flows.engine.metrics.coco_resample import CocoResampler, ImageInput, cell_figures
from flows.engine.plan.buckets import EvaluationSettings, Measure, SizeBucket
from flows.engine.records.evaluation import BucketMetrics, ClassMetrics, SizeReport

ALL_AREA = (0.0, 1e5**2)
"""COCO's ``all`` area range (faster-coco-eval puts it first, whatever ranges are given)."""
SIZE_DECIMALS = 6
"""Box sides are rounded to 1e-6 px before bucketing, so that a 16 px box computed as 15.999999999999998
from normalised labels falls in the bucket that starts at 16."""
REPRODUCE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class LabeledImage:
    """One validation image: its file, size (after EXIF rotation) and ground-truth boxes (xywh, px)."""

    path: str
    width: int
    height: int
    cls: np.ndarray
    xywh: np.ndarray


@dataclass(frozen=True)
class GroundTruth:
    """The validation set's ground truth at the original image size, and the class names."""

    images: tuple[LabeledImage, ...]
    names: dict[int, str]

    def index(self) -> dict[str, int]:
        """Image path (resolved) → position."""
        return {im.path: i for i, im in enumerate(self.images)}


@dataclass(frozen=True)
class Predictions:
    """Detections per image of a GroundTruth, in its image order: class, xywh (px, top-left), score."""

    cls: tuple[np.ndarray, ...]
    xywh: tuple[np.ndarray, ...]
    score: tuple[np.ndarray, ...]


def image_key(path: str | Path) -> str:
    """How images are matched between the label files and Ultralytics: the resolved path."""
    return str(Path(path).resolve())


def label_boxes(label_file: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(classes, xywh in pixels) of one YOLO label file, read as Ultralytics reads it (``data.labels``):
    polygons as their bounding boxes, repeated rows once, no file (or a refused one): no objects."""
    table = read_labels(label_file, nc=None).boxes
    cls = table[:, 0].astype(int)
    xc, yc, w, h = (table[:, 1] * width, table[:, 2] * height, table[:, 3] * width, table[:, 4] * height)
    return cls, np.stack((xc - w / 2, yc - h / 2, w, h), 1)


def read_ground_truth(images: Iterable[str | Path], names: Mapping[int, str]) -> GroundTruth:
    """Ground truth of these images from their YOLO label files (``images/`` → ``labels/``, .txt), at
    the image's size as Ultralytics sees it (EXIF rotations of 90° swap width and height)."""
    out = []
    for image in images:
        path = Path(image)
        size = image_size(path)
        if size is None:
            raise ValueError(f"{path}: the image cannot be read")
        width, height = size
        cls, xywh = label_boxes(label_path(path), width, height)
        out.append(LabeledImage(image_key(path), width, height, cls, xywh))
    return GroundTruth(tuple(out), {int(k): str(v) for k, v in names.items()})


def predictions_from_records(
    gt: GroundTruth, records: Iterable[tuple[str, int, Sequence[float], float]]
) -> Predictions:
    """Predictions from (image path, class, xywh px, score) records; images not in ``gt`` are an error."""
    index = gt.index()
    rows: list[list[tuple[int, Sequence[float], float]]] = [[] for _ in gt.images]
    for path, cls, box, score in records:
        key = image_key(path)
        if key not in index:
            raise ValueError(f"prediction for {path}, which is not an image of the ground truth")
        rows[index[key]].append((int(cls), box, float(score)))
    return Predictions(
        cls=tuple(np.array([r[0] for r in im], int) for im in rows),
        xywh=tuple(np.array([r[1] for r in im], float).reshape(-1, 4) for im in rows),
        score=tuple(np.array([r[2] for r in im], float) for im in rows),
    )


def coco_area(xywh: np.ndarray, measure: Measure) -> np.ndarray:
    """The ``area`` each box gets: (longest side)² or w×h, sides rounded to SIZE_DECIMALS."""
    w, h = np.round(xywh[:, 2], SIZE_DECIMALS), np.round(xywh[:, 3], SIZE_DECIMALS)
    return np.maximum(w, h) ** 2 if measure == "longest_side" else w * h


def area_range(bucket: SizeBucket) -> tuple[float, float]:
    """COCO's closed range for the half-open bucket ``[lo, hi)``: ``[lo², the float just below hi²]``."""
    low = bucket.min_px**2
    high = ALL_AREA[1] if bucket.max_px is None else float(np.nextafter(bucket.max_px**2, 0.0))
    return low, high


def coco_inputs(gt: GroundTruth, predictions: Predictions, measure: Measure) -> list[ImageInput]:
    """Per image, what COCO matching needs, with every box's area in the bucket measure."""
    return [
        ImageInput(
            gt_cls=im.cls,
            gt_xywh=im.xywh,
            gt_area=coco_area(im.xywh, measure),
            dt_cls=predictions.cls[i],
            dt_xywh=predictions.xywh[i],
            dt_area=coco_area(predictions.xywh[i], measure),
            dt_score=predictions.score[i],
        )
        for i, im in enumerate(gt.images)
    ]


def coco_records(inputs: Sequence[ImageInput]) -> tuple[list[dict], list[dict]]:
    """COCO ground-truth annotations (with the bucket measure as ``area``) and detections, image ids 1…n."""
    annotations: list[dict] = []
    detections: list[dict] = []
    for i, inp in enumerate(inputs):
        for c, box, area in zip(inp.gt_cls, inp.gt_xywh, inp.gt_area, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(c) + 1,
                    "bbox": [float(v) for v in box],
                    "area": float(area),
                    "iscrowd": 0,
                }
            )
        for c, box, score in zip(inp.dt_cls, inp.dt_xywh, inp.dt_score, strict=True):
            detections.append(
                {
                    "image_id": i + 1,
                    "category_id": int(c) + 1,
                    "bbox": [float(v) for v in box],
                    "score": float(score),
                }
            )
    return annotations, detections


def run_evaluator(
    inputs: Sequence[ImageInput],
    gt: GroundTruth,
    classes: Sequence[int],
    ranges: Mapping[str, tuple[float, float]],
    max_det: int,
) -> tuple[np.ndarray, np.ndarray]:
    """faster-coco-eval's (precision (T, R, K, A), recall (T, K, A)); area range 0 is ``all``."""
    from faster_coco_eval import COCO, COCOeval_faster

    images = [
        {"id": i + 1, "width": im.width, "height": im.height, "file_name": im.path}
        for i, im in enumerate(gt.images)
    ]
    annotations, detections = coco_records(inputs)
    categories = [{"id": c + 1, "name": gt.names.get(c, str(c))} for c in classes]
    coco_gt = COCO({"images": images, "annotations": annotations, "categories": categories})
    coco_dt = coco_gt.loadRes(detections)
    areas = np.concatenate([inp.dt_area for inp in inputs]) if inputs else np.zeros(0)
    for ann in coco_dt.dataset["annotations"]:  # loadRes set w×h; ids follow the order given
        ann["area"] = float(areas[ann["id"] - 1])
    evaluator = COCOeval_faster(
        coco_gt, coco_dt, iouType="bbox", ranges={k: list(v) for k, v in ranges.items()}, print_function=quiet
    )
    evaluator.params.maxDets = [int(max_det)]
    evaluator.params.catIds = [c + 1 for c in classes]
    evaluator.evaluate()
    evaluator.accumulate()
    return np.asarray(evaluator.eval["precision"])[..., -1], np.asarray(evaluator.eval["recall"])[..., -1]


def quiet(*_: object) -> None:
    """The evaluator's print function: the figures are reported in tables, not in its log."""


def evaluator_name() -> str:
    """``faster-coco-eval <version>``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"faster-coco-eval {version('faster-coco-eval')}"
    except PackageNotFoundError:
        return "faster-coco-eval"


def evaluate_sizes(
    gt: GroundTruth,
    predictions: Predictions,
    settings: EvaluationSettings,
    *,
    max_det: int = 300,
) -> SizeReport:
    """Per-bucket, per-class and per-class-per-bucket COCO figures, with bootstrap intervals.

    The resamples are ``resample_counts(len(gt.images), settings.resamples, settings.seed)``: the same
    as the overall figures' when the images are in the validator's order.
    """
    started = time.perf_counter()
    classes = sorted(gt.names) if gt.names else sorted({int(c) for im in gt.images for c in im.cls})
    ranges = {b.name: area_range(b) for b in settings.buckets}
    inputs = coco_inputs(gt, predictions, settings.measure)
    precision, recall = run_evaluator(inputs, gt, classes, ranges, max_det)
    coco_seconds = time.perf_counter() - started
    labels = [("all", "all sizes"), *((b.name, b.label()) for b in settings.buckets)]
    objects = count_objects(gt, classes, [ALL_AREA, *ranges.values()], settings.measure)
    boot = BucketBootstrap()
    if settings.bucket_intervals and gt.images:
        boot = bucket_intervals(
            inputs, classes, [ALL_AREA, *ranges.values()], max_det, settings, (precision, recall)
        )
    sizes, per_class = assemble(precision, recall, labels, objects, classes, gt.names, boot.intervals)
    return SizeReport(
        evaluator=evaluator_name(),
        measure=settings.measure,
        max_det=max_det,
        images=len(gt.images),
        buckets=settings.buckets,
        sizes=sizes,
        classes=per_class,
        reproduced=boot.reproduced,
        level=settings.confidence if boot.reproduced else None,
        resamples=settings.resamples if boot.reproduced else None,
        seed=settings.seed if boot.reproduced else None,
        coco_seconds=coco_seconds,
        bootstrap_seconds=boot.seconds,
        note=boot.note,
    )


def count_objects(
    gt: GroundTruth, classes: Sequence[int], ranges: Sequence[tuple[float, float]], measure: Measure
) -> np.ndarray:
    """Objects per (class, range) with the evaluator's rule (area inside the closed range)."""
    counts = np.zeros((len(classes), len(ranges)), int)
    for im in gt.images:
        area = coco_area(im.xywh, measure)
        for k, c in enumerate(classes):
            mine = area[im.cls == c]
            for a, (lo, hi) in enumerate(ranges):
                counts[k, a] += int(((mine >= lo) & (mine <= hi)).sum())
    return counts


def assemble(
    precision: np.ndarray,
    recall: np.ndarray,
    labels: Sequence[tuple[str, str]],
    objects: np.ndarray,
    classes: Sequence[int],
    names: Mapping[int, str],
    intervals: np.ndarray | None = None,
) -> tuple[tuple[BucketMetrics, ...], tuple[ClassMetrics, ...]]:
    """The report's bucket rows (all classes) and class rows from the evaluator's arrays.

    ``intervals`` is (classes + 1, ranges, 3) of Interval or None, in ``cell_figures``' layout.
    """
    figures = cell_figures(precision, recall)

    def cell(k: int, a: int) -> BucketMetrics:
        ap, ap50, rec = (None if math.isnan(v) else float(v) for v in figures[k, a])
        ci = intervals[k, a] if intervals is not None else (None, None, None)
        n = int(objects[:, a].sum() if k == len(classes) else objects[k, a])
        name, label = labels[a]
        return BucketMetrics(
            bucket=name,
            label=label,
            objects=n,
            map50_95=ap,
            map50=ap50,
            recall=rec,
            map50_95_ci=ci[0],
            map50_ci=ci[1],
            recall_ci=ci[2],
        )

    sizes = tuple(cell(len(classes), a) for a in range(len(labels)))
    per_class = tuple(
        ClassMetrics(
            class_id=c,
            name=names.get(c, str(c)),
            objects=int(objects[k, 0]),
            sizes=tuple(cell(k, a) for a in range(len(labels))),
        )
        for k, c in enumerate(classes)
    )
    return sizes, per_class


@dataclass(frozen=True)
class BucketBootstrap:
    """What the per-bucket bootstrap gave: intervals in ``cell_figures``' layout, or why there are none."""

    reproduced: bool = False
    intervals: np.ndarray | None = None
    """(classes + 1, ranges, 3) of Interval or None; the last class row is all classes together."""
    seconds: float = 0.0
    note: str = ""


def bucket_intervals(
    inputs: Sequence[ImageInput],
    classes: Sequence[int],
    ranges: Sequence[tuple[float, float]],
    max_det: int,
    settings: EvaluationSettings,
    observed: tuple[np.ndarray, np.ndarray],
) -> BucketBootstrap:
    """Bootstrap intervals of every (class or all, bucket) cell, if the resampler reproduces the evaluator.

    ``observed`` is the evaluator's (precision, recall); the resampler's own figures of the observed
    set must equal them to REPRODUCE_TOLERANCE, or no interval is reported.
    """
    started = time.perf_counter()
    resampler = CocoResampler(inputs, classes, ranges, max_det=max_det)
    own = resampler.accumulate()
    gap = max(float(np.abs(o - e).max()) if e.size else 0.0 for o, e in zip(own, observed, strict=True))
    if not gap <= REPRODUCE_TOLERANCE:
        note = f"no size intervals: the resampling code differs from the evaluator by {gap:.2g}"
        return BucketBootstrap(note=note, seconds=time.perf_counter() - started)
    values = np.stack(
        [
            cell_figures(*resampler.accumulate(counts))
            for counts in resample_counts(len(inputs), settings.resamples, settings.seed)
        ]
    )  # (resamples, classes + 1, ranges, 3)
    cells = np.empty(values.shape[1:], dtype=object)
    for index in np.ndindex(*values.shape[1:]):
        cells[index] = percentile_interval(values[(slice(None), *index)], settings.confidence)
    return BucketBootstrap(True, cells, time.perf_counter() - started)
