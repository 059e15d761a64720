"""Phase 3 with 1, 2 and 4 workers: wall time, GPU-epochs and the best trial (issue 11's benchmark).

Each run walks the shipped plan with the replay trainer on a real Prefect server (a test harness in a
private home): Phases 1 and 2 replay curve 23 and fail their gates, so the walk reaches Phase 3, whose
nine trials replay nine real records of ``../shared/curves``, each epoch lasting what an epoch of curve
29 (a real FOD run with a clock) lasted, scaled down, and the full run replays curve 13 on its own
clock. ``--workers 1`` is the serial search (no cluster); 2 and 4 start a local Dask cluster of CPU
workers (sleeping replays need no GPU).

Measured per run: the trials' wall time (first trial's start to last trial's end, from the results'
clocks), Phase 3's (trials and the continued full run), the trial epochs trained (GPU-epochs) and the
best trial; then the same with successive halving (``--no-pruner``: without). Prints a Markdown
table and writes JSON.

    YOLO_OFFLINE=1 nice -n 10 .venv/bin/python benchmarks/parallel_search.py --out parallel.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CURVES = SHARED / "curves"
TRIAL_CURVES = tuple((n, 1.0) for n in (29, 23, 3, 5, 13, 15, 17, 19, 25))
"""(record, mAP scale) of the nine trials: nine real records, so that the search ranks real curves."""
EPOCH_SECONDS = 0.84
"""Every trial epoch lasts the same: curve 29's epochs (a real FOD run) took ~210 s, × 0.004. Equal trials
make the ideal speed-up plain: ceil(9 / workers) rounds of trials."""
TIME_SCALE = 0.004
PRUNER = {"kind": "successive_halving", "min_resource": 5, "reduction_factor": 2}


def replay_spec(folder: Path) -> Path:
    """Phases 1 and 2 fail, nine real trials at their own (scaled) pace, the full run on curve 19."""
    lines = ["nodes:"]
    fail = f"{{csv: {CURVES / '23.csv'}, images_per_s: 40, nvml_peak_used_gb: 17.5}}"
    lines += [f"  phase1: {fail}", f"  phase2: {fail}", "  phase3:", "    trials:"]
    for n, scale in TRIAL_CURVES:
        csv = CURVES / f"{n}.csv"
        lines.append(
            f"      - {{csv: {csv}, epoch_seconds: {EPOCH_SECONDS}, train_images: 1000, scale_map: {scale}}}"
        )
    lines.append(f"    full: {{csv: {CURVES / '13.csv'}, time_scale: {TIME_SCALE}}}")
    path = folder / "replay.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def plan_file(folder: Path, workers: int, pruned: bool) -> Path:
    """The shipped plan, Phase 3 on ``workers`` CPU workers (1: serial), pruned or not."""
    doc = yaml.safe_load((REPO / "configs" / "fod_plan.yaml").read_text(encoding="utf-8"))
    phase3 = doc["nodes"]["phase3"]
    if workers > 1:
        phase3["workers"] = {"cpu": workers}
    if pruned:
        phase3["pruner"] = dict(PRUNER)
    path = folder / f"plan-{workers}-{'pruned' if pruned else 'all'}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def measure(decision: Any) -> dict[str, Any]:
    """Wall times from the results' clocks, trial epochs, the best trial."""
    trials = decision.trials
    full = next(p for p in decision.phases if p.node == "phase3")
    start = min(t.started_at for t in trials)
    notes = [n for n in decision.warnings_and_notes if n.startswith("phase3: best trial") or "tie" in n]
    return {
        "trials_wall_s": max(t.finished_at for t in trials) - start,
        "phase3_wall_s": full.finished_at - start,
        "trial_epochs": sum(t.epochs_done for t in trials),
        "best": notes[0] if notes else None,
        "slots": sorted({t.slot or "-" for t in trials}),
    }


def run_one(folder: Path, workers: int, pruned: bool, data: Path) -> dict[str, Any]:
    """One walk of the plan; its Phase 3 figures."""
    from flows.engine.config import OptimizeRequest, prepare
    from flows.fod_flow import optimize_prepared

    replay = replay_spec(folder)
    runs = folder / f"runs-{workers}-{pruned}"
    cfg = prepare(
        OptimizeRequest(plan=plan_file(folder, workers, pruned), data=data, runs_dir=runs, replay=replay)
    )
    started = time.monotonic()
    decision = optimize_prepared(cfg)
    return {"workers": workers, "pruned": pruned, "walk_s": time.monotonic() - started, **measure(decision)}


def demo_data(folder: Path) -> Path:
    from flows.demo_data import generate_demo_dataset

    return generate_demo_dataset(folder / "data", n_train=8, n_val=4, image_size=160)


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: per pruning setting and worker count, wall times, speed-ups over one worker, epochs."""
    out = [
        "| pruning | workers | trials wall s | speed-up | Phase 3 wall s | speed-up | trial epochs "
        "| best trial |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        base = next(r for r in rows if r["pruned"] == row["pruned"] and r["workers"] == 1)
        best = (row["best"] or "").split(" (")[0].removeprefix("phase3: ")
        out.append(
            f"| {'successive halving' if row['pruned'] else 'none'} | {row['workers']} "
            f"| {row['trials_wall_s']:.1f} | {base['trials_wall_s'] / row['trials_wall_s']:.2f}× "
            f"| {row['phase3_wall_s']:.1f} | {base['phase3_wall_s'] / row['phase3_wall_s']:.2f}× "
            f"| {row['trial_epochs']} | {best} |"
        )
    return out


def machine() -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    )
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "commit": commit.stdout.strip(),
        "load": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--no-pruner", action="store_true", help="only the unpruned search")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not CURVES.is_dir():
        print(f"needs the shared curves at {CURVES}", file=sys.stderr)
        return 2
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from prefect.testing.utilities import prefect_test_harness

    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="fod-parallel-") as tmp,
        prefect_test_harness(server_startup_timeout=180),
    ):
        folder = Path(tmp)
        data = demo_data(folder)
        for pruned in (False,) if args.no_pruner else (False, True):
            for workers in args.workers:
                rows.append(run_one(folder, workers, pruned, data))
                print(json.dumps(rows[-1]), flush=True)
    print("\n".join(table(rows)))
    if args.out:
        args.out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
