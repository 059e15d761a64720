"""Peak VRAM and training speed of YOLO11m-P2 vs the lite model (no P5 head) at 640, batch 6 and 8.

Why this exists: the plan's Phase 1 says "VRAM stays <= 18 GB" at batch 6 and Phase 2 promises a lite
model that is "25 % faster" and fits 20 GB at batch 8. Those figures decide gates, so they are measured
here the way the engine measures them: each run goes through ``tasks.trainers.ultra.UltralyticsTrainer``
(the child process of a real phase), and the peaks come from its ``PhaseResult``: torch's peak reserved
memory of the training process, and NVML's peak used memory of the whole card (sampled while training).
images/s is the engine's figure too: training images per second of the training part of each epoch,
the median over the epochs after the first.

Needs a CUDA GPU; without one it says so and exits with code 2, before generating anything.

Run:  python benchmarks/gpu_memory.py [--iterations 300] [--device 0] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODELS = ("yolo11m-p2.yaml", "yolo11m-p2-lite.yaml")
BATCHES = (6, 8)
EFFECTIVE_BATCH = {6: 18, 8: 16}
"""The plan's effective batches (Phase 1: 6 x 3 = 18, Phase 2: 8 x 2 = 16), turned into nbs as in a phase."""
IMGSZ = 640
EXIT_NO_CUDA = 2


def cuda_problem() -> str | None:
    """Why this machine cannot run the benchmark, or None when a CUDA device is there."""
    from tasks.trainers.vram import gpu_tool_refusal

    return gpu_tool_refusal("gpu_memory.py", "docs/BENCHMARKS.md")


def epochs_for(iterations: int, n_train: int, batch: int) -> int:
    """Epochs that give at least ``iterations`` optimizer-loop iterations (batches) in all."""
    per_epoch = math.ceil(n_train / batch)
    return max(2, math.ceil(iterations / per_epoch))  # two at least: images/s skips the first epoch


def make_spec(model: str, batch: int, data: Path, epochs: int, device: str, runs: Path) -> Any:
    """One run as the TrainSpec a phase would hand to the trainer."""
    from flows.engine.records.results import TrainSpec
    from fod_models import resolve_model

    name = f"{Path(model).stem}-b{batch}"
    return TrainSpec(
        plan="bench-gpu-memory",
        node=name,
        model=resolve_model(model),
        data=data,
        args={
            "imgsz": IMGSZ,
            "epochs": epochs,
            "batch": batch,
            "device": device,
            "workers": 4,
            "plots": False,
            "optimizer": "SGD",
            "lr0": 0.01,
            "seed": 0,
            "deterministic": False,
        },
        effective_batch=EFFECTIVE_BATCH.get(batch),
        run_dir=runs / name,
    )


def measure(spec: Any, device: str) -> dict[str, Any]:
    """Train one spec through the engine's trainer; return its row of figures."""
    from tasks.trainers.ultra import UltralyticsTrainer

    def on_epoch(event: Any) -> None:
        speed = f"{event.images_per_s:.1f} img/s" if event.images_per_s else "–"
        nvml = f"{event.nvml_used_gb:.2f} GB" if event.nvml_used_gb is not None else "–"
        print(
            f"  {spec.node}: epoch {event.record.epoch}/{event.epochs_planned} {speed}, NVML {nvml}",
            flush=True,
        )

    result = UltralyticsTrainer(device=device, log=lambda line: None).train(spec, on_epoch)
    return {
        "model": spec.model.name,
        "batch": spec.args["batch"],
        "status": result.status,
        "reason": result.reason,
        "epochs": result.epochs_done,
        "batch_used": result.batch_used,
        "images_per_s": result.images_per_s,
        "torch_peak_reserved_gb": result.torch_peak_reserved_gb,
        "nvml_peak_used_gb": result.nvml_peak_used_gb,
        "gpu_name": result.gpu_name,
        "wall_s": result.wall_s,
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""

    def num(value: object, digits: int = 2) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    lines = [
        "| model | batch | status | epochs | images/s | torch peak reserved (GB) | NVML peak used (GB) "
        "| wall (s) |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        status = r["status"] if not r.get("reason") else f"{r['status']} ({r['reason']})"
        lines.append(
            f"| {r['model']} | {r['batch']} | {status} | {r['epochs']} | {num(r['images_per_s'], 1)} | "
            f"{num(r['torch_peak_reserved_gb'])} | {num(r['nvml_peak_used_gb'])} | {num(r['wall_s'], 0)} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Options of the benchmark."""
    p = argparse.ArgumentParser(description="Peak VRAM and images/s of YOLO11m-P2 vs the lite model at 640.")
    p.add_argument("--iterations", type=int, default=300, help="training iterations per run (default 300)")
    p.add_argument("--n-train", type=int, default=240, help="generated training images (default 240)")
    p.add_argument("--n-val", type=int, default=16, help="generated validation images (default 16)")
    p.add_argument("--device", default="0", help="CUDA device index (default 0)")
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES), help="batches (default 6 8)")
    p.add_argument(
        "--models", nargs="+", default=list(MODELS), help="model YAMLs (default m-P2 and m-P2-lite)"
    )
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary folder (dataset, runs)")
    return p


def run(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Generate the dataset at 640 and train every model x batch once."""
    from flows.demo_data import generate_demo_dataset

    data = generate_demo_dataset(work / "data", n_train=args.n_train, n_val=args.n_val, image_size=IMGSZ)
    rows = []
    for model in args.models:
        for batch in args.batches:
            epochs = epochs_for(args.iterations, args.n_train, batch)
            spec = make_spec(model, batch, data, epochs, args.device, work / "runs")
            print(f"{spec.node}: {epochs} epochs at batch {batch} on device {args.device}", flush=True)
            rows.append(measure(spec, args.device))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Check for CUDA (exit 2 without it), measure, print the table, write JSON when asked."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")  # nothing is downloaded, even on a GPU machine
    if (problem := cuda_problem()) is not None:
        print(problem, file=sys.stderr)
        return EXIT_NO_CUDA
    sys.path.insert(0, str(REPO))
    work = Path(tempfile.mkdtemp(prefix="fod-gpu-memory-"))
    try:
        rows = run(args, work)
    finally:
        if args.keep_work:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"{time.strftime('%Y-%m-%d')}, GPU {rows[0]['gpu_name'] if rows else '?'}, imgsz {IMGSZ}")
    print(markdown_table(rows))
    if args.out:
        from flows.engine.fsutil import atomic_write_text

        atomic_write_text(args.out, json.dumps(rows, indent=2) + "\n", overwrite=True)
        print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
