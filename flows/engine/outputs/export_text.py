"""The deployed model's exports in words: the table the model card and the report show.

One row per format and one for best.pt through PyTorch (the reference every export is timed against),
with the file's sha256, its parity with best.pt and its latency, pre- and post-processing apart.
"""

from __future__ import annotations

from flows.engine.records.export import ExportReport, Latency


def ms(latency: Latency | None, part: str) -> str:
    """``12.9 / 15.4`` (median / p95 ms), or n/a."""
    if latency is None:
        return "n/a"
    spread = getattr(latency, part)
    return f"{spread.median:.1f} / {spread.p95:.1f}"


def export_section(report: ExportReport, title: str = "## Exported for deployment") -> list[str]:
    """Markdown lines: how it was timed, then a row per format and one for best.pt."""
    first = report.reference
    lines = [
        title,
        "",
        f"Timed on {first.device} at {report.imgsz} px, batch {first.batch}: {first.warmup} warm-up calls, "
        f"then {first.runs} timed calls on one validation image; ms per image, median / p95. Parity: "
        f"each export validated against best.pt on the same images, size and batch "
        f"(tolerance ±{report.settings.parity_tolerance:g} mAP50-95).",
        "",
        "| format | file | sha256 | MB | mAP50-95 (best.pt) | parity "
        "| total ms | model ms | pre ms | post ms |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for model in report.models:
        if model.skipped:
            lines.append(f"| {model.format} | skipped: {model.skipped} |  |  |  |  |  |  |  |  |")
            continue
        name = model.file.name if model.file else "n/a"
        parity = model.parity
        figure = f"{parity.exported.map50_95:.4f} ({parity.reference.map50_95:.4f})" if parity else "n/a"
        verdict = (
            ("pass" if parity.passed else "**FAIL**") + f" {parity.difference:+.4f}" if parity else "n/a"
        )
        size = f"{model.bytes / 1e6:.1f}" if model.bytes is not None else "n/a"
        lat = model.latency
        lines.append(
            f"| {model.format} | {name} | `{model.sha256}` | {size} | {figure} | {verdict} | "
            f"{ms(lat, 'total')} | {ms(lat, 'model')} | {ms(lat, 'preprocess')} | {ms(lat, 'postprocess')} |"
        )
    lines.append(
        f"| pytorch | best.pt | `{report.weights_sha256}` |  |  | reference | {ms(first, 'total')} | "
        f"{ms(first, 'model')} | {ms(first, 'preprocess')} | {ms(first, 'postprocess')} |"
    )
    return [*lines, ""]


def export_summary(report: ExportReport) -> list[str]:
    """One line per format for the terminal: file, parity, latency."""
    lines = []
    for model in report.models:
        if model.skipped or model.file is None:
            lines.append(f"{model.format}: skipped ({model.skipped})")
            continue
        parity = f"parity {model.parity.difference:+.4f} mAP50-95" if model.parity else "no parity check"
        timed = ms(model.latency, "total")
        lines.append(f"{model.format}: {model.file.name}, {parity}, {timed} ms (median / p95)")
    timed = ms(report.reference, "total")
    lines.append(f"pytorch: best.pt, {timed} ms (median / p95) on {report.reference.device}")
    return lines
