"""The run report: the tree with the path taken, gate tables, phase tables and curves.

``render_report`` returns Markdown (written as REPORT.md and published as a Prefect
artifact); ``plot_curves`` draws mAP50-95 per epoch per phase into a PNG (matplotlib,
Agg backend, imported lazily).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

from flows.engine.fsutil import atomic_write_bytes
from flows.engine.outputs.export_text import export_section
from flows.engine.outputs.tables import batch_text, fmt4, gate_table, metric_reason, na, vram_text
from flows.engine.plan.tree import TreeView
from flows.engine.records.results import Decision, PhaseResult, TrialRecord

SHAPES = {
    "train": ('["', '"]'),
    "search": ('[["', '"]]'),
    "gate": ('{"', '"}'),
    "deploy": ('(["', '"])'),
    "keep_baseline": ('(["', '"])'),
}


def mermaid(tree: TreeView, path: Sequence[str]) -> str:
    """The tree as a Mermaid flowchart; nodes and edges on the path taken are highlighted."""
    lines = ["flowchart TD"]
    for name, kind in tree.kinds.items():
        left, right = SHAPES.get(kind, ('["', '"]'))
        lines.append(f"    {name}{left}{tree.labels.get(name, name)}{right}")
    taken = set(pairwise(path))
    link_styles = []
    for i, edge in enumerate(tree.edges):
        label = f"|{edge.label}|" if edge.label else ""
        lines.append(f"    {edge.source} -->{label} {edge.target}")
        if (edge.source, edge.target) in taken:
            link_styles.append(str(i))
    lines.append("    classDef taken fill:#d4f7d4,stroke:#1a7f37,stroke-width:3px")
    if path:
        lines.append(f"    class {','.join(dict.fromkeys(path))} taken")
    if link_styles:
        lines.append(f"    linkStyle {','.join(link_styles)} stroke:#1a7f37,stroke-width:3px")
    return "\n".join(lines)


def text_tree(tree: TreeView, path: Sequence[str] = ()) -> str:
    """The tree as indented text (terminal output of --dry-run and the report's fallback)."""
    out: list[str] = []
    seen: set[str] = set()

    def visit(name: str, depth: int, label: str) -> None:
        mark = "*" if name in path else " "
        prefix = f"{label}: " if label else ""
        out.append(f"{mark} {'    ' * depth}{prefix}{name} ({tree.labels.get(name, name)})")
        if name in seen:
            return
        seen.add(name)
        for edge in tree.edges:
            if edge.source == name:
                visit(edge.target, depth + 1, edge.label)

    visit(tree.start, 0, "")
    return "\n".join(out)


def phase_rows(phases: Sequence[PhaseResult]) -> list[str]:
    """One table row per training."""
    rows = [
        "| run | status | mAP50-95 | mAP50 | P | R | epochs | batch×acc=eff | images/s "
        "| VRAM NVML / torch GB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in phases:
        m, why = p.metrics, metric_reason(p)
        rows.append(
            f"| {p.label} | {p.status} | {fmt4(m.map50_95, why)} | {fmt4(m.map50, why)} "
            f"| {fmt4(m.precision, why)} | {fmt4(m.recall, why)} "
            f"| {p.epochs_done}/{p.epochs_planned} | {batch_text(p)} "
            f"| {na(p.images_per_s, '{:.1f}')} | {vram_text(p)} |"
        )
    return rows


def incident_lines(runs: Sequence[PhaseResult]) -> list[str]:
    """One line per training that did not simply complete: why it stopped, NaN epochs and reloads, OOMs."""
    lines = []
    for p in runs:
        run = p.label
        notes = []
        if p.status != "completed":
            notes.append(f"{p.status}: {p.reason or 'no reason given'}")
        if p.nan_epochs or p.nan_recoveries:
            notes.append(
                f"{p.nan_epochs} epoch(s) with a NaN/Inf loss or fitness, "
                f"{p.nan_recoveries} reload(s) of the last good checkpoint"
            )
        for e in p.oom_events:
            if e.retry_batch is not None:
                notes.append(
                    f"out of memory at batch {e.batch} in epoch {e.epoch} → batch {e.retry_batch} "
                    f"× {e.accumulate} accumulation steps"
                )
            elif p.status == "completed":
                notes.append(f"out of memory at batch {e.batch} in epoch {e.epoch}")
        if notes:
            lines.append(f"- {run}: " + "; ".join(notes))
    return lines


def trial_rows(
    trials: Sequence[PhaseResult], keys: Sequence[str], states: Sequence[TrialRecord] = ()
) -> list[str]:
    """The search's trials with their points, epochs and state (complete, pruned at epoch k) in the study."""
    label = {r.number: r.label for r in states}
    rows = [
        "| trial | " + " | ".join(keys) + " | mAP50-95 | epochs | state |",
        "|---" * (len(keys) + 4) + "|",
    ]
    for t in trials:
        values = " | ".join(str(t.args.get(k, "")) for k in keys)
        state = label.get(t.trial, t.status)
        score = fmt4(t.metrics.map50_95, metric_reason(t))
        rows.append(f"| {t.key} | {values} | {score} | {t.epochs_done} | {state} |")
    return rows


def render_report(
    decision: Decision,
    tree: TreeView,
    curves_png: str | None,
    space_keys: Sequence[str],
    histogram_png: str | None = None,
    sizes_png: str | None = None,
    contact_png: str | None = None,
) -> str:
    """The whole REPORT.md."""
    verdict = (
        f"**Deployed `{decision.deployed_from}`** → `{decision.deployed_model}`"
        if decision.terminal_kind == "deploy"
        else f"**Kept the baseline {decision.baseline_name}** "
        f"(mAP50-95 {fmt4(decision.baseline_map50_95, 'not stated')})"
    )
    lines = [
        f"# {decision.plan}: run {decision.run_id}",
        "",
        f"{verdict}; terminal `{decision.terminal}`; profile `{decision.profile or 'none'}`; "
        f"dataset fingerprint `{decision.data_fingerprint}`.",
        "",
        f"Path taken: {' → '.join(decision.path)}",
        "",
        "## Decision tree (path taken in green)",
        "",
        "```mermaid",
        mermaid(tree, decision.path),
        "```",
        "",
        "```text",
        text_tree(tree, decision.path),
        "```",
        "",
    ]
    if decision.warnings_and_notes:
        lines += ["## Warnings and notes", "", *(f"- {w}" for w in decision.warnings_and_notes), ""]
    lines += ["## Gates", ""]
    for gate in decision.gates:
        lines += gate_table(gate)
    if decision.deployed_export is not None:
        lines += export_section(decision.deployed_export)
    for phase in decision.phases:
        if phase.export is not None and phase.export != decision.deployed_export:
            lines += export_section(phase.export, f"## {phase.label}: exported and timed for its gate")
    lines += ["## Phases", "", *phase_rows(decision.phases), ""]
    if incidents := incident_lines([*decision.phases, *decision.trials]):
        lines += ["## Incidents (divergence, out of memory, failures)", "", *incidents, ""]
    if decision.trials:
        lines += [
            "## Search trials",
            "",
            *trial_rows(decision.trials, space_keys, decision.search_trials),
            "",
        ]
    if evaluated := [p for p in decision.phases if p.evaluation is not None]:
        from flows.engine.metrics.render import evaluation_section

        lines += ["## Accuracy by object size and class", ""]
        if sizes_png:
            lines += [f"![mAP50-95 by object size]({sizes_png})", ""]
        for phase in evaluated:
            lines += evaluation_section(phase.label, phase.evaluation)
    if plans := batch_plan_lines([*decision.phases, *decision.trials]):
        lines += ["## Batch plans (VRAM planner)", "", *plans, ""]
    if curves_png:
        lines += ["## mAP50-95 per epoch", "", f"![mAP50-95 per epoch]({curves_png})", ""]
    if decision.data_profile is not None:
        from flows.engine.data.profile import render_markdown

        lines += [
            "## The data",
            "",
            render_markdown(
                decision.data_profile, histogram_png, with_warnings=False, contact_png=contact_png
            ),
        ]
    return "\n".join(lines)


def plot_sizes(phases: Sequence[PhaseResult], out: Path) -> Path | None:
    """mAP50-95 per size bucket, one bar per phase (intervals as error bars); None when nothing to draw."""
    from flows.engine.metrics.render import plot_size_buckets

    runs = [(p.label, p.evaluation.sizes) for p in phases if p.evaluation is not None and p.evaluation.sizes]
    return plot_size_buckets(runs, out) if runs else None


def batch_plan_lines(runs: Sequence[PhaseResult]) -> list[str]:
    """Each planned training's measurements, fit and choice (or why its fixed batch was used)."""
    from flows.engine.decisions.batch_planner import render_batch_plan

    lines: list[str] = []
    for run in runs:
        if run.batch_plan is not None:
            lines += [f"**{run.label}**", "", *render_batch_plan(run.batch_plan, markdown=True), ""]
    return lines


def plot_curves(runs: Sequence[PhaseResult], out: Path) -> Path | None:
    """Draw mAP50-95 per epoch for every run with a history; None when there is nothing to draw."""
    drawable = [r for r in runs if any(e.map50_95 is not None for e in r.history)]
    if not drawable:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_map, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100)
    for run in drawable:
        label = run.node if run.role != "trial" else f"{run.node} t{run.trial}"
        style = ":" if run.role == "trial" else "-"
        for ax, series in ((ax_map, map_series(run)), (ax_loss, loss_series(run))):
            if series[0]:
                marker = "o" if len(series[0]) < 15 else None
                ax.plot(*series, style, marker=marker, label=label, clip_on=False)
    ax_map.set_ylabel("mAP50-95 (validation)")
    ax_map.set_ylim(bottom=0)  # a metric in [0, 1]: a flat 0 must not be drawn around a negative axis
    ax_loss.set_ylabel("train box loss")
    for ax in (ax_map, ax_loss):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
    ax_map.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write_bytes(out, buffer.getvalue())


def map_series(run: PhaseResult) -> tuple[list[int], list[float]]:
    """(epochs, mAP50-95) of a run's history, skipping unknown values."""
    points = [(e.epoch, e.map50_95) for e in run.history if e.map50_95 is not None]
    return [p[0] for p in points], [p[1] for p in points]


def loss_series(run: PhaseResult) -> tuple[list[int], list[float]]:
    """(epochs, training box loss): shows learning even while a tiny model's mAP is still zero."""
    points = [(e.epoch, v) for e in run.history if (v := e.losses.get("train/box_loss")) is not None]
    return [p[0] for p in points], [p[1] for p in points]
