"""One phase's evaluation as a record: Ultralytics' figures with intervals, the COCO figures by size and
class.

``Evaluation`` is what the training child returns after the final validation
(``tasks/trainers/evaluate.py``) and what ``PhaseResult`` holds; gates, monitors, the report and the
model card read it. It adds to Ultralytics' gated figures (``PhaseResult.metrics``) their intervals
(``MetricIntervals``, from ``metrics/bootstrap.py``) and the figures per bucket and class
(``SizeReport``, from ``metrics/sizes.py``) with theirs. Pure: pydantic only.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict, Field

from flows.engine.base import Frozen
from flows.engine.plan.buckets import ALL, EvaluationSettings, Measure, SizeBucket, resolve_class

GATED = ("precision", "recall", "map50", "map50_95")
"""The overall figures a gate reads (Ultralytics'), in ``Summary`` order."""


class Record(Frozen):
    """Base of records that cross process boundaries: strict, immutable, finite numbers only."""

    model_config = ConfigDict(allow_inf_nan=False)


class Interval(Record):
    """A two-sided percentile bootstrap interval ``[low, high]`` at ``level``."""

    low: float
    high: float
    level: float = Field(gt=0, lt=1)

    @property
    def width(self) -> float:
        """``high - low``."""
        return self.high - self.low

    def holds(self, value: float) -> bool:
        """True when ``value`` lies inside the interval (bounds included)."""
        return self.low <= value <= self.high


class MetricIntervals(Record):
    """Intervals of Ultralytics' four overall figures, and how they were computed."""

    precision: Interval | None = None
    recall: Interval | None = None
    map50: Interval | None = None
    map50_95: Interval | None = None
    level: float
    resamples: int
    seed: int
    images: int
    seconds: float = Field(ge=0)
    """Wall time of the bootstrap itself."""

    def get(self, metric: str) -> Interval | None:
        """The interval of ``metric`` (``precision`` … ``map50_95``), None when unknown."""
        return getattr(self, metric, None) if metric in GATED else None


class BucketMetrics(Record):
    """COCO figures of one size bucket (``all``: every size), over all classes or for one class."""

    bucket: str
    label: str
    objects: int = Field(ge=0)
    """Ground-truth objects in the bucket."""
    map50_95: float | None = None
    map50: float | None = None
    recall: float | None = None
    map50_95_ci: Interval | None = None
    map50_ci: Interval | None = None
    recall_ci: Interval | None = None

    def get(self, metric: str) -> float | None:
        """The figure ``map50_95``, ``map50`` or ``recall``; None when unknown."""
        return getattr(self, metric) if metric in ("map50_95", "map50", "recall") else None

    def interval(self, metric: str) -> Interval | None:
        """The interval of that figure, None when it was not computed."""
        return getattr(self, f"{metric}_ci") if metric in ("map50_95", "map50", "recall") else None


class ClassMetrics(Record):
    """One class: its figures over all sizes (``sizes[0]``, bucket ``all``) and per bucket."""

    class_id: int
    name: str
    objects: int = Field(ge=0)
    sizes: tuple[BucketMetrics, ...]

    def bucket(self, name: str) -> BucketMetrics | None:
        """Figures of bucket ``name`` (or ``all``) for this class."""
        return next((b for b in self.sizes if b.bucket == name), None)


class SizeReport(Record):
    """Accuracy by object size and class of one validation, from faster-coco-eval."""

    evaluator: str
    measure: Measure
    max_det: int
    images: int
    buckets: tuple[SizeBucket, ...]
    sizes: tuple[BucketMetrics, ...]
    """All classes: ``all`` first, then the plan's buckets in plan order."""
    classes: tuple[ClassMetrics, ...] = ()
    reproduced: bool = False
    """True when the resampling code gave the evaluator's figures on the observed set (intervals are
    only reported then)."""
    level: float | None = None
    resamples: int | None = None
    seed: int | None = None
    coco_seconds: float = 0.0
    bootstrap_seconds: float = 0.0
    note: str = ""

    def bucket(self, name: str) -> BucketMetrics | None:
        """All-class figures of bucket ``name`` (or ``all``)."""
        return next((b for b in self.sizes if b.bucket == name), None)

    def of_class(self, class_id: int) -> ClassMetrics | None:
        """Figures of one class."""
        return next((c for c in self.classes if c.class_id == class_id), None)

    def class_id(self, ref: str | int) -> int | None:
        """The id of the class a gate names by name or id; None when the report has no such class."""
        return resolve_class(ref, {c.class_id: c.name for c in self.classes})

    def figure(
        self, metric: str, bucket: str | None = None, class_id: int | None = None
    ) -> tuple[float | None, Interval | None]:
        """(value, interval) of ``metric`` for a bucket (None: all sizes) and class (None: all classes)."""
        name = bucket or ALL
        if class_id is None:
            cell = self.bucket(name)
        else:
            cls = self.of_class(class_id)
            cell = cls.bucket(name) if cls is not None else None
        if cell is None:
            return None, None
        return cell.get(metric), cell.interval(metric)


class OverallFigures(Record):
    """Ultralytics' four box figures of the evaluation's own validation run (same formula as the gates')."""

    precision: float | None = None
    recall: float | None = None
    map50: float | None = None
    map50_95: float | None = None

    def get(self, metric: str) -> float | None:
        """A figure by its plan name."""
        return getattr(self, metric) if metric in GATED else None


class CleanFigures(Record):
    """Ultralytics' figures on the validation images that have no near-duplicate in train, with intervals:
    what the gates' figures would be without the leaked images (``map50_95@clean``)."""

    rule: str
    """The near-duplicate rule, in words."""
    images: int = Field(ge=0)
    """Validation images kept."""
    left_out: int = Field(ge=0)
    """Validation images left out: each has a near-duplicate in train."""
    overall: OverallFigures = OverallFigures()
    intervals: MetricIntervals | None = None

    def get(self, metric: str) -> float | None:
        """A clean figure by its plan name."""
        return self.overall.get(metric)

    def interval(self, metric: str) -> Interval | None:
        """Its interval."""
        return self.intervals.get(metric) if self.intervals else None


class Evaluation(Record):
    """Everything the extra validation of best.pt measured, with how sure each figure is."""

    weights: str
    data: str
    split: str = "val"
    imgsz: int
    images: int = Field(ge=0)
    settings: EvaluationSettings = Field(default_factory=EvaluationSettings)
    overall: OverallFigures = OverallFigures()
    """Ultralytics' figures recomputed from the captured matches (equal to the validator's own)."""
    intervals: MetricIntervals | None = None
    sizes: SizeReport | None = None
    clean: CleanFigures | None = None
    """The same figures without the validation images near-duplicated in train (None: not computed)."""
    predictions_json: str | None = None
    """Ultralytics' exported predictions (original image pixels), when kept."""
    seconds: dict[str, float] = Field(default_factory=dict)
    """Wall time of each step: ``validate``, ``bootstrap``, ``sizes``."""
    note: str = ""

    @property
    def coco_minus_ultralytics(self) -> float | None:
        """COCO's overall mAP50-95 minus Ultralytics' on the same predictions (interpolation and rules)."""
        coco = self.sizes.bucket("all").map50_95 if self.sizes and self.sizes.bucket("all") else None
        ours = self.overall.map50_95
        return None if coco is None or ours is None else coco - ours

    def interval(
        self, metric: str, bucket: str | None = None, class_id: int | None = None
    ) -> Interval | None:
        """The interval of a figure a gate reads: overall (Ultralytics') or of a bucket / class (COCO's)."""
        if bucket is None and class_id is None:
            return self.intervals.get(metric) if self.intervals else None
        return self.sizes.figure(metric, bucket, class_id)[1] if self.sizes else None

    def figure(self, metric: str, bucket: str | None = None, class_id: int | None = None) -> float | None:
        """A figure: overall (Ultralytics', this validation) or of a bucket and/or class (COCO's)."""
        if bucket is None and class_id is None:
            return self.overall.get(metric)
        return self.sizes.figure(metric, bucket, class_id)[0] if self.sizes else None


def load_evaluation(path: Path) -> Evaluation:
    """An ``Evaluation`` saved as JSON (``python -m tasks.trainers.evaluate … --json``), e.g. for a replay."""
    return Evaluation.model_validate_json(Path(path).read_text(encoding="utf-8"))
