"""Accuracy by size and class, and confidence intervals: known answers, equality with Ultralytics'
arithmetic and with faster-coco-eval, and the plan-side checks of buckets and gate references.

Pure tests (no training): synthetic validation sets whose answers are known by construction.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, SHARED, needs_shared
from pydantic import ValidationError

from flows.engine.metrics import ap as ap_module
from flows.engine.metrics.bootstrap import (
    MatchStats,
    Resampler,
    bootstrap_intervals,
    percentile_interval,
    resample_counts,
)
from flows.engine.metrics.coco_resample import CocoResampler
from flows.engine.metrics.evaluation import condition_name, judge_minimum
from flows.engine.metrics.render import (
    class_table,
    model_card_lines,
    plot_size_buckets,
    size_table,
    with_interval,
)
from flows.engine.metrics.sizes import (
    ALL_AREA,
    GroundTruth,
    LabeledImage,
    Predictions,
    area_range,
    coco_inputs,
    count_objects,
    evaluate_sizes,
    label_boxes,
    predictions_from_records,
    read_ground_truth,
    run_evaluator,
)
from flows.engine.plan.buckets import (
    COCO_BUCKETS,
    FOD_BUCKETS,
    EvaluationSettings,
    SizeBucket,
    bucket_problems,
    reference_problems,
    resolve_class,
)
from flows.engine.records.evaluation import Evaluation, Interval, OverallFigures

THRESHOLDS = np.linspace(0.5, 0.95, 10)
FAST = EvaluationSettings(resamples=1000, seed=0)

# ---------------------------------------------------------------- synthetic sets


def synthetic_gt(n_images: int = 10) -> GroundTruth:
    """Every image: one box of each longest side 8, 12, 20, 28, 40, 56, 80, 120 px; classes alternate."""
    sides = [8, 12, 20, 28, 40, 56, 80, 120]
    images = []
    for i in range(n_images):
        shapes = [(s, s * (0.5 if (i + j) % 2 else 1.0)) for j, s in enumerate(sides)]
        images.append(
            LabeledImage(
                path=f"/synthetic/img{i}.jpg",
                width=640,
                height=480,
                cls=np.array([(i + j) % 2 for j in range(len(sides))], int),
                xywh=np.array(
                    [[10 + 150 * (j % 4), 10 + 150 * (j // 4), w, h] for j, (w, h) in enumerate(shapes)]
                ),
            )
        )
    return GroundTruth(tuple(images), {0: "bolt", 1: "stone"})


def perfect_predictions(gt: GroundTruth, keep=lambda xywh: np.ones(len(xywh), bool)) -> Predictions:
    """Each kept ground-truth box predicted exactly, with distinct scores."""
    cls, xywh, score = [], [], []
    for i, im in enumerate(gt.images):
        mask = keep(im.xywh)
        cls.append(im.cls[mask])
        xywh.append(im.xywh[mask])
        score.append(0.9 - 0.001 * np.arange(mask.sum()) - 0.01 * i)
    return Predictions(tuple(cls), tuple(xywh), tuple(score))


def random_coco_set(n_images: int, seed: int) -> tuple[GroundTruth, Predictions]:
    """Random objects of 4–120 px (some elongated), jittered detections, duplicates and false positives."""
    rng = np.random.default_rng(seed)
    images, cls, xywh, score = [], [], [], []
    for i in range(n_images):
        n = rng.poisson(4)
        sides = rng.uniform(4, 120, n)
        ratio = rng.uniform(0.3, 1.0, n)
        wh = np.stack((sides, sides * ratio), 1)
        swap = rng.random(n) < 0.5
        wh[swap] = wh[swap][:, ::-1]
        xy = rng.uniform(0, 500, (n, 2))
        gt_cls = rng.integers(0, 3, n)
        images.append(
            LabeledImage(f"/random/{i}.jpg", 640, 640, gt_cls, np.concatenate((xy, wh), 1).reshape(-1, 4))
        )
        boxes, classes, scores = [], [], []
        for j in range(n):
            for _ in range(rng.integers(0, 3)):
                jitter = rng.normal(0, 0.08 * sides[j], 4)
                boxes.append([*(xy[j] + jitter[:2]), *np.maximum(1, wh[j] + jitter[2:])])
                classes.append(gt_cls[j])
                scores.append(round(float(rng.random()), 2))  # ties, as Ultralytics' 5-decimal export has
        for _ in range(rng.poisson(6)):
            boxes.append([*rng.uniform(0, 500, 2), *rng.uniform(3, 60, 2)])
            classes.append(rng.integers(0, 3))
            scores.append(round(float(rng.random() * 0.5), 2))
        cls.append(np.array(classes, int))
        xywh.append(np.array(boxes, float).reshape(-1, 4))
        score.append(np.array(scores, float))
    return GroundTruth(tuple(images), {0: "a", 1: "b", 2: "c"}), Predictions(
        tuple(cls), tuple(xywh), tuple(score)
    )


def random_match_stats(n_images: int, seed: int, *, n_classes: int = 3, ties: bool = False) -> list[dict]:
    """Per-image Ultralytics-style stats: true positives monotone over IoU thresholds, empty images too."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n_images):
        n_labels = rng.poisson(2)
        target = rng.integers(0, n_classes, n_labels)
        found = rng.random(n_labels) < 0.7
        iou = rng.uniform(0.3, 1.0, found.sum())
        n_fp = rng.poisson(5)
        conf = np.concatenate((rng.uniform(0.2, 1.0, found.sum()), rng.uniform(0.001, 0.7, n_fp)))
        images.append(
            {
                "tp": np.concatenate((iou[:, None] >= THRESHOLDS, np.zeros((n_fp, 10), bool))),
                "conf": conf.round(2) if ties else conf,
                "pred_cls": np.concatenate((target[found], rng.integers(0, n_classes, n_fp))).astype(float),
                "target_cls": target.astype(float),
            }
        )
    return images


def perfect_match_stats(n_images: int = 40) -> MatchStats:
    """Every label found at IoU 1 with confidence 0.9, no false positive."""
    images = []
    for i in range(n_images):
        target = np.array([i % 2] * (1 + i % 3), float)
        images.append(
            {
                "tp": np.ones((len(target), 10), bool),
                "conf": np.full(len(target), 0.9),
                "pred_cls": target,
                "target_cls": target,
            }
        )
    return MatchStats.from_images(images)


# ---------------------------------------------------------------- Ultralytics' arithmetic


@pytest.mark.parametrize(("seed", "ties"), [(0, False), (1, True), (2, True), (3, False)])
def test_ap_per_class_equals_ultralytics(seed, ties):
    """The engine's numpy copy gives Ultralytics' own per-class P, R and AP on the same matches."""
    from ultralytics.utils.metrics import ap_per_class

    stats = MatchStats.from_images(random_match_stats(150, seed, ties=ties))
    ours = ap_module.ap_per_class(stats.tp, stats.conf, stats.pred_cls, stats.target_cls)
    theirs = ap_per_class(stats.tp, stats.conf, stats.pred_cls, stats.target_cls)
    np.testing.assert_array_equal(ours.classes, theirs[6])
    np.testing.assert_allclose(ours.precision, theirs[2], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.recall, theirs[3], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.ap, theirs[5], rtol=0, atol=1e-12)


def test_ap_of_no_predictions_and_no_labels():
    """No labels: no classes and zeros (Ultralytics' mean of nothing); labels without predictions: AP 0."""
    empty = ap_module.box_metrics(np.zeros((0, 10), bool), np.zeros(0), np.zeros(0), np.zeros(0))
    assert empty == (0.0, 0.0, 0.0, 0.0)
    missed = ap_module.box_metrics(np.zeros((0, 10), bool), np.zeros(0), np.zeros(0), np.array([0.0, 0.0]))
    assert missed == (0.0, 0.0, 0.0, 0.0)


def explicit_resample(stats: MatchStats, counts: np.ndarray) -> MatchStats:
    """The explicit resample: image i's predictions and labels repeated ``counts[i]`` times (slow and
    simple; the reference the fast path is tested against)."""
    drawn = np.repeat(np.arange(stats.n_images), counts)
    pred_rows = [np.flatnonzero(stats.pred_image == i) for i in drawn]
    label_rows = [np.flatnonzero(stats.target_image == i) for i in drawn]
    p = np.concatenate(pred_rows).astype(int) if pred_rows else np.zeros(0, int)
    t = np.concatenate(label_rows).astype(int) if label_rows else np.zeros(0, int)
    return MatchStats(
        tp=stats.tp[p],
        conf=stats.conf[p],
        pred_cls=stats.pred_cls[p],
        pred_image=np.repeat(np.arange(len(drawn)), [len(r) for r in pred_rows]),
        target_cls=stats.target_cls[t],
        target_image=np.repeat(np.arange(len(drawn)), [len(r) for r in label_rows]),
        n_images=len(drawn),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_resample_equals_ultralytics_on_the_repeated_images(seed):
    """A resample's figures equal Ultralytics' ap_per_class on the images explicitly repeated."""
    from ultralytics.utils.metrics import ap_per_class

    stats = MatchStats.from_images(random_match_stats(120, seed))
    resampler = Resampler(stats)
    for counts in resample_counts(stats.n_images, 4, seed):
        r = explicit_resample(stats, counts)
        theirs = ap_per_class(r.tp, r.conf, r.pred_cls, r.target_cls)
        ours = resampler.class_ap(counts)
        np.testing.assert_array_equal(ours.classes, theirs[6])
        np.testing.assert_allclose(ours.ap, theirs[5], rtol=0, atol=1e-12)
        np.testing.assert_allclose(ours.precision, theirs[2], rtol=0, atol=1e-12)
        np.testing.assert_allclose(ours.recall, theirs[3], rtol=0, atol=1e-12)


def test_resample_of_every_image_once_is_the_observed_set():
    """Counts of all ones reproduce the observed figures exactly, ties in confidence included."""
    stats = MatchStats.from_images(random_match_stats(200, 5, ties=True))
    assert Resampler(stats).summary(np.ones(stats.n_images, int)) == stats.summary()


def test_perfect_set_has_ultralytics_perfect_figures_and_zero_width_intervals():
    """Perfect predictions: P = R = 1 and AP 0.995 (Ultralytics' envelope falls to 0 at recall 1, so the
    trapezoid over 101 points loses half a step); every resample is perfect too: zero-width intervals."""
    stats = perfect_match_stats()
    assert stats.summary() == pytest.approx((1.0, 1.0, 0.995, 0.995), abs=1e-12)
    intervals = bootstrap_intervals(stats, resamples=1000, seed=0, level=0.95)
    for metric, value in zip(
        ("precision", "recall", "map50", "map50_95"), (1.0, 1.0, 0.995, 0.995), strict=True
    ):
        interval = intervals.get(metric)
        assert interval is not None
        assert interval.width == pytest.approx(0.0, abs=1e-12)
        assert interval.low == pytest.approx(value, abs=1e-12)


def test_recall_interval_has_the_binomial_width():
    """One object per image, found in a fraction q of them with no false positives: recall is a
    binomial proportion, so the 95 % interval's half-width is about 1.96·√(q(1−q)/n)."""
    n, q = 400, 0.5
    images = []
    for i in range(n):
        found = i % 2 == 0
        images.append(
            {
                "tp": np.ones((int(found), 10), bool),
                "conf": np.full(int(found), 0.9),
                "pred_cls": np.zeros(int(found)),
                "target_cls": np.zeros(1),
            }
        )
    intervals = bootstrap_intervals(MatchStats.from_images(images), resamples=2000, seed=1, level=0.95)
    expected = 1.96 * np.sqrt(q * (1 - q) / n)
    assert intervals.recall is not None
    assert intervals.recall.width / 2 == pytest.approx(expected, rel=0.12)
    assert intervals.recall.holds(q)
    assert intervals.precision is not None and intervals.precision.width == pytest.approx(0.0, abs=1e-12)


def test_bootstrap_is_seeded():
    """The same seed gives the same intervals; another seed other resamples."""
    stats = MatchStats.from_images(random_match_stats(80, 3))
    a = bootstrap_intervals(stats, resamples=200, seed=7)
    b = bootstrap_intervals(stats, resamples=200, seed=7)
    c = bootstrap_intervals(stats, resamples=200, seed=8)
    assert a.map50_95 == b.map50_95
    assert a.map50_95 != c.map50_95
    assert [next(resample_counts(5, 1, 3)).tolist()] == [next(resample_counts(5, 1, 3)).tolist()]


def test_percentile_interval():
    """Central interval of values 0..100: 2.5 and 97.5 at 95 %; nothing finite: None."""
    interval = percentile_interval(np.arange(101.0), 0.95)
    assert (interval.low, interval.high) == pytest.approx((2.5, 97.5))
    assert percentile_interval(np.array([np.nan, np.nan]), 0.95) is None


# ---------------------------------------------------------------- COCO figures by size and class


def test_perfect_predictions_give_ap_one_in_every_bucket_and_class():
    """Every object predicted exactly: AP50-95, AP50 and recall 1.0 in every bucket, class and
    class × bucket that has objects, and every bootstrap interval has zero width."""
    gt = synthetic_gt()
    report = evaluate_sizes(gt, perfect_predictions(gt), FAST)
    assert report.reproduced
    assert [c.bucket for c in report.sizes] == ["all", "lt16", "16-32", "32-64", "gt64"]
    assert [c.objects for c in report.sizes] == [80, 20, 20, 20, 20]
    cells = [*report.sizes, *(cell for cls in report.classes for cell in cls.sizes)]
    for cell in cells:
        assert cell.objects > 0
        assert (cell.map50_95, cell.map50, cell.recall) == (1.0, 1.0, 1.0)
        for metric in ("map50_95", "map50", "recall"):
            assert cell.interval(metric).width == 0.0


def test_removing_small_predictions_drops_only_the_small_bucket():
    """No prediction for objects under 16 px: the < 16 bucket falls to 0, every other bucket stays 1.0."""
    gt = synthetic_gt()
    report = evaluate_sizes(gt, perfect_predictions(gt, keep=lambda b: b[:, 2:].max(1) >= 16), FAST)
    by_name = {c.bucket: c for c in report.sizes}
    assert (by_name["lt16"].map50_95, by_name["lt16"].recall) == (0.0, 0.0)
    for name in ("16-32", "32-64", "gt64"):
        assert (by_name[name].map50_95, by_name[name].recall) == (1.0, 1.0)
    assert by_name["all"].recall == pytest.approx(0.75)  # 60 of 80 objects found, in each class
    assert by_name["all"].map50_95 < 1.0


def elongated_set() -> tuple[GroundTruth, Predictions]:
    """Squares of 20 px (longest side 20, √area 20) found, and 40×10 false positives scored above them
    (longest side 40, √area 20): by longest side they belong to 32–64, by area to 16–32."""
    images, dt_cls, dt_xywh, dt_score = [], [], [], []
    for i in range(6):
        squares = np.array([[50 + 100 * j, 50, 20, 20] for j in range(3)], float)
        images.append(LabeledImage(f"/elongated/{i}.jpg", 640, 480, np.zeros(3, int), squares))
        fps = np.array([[50 + 100 * j, 300, 40, 10] for j in range(2)], float)
        dt_cls.append(np.zeros(5, int))
        dt_xywh.append(np.concatenate((squares, fps)))
        dt_score.append(np.array([0.5, 0.5, 0.5, 0.9, 0.9]) - 0.01 * i)
    return GroundTruth(tuple(images), {0: "wire"}), Predictions(
        tuple(dt_cls), tuple(dt_xywh), tuple(dt_score)
    )


def test_the_evaluator_buckets_detections_by_the_area_we_set():
    """faster-coco-eval's loadRes sets a detection's area to w×h; the longest side must win. By longest
    side the 40×10 false positives are outside 16–32 and ignored there (AP 1.0); by area (COCO's rule)
    they are inside and ranked above the true positives (AP < 1)."""
    gt, predictions = elongated_set()
    longest = evaluate_sizes(gt, predictions, FAST).bucket("16-32")
    by_area = evaluate_sizes(gt, predictions, FAST.model_copy(update={"measure": "area"})).bucket("16-32")
    assert longest.map50_95 == 1.0
    assert by_area.map50_95 < 0.8


def test_the_evaluator_buckets_ground_truth_by_the_area_we_set():
    """A 40×10 object is in 32–64 by longest side and in 16–32 by area: missing it costs that bucket only."""
    images = [
        LabeledImage(
            "/gt/0.jpg", 640, 480, np.zeros(2, int), np.array([[10, 10, 40, 10], [200, 10, 20, 20]], float)
        )
    ]
    gt = GroundTruth(tuple(images), {0: "wire"})
    found_square = Predictions(
        (np.zeros(1, int),), (np.array([[200, 10, 20, 20]], float),), (np.array([0.9]),)
    )
    longest = evaluate_sizes(gt, found_square, FAST)
    assert longest.bucket("32-64").objects == 1 and longest.bucket("32-64").recall == 0.0
    assert longest.bucket("16-32").objects == 1 and longest.bucket("16-32").recall == 1.0
    by_area = evaluate_sizes(gt, found_square, FAST.model_copy(update={"measure": "area"}))
    assert by_area.bucket("16-32").objects == 2 and by_area.bucket("16-32").recall == 0.5
    assert by_area.bucket("32-64").objects == 0 and by_area.bucket("32-64").map50_95 is None


def test_buckets_are_half_open():
    """A box of exactly 16 px is in 16–32, not < 16; 15.99 px is in < 16."""
    images = [
        LabeledImage(
            "/b/0.jpg", 640, 640, np.zeros(2, int), np.array([[0, 0, 16, 8], [100, 0, 15.99, 3]], float)
        )
    ]
    counts = count_objects(
        GroundTruth(tuple(images), {0: "x"}),
        [0],
        [ALL_AREA, *(area_range(b) for b in FOD_BUCKETS)],
        "longest_side",
    )
    assert counts.tolist() == [[2, 1, 1, 0, 0]]


@pytest.mark.parametrize("seed", [0, 1])
def test_resampling_code_reproduces_the_evaluator(seed):
    """COCO's matching and accumulation in numpy give faster-coco-eval's arrays on random sets (elongated
    boxes, duplicates, tied scores, three classes), so the per-bucket intervals are about its figures."""
    gt, predictions = random_coco_set(150, seed)
    classes = [0, 1, 2]
    ranges = {b.name: area_range(b) for b in FOD_BUCKETS}
    inputs = coco_inputs(gt, predictions, "longest_side")
    precision, recall = run_evaluator(inputs, gt, classes, ranges, 100)
    own_precision, own_recall = CocoResampler(
        inputs, classes, [ALL_AREA, *ranges.values()], max_det=100
    ).accumulate()
    np.testing.assert_allclose(own_precision, precision, rtol=0, atol=1e-12)
    np.testing.assert_allclose(own_recall, recall, rtol=0, atol=1e-12)
    assert (precision > 0).any() and (precision < 1).any()


def test_every_image_twice_gives_the_same_coco_figures():
    """Duplicating every image changes no ratio COCO reads: the same precision and recall arrays."""
    gt, predictions = random_coco_set(60, 3)
    ranges = [ALL_AREA, *(area_range(b) for b in FOD_BUCKETS)]
    resampler = CocoResampler(coco_inputs(gt, predictions, "longest_side"), [0, 1, 2], ranges, max_det=100)
    once, twice = resampler.accumulate(), resampler.accumulate(np.full(60, 2))
    np.testing.assert_allclose(twice[0], once[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(twice[1], once[1], rtol=0, atol=1e-12)


def test_size_intervals_hold_the_observed_figures():
    """On a random set the bucket intervals exist, have width, and usually hold the observed figure."""
    gt, predictions = random_coco_set(120, 4)
    report = evaluate_sizes(gt, predictions, EvaluationSettings(resamples=1000, seed=2))
    assert report.reproduced and report.resamples == 1000 and report.level == 0.95
    widths = [c.map50_95_ci.width for c in report.sizes if c.map50_95 is not None]
    assert all(w > 0 for w in widths)
    assert sum(c.map50_95_ci.holds(c.map50_95) for c in report.sizes if c.map50_95 is not None) >= 4


def test_no_predictions_and_empty_buckets():
    """No detections at all: AP 0 where there are objects; a bucket without objects has no figure."""
    gt = synthetic_gt(3)
    none = Predictions(
        tuple(np.zeros(0, int) for _ in gt.images),
        tuple(np.zeros((0, 4)) for _ in gt.images),
        tuple(np.zeros(0) for _ in gt.images),
    )
    report = evaluate_sizes(gt, none, EvaluationSettings(preset="coco"))
    assert [c.bucket for c in report.sizes] == ["all", "small", "medium", "large"]
    assert report.bucket("all").map50_95 == 0.0
    assert report.bucket("large").objects == 1  # √area ≥ 96: only the 120 px square (image 1); 120×60 is 84.9
    assert report.figure("recall", "small", 1) == (0.0, report.of_class(1).bucket("small").recall_ci)


# ---------------------------------------------------------------- ground truth from files


def test_label_boxes_reads_ultralytics_rules(tmp_path):
    """Boxes scale to pixels; polygons become their bounding box; repeated lines count once; no file: none."""
    boxes = tmp_path / "a.txt"
    boxes.write_text("0 0.5 0.5 0.025 0.05\n0 0.5 0.5 0.025 0.05\n1 0.1 0.2 0.1 0.1\n", encoding="utf-8")
    cls, xywh = label_boxes(boxes, 640, 320)
    assert sorted(cls.tolist()) == [0, 1]
    np.testing.assert_allclose(xywh[cls == 0], [[312.0, 152.0, 16.0, 16.0]])
    polygons = tmp_path / "b.txt"
    polygons.write_text("2 0.1 0.1 0.3 0.1 0.3 0.2 0.1 0.2\n", encoding="utf-8")
    cls, xywh = label_boxes(polygons, 100, 100)
    assert cls.tolist() == [2]
    np.testing.assert_allclose(xywh, [[10, 10, 20, 10]])
    assert label_boxes(tmp_path / "missing.txt", 10, 10)[0].size == 0


def test_read_ground_truth_from_image_and_label_files(tmp_path):
    """Sizes come from the image file (EXIF rotation swaps them); labels from images/ → labels/."""
    from PIL import Image

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    plain = tmp_path / "images" / "plain.jpg"
    Image.new("RGB", (64, 32)).save(plain)
    rotated = tmp_path / "images" / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (64, 32)).save(rotated, exif=exif)
    (tmp_path / "labels" / "plain.txt").write_text("0 0.5 0.5 0.25 0.5\n", encoding="utf-8")
    gt = read_ground_truth([plain, rotated], {0: "bolt"})
    assert [(im.width, im.height) for im in gt.images] == [(64, 32), (32, 64)]
    assert gt.images[0].xywh.tolist() == [[24.0, 8.0, 16.0, 16.0]]
    assert gt.images[1].cls.size == 0


@needs_shared
@pytest.mark.parametrize(
    ("dataset", "expected"),
    [("golfball_small", [61, 18, 34, 9, 0]), ("lunar_crater_small", [767, 500, 178, 58, 31])],
)
def test_shared_validation_sets_have_the_documented_size_counts(dataset, expected):
    """The ground truth read at original size gives the box counts per longest side that each
    dataset's SOURCE.md states (measured by whoever built the subset)."""
    gt = ground_truth_of_split(SHARED / "datasets" / dataset / "data.yaml", "val")
    ranges = [ALL_AREA, *(area_range(b) for b in FOD_BUCKETS)]
    assert count_objects(gt, [0], ranges, "longest_side").tolist() == [expected]


def ground_truth_of_split(data_yaml: Path, split: str = "val") -> GroundTruth:
    """Ground truth of a dataset YAML's split, read as the engine reads datasets (``data.dataset``)."""
    from flows.engine.data.dataset import resolve_dataset

    found = resolve_dataset(data_yaml)
    assert found.dataset is not None and split in found.images, [p.line() for p in found.problems]
    return read_ground_truth(found.images[split], found.dataset.names)


def test_exported_predictions_map_onto_the_ground_truth():
    """The validator's export (its category ids, the image file) maps back onto the ground truth: what
    the evaluation child reads (``prediction_records``, then ``predictions_from_records``)."""
    from types import SimpleNamespace

    from tasks.trainers.evaluate import prediction_records

    gt = synthetic_gt(2)
    entry = {"category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.5}
    validator = SimpleNamespace(class_map=[1, 2], kept_predictions=[("/synthetic/img1.jpg", entry)])
    predictions = predictions_from_records(gt, prediction_records(validator))
    assert predictions.cls[0].size == 0
    assert predictions.cls[1].tolist() == [1] and predictions.xywh[1].tolist() == [[1, 2, 3, 4]]


# ---------------------------------------------------------------- plan settings and checks


def lines(problems) -> list[str]:
    return [p.line() for p in problems]


def test_default_settings_are_the_fod_buckets():
    settings = EvaluationSettings()
    assert settings.bucket_names() == ("lt16", "16-32", "32-64", "gt64")
    assert [b.label() for b in settings.buckets] == ["< 16 px", "16–32 px", "32–64 px", "≥ 64 px"]
    assert bucket_problems(settings, source="plan.yaml") == []
    coco = EvaluationSettings(preset="coco")
    assert coco.measure == "area" and coco.buckets == COCO_BUCKETS
    assert EvaluationSettings(confidence="90%").confidence == pytest.approx(0.9)


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({"confidence": 95}, "looks like a percentage; thresholds are fractions: write 0.95"),
        ({"confidence": 0.3}, "greater than 0.5"),
        ({"resamples": 200}, "greater than or equal to 1000"),
        ({"preset": "coco", "buckets": []}, "either preset or buckets"),
        ({"preset": "voc"}, "preset must be one of"),
        ({"buckets": [{"name": "all", "max_px": 8}]}, "reserved"),
        ({"buckets": [{"name": "a", "min_px": 16, "max_px": 8}]}, "must be larger than min_px"),
        ({"buckets": [{"name": "a", "max_px": 8, "size": 3}]}, "Extra inputs are not permitted"),
    ],
)
def test_settings_refuse_bad_values(doc, fragment):
    with pytest.raises(ValidationError, match=fragment):
        EvaluationSettings.model_validate(doc)


def test_overlapping_and_gapped_buckets_give_one_line_each():
    """Overlap, gap and a duplicate name: three errors, one line each, naming buckets and pixels."""
    settings = EvaluationSettings(
        buckets=[
            {"name": "tiny", "max_px": 16},
            {"name": "small", "min_px": 12, "max_px": 32},
            {"name": "mid", "min_px": 40, "max_px": 64},
            {"name": "mid", "min_px": 64},
        ]
    )
    found = lines(bucket_problems(settings, source="plan.yaml"))
    assert found == [
        "plan.yaml: evaluation.buckets[3]: bucket name 'mid' is used twice (also at [2])",
        "plan.yaml: evaluation.buckets: buckets 'tiny' (< 16 px) and 'small' (12–32 px) overlap from 12 to 16 px;"
        " make 'small' start at 16 (each object must fall in one bucket)",
        "plan.yaml: evaluation.buckets: no bucket holds sizes from 32 to 40 px (between 'small' and 'mid');"
        " make 'mid' start at 32",
    ]


def test_open_ends_are_warnings():
    settings = EvaluationSettings(buckets=[{"name": "mid", "min_px": 8, "max_px": 32}])
    found = bucket_problems(settings, source="p")
    assert [p.severity for p in found] == ["warning", "warning"]
    assert "objects under 8 px fall in no bucket" in found[0].message
    assert "objects of 32 px and more fall in no bucket" in found[1].message


def test_gate_references_to_unknown_buckets_classes_and_metrics():
    """A gate naming an unknown bucket, an unknown class or a figure not reported per size: one line each."""
    settings = EvaluationSettings()
    names = {0: "bolt", 1: "stone"}
    found = lines(
        reference_problems(
            metric="precision",
            bucket="lt8",
            class_ref="wire",
            settings=settings,
            names=names,
            source="plan.yaml",
            where="nodes.gate1.conditions[0]",
        )
    )
    assert found == [
        "plan.yaml: nodes.gate1.conditions[0].metric: precision is not reported per size or class; use one of "
        "map50_95, map50, recall",
        "plan.yaml: nodes.gate1.conditions[0].bucket: unknown bucket 'lt8'; the plan's buckets: lt16, 16-32, "
        "32-64, gt64, all",
        "plan.yaml: nodes.gate1.conditions[0].class: unknown class 'wire'; the dataset's classes: 0 bolt, 1 stone",
    ]
    ok = dict(settings=settings, names=names, source="p", where="w")
    assert reference_problems(metric="map50_95", bucket="lt16", class_ref="stone", **ok) == []
    assert reference_problems(metric="recall", bucket="all", class_ref=1, **ok) == []
    assert reference_problems(metric="precision", bucket=None, class_ref=None, **ok) == []
    assert reference_problems(metric="map50", bucket=None, class_ref=7, **ok)[0].where == "w.class"
    off = EvaluationSettings(enabled=False)
    assert (
        "evaluation.enabled is false"
        in reference_problems(
            metric="map50", bucket="lt16", class_ref=None, settings=off, names=None, source="p", where="w"
        )[0].message
    )
    assert (
        resolve_class("stone", names) == 1
        and resolve_class("1", names) == 1
        and resolve_class(3, names) is None
    )


# ---------------------------------------------------------------- judging a gate figure


def test_judge_minimum_on_the_figure_and_on_the_lower_bound():
    """'0.9152 ≥ 0.915' passes but is marginal when 0.915 is inside the interval; on the lower bound it fails."""
    interval = Interval(low=0.90, high=0.93, level=0.95)
    observed = judge_minimum(0.9152, interval, 0.915)
    assert observed.verdict == "pass" and observed.marginal and "inside the 95% interval" in observed.note
    strict = judge_minimum(0.9152, interval, 0.915, "lower_bound")
    assert strict.verdict == "fail" and strict.marginal
    clear = judge_minimum(0.95, Interval(low=0.94, high=0.96, level=0.95), 0.915, "lower_bound")
    assert clear.verdict == "pass" and not clear.marginal
    assert judge_minimum(0.95, None, 0.9, "lower_bound").verdict == "unknown"
    assert judge_minimum(None, None, 0.9).verdict == "unknown"
    assert condition_name("map50_95", "lt16", "bolt") == "map50_95 [lt16, bolt]"


def test_evaluation_reads_overall_and_bucket_figures():
    gt = synthetic_gt(4)
    sizes = evaluate_sizes(gt, perfect_predictions(gt), FAST)
    stats = perfect_match_stats()
    evaluation = Evaluation(
        weights="best.pt",
        data="data.yaml",
        imgsz=640,
        images=stats.n_images,
        overall=OverallFigures(**stats.summary()._asdict()),
        intervals=bootstrap_intervals(stats, resamples=1000),
        sizes=sizes,
    )
    assert evaluation.figure("map50_95") == pytest.approx(0.995)
    assert evaluation.figure("map50_95", "lt16") == 1.0
    assert evaluation.figure("recall", "gt64", 0) == 1.0
    assert evaluation.interval("map50", "lt16", 1).width == 0.0
    assert evaluation.coco_minus_ultralytics == pytest.approx(0.005)
    again = Evaluation.model_validate_json(evaluation.model_dump_json())
    assert again == evaluation


# ---------------------------------------------------------------- rendering


def test_tables_and_chart(tmp_path):
    gt, predictions = random_coco_set(40, 6)
    report = evaluate_sizes(gt, predictions, EvaluationSettings(resamples=1000))
    table = size_table(report)
    assert table[0].startswith("| size | objects | AP50-95")
    assert len(table) == 2 + len(report.sizes)
    cell = report.bucket("lt16")
    assert with_interval(cell.map50_95, cell.map50_95_ci) in table[3]
    assert len(class_table(report)) == 2 + 3
    assert with_interval(None, None) == "n/a (no objects)", "a missing figure says why, never a dash"
    out = plot_size_buckets([("phase1", report), ("phase2", report)], tmp_path / "sizes.png")
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evaluation = Evaluation(weights="w", data="d", imgsz=64, images=40, sizes=report)
    card = model_card_lines(evaluation)
    assert card[0] == "## Accuracy by object size" and any(line.startswith("| size |") for line in card)


def test_metrics_package_imports_without_torch_or_ultralytics():
    """The engine side imports no torch, Ultralytics, Prefect, faster-coco-eval or matplotlib at import time."""
    code = (
        "import sys\n"
        "import flows.engine.plan.buckets, flows.engine.metrics.ap, flows.engine.metrics.bootstrap\n"
        "import flows.engine.metrics.sizes, flows.engine.metrics.coco_resample\n"
        "import flows.engine.metrics.evaluation, flows.engine.metrics.render\n"
        "heavy = [m for m in ('torch', 'ultralytics', 'prefect', 'faster_coco_eval', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_bucket_holds_and_labels():
    bucket = SizeBucket(name="mid", min_px=16, max_px=32)
    assert bucket.holds(16) and not bucket.holds(32) and bucket.label() == "16–32 px"
