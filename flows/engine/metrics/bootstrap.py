"""How sure a gated figure is: a seeded bootstrap over validation images, from the per-image matches.

``MatchStats.from_images`` takes what Ultralytics' validator keeps per image (``tp`` at each IoU
threshold, confidences, predicted and label classes); ``bootstrap_intervals`` resamples the images with
replacement, computes Ultralytics' figures (``ap.py``) of each resample without running the model again
(predictions sorted once: a resample keeps that order), and returns each gated figure's percentile
interval at the plan's confidence. Method and measured times: docs/EVALUATION.md. Pure: numpy, pydantic.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from flows.engine.metrics.ap import (
    AP_X,
    CONF_X,
    EPS,
    ClassAP,
    Summary,
    ap_per_class,
    pick_max_f1,
    summarize,
)
from flows.engine.records.evaluation import GATED, Interval, MetricIntervals


@dataclass(frozen=True)
class MatchStats:
    """Ultralytics' per-image match statistics of one validation, concatenated with image indices.

    ``tp`` (predictions × IoU thresholds, bool), ``conf``, ``pred_cls`` and ``pred_image`` per
    prediction; ``target_cls`` and ``target_image`` per label; ``n_images`` counts images without
    predictions or labels too (they are drawn like the others).
    """

    tp: np.ndarray
    conf: np.ndarray
    pred_cls: np.ndarray
    pred_image: np.ndarray
    target_cls: np.ndarray
    target_image: np.ndarray
    n_images: int

    @classmethod
    def from_images(cls, images: Sequence[Mapping[str, np.ndarray]], n_thresholds: int = 10) -> MatchStats:
        """Concatenate per-image dicts with Ultralytics' keys: tp, conf, pred_cls, target_cls."""
        tps = [np.asarray(im["tp"], dtype=bool).reshape(-1, n_thresholds) for im in images]
        preds = [len(t) for t in tps]
        targets = [len(np.atleast_1d(im["target_cls"])) for im in images]
        ids = np.arange(len(images))
        return cls(
            tp=np.concatenate(tps, 0) if tps else np.zeros((0, n_thresholds), bool),
            conf=concat([np.asarray(im["conf"], float).ravel() for im in images], float),
            pred_cls=concat([np.asarray(im["pred_cls"]).ravel() for im in images], int),
            pred_image=np.repeat(ids, preds),
            target_cls=concat([np.atleast_1d(np.asarray(im["target_cls"])) for im in images], int),
            target_image=np.repeat(ids, targets),
            n_images=len(images),
        )

    def subset(self, images: np.ndarray) -> MatchStats:
        """The matches of some images only (indices into this validation), renumbered in that order."""
        keep = np.asarray(images, dtype=np.intp)
        new_index = np.full(self.n_images, -1, dtype=np.intp)
        new_index[keep] = np.arange(len(keep))
        preds = new_index[self.pred_image] >= 0
        targets = new_index[self.target_image] >= 0
        return MatchStats(
            tp=self.tp[preds],
            conf=self.conf[preds],
            pred_cls=self.pred_cls[preds],
            pred_image=new_index[self.pred_image[preds]],
            target_cls=self.target_cls[targets],
            target_image=new_index[self.target_image[targets]],
            n_images=len(keep),
        )

    def summary(self) -> Summary:
        """Ultralytics' four figures of these matches."""
        return summarize(ap_per_class(self.tp, self.conf, self.pred_cls, self.target_cls))


def concat(parts: Sequence[np.ndarray], dtype: type) -> np.ndarray:
    """``np.concatenate`` that also accepts no parts."""
    return np.concatenate(parts).astype(dtype) if len(parts) else np.zeros(0, dtype)


class Resampler:
    """Ultralytics' figures of a resample given how often each image was drawn, without re-sorting.

    A resample in which image i appears ``counts[i]`` times is, in confidence order, each prediction
    repeated ``counts`` of its image times. Three facts keep a resample cheap:

    - the P and R curves are ``np.interp`` at 1000 confidences, which reads only the two points around
      each of them: the last point at or above it and the first below; only those are computed;
    - copies of one prediction share its confidence, so its first and its last copy stand for all;
    - the AP envelope (running maximum of precision from the right, interpolated over recall) is decided
      by the points at true positives and by the last point before each: a run of false positives only
      lowers precision, and the copies of one true positive lie on one flat segment of the envelope.

    The tests check the result equals ``ap_per_class`` on the explicitly repeated predictions.
    """

    def __init__(self, stats: MatchStats) -> None:
        order = np.argsort(-stats.conf)  # Ultralytics' own order: counts of all ones reproduce it exactly
        self.n_images = stats.n_images
        self.n_thresholds = stats.tp.shape[1]
        self.labels = {  # labels of class c per image
            int(c): np.bincount(stats.target_image[stats.target_cls == c], minlength=stats.n_images)
            for c in np.unique(stats.target_cls)
        }
        sorted_cls = stats.pred_cls[order]
        self.preds = {
            c: ClassPredictions.of(stats.tp[rows], stats.conf[rows], stats.pred_image[rows])
            for c in self.labels
            for rows in [order[sorted_cls == c]]
        }

    def class_ap(self, counts: np.ndarray) -> ClassAP:
        """``ap_per_class`` of the resample in which image i appears ``counts[i]`` times."""
        n_labels = {c: int(per_image @ counts) for c, per_image in self.labels.items()}
        present = np.array([c for c in self.labels if n_labels[c] > 0], dtype=int)
        ap = np.zeros((len(present), self.n_thresholds))
        p_curve = np.zeros((len(present), len(CONF_X)))
        r_curve = np.zeros((len(present), len(CONF_X)))
        for ci, c in enumerate(present):
            preds = self.preds[int(c)]
            repeat = counts[preds.image]
            if not repeat.any():
                continue
            copies = np.cumsum(repeat)  # copies of all predictions up to and including each row
            r_curve[ci], p_curve[ci] = preds.curves(repeat, copies, n_labels[int(c)])
            ap[ci] = preds.ap(repeat, copies, n_labels[int(c)])
        return pick_max_f1(present, ap, p_curve, r_curve)

    def summary(self, counts: np.ndarray) -> Summary:
        """Ultralytics' four figures of the resample."""
        return summarize(self.class_ap(counts))


@dataclass(frozen=True)
class ClassPredictions:
    """One class's predictions in descending confidence order, with what every resample reuses."""

    tp0: np.ndarray
    """True positive at IoU 0.50 (0/1), what the P and R curves use."""
    neg_conf: np.ndarray
    image: np.ndarray
    above: np.ndarray
    """Per CONF_X point: how many predictions have a confidence at or above it."""
    tp_rows: np.ndarray
    """Rows that are true positives, threshold by threshold, concatenated."""
    tp_threshold: np.ndarray
    """The IoU threshold index of each entry of ``tp_rows``."""
    n_thresholds: int

    @classmethod
    def of(cls, tp: np.ndarray, conf: np.ndarray, image: np.ndarray) -> ClassPredictions:
        """Index one class's sorted predictions."""
        columns, rows = np.nonzero(tp.T)
        return cls(
            tp0=tp[:, 0].astype(np.int64),
            neg_conf=-conf,
            image=image,
            above=np.searchsorted(-conf, -CONF_X, side="right"),
            tp_rows=rows,
            tp_threshold=columns,
            n_thresholds=tp.shape[1],
        )

    def curves(self, repeat: np.ndarray, copies: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
        """Recall and precision at CONF_X (IoU 0.50), exactly as ``np.interp`` over all copies gives them.

        Around each confidence only two points matter: the last copy of the last drawn prediction at or
        above it, and the first copy of the first drawn prediction below it.
        """
        n = len(repeat)
        drawn = np.flatnonzero(repeat)
        k = np.searchsorted(drawn, self.above)  # drawn rows above each confidence
        before = np.where(k > 0, drawn[np.clip(k - 1, 0, None)], -1)
        after = np.where(k < len(drawn), drawn[np.clip(k, None, len(drawn) - 1)], n)
        tpc = np.cumsum(repeat * self.tp0)
        rows_before = distinct(before[before >= 0])
        rows_after = distinct(after[after < n])
        # last copy of the rows before, first copy of the rows after, in confidence order
        x = np.concatenate((self.neg_conf[rows_before], self.neg_conf[rows_after]))
        tp_at = np.concatenate(
            (tpc[rows_before], tpc[rows_after] - (repeat[rows_after] - 1) * self.tp0[rows_after])
        )
        seen = np.concatenate((copies[rows_before], copies[rows_after] - repeat[rows_after] + 1))
        key = np.concatenate((2 * rows_before + 1, 2 * rows_after))  # first copy precedes last copy
        order = np.argsort(key, kind="stable")
        x, tp_at, seen = x[order], tp_at[order], seen[order]
        recall = tp_at / (n_labels + EPS)
        precision = tp_at / seen
        return (
            np.interp(-CONF_X, x, recall, left=0),
            np.interp(-CONF_X, x, precision, left=1),
        )

    def ap(self, repeat: np.ndarray, copies: np.ndarray, n_labels: int) -> np.ndarray:
        """AP at each IoU threshold of the repeated predictions, from the true positives alone.

        Per true positive drawn: the last point before it (after any false positives), its first copy
        and its last copy; every other point changes neither the envelope nor the interpolation.
        """
        w = repeat[self.tp_rows]
        keep = w > 0
        rows, w, column = self.tp_rows[keep], w[keep], self.tp_threshold[keep]
        ap = np.zeros(self.n_thresholds)
        if not len(rows):
            return ap
        tp_after = np.cumsum(w)
        starts = np.searchsorted(column, np.arange(self.n_thresholds + 1))
        offset = np.concatenate(([0], tp_after))[starts[:-1]]  # true positives of earlier thresholds
        tp_after -= offset[column]
        fp = copies[rows] - tp_after  # false positives before each true positive
        tp_before = tp_after - w
        tpc = np.empty(3 * len(rows), dtype=np.int64)
        # no point exists before the very first prediction: repeat the next one there instead
        tpc[0::3] = tp_before + ((tp_before + fp) == 0)
        tpc[1::3] = tp_before + 1
        tpc[2::3] = tp_after
        fpc = np.repeat(fp, 3)
        recall = tpc / (n_labels + EPS)
        precision = tpc / (tpc + fpc)
        for j in range(self.n_thresholds):
            lo, hi = 3 * starts[j], 3 * starts[j + 1]
            if hi > lo:
                ap[j] = segment_ap(recall[lo:hi], precision[lo:hi])
        return ap


def distinct(sorted_rows: np.ndarray) -> np.ndarray:
    """Distinct values of a monotone array, ascending (cheaper than ``np.unique`` for 1000 values)."""
    if not len(sorted_rows):
        return sorted_rows
    rows = np.sort(sorted_rows)
    return rows[np.concatenate(([True], rows[1:] != rows[:-1]))]


def segment_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Ultralytics' ``compute_ap`` of one curve: sentinels, envelope, 101 points, trapezoid."""
    mrec = np.concatenate(([0.0], recall, recall[-1:], [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0, 0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    y = np.interp(AP_X, mrec, mpre)
    return float((AP_STEPS * (y[1:] + y[:-1]) / 2.0).sum())  # np.trapezoid's arithmetic, minus overhead


AP_STEPS = np.diff(AP_X)


def resample_counts(n_images: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """How often each image is drawn, per resample: ``n_images`` draws with replacement, seeded.

    The same seed gives the same resamples, so the overall and the per-bucket intervals of one
    evaluation are computed on the same resampled sets.
    """
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        yield np.bincount(rng.integers(0, n_images, n_images), minlength=n_images)


def percentile_interval(values: np.ndarray, level: float) -> Interval | None:
    """The central ``level`` interval of bootstrap values; None when no resample had a value."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return Interval(low=float(low), high=float(high), level=level)


def bootstrap_summaries(stats: MatchStats, *, resamples: int, seed: int) -> np.ndarray:
    """Ultralytics' four figures of each resample, shape (resamples, 4)."""
    resampler = Resampler(stats)
    if stats.n_images == 0:
        return np.full((resamples, 4), np.nan)
    return np.array([resampler.summary(c) for c in resample_counts(stats.n_images, resamples, seed)])


def bootstrap_intervals(
    stats: MatchStats, *, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> MetricIntervals:
    """Intervals of precision, recall, mAP50 and mAP50-95 over ``resamples`` seeded image resamples."""
    started = time.perf_counter()
    values = bootstrap_summaries(stats, resamples=resamples, seed=seed)
    intervals = {name: percentile_interval(values[:, i], level) for i, name in enumerate(GATED)}
    return MetricIntervals(
        **intervals,
        level=level,
        resamples=resamples,
        seed=seed,
        images=stats.n_images,
        seconds=time.perf_counter() - started,
    )


def is_marginal(interval: Interval | None, threshold: float) -> bool:
    """True when the threshold lies inside the interval: another validation set could flip the verdict."""
    return interval is not None and interval.holds(threshold)
