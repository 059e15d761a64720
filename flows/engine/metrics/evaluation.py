"""How a gate judges a figure of one phase's evaluation: on the figure or on its interval's lower bound,
and whether the threshold lies inside the interval (a close call).

The ``Evaluation`` record itself (Ultralytics' figures with intervals, the COCO figures by size and
class), which the training child returns and ``PhaseResult`` holds, is ``records/evaluation.py``.

Pure: standard library only.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from flows.engine.metrics.bootstrap import is_marginal
from flows.engine.records.evaluation import Interval

Require = Literal["observed", "lower_bound"]
"""What must clear a gate's minimum: the observed figure, or its interval's lower bound."""


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
