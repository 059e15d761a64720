"""Deployed-model latency: PyTorch vs ONNX Runtime on the CPU (or TensorRT FP16 on a GPU), per model.

Why this exists: issue 20 asks what the field's runtime gains over the training environment's, for the
two models the FOD plan can deploy: yolo11n-p2 (P2-P5 heads) and yolo11n-p2-lite (no P5 head), at
imgsz 640. Each model goes through the production export step (``tasks.trainers.export``): exported,
validated against best.pt (parity), then timed on one validation image, warm-up first, ``--runs``
calls, with Ultralytics' own per-stage timings (ms per image, median and p95). The weights: the
project's demo checkpoint for yolo11n-p2, and for the lite model ``--lite-weights`` (the demo's deployed
phase2: ``runs/<demo run>/phases/phase2/weights/best.pt``) or, without it, the lite model with every
matching layer transferred from the checkpoint (its Detect head new: the latency is the architecture's,
the parity figure near zero). The images: the generated demo dataset at 640 px.

Run:  nice -n 10 .venv/bin/python benchmarks/export.py --out export.json [--lite-weights PATH]  (CPU)
      .venv/bin/python benchmarks/export.py --tensorrt --out export-trt.json        (a GPU with TensorRT)
``--tensorrt`` exits 2 with its reason on a machine without a CUDA GPU or without the tensorrt package.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")

MODELS = ("yolo11n-p2", "yolo11n-p2-lite")
EXIT_NO_DEVICE = 2


def tensorrt_problem() -> str | None:
    """Why TensorRT cannot be benchmarked here (None: it can)."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine: TensorRT FP16 needs one (run this on the GPU box)"
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed (pip install tensorrt)"
    return None


def weights_for(model: str, work: Path, lite: Path | None) -> Path:
    """best.pt of one model: the demo checkpoint; for the lite model ``--lite-weights`` (the demo's
    deployed phase2), else the lite model with the demo checkpoint's matching layers transferred."""
    from ultralytics import YOLO

    from flows.demo_weights import CHECKPOINT_NAME, WEIGHTS_DIR

    demo = WEIGHTS_DIR / CHECKPOINT_NAME
    if model == "yolo11n-p2":
        return demo
    if lite is not None:
        return lite
    target = work / f"{model}.pt"
    lite = YOLO(str(ROOT / "fod_models" / f"{model}.yaml")).load(str(demo))
    lite.save(str(target))
    return target


def machine() -> dict[str, Any]:
    """What the figures depend on."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    versions = {n: metadata.version(n) for n in ("torch", "ultralytics", "onnx", "onnxruntime")}
    return {"cpus": len(os.sched_getaffinity(0)), "cpu": cpu, "gpu": gpu, **versions}


def commit() -> str:
    """The checkout's commit (what was measured)."""
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every model through the export step; the JSON record."""
    from flows.demo_data import generate_demo_dataset
    from flows.engine.plan.export_settings import ExportSettings, LatencySettings
    from tasks.trainers.export import export_and_check

    data = generate_demo_dataset(work / "data", n_train=8, n_val=args.val_images, image_size=args.imgsz)
    formats = ("onnx", "engine") if args.tensorrt else ("onnx",)
    settings = ExportSettings(
        formats=formats,
        half=args.tensorrt,
        device="0" if args.tensorrt else "cpu",
        latency=LatencySettings(warmup=args.warmup, runs=args.runs),
    )
    results = {}
    for model in MODELS:
        weights = weights_for(model, work, args.lite_weights)
        report = export_and_check(
            weights,
            data,
            settings,
            imgsz=args.imgsz,
            out_dir=work / model,
            log=lambda s: print(s, flush=True),
        )
        results[model] = json.loads(report.model_dump_json())
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "machine": machine(),
        "settings": {
            "imgsz": args.imgsz,
            "runs": args.runs,
            "warmup": args.warmup,
            "formats": formats,
            "lite_weights": str(args.lite_weights) if args.lite_weights else None,
        },
        "results": results,
    }


def table(record: dict[str, Any]) -> str:
    """The Markdown table of docs/BENCHMARKS.md."""
    rows = [
        "| model | runtime | total ms median / p95 | model ms median / p95 | pre + post ms (median) "
        "| export s | mAP50-95 exported (best.pt) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for model, report in record["results"].items():
        entries = [("PyTorch", report["reference"], None, None)]
        entries += [
            (m["format"], m["latency"], m["export_s"], m["parity"]) for m in report["models"] if m["latency"]
        ]
        for runtime, lat, export_s, parity in entries:
            pre_post = lat["preprocess"]["median"] + lat["postprocess"]["median"]
            figure = (
                f"{parity['exported']['map50_95']:.4f} ({parity['reference']['map50_95']:.4f})"
                if parity
                else ""
            )
            rows.append(
                f"| {model} | {runtime} | {lat['total']['median']:.1f} / {lat['total']['p95']:.1f} | "
                f"{lat['model']['median']:.1f} / {lat['model']['p95']:.1f} | {pre_post:.1f} | "
                f"{'' if export_s is None else f'{export_s:.1f}'} | {figure} |"
            )
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--val-images", type=int, default=16)
    parser.add_argument("--tensorrt", action="store_true", help="ONNX and TensorRT FP16 on GPU 0")
    parser.add_argument(
        "--lite-weights", type=Path, default=None, help="trained yolo11n-p2-lite weights (the demo's phase2)"
    )
    parser.add_argument("--out", type=Path, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run it, print the table, write the JSON when asked."""
    args = build_parser().parse_args(argv)
    if args.tensorrt and (problem := tensorrt_problem()):
        print(f"benchmarks/export.py --tensorrt: {problem}", file=sys.stderr)
        return EXIT_NO_DEVICE
    with tempfile.TemporaryDirectory(prefix="fod-export-") as work:
        record = run(args, Path(work))
    print(table(record))
    if args.out:
        from flows.engine.fsutil import atomic_write_text

        atomic_write_text(args.out, json.dumps(record, indent=2) + "\n", overwrite=True)
        print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
