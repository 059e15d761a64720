"""How figures read in tables (the report, the model card, the CLI summary).

One rule everywhere: a figure that does not exist reads ``n/a (reason)`` — ``no GPU``, ``diverged``,
``not measured`` — never ``None``.
"""

from __future__ import annotations

from flows.engine.records.results import ConditionRow, GateResult, PhaseResult


def fmt4(value: float | None, reason: str = "not measured") -> str:
    """A metric for a table; a figure that does not exist reads n/a with the reason."""
    return na(value, "{:.4f}", reason)


def na(value: float | int | None, pattern: str = "{}", reason: str = "not measured") -> str:
    """A figure, or ``n/a (reason)`` where it does not exist — never ``None``."""
    return f"n/a ({reason})" if value is None else pattern.format(value)


def metric_reason(run: PhaseResult) -> str:
    """Why a run has no validation figures."""
    return {"diverged": "diverged", "out_of_memory": "out of memory", "failed": "error"}.get(
        run.status, "no final validation"
    )


def gpu_reason(run: PhaseResult) -> str:
    """Why a run has no VRAM figure: no GPU, or the figure was not measured."""
    return "not measured" if run.gpu_name else "no GPU"


def batch_text(run: PhaseResult) -> str:
    """``batch × accumulation = effective``, or n/a where the training reported none."""
    if run.batch_used is None:
        return "n/a (not trained)"
    return f"{run.batch_used}×{na(run.accumulate)}={na(run.effective_batch)}"


def vram_text(run: PhaseResult) -> str:
    """Peak VRAM as NVML and torch saw it, in GB."""
    reason = gpu_reason(run)
    nvml, torch_gb = run.nvml_peak_used_gb, run.torch_peak_reserved_gb
    if nvml is None and torch_gb is None:
        return f"n/a ({reason})"
    return f"{na(nvml, '{:.2f}', reason)} / {na(torch_gb, '{:.2f}', reason)}"


def gate_table(gate: GateResult) -> list[str]:
    """A gate as Markdown table lines."""
    return [
        f"### Gate `{gate.node}` on `{gate.subject}`: **{gate.outcome}** → `{gate.next}`",
        "",
        "| condition | observed | threshold | verdict | note |",
        "|---|---|---|---|---|",
        *(
            f"| {r.condition} | {r.observed} | {r.threshold} | {verdict_text(r)} | {r.note} |"
            for r in gate.rows
        ),
        "",
    ]


def verdict_text(row: ConditionRow) -> str:
    """The verdict, flagged when the threshold lies inside the figure's interval (a close call)."""
    return f"{row.verdict} ⚠ marginal" if row.marginal else row.verdict
