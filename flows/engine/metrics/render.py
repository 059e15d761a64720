"""Markdown and a chart for the evaluation: report tables per phase, the bucket chart, model-card lines.

Pure: matplotlib (Agg) is imported inside ``plot_size_buckets`` only.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flows.engine.fsutil import atomic_write_bytes
from flows.engine.records.evaluation import BucketMetrics, Evaluation, Interval, SizeReport

NO_OBJECTS = "n/a (no objects)"
"""A bucket or class with no validation object has no figure: it reads so, never as a dash or None."""


def fmt(value: float | None, missing: str = NO_OBJECTS) -> str:
    """A figure with 4 decimals, or ``n/a`` with the reason."""
    return missing if value is None or not math.isfinite(value) else f"{value:.4f}"


def interval_text(interval: Interval | None) -> str:
    """``[0.9031, 0.9270]`` or empty."""
    return "" if interval is None else f"[{interval.low:.4f}, {interval.high:.4f}]"


def with_interval(value: float | None, interval: Interval | None) -> str:
    """``0.9152 [0.9031, 0.9270]``: a figure and how far it could move, for gate tables."""
    text = interval_text(interval)
    return f"{fmt(value)} {text}".rstrip()


def bucket_row(cell: BucketMetrics) -> str:
    """One table row: bucket, objects, AP50-95, AP50, recall, each with its interval."""
    return (
        f"| {cell.label} | {cell.objects} | {with_interval(cell.map50_95, cell.map50_95_ci)} "
        f"| {with_interval(cell.map50, cell.map50_ci)} | {with_interval(cell.recall, cell.recall_ci)} |"
    )


def size_table(report: SizeReport) -> list[str]:
    """Markdown table of the all-class figures per size bucket (``all`` first)."""
    return [
        "| size | objects | AP50-95 | AP50 | recall (IoU 0.50) |",
        "|---|---|---|---|---|",
        *(bucket_row(cell) for cell in report.sizes),
    ]


def class_table(report: SizeReport) -> list[str]:
    """Markdown table: one row per class, AP50-95 over all sizes and per bucket."""
    if not report.classes:
        return []
    heads = [cell.label for cell in report.sizes]
    lines = [
        "| class | objects | " + " | ".join(f"AP50-95 {h}" for h in heads) + " |",
        "|---|---|" + "---|" * len(heads),
    ]
    for cls in report.classes:
        cells = " | ".join(with_interval(c.map50_95, c.map50_95_ci) for c in cls.sizes)
        lines.append(f"| {cls.class_id} {cls.name} | {cls.objects} | {cells} |")
    return lines


def evaluation_section(title: str, evaluation: Evaluation) -> list[str]:
    """The report's section of one phase: intervals of the gated figures, then size and class tables."""
    lines = [f"### {title}", ""]
    iv = evaluation.intervals
    if iv is not None:
        lines += [
            f"Ultralytics' figures with {iv.level:.0%} bootstrap intervals ({iv.resamples} resamples of "
            f"the validation images, seed {iv.seed}, {iv.seconds:.1f} s):",
            "",
            "| images | P | R | mAP50 | mAP50-95 |",
            "|---|---|---|---|---|",
            figure_row(f"all {iv.images}", evaluation.overall.get, iv.get),
        ]
        if (clean := evaluation.clean) is not None:
            lines.append(
                figure_row(f"clean {clean.images} ({clean.left_out} left out)", clean.get, clean.interval)
            )
        lines += ["", *clean_lines(evaluation)]
    sizes = evaluation.sizes
    if sizes is not None:
        measure = "longest side" if sizes.measure == "longest_side" else "area (COCO)"
        lines += [
            f"By object size ({measure}, pixels of the original image; {sizes.evaluator}, "
            f"max_det {sizes.max_det}):",
            "",
            *size_table(sizes),
            "",
        ]
        if len(sizes.classes) > 1:
            lines += ["By class:", "", *class_table(sizes), ""]
        diff = evaluation.coco_minus_ultralytics
        if diff is not None:
            lines += [
                f"COCO's overall mAP50-95 on the same predictions differs from Ultralytics' by {diff:+.4f} "
                "(the gates read Ultralytics').",
                "",
            ]
        if sizes.note:
            lines += [f"Note: {sizes.note}", ""]
    if evaluation.note:
        lines += [f"Note: {evaluation.note}", ""]
    return lines


GATED_ORDER = ("precision", "recall", "map50", "map50_95")


def figure_row(label: str, value: Callable[[str], float | None], interval: Callable[[str], Any]) -> str:
    """One table row of the four gated figures with their intervals."""
    return f"| {label} | " + " | ".join(with_interval(value(m), interval(m)) for m in GATED_ORDER) + " |"


def clean_lines(evaluation: Evaluation) -> list[str]:
    """What the @clean row means, and where the two figures differ by more than the clean interval."""
    clean = evaluation.clean
    if clean is None:
        return []
    if not clean.left_out:
        return [f"No validation image has a near-duplicate in train ({clean.rule}): @clean = all.", ""]
    apart = [
        m
        for m in GATED_ORDER
        if (v := evaluation.overall.get(m)) is not None
        and (ci := clean.interval(m)) is not None
        and not ci.holds(v)
    ]
    lines = [
        f"clean: the {clean.left_out} validation images with a near-duplicate in train ({clean.rule}) left "
        "out; gates read it as `images: clean` (`map50_95@clean`).",
        "",
    ]
    if apart:
        names = ", ".join(apart)
        lines += [
            f"**{names}: the figure on all images lies outside the clean figure's interval**: the leaked "
            "images inflate what the gates read on all images.",
            "",
        ]
    return lines


def model_card_lines(evaluation: Evaluation) -> list[str]:
    """The model card's accuracy-by-size block (same tables as the report, without the chart)."""
    lines = ["## Accuracy by object size", ""]
    if evaluation.sizes is None:
        return [*lines, "Not evaluated.", ""]
    return [*lines, *evaluation_section("Validation", evaluation)[2:]]


def plot_size_buckets(
    runs: Sequence[tuple[str, SizeReport]], out: Path, metric: str = "map50_95"
) -> Path | None:
    """Grouped bars: ``metric`` per size bucket (``all`` first), one bar per phase, intervals as error bars.

    None when no run has a size report with a value.
    """
    drawable = [(name, r) for name, r in runs if any(c.get(metric) is not None for c in r.sizes)]
    if not drawable:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [c.label for c in drawable[0][1].sizes]
    width = 0.8 / len(drawable)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(labels) * max(1, len(drawable)) / 2), 4), dpi=100)
    for j, (name, report) in enumerate(drawable):
        xs, ys, low, high = [], [], [], []
        for i, label in enumerate(labels):
            cell = next((c for c in report.sizes if c.label == label), None)
            value = cell.get(metric) if cell is not None else None
            if value is None:  # no objects of that size: say so, a zero-height bar would read as AP 0
                ax.text(i - 0.4 + width * (j + 0.5), 0.01, "n/a", ha="center", va="bottom", fontsize=6)
                continue
            ci = cell.interval(metric) if cell is not None else None
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(value)
            low.append(max(0.0, value - ci.low) if ci else 0.0)
            high.append(max(0.0, ci.high - value) if ci else 0.0)
        ax.bar(xs, ys, width=width, label=name, yerr=[low, high], capsize=3)
    ax.set_xticks(range(len(labels)), labels)
    name = {"map50_95": "AP50-95", "map50": "AP50", "recall": "recall (IoU 0.50)"}.get(metric, metric)
    ax.set_ylabel(name)
    ax.set_title(f"{name} by object size (COCO), bootstrap intervals as error bars", fontsize=9)
    ax.set_ylim(0, 1)
    ax.set_xlabel("object size (pixels of the original image)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write_bytes(out, buffer.getvalue())
