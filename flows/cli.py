"""Command line of ``python -m flows.optimize``.

Every input is validated before Prefect starts or anything is written: bad input prints
one line per problem and exits with code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from flows.engine.config import OptimizeRequest, RunConfig, prepare
from flows.engine.data.dataset import describe_dataset
from flows.engine.decisions.cost import NodeSpeed, branch_costs, describe_costs, speeds_from_runs
from flows.engine.decisions.gates import latency_label
from flows.engine.errors import EXIT_RUN_ERROR, TrainingError
from flows.engine.outputs.export_text import export_summary
from flows.engine.outputs.report import text_tree
from flows.engine.plan.exports import export_lines
from flows.engine.plan.problems import EXIT_BAD_INPUT, PlanError
from flows.engine.plan.resolve import planned_epochs
from flows.engine.plan.schema import GateNode
from flows.engine.plan.tree import paths, tree_view
from flows.engine.plan.ultra_defaults import ultralytics_default
from flows.engine.records.results import Decision, PhaseResult

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PLAN = PROJECT_ROOT / "configs" / "fod_plan.yaml"


def build_parser() -> argparse.ArgumentParser:
    """The options, each explained for --help."""
    p = argparse.ArgumentParser(
        prog="python -m flows.optimize",
        description="Walk a plan's decision tree of YOLO training phases, gate on mAP/speed/VRAM, "
        "deploy the winner or keep the baseline, and write a report.",
    )
    p.add_argument(
        "--plan", type=Path, default=DEFAULT_PLAN, help="plan file (default: configs/fod_plan.yaml)"
    )
    p.add_argument("--data", type=Path, help="Ultralytics dataset YAML (required unless --demo)")
    p.add_argument(
        "--profile", help="a profile of the plan that overrides values for small runs (e.g. smoke)"
    )
    p.add_argument(
        "--runs-dir", type=Path, default=Path("runs"), help="where run folders and the model registry go"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate, print the tree, gates and planned epochs; train nothing",
    )
    p.add_argument(
        "--probe-speed",
        action="store_true",
        help="with --dry-run: train a few iterations of each phase on the data and device and give "
        "GPU-hours per branch (without it, the speeds of an earlier run of this plan are used, if any)",
    )
    p.add_argument(
        "--probe-batch",
        action="store_true",
        help="with --dry-run: measure the planned phases' batch on their device now (batch_plan:) and "
        "print the measurements and the choice; exit 2 when a budget fits no batch",
    )
    p.add_argument(
        "--replay",
        type=Path,
        metavar="SPEC",
        help="replay recorded results.csv files instead of training (SPEC format: docs/REPLAY.md)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="force an Ultralytics argument on every run, e.g. --set device=0 (repeatable)",
    )
    p.add_argument(
        "--resume",
        choices=["auto", "never", "force"],
        default="auto",
        help="auto (default): continue an unfinished run of the same plan, data and code where it stopped; "
        "never: always start a new run folder; "
        "force: continue the newest unfinished run even if something changed",
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="generate a small synthetic runway-FOD dataset and walk the whole tree on CPU (profile 'demo')",
    )
    return p


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs, values read as YAML scalars (so 0 is an int and true a bool)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PlanError.from_line("--set", f"{item!r} is not KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def demo_request(args: argparse.Namespace) -> OptimizeRequest:
    """Generate the demo dataset in a fresh folder and ask for the demo profile."""
    from flows.demo_data import generate_demo_dataset

    root = args.runs_dir / "demo-data" / time.strftime("%Y%m%d-%H%M%S")
    data = generate_demo_dataset(root)
    print(f"demo dataset: {data}")
    return OptimizeRequest(plan=args.plan, data=data, profile=args.profile or "demo", runs_dir=args.runs_dir)


def request_from(args: argparse.Namespace) -> OptimizeRequest:
    """Turn parsed options into the one request object."""
    if args.data is None:
        raise PlanError.from_line("--data", "give the dataset YAML (or use --demo)")
    return OptimizeRequest(
        plan=args.plan,
        data=args.data,
        profile=args.profile,
        runs_dir=args.runs_dir,
        replay=args.replay,
        overrides=parse_overrides(args.overrides),
        resume=args.resume,
    )


def earlier_run_speeds(cfg: RunConfig) -> dict[str, NodeSpeed]:
    """Seconds per epoch by node from the newest finished run of this plan in the runs folder, if any."""
    finished = sorted(
        Path(cfg.request.runs_dir).glob(f"{cfg.plan.name}-*/decision.json"),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for path in finished:
        try:
            decision = Decision.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        speeds = speeds_from_runs([*decision.phases, *decision.trials], f"earlier run {decision.run_id}")
        if speeds:
            return speeds
    return {}


def probed_speeds(cfg: RunConfig) -> dict[str, NodeSpeed]:
    """Seconds per epoch by node, measured now by training a few iterations of each (``--probe-speed``),
    in a temporary run folder with the dataset's resolved copy, as a run would train."""
    import tempfile

    from flows.engine.data.dataset import write_dataset_copy
    from flows.engine.decisions.walk import search_spec, train_spec
    from tasks.trainers.speed_probe import probe_speeds

    with tempfile.TemporaryDirectory(prefix="fod-speed-probe-") as tmp:
        run_dir = Path(tmp)
        write_dataset_copy(cfg.dataset, run_dir)
        specs = {
            name: train_spec(cfg, run_dir, name)
            if node.kind == "train"
            else search_spec(cfg, run_dir, name, {}, None)
            for name, node in cfg.plan.nodes.items()
            if node.kind in ("train", "search")
        }
        return probe_speeds(specs, cfg.dataset.splits["train"].images)


def describe_plan(
    cfg: RunConfig, speeds: dict[str, NodeSpeed] | None = None, batches: dict[str, Any] | None = None
) -> str:
    """What --dry-run prints: tree, gate rules, planned epochs per branch."""
    plan = cfg.plan
    lines = [f"plan {plan.name} ({cfg.request.plan}), profile {cfg.request.profile}", ""]
    lines += [*describe_dataset(cfg.dataset), "", "tree:"]
    lines.append(text_tree(tree_view(plan)))
    lines += ["", "path rules:"]
    for name, node in plan.nodes.items():
        if isinstance(node, GateNode):
            conds = " AND ".join(describe_condition(c) for c in node.conditions)
            lines.append(f"  {name}: {conds} (unknown → {node.on_unknown}) ? {node.on_pass} : {node.on_fail}")
    lines += ["", "planned epochs per branch:"]
    totals = []
    for path in paths(plan):
        epochs = sum(planned_epochs(plan, n, cfg.force)[1] for n in path)
        totals.append(epochs)
        lines.append(f"  {epochs:6d}  {' → '.join(path)}")
    lines.append(f"  best case {min(totals)} epochs, worst case {max(totals)} epochs")
    speeds = earlier_run_speeds(cfg) if speeds is None else speeds
    lines += ["", *describe_costs(branch_costs(cfg.plan, cfg.force, speeds), speeds)]
    lines += batch_plan_text(cfg, batches)
    if exports := export_lines(plan):
        lines += ["", "exports:", *(f"  {line}" for line in exports)]
    if cfg.data_profile is not None:
        from flows.engine.data.profile import render_text

        lines += ["", render_text(cfg.data_profile)]
    if cfg.warnings:
        lines += ["", *cfg.warnings]
    return "\n".join(lines)


def batch_plan_text(cfg: RunConfig, probed: dict[str, Any] | None = None) -> list[str]:
    """For each phase whose batch is planned on the device: how it will be planned, or (``probed``) the
    measurements and the choice."""
    from flows.engine.decisions.batch_planner import describe_settings, render_batch_plan

    lines = []
    for name, node in cfg.plan.nodes.items():
        settings = cfg.batch_plan_of(name) if node.kind == "train" else None
        if settings is None:
            continue
        if probed is not None and name in probed:
            lines += [f"  {name}: {line}" for line in render_batch_plan(probed[name])]
            continue
        fixed = cfg.args_for(name).get("batch", ultralytics_default("batch"))
        text = describe_settings(settings, fixed_batch=fixed, effective_batch=cfg.effective_batch_of(name))
        lines.append(f"  {name}: {text}")
    return ["", "batch plans:", *lines] if lines else []


def probed_batches(cfg: RunConfig) -> dict[str, Any]:
    """The batch planner run now on each planned phase's device (``--probe-batch``), as a training's
    step runs it."""
    import tempfile

    from flows.engine.data.dataset import write_dataset_copy
    from flows.engine.decisions.walk import train_spec
    from tasks.step import measure_batch

    plans = {}
    with tempfile.TemporaryDirectory(prefix="fod-batch-probe-") as tmp:
        write_dataset_copy(cfg.dataset, Path(tmp))
        for name, node in cfg.plan.nodes.items():
            if node.kind == "train" and cfg.batch_plan_of(name) is not None:
                plans[name] = measure_batch(train_spec(cfg, Path(tmp), name))
    return plans


def describe_condition(cond: Any) -> str:
    """One condition as text."""
    if cond.check == "metric":
        return f"{cond.metric} ≥ {cond.min:g}"
    if cond.check == "speedup":
        return f"{cond.figure} ≥ {cond.min:+.0%} vs {cond.vs}"
    if cond.check == "vram":
        return f"VRAM {cond.figure} ≤ {cond.max_gb:g} GB"
    if cond.check == "latency":
        return f"{latency_label(cond)} ≤ {cond.max_ms:g}"
    return cond.check


EPHEMERAL_STARTUP_S = 120
"""Prefect's embedded server needs more than its default 20 s on a busy 2-core machine."""


def run_flow(cfg: RunConfig) -> Decision:
    """Run the flow on a validated config, giving Prefect's embedded server time to start when no API URL
    is set."""
    from prefect.settings import PREFECT_SERVER_ANALYTICS_ENABLED as ANALYTICS
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as STARTUP
    from prefect.settings import temporary_settings

    from flows.fod_flow import optimize_prepared

    updates: dict = {ANALYTICS: False}  # offline machines: no telemetry errors in the log
    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" not in os.environ:
        updates[STARTUP] = max(STARTUP.value(), EPHEMERAL_STARTUP_S)
    with temporary_settings(updates), quiet_tracebacks(TrainingError):
        start_embedded_server()
        return optimize_prepared(cfg)


def start_embedded_server() -> None:
    """Start Prefect's embedded server (when no API URL is set) out of a terminal's Ctrl-C, so that
    the command can still mark its flow run as interrupted before stopping it (flows/signals.py).

    The same server object Prefect's client starts on first use, with its process launched while
    SIGINT is blocked (tests/test_signals.py: after a Ctrl-C to the whole group the flow run is
    marked, so the server was still there).
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL

    from flows.engine.interrupts import sigint_blocked

    if PREFECT_API_URL.value():
        return
    server = SubprocessASGIServer()
    launch = server._run_uvicorn_command

    def launch_shielded() -> Any:
        with sigint_blocked():
            return launch()

    server._run_uvicorn_command = launch_shielded  # type: ignore[method-assign]
    server.start()


def resume_hint(argv: list[str] | None) -> str:
    """How to resume: the same command (the run continues its folder, finished steps are kept)."""
    import shlex

    args = sys.argv[1:] if argv is None else argv
    return (
        "nothing finished is lost; run the same command again to resume: "
        f"python -m flows.optimize {shlex.join(args)}".rstrip()
    )


def run_cli(argv: list[str] | None = None) -> int:
    """Parse, validate (exit 2 on bad input), then dry-run or run the flow (exit 3 on a run error).

    Ctrl-C or SIGTERM at any point ends it within seconds, children and server included (130 / 143).
    """
    from flows.signals import Shutdown

    os.environ.setdefault("YOLO_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    with Shutdown(resume_hint(argv)).installed():
        return run_parsed(args)


def run_parsed(args: argparse.Namespace) -> int:
    """``run_cli`` after parsing."""
    try:
        request = demo_request(args) if args.demo else request_from(args)
        cfg = prepare(request)
    except PlanError as exc:
        for problem in exc.problems:
            print(problem.line(), file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.dry_run:
        batches = probed_batches(cfg) if args.probe_batch else None
        print(describe_plan(cfg, probed_speeds(cfg) if args.probe_speed else None, batches))
        failed = [p for p in (batches or {}).values() if p.failed]
        for plan in failed:
            print(f"{request.plan}: {plan.where}: {plan.reason}", file=sys.stderr)
        return EXIT_BAD_INPUT if failed else 0
    started = time.monotonic()
    try:
        decision = run_flow(cfg)
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(
            "the run stopped; nothing further was trained. Fix the cause and run the same command again: "
            "finished steps are kept and this one starts again (from its last.pt where there is one).",
            file=sys.stderr,
        )
        return EXIT_RUN_ERROR
    print_summary(decision, request.runs_dir / decision.run_id, time.monotonic() - started)
    return 0


def print_summary(decision: Decision, run_dir: Path, seconds: float) -> None:
    """The end of a run: where it went, a table of what trained, and where the report is."""
    print(f"terminal: {decision.terminal} ({decision.terminal_kind}) after {seconds:.0f} s")
    print(f"path: {' → '.join(decision.path)}")
    print(summary_table([*decision.phases, *decision.trials]))
    if decision.deployed_model:
        print(f"deployed model: {decision.deployed_model}")
    if decision.deployed_export is not None:
        for line in export_summary(decision.deployed_export):
            print(f"  {line}")
    print(f"report: {run_dir / 'REPORT.md'}")


def summary_table(runs: list[PhaseResult]) -> str:
    """One line per training: node, status, mAP50-95, epochs, time (phases first, then trials)."""
    rows = [("run", "status", "mAP50-95", "epochs", "time")]
    for run in runs:
        value = run.metrics.map50_95
        rows.append(
            (
                run.label,
                run.status,
                "n/a" if value is None else f"{value:.4f}",
                f"{run.epochs_done}/{run.epochs_planned}",
                "n/a" if run.wall_s is None else f"{run.wall_s:.0f} s",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
    )


@contextlib.contextmanager
def quiet_tracebacks(*kinds: type[BaseException]) -> Iterator[None]:
    """Keep the terminal free of tracebacks for errors whose message says it all (``TrainingError``).

    Prefect logs a failed task or flow with its traceback; the console handlers print the message
    without it, while the flow run's log in the UI (the API handler) keeps the traceback.
    """
    import logging

    class DropTraceback(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            exc = record.exc_info[1] if record.exc_info else None
            if exc is not None and isinstance(exc, kinds):
                record.exc_info = None
                record.exc_text = None
            return True

    quiet = DropTraceback()
    handlers = [
        h
        for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs")
        for h in logging.getLogger(name).handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)
