"""One phase's evaluation: Ultralytics' figures with intervals, the COCO figures by size and class.

``Evaluation`` is what the training child returns after the final validation (``tasks/trainers/
evaluate.py``) and what ``PhaseResult`` holds; gates, monitors, the report and the model card read it.
The gated overall figures stay Ultralytics' own (``PhaseResult.metrics``); this record adds their
intervals, and the figures per bucket and class (COCO's, from faster-coco-eval) with theirs.

Pure: pydantic only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, NamedTuple

from pydantic import Field

from flows.engine.metrics.bootstrap import GATED, Interval, MetricIntervals, Record, is_marginal
from flows.engine.metrics.buckets import EvaluationSettings
from flows.engine.metrics.sizes import SizeReport

Require = Literal["observed", "lower_bound"]
"""What must clear a gate's minimum: the observed figure, or its interval's lower bound."""


class OverallFigures(Record):
    """Ultralytics' four box figures of the evaluation's own validation run (same formula as the gates')."""

    precision: float | None = None
    recall: float | None = None
    map50: float | None = None
    map50_95: float | None = None

    def get(self, metric: str) -> float | None:
        """A figure by its plan name."""
        return getattr(self, metric) if metric in GATED else None


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


class Judgement(NamedTuple):
    """A metric condition's verdict, and whether it is a close call."""

    verdict: Literal["pass", "fail", "unknown"]
    marginal: bool
    note: str


def judge_minimum(
    observed: float | None, interval: Interval | None, minimum: float, require: Require = "observed"
) -> Judgement:
    """Judge ``figure ≥ minimum``: on the figure, or on its interval's lower bound; flag close calls.

    Marginal: the threshold lies inside the interval, so another validation set of the same kind
    could give the other verdict. ``lower_bound`` without an interval is unknown, never a pass.
    """
    marginal = is_marginal(interval, minimum)
    level = f"{interval.level:.0%}" if interval is not None else ""
    if require == "lower_bound":
        if interval is None:
            return Judgement("unknown", False, "no interval to judge the lower bound on")
        verdict = "pass" if interval.low >= minimum else "fail"
        note = f"{level} lower bound {interval.low:.4f}" + ("; marginal" if marginal else "")
        return Judgement(verdict, marginal, note)
    if observed is None:
        return Judgement("unknown", marginal, "")
    note = f"marginal: {minimum:.4f} lies inside the {level} interval" if marginal else ""
    return Judgement("pass" if observed >= minimum else "fail", marginal, note)


def condition_name(metric: str, bucket: str | None = None, class_name: str | None = None) -> str:
    """How a gate table names a figure: ``map50_95``, ``map50_95 [lt16]``, ``recall [lt16, bolt]``."""
    parts = [p for p in (bucket, class_name) if p]
    return f"{metric} [{', '.join(parts)}]" if parts else metric


def load_evaluation(path: Path) -> Evaluation:
    """An ``Evaluation`` saved as JSON (``python -m tasks.trainers.evaluate … --json``), e.g. for a replay."""
    return Evaluation.model_validate_json(Path(path).read_text(encoding="utf-8"))
