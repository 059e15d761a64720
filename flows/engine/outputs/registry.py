"""Terminals: deploy a phase's weights into a versioned registry, or record keeping the baseline.

A registry version is a folder ``REGISTRY/PLAN/vN`` created atomically (``mkdir`` fails
if it exists), holding ``best.pt``, its exports (``best.onnx``...) and ``MODEL_CARD.md``; no version is
ever replaced.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from flows.engine.decisions.gates import shortfalls
from flows.engine.faults import kill_point
from flows.engine.fsutil import atomic_copy, atomic_write_text, write_text_once
from flows.engine.outputs.export_text import export_section
from flows.engine.outputs.tables import batch_text, fmt4, gate_table, metric_reason, na, vram_text
from flows.engine.records.export import ExportReport
from flows.engine.records.results import GateResult, PhaseResult

MAX_VERSIONS = 100_000


def next_version_dir(registry: Path, plan: str) -> Path:
    """Create and return the next free ``vN`` folder for the plan (never an existing one)."""
    root = registry / plan
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[1:]) for p in root.glob("v*") if p.name[1:].isdigit()]
    for n in range(max(taken, default=0) + 1, MAX_VERSIONS):
        candidate = root / f"v{n}"
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free version folder under {root}")


def model_card(
    plan: str,
    version: str,
    phase: PhaseResult,
    gates: list[GateResult],
    path: list[str],
    fingerprint: str,
    export: ExportReport | None = None,
) -> str:
    """A model card: metrics, gate tables, data fingerprint, training args, path taken."""
    m = phase.metrics
    lines = [
        f"# {plan} {version}",
        "",
        f"Deployed from node `{phase.node}`; path taken: {' → '.join(path)}.",
        f"Dataset fingerprint: `{fingerprint}`.",
        "",
        "| metric (final validation of best.pt) | value |",
        "|---|---|",
        *(f"| {k} | {fmt4(v, metric_reason(phase))} |" for k, v in m.model_dump().items()),
        "",
        f"Epochs {phase.epochs_done}/{phase.epochs_planned}; batch × accumulation = effective "
        f"{batch_text(phase)}; {na(phase.images_per_s, '{:.1f}')} images/s; "
        f"peak VRAM NVML / torch {vram_text(phase)} GB; GPU {phase.gpu_name or 'n/a (no GPU)'}.",
        "",
    ]
    for gate in gates:
        lines += gate_table(gate)
    if phase.evaluation is not None:
        from flows.engine.metrics.render import model_card_lines

        lines += model_card_lines(phase.evaluation)
    if export is not None:
        lines += export_section(export)
    lines += [
        "## Training arguments",
        "",
        "```json",
        json.dumps(phase.args, indent=2, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)


SOURCE_RUN = "SOURCE_RUN"
"""Names the run a version was deployed from, so a resumed run completes its own version, never a second."""


def version_of_run(registry: Path, plan: str, run_id: str) -> Path | None:
    """The version folder a run already started deploying into, if any."""
    for marker in sorted((registry / plan).glob(f"v*/{SOURCE_RUN}")):
        if marker.read_text(encoding="utf-8").strip() == run_id:
            return marker.parent
    return None


def deploy(
    registry: Path,
    run_id: str,
    plan: str,
    phase: PhaseResult,
    gates: list[GateResult],
    path: list[str],
    fingerprint: str,
    export: ExportReport | None = None,
) -> Path:
    """Copy the winning weights (and their checked exports) into a new registry version with its model
    card; return the weights' path.

    Idempotent per run: a run killed halfway through its deploy completes the same version on resume.
    """
    if phase.weights is None or not Path(phase.weights).is_file():
        raise FileNotFoundError(f"{phase.node} has no weights to deploy ({phase.weights})")
    version_dir = version_of_run(registry, plan, run_id)
    if version_dir is None:
        version_dir = next_version_dir(registry, plan)
        atomic_write_text(version_dir / SOURCE_RUN, run_id + "\n")
    kill_point("deploy")
    target = version_dir / "best.pt"
    if not target.exists():
        atomic_copy(Path(phase.weights), target)
    if export is not None:
        copy_exports(export, version_dir)
    card = model_card(plan, version_dir.name, phase, gates, path, fingerprint, export)
    write_text_once(version_dir / "MODEL_CARD.md", card)
    return target


def copy_exports(report: ExportReport, target: Path) -> None:
    """Each exported file (an OpenVINO folder too) into the version under its own name, once."""
    for model in report.models:
        if model.file is None:
            continue
        destination = target / model.file.name
        if destination.exists():
            continue
        if model.file.is_dir():
            staging = target / f".{model.file.name}.partial"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(model.file, staging)
            staging.rename(destination)
        else:
            atomic_copy(model.file, destination)


def baseline_record(baseline: str, map50_95: float, gates: list[GateResult]) -> str:
    """Why the baseline stays: every failed condition and by how much."""
    lines = [f"# Keeping the baseline {baseline} (mAP50-95 {map50_95:.4f})", "", "Gates that failed:", ""]
    lines += [f"- {line}" for gate in gates for line in shortfalls(gate)] or ["- none"]
    return "\n".join(lines) + "\n"
