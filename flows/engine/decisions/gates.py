"""Gates: conditions on a phase's result, evaluated into a table and an outcome.

A figure that could not be measured (no GPU, so no VRAM) is ``unknown``; the gate's
(or the condition's) ``on_unknown`` policy decides whether unknown passes. A gate never
reads Ultralytics' ``fitness``: only the final validation of best.pt.
"""

from __future__ import annotations

from collections.abc import Mapping

from flows.engine.plan.schema import (
    Condition,
    FlagCheck,
    GateNode,
    LatencyCheck,
    MetricCheck,
    SpeedupCheck,
    VramCheck,
)
from flows.engine.records.evaluation import Interval
from flows.engine.records.results import ConditionRow, EarlyDecision, GateResult, PhaseResult, Verdict


def fmt(value: float | None, pattern: str = "{:.4f}") -> str:
    """Format a figure, or 'unknown'."""
    return "unknown" if value is None else pattern.format(value)


def compare(observed: float | None, *, minimum: float | None = None, maximum: float | None = None) -> Verdict:
    """Compare a figure with a bound; None is unknown."""
    if observed is None:
        return "unknown"
    if minimum is not None and observed < minimum:
        return "fail"
    if maximum is not None and observed > maximum:
        return "fail"
    return "pass"


def speedup_of(subject: PhaseResult, reference: PhaseResult | None) -> float | None:
    """Fractional training speed-up of ``subject`` over ``reference`` (0.25 = 25 % more images/s)."""
    if reference is None or subject.images_per_s is None or not reference.images_per_s:
        return None
    return subject.images_per_s / reference.images_per_s - 1.0


def vram_of(result: PhaseResult, figure: str) -> float | None:
    """The VRAM figure a gate reads; ``both`` takes the larger of the two when both are known."""
    nvml, torch_peak = result.nvml_peak_used_gb, result.torch_peak_reserved_gb
    if figure == "nvml_peak":
        return nvml
    if figure == "torch_peak":
        return torch_peak
    known = [v for v in (nvml, torch_peak) if v is not None]
    return max(known) if known else None


def latency_label(cond: LatencyCheck) -> str:
    """``latency onnx p95 (total) ms``: how gate tables and the dry run name the condition."""
    return f"latency {cond.format} {cond.stat} ({cond.part}) ms"


def latency_of(cond: LatencyCheck, subject: PhaseResult) -> tuple[float | None, str]:
    """(ms, note) a latency condition reads from the subject's export, or (None, why there is none)."""
    report = subject.export
    if report is None:
        return None, "not exported and timed (no trained weights, or the export failed: see train.log)"
    latency = report.latency(cond.format)
    model = report.model(cond.format)
    if latency is None:
        return None, model.skipped if model is not None and model.skipped else f"{cond.format} not timed"
    note = latency.label
    if model is not None and model.parity is not None and not model.parity.passed:
        note += f"; parity FAILED: {model.parity.text()}"
    return latency.figure(cond.stat, cond.part), note


def metric_figure(cond: MetricCheck, subject: PhaseResult) -> tuple[str, float | None, Interval | None]:
    """(label, value, interval) a metric condition reads: Ultralytics' overall figure (and its bootstrap
    interval), the same without the validation images near-duplicated in train (``@clean``), or the
    COCO evaluator's figure for a size bucket and/or class."""
    from flows.engine.metrics.evaluation import condition_name

    evaluation = subject.evaluation
    if cond.images == "clean":
        clean = evaluation.clean if evaluation is not None else None
        label = f"{cond.metric}@clean"
        if clean is None:
            return label, None, None
        return label, clean.get(cond.metric), clean.interval(cond.metric)
    if cond.bucket is None and cond.class_ is None:
        interval = evaluation.interval(cond.metric) if evaluation is not None else None
        return cond.metric, subject.metrics.get(cond.metric), interval
    class_id = (
        evaluation.sizes.class_id(cond.class_)
        if evaluation and evaluation.sizes and cond.class_ is not None
        else None
    )
    class_name = str(cond.class_) if cond.class_ is not None else None
    label = condition_name(cond.metric, cond.bucket, class_name)
    if evaluation is None:
        return label, None, None
    return (
        label,
        evaluation.figure(cond.metric, cond.bucket, class_id),
        evaluation.interval(cond.metric, cond.bucket, class_id),
    )


Evaluated = tuple[str, str, str, Verdict, str, bool]
"""(condition, observed, threshold, verdict, note, marginal) of one condition."""


def judge_metric(cond: MetricCheck, subject: PhaseResult) -> Evaluated:
    """A metric condition: observed with its interval, the verdict (on the figure or its lower bound),
    and whether the threshold lies inside the interval (marginal, whatever the policy)."""
    from flows.engine.metrics.evaluation import judge_minimum
    from flows.engine.metrics.render import with_interval

    label, value, interval = metric_figure(cond, subject)
    judged = judge_minimum(value, interval, cond.min, cond.require)
    observed = "unknown" if value is None else with_interval(value, interval)
    threshold = f"≥ {cond.min:.4f}" + (" (lower bound)" if cond.require == "lower_bound" else "")
    return label, observed, threshold, judged.verdict, judged.note, judged.marginal


def evaluate_condition(cond: Condition, subject: PhaseResult, others: Mapping[str, PhaseResult]) -> Evaluated:
    """(condition, observed, threshold, verdict, note, marginal) for one condition; only a metric can be
    marginal (it alone has an interval)."""
    if isinstance(cond, MetricCheck):
        return judge_metric(cond, subject)
    return (*other_condition(cond, subject, others), False)


def other_condition(
    cond: Condition, subject: PhaseResult, others: Mapping[str, PhaseResult]
) -> tuple[str, str, str, Verdict, str]:
    """(condition, observed, threshold, verdict, note) of a speed-up, VRAM or flag condition."""
    if isinstance(cond, SpeedupCheck):
        reference = others.get(cond.vs)
        value = speedup_of(subject, reference)
        note = "" if reference else f"{cond.vs} did not run"
        return (
            f"speed-up vs {cond.vs} ({cond.figure})",
            fmt(value, "{:+.1%}"),
            f"≥ {cond.min:+.0%}",
            compare(value, minimum=cond.min),
            note,
        )
    if isinstance(cond, VramCheck):
        value = vram_of(subject, cond.figure)
        note = "no GPU measurement" if value is None else ""
        return (
            f"VRAM ({cond.figure}) GB",
            fmt(value, "{:.2f}"),
            f"≤ {cond.max_gb:g}",
            compare(value, maximum=cond.max_gb),
            note,
        )
    if isinstance(cond, LatencyCheck):
        value, note = latency_of(cond, subject)
        return (
            latency_label(cond),
            fmt(value, "{:.2f}"),
            f"≤ {cond.max_ms:g}",
            compare(value, maximum=cond.max_ms),
            note,
        )
    assert isinstance(cond, FlagCheck)
    if cond.check == "no_divergence":
        verdict: Verdict = "fail" if subject.diverged else "pass"
        note = subject.reason or "" if subject.diverged else ""
        return ("no divergence", f"{subject.nan_recoveries} NaN recoveries", "not diverged", verdict, note)
    verdict = "pass" if subject.completed else "fail"
    return (
        "all epochs completed",
        f"{subject.epochs_done}/{subject.epochs_planned}",
        f"{subject.epochs_planned}",
        verdict,
        subject.reason or "" if verdict == "fail" else "",
    )


def evaluate_gate(
    name: str, gate: GateNode, subject: PhaseResult | None, others: Mapping[str, PhaseResult]
) -> GateResult:
    """Evaluate every condition (all must pass) and pick the next node."""
    if subject is None:
        row = ConditionRow(
            condition="subject ran",
            observed="no result",
            threshold=gate.subject,
            verdict="fail",
            passed=False,
        )
        return GateResult(node=name, subject=gate.subject, rows=(row,), outcome="fail", next=gate.on_fail)
    rows = []
    for cond in gate.conditions:
        label, observed, threshold, verdict, note, marginal = evaluate_condition(cond, subject, others)
        policy = cond.on_unknown or gate.on_unknown
        passed = verdict == "pass" or (verdict == "unknown" and policy == "pass")
        if verdict == "unknown":
            note = f"{note}; unknown counts as {policy}".lstrip("; ")
        rows.append(
            ConditionRow(
                condition=label,
                observed=observed,
                threshold=threshold,
                verdict=verdict,
                passed=passed,
                note=note,
                marginal=marginal,
            )
        )
    decided = subject.early_decision
    if decided is not None and decided.gate == name:
        rows.append(decision_row(decided))
    ok = all(r.passed for r in rows)
    return GateResult(
        node=name,
        subject=gate.subject,
        rows=tuple(rows),
        outcome="pass" if ok else "fail",
        next=gate.on_pass if ok else gate.on_fail,
    )


def decision_row(decision: EarlyDecision) -> ConditionRow:
    """The gate-table line that says the phase was stopped early and why (the gate fails with it)."""
    if decision.check == "vram":
        observed, threshold = f"{decision.observed:.2f} GB so far", f"≤ {decision.threshold:g}"
    elif decision.check == "speedup":
        observed, threshold = f"{decision.observed:+.1%} so far", f"≥ {decision.threshold:+.0%}"
    else:
        risk = "" if decision.risk is None else f" at {decision.risk:.0%} risk"
        observed = f"at most {fmt(decision.bound)}{risk} (best {fmt(decision.observed)})"
        threshold = f"≥ {decision.threshold:.4f}"
    return ConditionRow(
        condition=f"early decision: {decision.condition}",
        observed=observed,
        threshold=threshold,
        verdict="fail",
        passed=False,
        note=decision.reason,
    )


def shortfalls(gate: GateResult) -> list[str]:
    """Human lines saying which conditions failed and by how much (for keep-baseline records)."""
    return [
        f"{gate.node}: {r.condition} observed {r.observed}, needed {r.threshold}"
        + (f" ({r.note})" if r.note else "")
        for r in gate.rows
        if not r.passed
    ]
