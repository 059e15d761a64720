"""Gates: conditions on a phase's result, evaluated into a table and an outcome.

A figure that could not be measured (no GPU, so no VRAM) is ``unknown``; the gate's
(or the condition's) ``on_unknown`` policy decides whether unknown passes. A gate never
reads Ultralytics' ``fitness``: only the final validation of best.pt.
"""

from __future__ import annotations

from collections.abc import Mapping

from flows.engine.plan.schema import Condition, FlagCheck, GateNode, MetricCheck, SpeedupCheck, VramCheck
from flows.engine.records.results import ConditionRow, GateResult, PhaseResult, Verdict


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


def evaluate_condition(
    cond: Condition, subject: PhaseResult, others: Mapping[str, PhaseResult]
) -> tuple[str, str, str, Verdict, str]:
    """(condition, observed, threshold, verdict, note) for one condition."""
    if isinstance(cond, MetricCheck):
        value = subject.metrics.get(cond.metric)
        return (cond.metric, fmt(value), f"≥ {cond.min:.4f}", compare(value, minimum=cond.min), "")
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
        label, observed, threshold, verdict, note = evaluate_condition(cond, subject, others)
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
            )
        )
    decided = subject.early_decision
    if decided is not None and decided.gate == name:
        from flows.engine.decisions.early import decision_row

        rows.append(decision_row(decided))
    ok = all(r.passed for r in rows)
    return GateResult(
        node=name,
        subject=gate.subject,
        rows=tuple(rows),
        outcome="pass" if ok else "fail",
        next=gate.on_pass if ok else gate.on_fail,
    )


def shortfalls(gate: GateResult) -> list[str]:
    """Human lines saying which conditions failed and by how much (for keep-baseline records)."""
    return [
        f"{gate.node}: {r.condition} observed {r.observed}, needed {r.threshold}"
        + (f" ({r.note})" if r.note else "")
        for r in gate.rows
        if not r.passed
    ]
