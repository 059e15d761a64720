"""How much the engine adds to a training: bare Ultralytics vs the same training through the flow.

Why this exists: every training of a plan runs in a spawned child process that streams its epochs
back, inside a Prefect task, inside a flow run that needs Prefect's embedded server. On a GPU run of
100 epochs that cost is noise; on the CPU demo and in tests it is not. This script measures it, in one
session on one machine, so that docs/BENCHMARKS.md can say where the seconds go.

Per repeat (N times, alternating):
  (a) ``yolo train model=.../yolo11n-p2.yaml ... imgsz=160 epochs=E batch=8 nbs=16 ...`` as a subprocess;
  (b) ``python -m flows.optimize --plan benchmarks/plans/one_phase.yaml --data ... --set epochs=E``, the
      same training as a one-phase plan (phase -> gate -> keep_baseline), as a subprocess;
  (c) the same command with ``--dry-run``: imports and validation alone, no Prefect server.
Both (a) and (b) are timed as whole commands. The flow's lines are time-stamped as they arrive, which
splits (b) into CLI start-up, Prefect server start, the train task, the gate/report and shutdown; the
phase's own ``PhaseResult.wall_s`` (spawn of the child to its exit) comes from the run's decision.json.

Run:  /work/venv/bin/python benchmarks/overhead.py [--repeats 3] [--epochs 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PLAN = REPO / "benchmarks" / "plans" / "one_phase.yaml"
MODEL = "yolo11n-p2.yaml"
N_TRAIN, N_VAL, IMAGE_SIZE = 32, 8, 160
BARE_ARGS = (
    "imgsz=160",
    "batch=8",
    "nbs=16",
    "workers=0",
    "device=cpu",
    "plots=False",
    "optimizer=SGD",
    "lr0=0.01",
    "seed=0",
    "deterministic=False",
)
"""The bare command's arguments besides model, data, epochs and the output folder; the plan has the same."""

BARE_MARKS: dict[str, re.Pattern[str]] = {
    "banner": re.compile(r"^Ultralytics \d"),
    "val_done": re.compile(r"^Speed: "),
}
"""Lines of the bare run: Ultralytics' banner (trainer set up) and the final validation's speed line."""

FLOW_MARKS: dict[str, re.Pattern[str]] = {
    "server_start": re.compile(r"Starting temporary server"),
    "flow_begin": re.compile(r"Beginning flow run"),
    "train_begin": re.compile(r"Task run 'train-phase1' - "),
    "child_banner": re.compile(r"Task run 'train-phase1' - Ultralytics \d"),
    "child_val_done": re.compile(r"Task run 'train-phase1' - Speed: "),
    "phase_done": re.compile(r"Task run 'train-phase1' - phase1: (completed|stopped|diverged|failed)"),
    "train_end": re.compile(r"Task run 'train-phase1' - Finished in state"),
    "flow_end": re.compile(r"Flow run '[^']*' - Finished in state"),
    "server_stop": re.compile(r"Stopping temporary server"),
}
"""Log lines whose arrival time marks a step of the flow command (first match wins)."""

SEGMENTS: tuple[tuple[str, str | None, str | None, str], ...] = (
    ("startup_s", None, "server_start", "CLI start: imports (Prefect, Ultralytics' checker) + validation"),
    ("server_s", "server_start", "flow_begin", "Prefect ephemeral server start + flow run creation"),
    ("flow_setup_s", "flow_begin", "train_begin", "flow body before the phase (validation, run folder)"),
    ("train_task_s", "train_begin", "train_end", "train task (Prefect task run, child process inside)"),
    ("after_train_s", "train_end", "flow_end", "gate, terminal, report (curves.png), decision.json"),
    ("shutdown_s", "flow_end", None, "server stop + interpreter exit"),
)
"""Consecutive parts of the flow command: (key, from mark, to mark, meaning); None = command start/end."""


@dataclass
class Timed:
    """One timed command: wall time, exit code, arrival times of marked lines, its log."""

    wall_s: float
    returncode: int
    marks: dict[str, float] = field(default_factory=dict)
    log: str = ""
    cpu_s: float | None = None
    """User + system CPU seconds of the command and every descendant it waited for (the training child,
    Prefect's server): unlike wall time, barely changed by other people's load on the machine."""


# ------------------------------------------------------------------------------------------- running


def run_timed(cmd: list[str], env: dict[str, str], marks: dict[str, re.Pattern[str]] | None = None) -> Timed:
    """Run a command to its end; time it, and stamp each marked line with its arrival time (s from start)."""
    found: dict[str, float] = {}
    lines: list[str] = []
    cpu_before = children_cpu_s()
    start = time.monotonic()
    with subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            now = time.monotonic() - start
            line = raw.decode("utf-8", errors="replace").rstrip()
            lines.append(f"{now:9.3f} {line}")
            for name, pattern in (marks or {}).items():
                if name not in found and pattern.search(line):
                    found[name] = now
        returncode = proc.wait()
    wall_s = time.monotonic() - start
    return Timed(wall_s, returncode, found, "\n".join(lines), children_cpu_s() - cpu_before)


def children_cpu_s() -> float:
    """CPU seconds of all waited-for descendants so far (commands run one at a time, so deltas add up)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_env(work: Path) -> dict[str, str]:
    """The environment of every measured command: offline, unbuffered, a Prefect home of its own.

    A private PREFECT_HOME keeps the benchmark's SQLite database away from anyone else's runs; the
    API URL is removed so that every flow run starts Prefect's embedded server, as a plain CLI run does.
    ``FOD_FORWARD_ULTRALYTICS=info`` forwards the training child's Ultralytics lines (its banner, the final
    validation's speed line) to the flow's log, where they are timed; by default they stay in train.log.
    """
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env.update(YOLO_OFFLINE="1", PYTHONUNBUFFERED="1", MPLBACKEND="Agg", PREFECT_HOME=str(work / "prefect"))
    env.update(FOD_FORWARD_ULTRALYTICS="info")
    return env


def bare_command(data: Path, epochs: int, project: Path) -> list[str]:
    """(a) The bare Ultralytics training, through its own ``yolo`` console script."""
    from fod_models import resolve_model

    yolo = Path(sys.executable).with_name("yolo")
    model = resolve_model(MODEL)  # absolute fod_models/yolo11n-p2.yaml (the scale letter picks n)
    return [
        str(yolo),
        "train",
        f"model={model}",
        f"data={data}",
        f"epochs={epochs}",
        *BARE_ARGS,
        f"project={project}",
        "name=bare",
        "exist_ok=True",
    ]


def flow_command(data: Path, epochs: int, runs_dir: Path, *, dry_run: bool = False) -> list[str]:
    """(b) The same training as the one-phase plan, through the CLI (``--dry-run``: validation only)."""
    cmd = [sys.executable, "-m", "flows.optimize", "--plan", str(PLAN), "--data", str(data)]
    cmd += ["--runs-dir", str(runs_dir), "--set", f"epochs={epochs}"]
    return [*cmd, "--dry-run"] if dry_run else cmd


def check_ok(timed: Timed, what: str) -> None:
    """Stop the benchmark with the command's last lines when it failed: a failed run times nothing."""
    if timed.returncode != 0:
        tail = "\n".join(timed.log.splitlines()[-25:])
        raise RuntimeError(f"{what} exited with code {timed.returncode}:\n{tail}")


def read_phase(runs_dir: Path) -> dict[str, Any]:
    """The phase's PhaseResult from the run's decision.json (there is exactly one run folder)."""
    decisions = sorted(runs_dir.glob("*/decision.json"))
    if len(decisions) != 1:
        raise RuntimeError(f"expected one decision.json under {runs_dir}, found {len(decisions)}")
    decision = json.loads(decisions[0].read_text(encoding="utf-8"))
    phase = decision["phases"][0]
    if phase["status"] != "completed":
        raise RuntimeError(f"the benchmark phase did not complete: {phase['status']} ({phase['reason']})")
    return phase


def segments_of(timed: Timed) -> dict[str, float | None]:
    """Split the flow command's wall time at its marked lines (None where a mark is missing)."""
    points = {None: 0.0, **timed.marks}
    out: dict[str, float | None] = {}
    for key, begin, end, _ in SEGMENTS:
        t0 = points.get(begin)
        t1 = timed.wall_s if end is None else points.get(end)
        out[key] = None if t0 is None or t1 is None else t1 - t0
    return out


def phase_parts(bare: Timed, flow: Timed) -> dict[str, float | None]:
    """The same three parts of the training in both commands, and what the engine adds to each.

    start: command start (bare) or the task's first line, just before the spawn (flow), to Ultralytics'
    banner; train: banner to the final validation's speed line; end: from there to the command's exit
    (bare) or to the task's "completed" line, after the child has exited (flow).
    """
    b, f = bare.marks, flow.marks
    out: dict[str, float | None] = {
        "bare_start_s": b.get("banner"),
        "bare_train_s": _between(b, "banner", "val_done"),
        "bare_end_s": None if "val_done" not in b else bare.wall_s - b["val_done"],
        "phase_start_s": _between(f, "train_begin", "child_banner"),
        "phase_train_s": _between(f, "child_banner", "child_val_done"),
        "phase_end_s": _between(f, "child_val_done", "phase_done"),
    }
    for part in ("start", "train", "end"):
        bare_s, phase_s = out[f"bare_{part}_s"], out[f"phase_{part}_s"]
        out[f"{part}_overhead_s"] = None if bare_s is None or phase_s is None else phase_s - bare_s
    return out


def _minus(a: float | None, b: float | None) -> float | None:
    """a - b, None when either is unknown."""
    return None if a is None or b is None else a - b


def _between(marks: dict[str, float], begin: str, end: str) -> float | None:
    """Seconds from one mark to another, None when either is missing."""
    return marks[end] - marks[begin] if begin in marks and end in marks else None


def load_average() -> float:
    """One-minute load average: how busy the machine was (other people's tests included)."""
    return round(os.getloadavg()[0], 2)


def measure_once(index: int, work: Path, data: Path, epochs: int, env: dict[str, str]) -> dict[str, Any]:
    """One repeat: bare, then flow, then dry-run; returns the raw and derived figures in seconds."""
    load_before = load_average()
    bare = run_timed(bare_command(data, epochs, work / f"bare-{index}"), env, BARE_MARKS)
    check_ok(bare, "bare yolo train")
    runs_dir = work / f"runs-{index}"
    flow = run_timed(flow_command(data, epochs, runs_dir), env, FLOW_MARKS)
    check_ok(flow, "flows.optimize")
    dry = run_timed(flow_command(data, epochs, work / "runs-dry", dry_run=True), env)
    check_ok(dry, "flows.optimize --dry-run")
    phase = read_phase(runs_dir)
    save_logs(work, index, bare, flow)
    segments = segments_of(flow)
    phase_wall = float(phase["wall_s"])
    task = segments["train_task_s"]
    return {
        "repeat": index,
        "bare_s": bare.wall_s,
        "flow_s": flow.wall_s,
        "dry_run_s": dry.wall_s,
        "phase_wall_s": phase_wall,
        "ratio_flow_over_bare": flow.wall_s / bare.wall_s,
        "per_phase_overhead_s": phase_wall - bare.wall_s,
        "per_run_overhead_s": flow.wall_s - phase_wall,
        "task_wrap_s": None if task is None else task - phase_wall,
        **phase_parts(bare, flow),
        "images_per_s": phase.get("images_per_s"),
        "bare_cpu_s": bare.cpu_s,
        "flow_cpu_s": flow.cpu_s,
        "engine_cpu_s": _minus(flow.cpu_s, bare.cpu_s),
        "dry_run_cpu_s": dry.cpu_s,
        **segments,
        "load_before": load_before,
        "load_after": load_average(),
    }


def save_logs(work: Path, index: int, bare: Timed, flow: Timed) -> None:
    """Keep both commands' time-stamped output in the work folder (kept with --keep-work)."""
    from flows.engine.fsutil import atomic_write_text

    atomic_write_text(work / f"bare-{index}.log", bare.log + "\n")
    atomic_write_text(work / f"flow-{index}.log", flow.log + "\n")


def create_prefect_database(env: dict[str, str]) -> float:
    """Create the private Prefect database once, before timing: a user's database already exists."""
    prefect = Path(sys.executable).with_name("prefect")
    timed = run_timed([str(prefect), "server", "database", "upgrade", "-y"], env)
    check_ok(timed, "prefect server database upgrade")
    return timed.wall_s


# ------------------------------------------------------------------------------------------- reporting

MEASURES: tuple[tuple[str, str], ...] = (
    ("bare_s", "(a) bare `yolo train`, whole command"),
    ("flow_s", "(b) `python -m flows.optimize`, whole command"),
    ("ratio_flow_over_bare", "ratio (b) / (a)"),
    ("phase_wall_s", "phase wall time (PhaseResult.wall_s: spawn → child exit)"),
    ("per_phase_overhead_s", "**per-phase overhead** = phase wall − (a)"),
    ("start_overhead_s", "· start to Ultralytics' banner (spawn + imports vs `yolo` start-up)"),
    ("train_overhead_s", "· banner to final validation's speed line (training, streaming)"),
    ("end_overhead_s", "· speed line to the end (child exit + join vs `yolo` exit)"),
    ("per_run_overhead_s", "**per-run overhead** = (b) − phase wall"),
    ("startup_s", "· CLI start: imports + validation"),
    ("server_s", "· Prefect server start + flow run creation"),
    ("flow_setup_s", "· flow body before the phase"),
    ("task_wrap_s", "· Prefect task around the phase"),
    ("after_train_s", "· gate, terminal, report"),
    ("shutdown_s", "· server stop + interpreter exit"),
    ("dry_run_s", "(c) `--dry-run` alone (imports + validation, no Prefect)"),
    ("bare_cpu_s", "CPU time (user+sys, all processes) of (a)"),
    ("flow_cpu_s", "CPU time of (b)"),
    ("engine_cpu_s", "**CPU time the engine adds** = CPU (b) − CPU (a)"),
    ("dry_run_cpu_s", "CPU time of (c)"),
    ("images_per_s", "training images/s in the flow (median after epoch 1)"),
    ("load_before", "1-min load average before the repeat"),
)


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median, min and max of every figure over the repeats (figures missing in a repeat are skipped)."""
    summary: dict[str, dict[str, float]] = {}
    for key, _ in MEASURES:
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            summary[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return summary


def min_to_min(summary: dict[str, dict[str, float]]) -> dict[str, float]:
    """The headline figures from the fastest run of each command: on a shared machine the minimum is
    the run least disturbed by other work, so differences of minima are the least noisy overheads."""
    low = {key: s["min"] for key, s in summary.items()}
    out: dict[str, float] = {}
    if {"bare_s", "flow_s"} <= low.keys():
        out["ratio_flow_over_bare"] = low["flow_s"] / low["bare_s"]
    if {"bare_s", "phase_wall_s"} <= low.keys():
        out["per_phase_overhead_s"] = low["phase_wall_s"] - low["bare_s"]
    if {"flow_s", "phase_wall_s"} <= low.keys():
        out["per_run_overhead_s"] = low["flow_s"] - low["phase_wall_s"]
    return out


def min_to_min_line(figures: dict[str, float]) -> str:
    """The min-to-min figures as one line under the table."""
    if not figures:
        return ""
    parts = [f"{label} {fmt(key, figures[key])}" for key, label in MIN_TO_MIN_LABELS if key in figures]
    return "From the minima (fastest run of each): " + ", ".join(parts) + "."


MIN_TO_MIN_LABELS = (
    ("ratio_flow_over_bare", "ratio (b)/(a)"),
    ("per_phase_overhead_s", "per-phase overhead"),
    ("per_run_overhead_s", "per-run overhead"),
)


def fmt(key: str, value: float) -> str:
    """Seconds with one decimal, ratios with two, load averages and rates plainly."""
    if key == "ratio_flow_over_bare":
        return f"{value:.2f}×"
    if key in ("images_per_s", "load_before"):
        return f"{value:.1f}"
    return f"{value:+.1f} s" if "overhead" in key or key == "engine_cpu_s" else f"{value:.1f} s"


def markdown_table(runs: list[dict[str, Any]], summary: dict[str, dict[str, float]]) -> str:
    """The results as a Markdown table: median, min, max and every repeat."""
    header = "| measure | median | min | max | repeats |\n|---|---:|---:|---:|---|"
    rows = [header]
    for key, label in MEASURES:
        if key not in summary:
            continue
        s = summary[key]
        each = ", ".join(fmt(key, r[key]) for r in runs if r.get(key) is not None)
        rows.append(
            f"| {label} | {fmt(key, s['median'])} | {fmt(key, s['min'])} | {fmt(key, s['max'])} | {each} |"
        )
    return "\n".join(rows)


def machine_info() -> dict[str, Any]:
    """CPU count and model, RAM, OS and Python: what the numbers depend on."""
    cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8") if Path("/proc/cpuinfo").is_file() else ""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), ""
    )
    meminfo = Path("/proc/meminfo").read_text(encoding="utf-8") if Path("/proc/meminfo").is_file() else ""
    kib = next((int(ln.split()[1]) for ln in meminfo.splitlines() if ln.startswith("MemTotal:")), 0)
    import platform

    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "ram_gib": round(kib / 2**20, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def versions() -> dict[str, str]:
    """Versions of the packages whose start-up and training are measured (no import needed)."""
    out = {}
    for name in ("torch", "ultralytics", "prefect", "pydantic"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def header_lines(report: dict[str, Any]) -> str:
    """Date, machine and versions as one Markdown paragraph above the table."""
    m, v, s = report["machine"], report["versions"], report["settings"]
    return (
        f"{report['date']}: {s['repeats']} repeats, {s['epochs']} epochs, "
        f"{s['n_train']} train / {s['n_val']} val images at {s['image_size']} px; "
        f"{m['nproc']} CPUs ({m['cpu_model']}), {m['ram_gib']} GiB RAM, "
        f"Python {m['python']}, torch {v['torch']}, ultralytics {v['ultralytics']}, prefect {v['prefect']}. "
        f"One-time Prefect database creation (not in the table): {report['prefect_db_create_s']:.1f} s."
    )


# ------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """Options of the benchmark."""
    p = argparse.ArgumentParser(description="Measure the engine's overhead over a bare Ultralytics training.")
    p.add_argument("--repeats", type=int, default=3, help="alternating bare/flow repeats (default 3)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of the tiny training (default 2)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument(
        "--keep-work", action="store_true", help="keep the temporary folder (logs, runs) and print it"
    )
    return p


def run_benchmark(repeats: int, epochs: int, work: Path) -> dict[str, Any]:
    """Generate the dataset, create the Prefect database, run the repeats; return the full report."""
    from flows.demo_data import generate_demo_dataset

    env = bench_env(work)
    data = generate_demo_dataset(work / "data", n_train=N_TRAIN, n_val=N_VAL, image_size=IMAGE_SIZE)
    db_s = create_prefect_database(env)
    runs = []
    for index in range(1, repeats + 1):
        runs.append(measure_once(index, work, data, epochs, env))
        r = runs[-1]
        print(
            f"repeat {index}/{repeats}: bare {r['bare_s']:.1f} s, flow {r['flow_s']:.1f} s, "
            f"phase {r['phase_wall_s']:.1f} s, dry-run {r['dry_run_s']:.1f} s, load {r['load_before']}",
            flush=True,
        )
    summary = summarize(runs)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_info(),
        "versions": versions(),
        "settings": {
            "repeats": repeats,
            "epochs": epochs,
            "n_train": N_TRAIN,
            "n_val": N_VAL,
            "image_size": IMAGE_SIZE,
            "model": MODEL,
            "bare_args": list(BARE_ARGS),
            "plan": str(PLAN.relative_to(REPO)),
        },
        "prefect_db_create_s": db_s,
        "runs": runs,
        "summary": summary,
        "min_to_min": min_to_min(summary),
        "segments": {key: meaning for key, _, _, meaning in SEGMENTS},
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the Markdown table, write JSON when asked."""
    args = build_parser().parse_args(argv)
    if args.repeats < 1 or args.epochs < 1:
        print("--repeats and --epochs must be at least 1", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    work = Path(tempfile.mkdtemp(prefix="fod-overhead-"))
    try:
        report = run_benchmark(args.repeats, args.epochs, work)
    finally:
        if args.keep_work:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(header_lines(report))
    print()
    print(markdown_table(report["runs"], report["summary"]))
    print()
    print(min_to_min_line(report["min_to_min"]))
    if args.out:
        from flows.engine.fsutil import atomic_write_text

        atomic_write_text(args.out, json.dumps(report, indent=2) + "\n", overwrite=True)
        print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
