"""The optimisation flow (deployment entrypoint ``flows/fod_flow.py:optimize``).

Run it from the command line with ``python -m flows.optimize``.

The flow walks the plan's tree (``flows.engine.walk``) with Prefect tasks as the
executor: every training, gate, terminal and report is a task run whose name tells the
plan, the node and the trial.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger

from flows.engine.config import OptimizeRequest, RunConfig, prepare
from flows.engine.fsutil import make_unique_dir
from flows.engine.results import Decision, GateResult, PhaseResult, TrainSpec
from flows.engine.walk import walk_tree
from tasks.publish import build_decision, finish_terminal, publish_gate, write_report
from tasks.train import train_task


class PrefectExecutor:
    """Runs the walk's steps as Prefect tasks."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.logger = get_run_logger()

    def train(self, spec: TrainSpec) -> PhaseResult:
        """One training as a task run named after the node (and trial)."""
        if spec.trial is not None:
            name = f"trial-{spec.node}-{spec.trial:02d}"
        elif spec.run_dir.name == "full":
            name = f"full-{spec.node}"
        else:
            name = f"train-{spec.node}"
        return train_task.with_options(task_run_name=name)(spec, self.cfg)

    def gate(self, result: GateResult) -> None:
        """Publish the gate's table."""
        publish_gate(result, self.cfg.plan.plan)

    def enter(self, node: str, index: int) -> None:
        """Log where the walk is."""
        self.logger.info(f"node {index}: {node} ({self.cfg.plan.nodes[node].kind})")


def new_run_dir(cfg: RunConfig) -> Path:
    """A fresh run folder (never reused): RUNS/PLAN-YYYYmmdd-HHMMSS."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return make_unique_dir(cfg.request.runs_dir, f"{cfg.plan.plan}-{stamp}")


def name_flow_run() -> str:
    """Flow runs are named after the plan and profile."""
    from prefect.runtime import flow_run

    request = flow_run.parameters.get("request")
    plan = Path(getattr(request, "plan", None) or request.get("plan", "plan")).stem if request else "plan"
    profile = (getattr(request, "profile", None) if request else None) or "full"
    return f"{plan}-{profile}-{time.strftime('%m%d-%H%M%S')}"


@flow(name="fod-optimize", flow_run_name=name_flow_run, log_prints=True)
def optimize(request: OptimizeRequest) -> Decision:
    """Validate the request, walk the tree to a terminal, deploy or keep the baseline, write the report."""
    cfg = prepare(request)
    logger = get_run_logger()
    for warning in cfg.warnings:
        logger.warning(warning)
    run_dir = new_run_dir(cfg)
    logger.info(f"run folder {run_dir}")
    state = walk_tree(cfg, run_dir, PrefectExecutor(cfg))
    deployed = finish_terminal(cfg, run_dir, state)
    decision = build_decision(cfg, run_dir, state, deployed)
    report = write_report(cfg, run_dir, decision)
    logger.info(f"terminal {decision.terminal}; report {report}")
    return decision
