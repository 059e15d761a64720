"""The optimisation flow (deployment entrypoint ``flows/fod_flow.py:optimize``).

Run it from the command line with ``python -m flows.optimize``.

The flow walks the plan's tree (``flows.engine.decisions.walk``) with Prefect tasks as the
executor: every training, gate, terminal and report is a task run whose name tells the
plan, the node and the trial. A progress artifact (key ``progress-<plan>``) shows nodes and
epochs done of planned as the walk goes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from prefect import flow, get_run_logger

from flows.engine.config import OptimizeRequest, RunConfig, prepare
from flows.engine.decisions.walk import walk_tree
from flows.engine.faults import kill_point
from flows.engine.fsutil import make_unique_dir
from flows.engine.records.journal import (
    Journal,
    JournalingExecutor,
    RunIdentity,
    code_version,
    find_resumable,
    locked,
    plan_sha,
    unfinished_runs,
    write_identity,
)
from flows.engine.records.results import Decision, GateResult, PhaseResult, TrainSpec
from tasks.publish import (
    ProgressArtifact,
    WalkProgress,
    build_decision,
    finish_terminal,
    publish_gate,
    write_report,
)
from tasks.train import cached_train_task


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
        return cached_train_task(spec).with_options(task_run_name=name)(spec, self.cfg)

    def gate(self, result: GateResult) -> None:
        """Publish the gate's table."""
        publish_gate(result, self.cfg.plan.plan)

    def enter(self, node: str, index: int) -> None:
        """Log where the walk is."""
        self.logger.info(f"node {index}: {node} ({self.cfg.plan.nodes[node].kind})")


class ProgressingExecutor:
    """The outermost executor: counts nodes and epochs (journalled steps too) into the progress artifact."""

    def __init__(self, inner: JournalingExecutor, artifact: ProgressArtifact):
        self.inner = inner
        self.artifact = artifact

    def train(self, spec: TrainSpec) -> PhaseResult:
        """Train (or take the journalled result), then count its epochs."""
        result = self.inner.train(spec)
        self.artifact.progress.trained(spec.node, result.epochs_done)
        self.artifact.update()
        return result

    def gate(self, result: GateResult) -> None:
        """Gates train nothing: passed through."""
        self.inner.gate(result)

    def enter(self, node: str, index: int) -> None:
        """Count the node the walk has reached."""
        self.inner.enter(node, index)
        self.artifact.progress.enter(node)
        self.artifact.update()


def run_identity(cfg: RunConfig) -> RunIdentity:
    """What must match for a re-run to continue an unfinished run."""
    resolved = {"plan": cfg.plan.model_dump(mode="json"), "force": cfg.force}
    return RunIdentity(
        plan=cfg.plan.plan,
        plan_sha=plan_sha(resolved),
        profile=cfg.request.profile,
        data=str(cfg.data),
        data_fingerprint=cfg.data_fingerprint,
        code_version=code_version(),
    )


def open_run(cfg: RunConfig, identity: RunIdentity) -> tuple[Path, list[str]]:
    """The unfinished run to continue (same identity), or a fresh folder RUNS/PLAN-YYYYmmdd-HHMMSS.

    Returns the folder and the lines to log: what is resumed, or what changed since the
    unfinished run that is therefore not continued.
    """
    mode = cfg.request.resume
    if mode != "never":
        found, changes = find_resumable(cfg.request.runs_dir, identity)
        if found is None and changes and mode == "force":
            found = unfinished_runs(cfg.request.runs_dir, identity.plan)[0]
            return found, [f"continuing {found.name} although: {'; '.join(changes)}"]
        if found is not None:
            return found, [f"resuming unfinished run {found.name}"]
        if changes:
            notes = [*changes, "not resuming it: starting a new run folder (resume: force continues it)"]
            return new_run_dir(cfg, identity), notes
    return new_run_dir(cfg, identity), []


def new_run_dir(cfg: RunConfig, identity: RunIdentity) -> Path:
    """A fresh run folder (never reused) holding the run's identity."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = make_unique_dir(cfg.request.runs_dir, f"{cfg.plan.plan}-{stamp}")
    write_identity(run_dir, identity)
    return run_dir


def name_flow_run() -> str:
    """Flow runs are named after the plan and profile."""
    from prefect.runtime import flow_run

    request = flow_run.parameters.get("request")
    plan = Path(getattr(request, "plan", None) or request.get("plan", "plan")).stem if request else "plan"
    profile = (getattr(request, "profile", None) if request else None) or "full"
    return f"{plan}-{profile}-{time.strftime('%m%d-%H%M%S')}"


def checkpoint_check(cfg: RunConfig) -> Callable[[Path], str | None]:
    """How a last.pt is judged before resuming: a real torch.save archive for Ultralytics.

    The replay trainer's last.pt is a text placeholder, so it is taken as it is.
    """
    if cfg.trainer == "ultralytics":
        from flows.engine.data.checks import weights_problem

        return weights_problem
    return lambda _: None


@flow(name="fod-optimize", flow_run_name=name_flow_run, log_prints=True)
def optimize(request: OptimizeRequest) -> Decision:
    """Validate the request, walk the tree to a terminal, deploy or keep the baseline, write the report."""
    cfg = prepare(request)
    logger = get_run_logger()
    for warning in cfg.warnings:
        logger.warning(warning)
    run_dir, notes = open_run(cfg, run_identity(cfg))
    for note in notes:
        logger.warning(note)
    logger.info(f"run folder {run_dir}")
    with locked(run_dir):
        journal = Journal(run_dir)
        progress = ProgressArtifact(WalkProgress(cfg.plan, cfg.force))
        journaling = JournalingExecutor(
            PrefectExecutor(cfg), journal, log=logger.info, checkpoint_problem=checkpoint_check(cfg)
        )
        state = walk_tree(cfg, run_dir, ProgressingExecutor(journaling, progress))
        deployed = journal.terminal_done(state.terminal)
        if deployed is None:
            deployed = finish_terminal(cfg, run_dir, state)
            kill_point("journal:terminal")
            journal.record_terminal(state.terminal, deployed)
        decision = build_decision(cfg, run_dir, state, deployed)
        report = write_report(cfg, run_dir, decision)
        progress.progress.finish()
        progress.update()
    logger.info(f"terminal {decision.terminal}; report {report}")
    return decision
