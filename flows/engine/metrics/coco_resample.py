"""COCO's per-image matching and its accumulation, in numpy, for bootstrapping the per-size figures.

faster-coco-eval (``sizes.py``) gives the figures per bucket and class but keeps its per-image results
in opaque C++ objects, too slow to accumulate again for every resample. So pycocotools' matching
(``evaluateImg``) and accumulation are rewritten here for boxes (``CocoResampler``), and ``sizes.py``
reports an interval only when this code reproduces the evaluator's figures on the observed set. The
rules reproduced and the measured times: docs/EVALUATION.md. Pure: numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
SPACING = np.spacing(1)


@dataclass(frozen=True)
class ImageInput:
    """One image's boxes for COCO matching: ``xywh`` (top-left corner, pixels), class, COCO ``area``."""

    gt_cls: np.ndarray
    gt_xywh: np.ndarray
    gt_area: np.ndarray
    dt_cls: np.ndarray
    dt_xywh: np.ndarray
    dt_area: np.ndarray
    dt_score: np.ndarray


def bbox_iou(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """COCO's box IoU (no +1 pixel), detections × ground truth, boxes as xywh."""
    dx1, dy1 = dt[:, 0:1], dt[:, 1:2]
    dx2, dy2 = dx1 + dt[:, 2:3], dy1 + dt[:, 3:4]
    gx1, gy1 = gt[:, 0], gt[:, 1]
    gx2, gy2 = gx1 + gt[:, 2], gy1 + gt[:, 3]
    iw = np.clip(np.minimum(dx2, gx2) - np.maximum(dx1, gx1), 0, None)
    ih = np.clip(np.minimum(dy2, gy2) - np.maximum(dy1, gy1), 0, None)
    inter = iw * ih
    union = dt[:, 2:3] * dt[:, 3:4] + gt[:, 2] * gt[:, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_image(
    ious: np.ndarray, gt_ignore: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """COCO's greedy matching of one image and class: (matched, matched-to-ignored), both (T, D).

    ``ious`` is detections (score order) × ground truth (any order); ``gt_ignore`` per ground truth.
    """
    n_thr, (n_dt, n_gt) = len(thresholds), ious.shape
    matched = np.zeros((n_thr, n_dt), bool)
    to_ignored = np.zeros((n_thr, n_dt), bool)
    if n_dt == 0 or n_gt == 0:
        return matched, to_ignored
    order = np.argsort(gt_ignore, kind="mergesort")  # COCO puts ignored ground truth last
    ious, ignore = ious[:, order], gt_ignore[order].astype(bool)
    limits = np.minimum(thresholds, 1 - 1e-10)[:, None]
    taken = np.zeros((n_thr, n_gt), bool)
    cols = np.arange(n_thr)
    for d in np.flatnonzero((ious >= limits.min()).any(1)):
        ok = ~taken & (ious[d][None, :] >= limits)
        best = pick(ok & ~ignore[None, :], ious[d])
        best = np.where(best < 0, pick(ok & ignore[None, :], ious[d]), best)
        hit = best >= 0
        matched[hit, d] = True
        to_ignored[hit, d] = ignore[best[hit]]
        taken[cols[hit], best[hit]] = True
    return matched, to_ignored


def pick(ok: np.ndarray, iou: np.ndarray) -> np.ndarray:
    """Per threshold row, the column of the highest IoU among ``ok`` (the last one on ties), or -1."""
    values = np.where(ok, iou[None, :], -1.0)
    last = values.shape[1] - 1 - np.argmax(values[:, ::-1], axis=1)
    return np.where(ok.any(1), last, -1)


@dataclass(frozen=True)
class RangeDetections:
    """One (class, size range): its detections over all images in accumulation order, and object counts.

    Indexed once for all resamples: the (threshold, row) pairs of true positives, and the detections
    counted at some thresholds only (matched to an ignored object at those) apart from the rest.
    """

    image: np.ndarray
    """Image of each detection (rows in COCO's accumulation order)."""
    counted_always: np.ndarray
    """(D,) 0/1: counted (a true or false positive) at every threshold."""
    partial_rows: np.ndarray
    """Rows counted at some thresholds only, ascending."""
    partial_counted: np.ndarray
    """(len(partial_rows), T) 0/1: where those rows are counted."""
    objects: np.ndarray
    """Objects not ignored, per image."""
    tp_threshold: np.ndarray
    """Threshold index of every true positive, sorted by threshold then row."""
    tp_row: np.ndarray
    n_thresholds: int

    @classmethod
    def of(
        cls, image: np.ndarray, tp: np.ndarray, counted: np.ndarray, objects: np.ndarray
    ) -> RangeDetections:
        """Index one cell's detections (already in accumulation order)."""
        thresholds, rows = np.nonzero(tp.T)
        always = counted.all(1)
        partial = np.flatnonzero(~always & counted.any(1))
        return cls(
            image=image,
            counted_always=always.astype(np.int64),
            partial_rows=partial,
            partial_counted=counted[partial].astype(np.int64),
            objects=objects,
            tp_threshold=thresholds,
            tp_row=rows,
            n_thresholds=tp.shape[1],
        )


class CocoResampler:
    """COCO precision and recall (T × R × K × A and T × K × A) of image resamples."""

    def __init__(
        self,
        images: Sequence[ImageInput],
        classes: Sequence[int],
        ranges: Sequence[tuple[float, float]],
        *,
        max_det: int,
        thresholds: np.ndarray = IOU_THRESHOLDS,
    ) -> None:
        self.n_images = len(images)
        self.classes = tuple(int(c) for c in classes)
        self.ranges = tuple(ranges)
        self.thresholds = thresholds
        parts: dict[tuple[int, int], list[tuple[np.ndarray, ...]]] = {}
        self.objects = np.zeros((len(self.classes), len(self.ranges), self.n_images), np.int64)
        for i, im in enumerate(images):
            for k, c in enumerate(self.classes):
                for a, part in enumerate(self.match_class(im, c, max_det)):
                    if len(part[0]):
                        parts.setdefault((k, a), []).append((np.full(len(part[0]), i), *part[:3]))
                    self.objects[k, a, i] = part[3]
        self.cells = {
            (k, a): self.concatenate(parts.get((k, a), []), self.objects[k, a])
            for k in range(len(self.classes))
            for a in range(len(self.ranges))
        }

    def match_class(self, im: ImageInput, cls: int, max_det: int) -> list[tuple[np.ndarray, ...]]:
        """Per size range: (scores, true positives (D, T), counted (D, T), objects) of one image and class.

        One matching serves every range whose objects are all inside or all outside it: ignoring every
        object, or none, does not change which one a detection takes.
        """
        g, d = im.gt_cls == cls, np.flatnonzero(im.dt_cls == cls)
        d = d[np.argsort(-im.dt_score[d], kind="mergesort")][:max_det]
        gt_area, dt_area, score = im.gt_area[g], im.dt_area[d], im.dt_score[d]
        n_thr = len(self.thresholds)
        if not len(d):
            empty = np.zeros((0, n_thr), bool)
            return [
                (score, empty, empty, int(((gt_area >= lo) & (gt_area <= hi)).sum()))
                for lo, hi in self.ranges
            ]
        ious = bbox_iou(im.dt_xywh[d], im.gt_xywh[g]) if g.any() else np.zeros((len(d), 0))
        plain: tuple[np.ndarray, np.ndarray] | None = None
        out = []
        for lo, hi in self.ranges:
            gt_ignore = (gt_area < lo) | (gt_area > hi)
            if gt_ignore.all() or not gt_ignore.any():
                if plain is None:
                    plain = match_image(ious, np.zeros(len(gt_area), bool), self.thresholds)
                matched = plain[0]
                to_ignored = matched if gt_ignore.any() else np.zeros_like(matched)
            else:
                matched, to_ignored = match_image(ious, gt_ignore, self.thresholds)
            outside = (dt_area < lo) | (dt_area > hi)
            ignored = to_ignored | (~matched & outside[None, :])
            out.append((score, (matched & ~ignored).T, (~ignored).T, int((~gt_ignore).sum())))
        return out

    def concatenate(self, parts: list[tuple[np.ndarray, ...]], objects: np.ndarray) -> RangeDetections:
        """One cell's detections of all images, in COCO's accumulation order (score, stable over images)."""
        n_thr = len(self.thresholds)
        if not parts:
            empty = np.zeros((0, n_thr), bool)
            return RangeDetections.of(np.zeros(0, int), empty, empty, objects)
        image, score, tp, counted = (np.concatenate([p[j] for p in parts]) for j in range(4))
        order = np.argsort(-score, kind="mergesort")
        keep = order[counted[order].any(1)]  # a detection ignored at every threshold changes nothing
        return RangeDetections.of(image[keep], tp[keep], counted[keep], objects)

    def accumulate(self, counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(precision (T, R, K, A), recall (T, K, A)) of the resample; -1 where a cell has no objects.

        ``counts[i]`` is how often image i was drawn; None is the observed set.
        """
        counts = np.ones(self.n_images, np.int64) if counts is None else np.asarray(counts, np.int64)
        n_thr, n_cls, n_rng = len(self.thresholds), len(self.classes), len(self.ranges)
        precision = -np.ones((n_thr, len(RECALL_POINTS), n_cls, n_rng))
        recall = -np.ones((n_thr, n_cls, n_rng))
        for (k, a), cell in self.cells.items():
            objects = int(cell.objects @ counts)
            if objects == 0:
                continue
            precision[:, :, k, a], recall[:, k, a] = cell_curves(cell, counts, objects)
        return precision, recall


KEY_STRIDE = np.int64(1) << np.int64(40)
"""Separates thresholds in one integer search key (threshold × stride + true positives)."""


def needed_true_positives(objects: int) -> np.ndarray:
    """Per recall point p, the fewest true positives k with ``k / objects ≥ p`` as floats compare them.

    COCO reads precision at the first point whose recall (a float ``k / objects``) reaches each recall
    point; finding that by integer ``k`` keeps the search exact for all thresholds at once.
    """
    k = np.ceil(RECALL_POINTS * objects).astype(np.int64)
    k = np.where(k / objects < RECALL_POINTS, k + 1, k)
    return np.where((k > 0) & ((k - 1) / objects >= RECALL_POINTS), k - 1, k)


def cell_curves(cell: RangeDetections, counts: np.ndarray, objects: int) -> tuple[np.ndarray, np.ndarray]:
    """COCO precision at the recall points and final recall, per threshold, of one (class, range)."""
    n_thr = cell.n_thresholds
    precision = np.zeros((n_thr, len(RECALL_POINTS)))
    recall = np.zeros(n_thr)
    if not len(cell.tp_row):
        return precision, recall
    w = counts[cell.image]
    drawn = w[cell.tp_row] > 0
    column, rows = cell.tp_threshold[drawn], cell.tp_row[drawn]
    if not len(rows):
        return precision, recall
    wr = w[rows]
    seen = np.cumsum(w * cell.counted_always)[rows]  # counted detections up to each true positive
    if len(cell.partial_rows):
        partial = np.cumsum(w[cell.partial_rows, None] * cell.partial_counted, 0)
        j = np.searchsorted(cell.partial_rows, rows, side="right") - 1
        seen = seen + np.where(j >= 0, partial[np.maximum(j, 0), column], 0)
    running = np.cumsum(wr)
    starts = np.searchsorted(column, np.arange(n_thr + 1))
    tp_last = running - np.concatenate(([0], running))[starts[:-1]][column]
    fp = seen - tp_last
    tpc = np.empty(2 * len(rows), dtype=np.int64)
    tpc[0::2], tpc[1::2] = tp_last - wr + 1, tp_last  # first and last copy of each true positive
    point_column = np.repeat(column, 2)
    pr = tpc / (np.repeat(fp, 2) + tpc + SPACING)
    # precision envelope per threshold: one running maximum over a threshold × position table
    local = np.arange(len(tpc)) - 2 * starts[point_column]
    table = np.full((n_thr, int(local.max()) + 1), -np.inf)
    table[point_column, local] = pr
    envelope = np.maximum.accumulate(table[:, ::-1], axis=1)[:, ::-1]
    # first point reaching each recall point, for every threshold in one exact integer search
    key = point_column * KEY_STRIDE + tpc
    wanted = np.arange(n_thr)[:, None] * KEY_STRIDE + needed_true_positives(objects)[None, :]
    at = np.searchsorted(key, wanted.ravel(), side="left").reshape(n_thr, -1)
    end = 2 * starts[1:, None]
    inside = at < end
    rows_t, cols_r = np.nonzero(inside)
    precision[rows_t, cols_r] = envelope[rows_t, at[inside] - 2 * starts[rows_t]]
    has = starts[1:] > starts[:-1]
    recall[has] = tpc[2 * starts[1:][has] - 1] / objects
    return precision, recall


def cell_figures(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """(classes + 1, ranges, 3): AP50-95, AP50 and recall (IoU 0.50) per class and, last, over classes.

    COCO's ``summarize`` averages the entries that are not -1; a (class, range) cell is -1 as a whole
    or not at all, so that is the mean of the valid cells' means. NaN where nothing is valid.
    """
    valid = recall[0] > -1  # (K, A)
    per_cell = np.stack((precision.mean((0, 1)), precision[0].mean(0), recall[0]), -1)  # (K, A, 3)
    per_cell = np.where(valid[..., None], per_cell, np.nan)
    n_valid = valid.sum(0)
    total = np.where(valid[..., None], per_cell, 0.0).sum(0)
    overall = np.where(n_valid[:, None] > 0, total / np.maximum(n_valid, 1)[:, None], np.nan)
    return np.concatenate((per_cell, overall[None]), 0)
