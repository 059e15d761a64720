"""Ultralytics' detection metrics (precision, recall, mAP50, mAP50-95) in plain numpy.

``ap_per_class`` is ``ultralytics.utils.metrics.ap_per_class`` (8.4) line for line, minus the plots: the
confidence intervals recompute the gated figures on many resampled validation sets, and the engine must
import without torch. The tests check it gives Ultralytics' numbers on real and random stats. How
Ultralytics turns matches into figures (AP interpolated at 101 recall points, P and R at the maximum of
the mean F1 curve): docs/EVALUATION.md. Pure: numpy only.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

AP_X = np.linspace(0, 1, 101)
"""Recall points of the interpolated AP (Ultralytics' ``_AP_X``)."""
CONF_X = np.linspace(0, 1, 1000)
"""Confidences at which the P, R and F1 curves are sampled."""
EPS = 1e-16


class ClassAP(NamedTuple):
    """What ``ap_per_class`` returns that the gates use: per class with labels."""

    classes: np.ndarray
    """Class ids that have labels, ascending."""
    precision: np.ndarray
    """Precision of each class at the max-F1 confidence."""
    recall: np.ndarray
    ap: np.ndarray
    """AP of each class at each IoU threshold, shape (classes, 10)."""


class Summary(NamedTuple):
    """The four figures Ultralytics reports for boxes (``metrics/precision(B)`` …)."""

    precision: float
    recall: float
    map50: float
    map50_95: float


def smooth(y: np.ndarray, f: float = 0.05) -> np.ndarray:
    """Box filter of width ``f`` of the length (Ultralytics' ``smooth``): picks a stable max-F1 point."""
    nf = round(len(y) * f * 2) // 2 + 1
    p = np.ones(nf // 2)
    yp = np.concatenate((p * y[0], y, p * y[-1]), 0)
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


def envelope_ap(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """AP at each IoU threshold from (predictions, thresholds) recall and precision curves.

    Ultralytics' ``compute_ap`` for all thresholds at once: sentinels, precision envelope, linear
    interpolation at 101 recall points, trapezoid rule.
    """
    n_thr = recall.shape[1]
    last = recall[-1:] if len(recall) else np.ones((1, n_thr))
    mrec = np.concatenate((np.zeros((1, n_thr)), recall, last, np.ones((1, n_thr))), 0)
    mpre = np.concatenate((np.ones((1, n_thr)), precision, np.zeros((2, n_thr))), 0)
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre, 0), 0), 0)
    return np.array([np.trapezoid(np.interp(AP_X, mrec[:, j], mpre[:, j]), AP_X) for j in range(n_thr)])


def class_curves(
    tp: np.ndarray, conf: np.ndarray, n_labels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(AP per threshold, recall curve, precision curve at CONF_X) of one class.

    ``tp`` and ``conf`` are the class's predictions in descending confidence order.
    """
    fpc = (1 - tp).cumsum(0)
    tpc = tp.cumsum(0)
    recall = tpc / (n_labels + EPS)
    precision = tpc / (tpc + fpc)
    r_curve = np.interp(-CONF_X, -conf, recall[:, 0], left=0)
    p_curve = np.interp(-CONF_X, -conf, precision[:, 0], left=1)
    return envelope_ap(recall, precision), r_curve, p_curve


def ap_per_class(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray) -> ClassAP:
    """Ultralytics' ``ap_per_class``: per-class AP, and P and R at the max-mean-F1 confidence.

    ``tp`` is (predictions, IoU thresholds) bool, ``conf`` and ``pred_cls`` per prediction,
    ``target_cls`` per label, all over the whole validation set.
    """
    order = np.argsort(-conf)
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, counts = np.unique(target_cls, return_counts=True)
    n_thr = tp.shape[1] if tp.ndim == 2 else 10
    ap = np.zeros((len(classes), n_thr))
    p_curve = np.zeros((len(classes), len(CONF_X)))
    r_curve = np.zeros((len(classes), len(CONF_X)))
    for ci, c in enumerate(classes):
        mine = pred_cls == c
        if not mine.any() or counts[ci] == 0:
            continue
        ap[ci], r_curve[ci], p_curve[ci] = class_curves(tp[mine], conf[mine], int(counts[ci]))
    return pick_max_f1(classes, ap, p_curve, r_curve)


def pick_max_f1(classes: np.ndarray, ap: np.ndarray, p_curve: np.ndarray, r_curve: np.ndarray) -> ClassAP:
    """P and R of every class at the confidence where the smoothed mean F1 is largest."""
    f1_curve = 2 * p_curve * r_curve / (p_curve + r_curve + EPS)
    i = smooth(f1_curve.mean(0), 0.1).argmax() if len(classes) else 0
    return ClassAP(classes.astype(int), p_curve[:, i], r_curve[:, i], ap)


def summarize(result: ClassAP) -> Summary:
    """Means over classes with labels, as ``DetMetrics.mean_results``; zeros when there are none."""
    if not len(result.classes):
        return Summary(0.0, 0.0, 0.0, 0.0)
    return Summary(
        float(result.precision.mean()),
        float(result.recall.mean()),
        float(result.ap[:, 0].mean()),
        float(result.ap.mean()),
    )


def box_metrics(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray) -> Summary:
    """Precision, recall, mAP50 and mAP50-95 exactly as Ultralytics reports them for these matches."""
    return summarize(ap_per_class(tp, conf, pred_cls, target_cls))
