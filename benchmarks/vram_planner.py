"""The VRAM planner on a card capped to 24 GB: its batch vs the largest that really fits, vs AutoBatch.

Why this exists: the plan's phases pick batches by hand (6 "fits", 8-10 "should"); the planner
(``flows/engine/decisions/batch_planner.py``, probe ``tasks/trainers/memory_probe.py``) measures
instead. This checks its promise on the plan's two models at 640, on one CUDA card whose allocator
is capped to ``--cap-gb`` (``torch.cuda.set_per_process_memory_fraction``; a 24 GB card is what the
plan targets), every measurement in a fresh process:

1. planner: ``plan_batch`` with budget = cap, the default margin, and no effective batch (memory
   alone decides), and what it would choose for the plan's effective batch (18 for m-P2, 16 lite);
2. largest batch that really fits: longer runs (``--fit-iterations`` steps and a validation pass)
   at the planner's batch, then one more image at a time until one runs out of memory under the cap;
3. AutoBatch (``batch=-1``, its default fraction 0.60) on the same card, emulated at the cap: the
   CUDA device properties and free memory it reads are those of a ``--cap-gb`` card;
4. at batch 6 and 8: peak VRAM (torch reserved and NVML device used) and images/s of the training
   steps (data prepared beforehand, so an upper bound of the engine's figure; ``gpu_memory.py``
   measures the engine's own).

Target: the planner's batch ≥ 90 % of the largest that fits, and no out-of-memory error at it.
Needs a CUDA GPU; without one it says so and exits with code 2, before generating anything.

Run:  python benchmarks/vram_planner.py --device 0 [--cap-gb 24] [--parts planner fits autobatch fixed]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODELS = ("yolo11m-p2.yaml", "yolo11m-p2-lite.yaml")
PHASE = {"yolo11m-p2.yaml": (6, 18), "yolo11m-p2-lite.yaml": (8, 16)}
"""The plan's fixed batch and effective batch of the phase that trains each model (Phase 1, Phase 2)."""
PHASE_ARGS: dict[str, Any] = {
    "imgsz": 640,
    "epochs": 100,
    "optimizer": "SGD",
    "momentum": 0.937,
    "lr0": 0.011,
    "seed": 0,
    "deterministic": True,
    "box": 10.0,
    "dfl": 2.0,
    "scale": 0.7,
    "translate": 0.15,
}
"""Phase 1's memory-relevant arguments from configs/fod_plan.yaml (Phase 2 inherits them)."""
IMGSZ = 640
BATCHES = (6, 8)
PARTS = ("planner", "fits", "autobatch", "fixed")
TARGET_RATIO = 0.9
AUTOBATCH_FRACTION = 0.6
GIB = float(2**30)
EXIT_NO_CUDA = 2


def cuda_problem() -> str | None:
    """Why this machine cannot run the benchmark, or None when a CUDA device is there."""
    from tasks.trainers.vram import gpu_tool_refusal

    return gpu_tool_refusal("vram_planner.py", "docs/VRAM_PLANNER.md")


def make_probe(model: str, data: Path, args: argparse.Namespace, iterations: int) -> Any:
    """The planner's real probe for one model under the cap."""
    from fod_models import resolve_model
    from tasks.trainers.memory_probe import CudaMemoryProbe

    return CudaMemoryProbe(
        resolve_model(model),
        data,
        {**PHASE_ARGS, "imgsz": args.imgsz},
        device=args.device,
        iterations=iterations,
        memory_cap_gb=args.cap_gb,
        timeout_s=args.timeout_s,
    )


def run_planner(model: str, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Part 1: the planner's choice on memory alone, and for the plan's effective batch."""
    from flows.engine.decisions.batch_planner import choose_batch, plan_batch, render_batch_plan
    from flows.engine.plan.batch_settings import BatchPlanSettings

    fixed, effective = PHASE.get(model, (6, None))
    settings = BatchPlanSettings(
        budget_gb=args.cap_gb, margin_gb=args.margin_gb, figure=args.figure, max_batch=args.max_batch
    )
    started = time.monotonic()
    plan = plan_batch(
        settings,
        make_probe(model, data, args, settings.iterations),
        fixed_batch=fixed,
        effective_batch=None,
        where=f"{model}.batch_plan",
    )
    row: dict[str, Any] = {"plan": plan.model_dump(mode="json"), "planner_s": time.monotonic() - started}
    row["planner_batch"] = plan.batch if plan.status == "planned" else None
    if plan.largest_fitting is not None and effective is not None:
        row["plan_choice_for_effective_batch"] = {
            "effective_batch": effective,
            "batch": choose_batch(
                plan.largest_fitting, settings.min_batch, effective, settings.effective_tolerance
            )[0],
        }
    print("\n".join(f"  {line}" for line in render_batch_plan(plan)), flush=True)
    return row


def largest_that_fits(model: str, data: Path, args: argparse.Namespace, start: int) -> dict[str, Any]:
    """Part 2: longer runs from ``start``, one image more at a time, until one runs out of memory."""
    probe = make_probe(model, data, args, args.fit_iterations)
    tries: list[dict[str, Any]] = []

    def ok(batch: int) -> bool:
        m = probe.measure(batch)
        tries.append(m.model_dump(mode="json"))
        print(f"  try batch {batch}: {m.status}, torch {m.torch_peak_gb}, NVML {m.nvml_peak_gb}", flush=True)
        if m.status == "error":
            raise RuntimeError(f"batch {batch}: {m.message}")
        return m.status == "ok"

    largest, upper_found = None, False
    if ok(start):
        largest, batch = start, start + 1
        while len(tries) < args.max_tries:
            if not ok(batch):
                upper_found = True
                break
            largest, batch = batch, batch + 1
    else:
        batch = start - 1
        while batch >= 1 and len(tries) < args.max_tries:
            if ok(batch):
                largest, upper_found = batch, True
                break
            batch -= 1
    return {"largest_fits": largest, "upper_found": upper_found, "tries": tries}


def autobatch_child(model: str, data: str, overrides: dict[str, Any], cap_gb: float, out: Any) -> None:
    """In a fresh process: AutoBatch's choice (``batch=-1``) on a card that looks like ``cap_gb``."""
    os.environ["YOLO_OFFLINE"] = "1"
    try:
        from ultralytics.models.yolo.detect import DetectionTrainer

        from flows.engine.plan.devices import parse_devices

        index = parse_devices(overrides["device"]).index or 0
        emulate_card(cap_gb, index)
        trainer = DetectionTrainer(overrides={**overrides, "model": model, "data": data, "batch": -1})
        trainer._setup_train()  # AutoBatch runs here for batch < 1
        out.put(("result", int(trainer.batch_size)))
    except BaseException:
        out.put(("error", traceback.format_exc()))


def emulate_card(cap_gb: float, index: int) -> None:
    """Cap the allocator and show AutoBatch a ``cap_gb`` card: its total and its free memory."""
    import torch

    real_props, real_info = torch.cuda.get_device_properties, torch.cuda.mem_get_info
    real_total = real_props(index).total_memory
    cap = int(cap_gb * GIB)
    if cap >= real_total:
        return
    torch.cuda.set_per_process_memory_fraction(cap / real_total, index)

    class CappedProps:
        def __init__(self, props: Any) -> None:
            self._props = props
            self.total_memory = cap

        def __getattr__(self, name: str) -> Any:
            return getattr(self._props, name)

    def props(device: Any = None) -> Any:
        return CappedProps(real_props(device))

    def info(device: Any = None) -> tuple[int, int]:
        free, total = real_info(device)
        return max(cap - (total - free), 0), cap  # the same memory in use, on a smaller card

    torch.cuda.get_device_properties = props
    torch.cuda.mem_get_info = info


def autobatch_choice(model: str, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Part 3: AutoBatch at its default fraction on the capped card, in a spawned process."""
    from fod_models import resolve_model
    from tasks.trainers.memory_probe import ProbeRequest, probe_overrides

    work = Path(tempfile.mkdtemp(prefix="fod-autobatch-"))
    request = ProbeRequest(
        model=str(resolve_model(model)),
        data=str(data),
        args={**PHASE_ARGS, "imgsz": args.imgsz},
        batch=1,
        device=args.device,
        work_dir=str(work),
    )
    overrides = {
        k: v for k, v in probe_overrides(request, work).items() if k not in {"model", "data", "batch"}
    }
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(
        target=autobatch_child, args=(request.model, request.data, overrides, args.cap_gb, out)
    )
    process.start()
    try:
        kind, payload = out.get(timeout=args.timeout_s)
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
        shutil.rmtree(work, ignore_errors=True)
    if kind != "result":
        raise RuntimeError(f"AutoBatch failed: {str(payload).strip().splitlines()[-1]}")
    print(f"  AutoBatch (fraction {AUTOBATCH_FRACTION}) chose batch {payload}", flush=True)
    return {"autobatch_batch": payload, "autobatch_fraction": AUTOBATCH_FRACTION}


def fixed_batches(model: str, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Part 4: peak VRAM and images/s at the plan's hand-picked batches."""
    probe = make_probe(model, data, args, args.fit_iterations)
    rows = []
    for batch in args.batches:
        m = probe.measure(batch)
        print(
            f"  batch {batch}: {m.status}, torch {m.torch_peak_gb}, NVML {m.nvml_peak_gb}, {m.images_per_s}/s"
        )
        rows.append(m.model_dump(mode="json"))
    return {"fixed": rows}


def verdict(row: dict[str, Any]) -> str:
    """Whether the planner met its target for one model."""
    planned, largest = row.get("planner_batch"), row.get("largest_fits")
    if planned is None or largest is None:
        return "not judged"
    ratio = planned / largest
    row["ratio"] = ratio
    oom = any(t["batch"] == planned and t["status"] == "oom" for t in row.get("tries", []))
    met = ratio >= TARGET_RATIO and not oom
    said = ", out of memory at it" if oom else ""
    return f"{'met' if met else 'MISSED'}: {planned}/{largest} = {ratio:.0%}{said}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table."""

    def cell(value: Any, digits: int = 2) -> str:
        if value is None:
            return "–"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = [
        "| model | planner | largest fitting (tried) | AutoBatch 0.60 | verdict | batch | torch peak GB "
        "| NVML peak GB | images/s |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        fixed = r.get("fixed") or [{}]
        for i, f in enumerate(fixed):
            head = (
                [
                    r["model"],
                    cell(r.get("planner_batch")),
                    cell(r.get("largest_fits")),
                    cell(r.get("autobatch_batch")),
                    r.get("verdict", ""),
                ]
                if i == 0
                else ["", "", "", "", ""]
            )
            tail = [
                cell(f.get("batch")),
                cell(f.get("torch_peak_gb")),
                cell(f.get("nvml_peak_gb")),
                cell(f.get("images_per_s"), 1),
            ]
            lines.append("| " + " | ".join(head + tail) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Options of the benchmark."""
    p = argparse.ArgumentParser(description="The VRAM planner vs the largest batch that fits and AutoBatch.")
    p.add_argument("--device", default="0", help="CUDA device index (default 0)")
    p.add_argument("--cap-gb", type=float, default=24.0, help="cap the card to this many GB (default 24)")
    p.add_argument("--margin-gb", type=float, default=1.0, help="the planner's margin (default 1.0)")
    p.add_argument(
        "--figure",
        default="torch_peak",
        choices=("torch_peak", "nvml_peak", "both"),
        help="what the budget reads (default torch_peak: the cap binds torch's allocator)",
    )
    p.add_argument("--max-batch", type=int, default=64, help="largest batch the planner tries (default 64)")
    p.add_argument("--imgsz", type=int, default=IMGSZ, help="image size (default 640)")
    p.add_argument(
        "--models", nargs="+", default=list(MODELS), help="model YAMLs (default m-P2 and m-P2-lite)"
    )
    p.add_argument(
        "--batches", type=int, nargs="+", default=list(BATCHES), help="fixed batches (default 6 8)"
    )
    p.add_argument(
        "--parts", nargs="+", default=list(PARTS), choices=PARTS, help="what to measure (default all)"
    )
    p.add_argument(
        "--fit-iterations", type=int, default=20, help="steps of each 'really fits' run (default 20)"
    )
    p.add_argument(
        "--max-tries", type=int, default=6, help="'really fits' runs per model at most (default 6)"
    )
    p.add_argument("--timeout-s", type=float, default=900.0, help="seconds per measurement (default 900)")
    p.add_argument("--data", type=Path, help="dataset YAML (default: a generated 640 px runway set)")
    p.add_argument("--n-train", type=int, default=240, help="generated training images (default 240)")
    p.add_argument("--out", type=Path, help="write every figure as JSON here")
    return p


def measure_model(model: str, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Every asked part for one model."""
    row: dict[str, Any] = {"model": model}
    print(f"{model}: cap {args.cap_gb:g} GB, imgsz {args.imgsz}", flush=True)
    if "planner" in args.parts:
        row.update(run_planner(model, data, args))
    if "fits" in args.parts:
        start = row.get("planner_batch") or max(args.batches)
        row.update(largest_that_fits(model, data, args, start))
    if "autobatch" in args.parts:
        row.update(autobatch_choice(model, data, args))
    if "fixed" in args.parts:
        row.update(fixed_batches(model, data, args))
    row["verdict"] = verdict(row)
    return row


def main(argv: list[str] | None = None) -> int:
    """Check for CUDA (exit 2 without it), measure, print the table, write JSON when asked."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")  # nothing is downloaded, even on a GPU machine
    if (problem := cuda_problem()) is not None:
        print(problem, file=sys.stderr)
        return EXIT_NO_CUDA
    sys.path.insert(0, str(REPO))
    work = Path(tempfile.mkdtemp(prefix="fod-vram-planner-"))
    try:
        if args.data is None:
            from flows.demo_data import generate_demo_dataset

            args.data = generate_demo_dataset(
                work / "data", n_train=args.n_train, n_val=16, image_size=args.imgsz
            )
        rows = [measure_model(model, args.data, args) for model in args.models]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import torch

    print(
        f"\n{time.strftime('%Y-%m-%d')}, {torch.cuda.get_device_name()}, capped to {args.cap_gb:g} GB, "
        f"imgsz {args.imgsz}, margin {args.margin_gb:g} GB ({args.figure})"
    )
    print(markdown_table(rows))
    if args.out:
        args.out.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2) + "\n",
            encoding="utf-8",
        )
        print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
