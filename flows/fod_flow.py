"""The optimisation flow (deployment entrypoint ``flows/fod_flow.py:optimize``).

Run it from the command line with ``python -m flows.optimize``.

The flow walks the plan's tree (``flows.engine.decisions.walk``) with Prefect tasks as the
executor: every training, gate, terminal and report is a task run whose name tells the
plan, the node and the trial. A progress artifact (key ``progress-<plan>``) shows nodes and
epochs done of planned as the walk goes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.engine.config import OptimizeRequest, RunConfig, prepare
from flows.engine.data.dataset import write_dataset_copy
from flows.engine.decisions.walk import train_in_turn, walk_tree
from flows.engine.errors import DeployError
from flows.engine.faults import kill_point
from flows.engine.fsutil import make_unique_dir
from flows.engine.plan.search_settings import TrialWorkers
from flows.engine.records.journal import (
    Journal,
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
from tasks.slots import SLOT_ENV
from tasks.step import TrainingStep, record_gate_once
from tasks.train import train_task


class PrefectExecutor:
    """Runs the walk's steps as Prefect tasks; the run's training step answers for finished trainings
    (its journal) and records each gate once."""

    def __init__(self, cfg: RunConfig, run_dir: Path):
        self.cfg = cfg
        self.run_dir = run_dir
        self.logger = get_run_logger()
        self.step = TrainingStep.for_run(cfg, run_dir, log=self.logger.info)

    def train(self, spec: TrainSpec) -> PhaseResult:
        """The journalled result, or one training as a task run named after the node (and trial)."""
        found = self.step.finished(spec)
        if found is not None:
            return found
        task = train_task.with_options(task_run_name=spec.task_run_name)
        return task(spec, self.cfg, self.run_dir)

    def train_each(
        self,
        next_spec: Callable[[], TrainSpec | None],
        on_done: Callable[[TrainSpec, PhaseResult], None],
        workers: TrialWorkers | None,
    ) -> None:
        """Trainings side by side on the search's Dask workers: as many in flight as there are workers,
        the next one dispatched as soon as one finishes (a pruner then already knows its epochs);
        journalled ones answer at once. Without workers, one after another."""
        if workers is None:
            train_in_turn(self, next_spec, on_done)
            return
        from prefect.futures import as_completed

        from flows.trial_cluster import trial_runner

        def next_to_train() -> TrainSpec | None:
            while (spec := next_spec()) is not None:
                found = self.step.finished(spec)
                if found is None:
                    return spec
                on_done(spec, found)
            return None

        with trial_runner(workers) as runner:
            width = workers.width or max(len(runner.client.scheduler_info()["workers"]), 1)
            running: dict[Any, TrainSpec] = {}
            while True:
                while len(running) < width and (spec := next_to_train()) is not None:
                    task = train_task.with_options(task_run_name=slot_task_name(spec))
                    arguments = {"spec": spec, "cfg": self.cfg, "run_dir": self.run_dir}
                    running[runner.submit(task, arguments)] = spec
                    self.logger.info(f"{spec.label}: dispatched ({len(running)} of {width} workers busy)")
                if not running:
                    return
                done = next(iter(as_completed(list(running))))
                on_done(running.pop(done), done.result())

    def gate(self, result: GateResult) -> None:
        """Publish the gate's table and record it (once: a resumed run's recorded gate is neither)."""
        record_gate_once(self.step.journal, result, publish=lambda r: publish_gate(r, self.cfg.plan.name))

    def enter(self, node: str, index: int) -> None:
        """Log where the walk is."""
        self.logger.info(f"node {index}: {node} ({self.cfg.plan.nodes[node].kind})")


class ProgressingExecutor:
    """The outermost executor: counts nodes and epochs (journalled steps too) into the progress artifact."""

    def __init__(self, inner: PrefectExecutor, artifact: ProgressArtifact):
        self.inner = inner
        self.artifact = artifact

    def train(self, spec: TrainSpec) -> PhaseResult:
        """Train (or take the journalled result), then count its epochs (and a trial as done)."""
        if spec.role == "trial":
            self.artifact.progress.trial_started()
        result = self.inner.train(spec)
        self.count(spec, result)
        return result

    def count(self, spec: TrainSpec, result: PhaseResult) -> None:
        """A training ended: its epochs, and a trial as done (pruned or not), into the artifact."""
        progress = self.artifact.progress
        progress.trained(spec.node, result.epochs_done)
        if spec.role == "trial":
            progress.trial_finished(pruned=(result.reason or "").startswith("pruned"))
        self.artifact.update()

    def train_each(
        self,
        next_spec: Callable[[], TrainSpec | None],
        on_done: Callable[[TrainSpec, PhaseResult], None],
        workers: TrialWorkers | None,
    ) -> None:
        """Side by side, counting trials running and done and each training's epochs as it finishes."""
        progress = self.artifact.progress

        def dispatched() -> TrainSpec | None:
            spec = next_spec()
            if spec is not None:
                progress.trial_started()
                self.artifact.update()
            return spec

        def counted(spec: TrainSpec, result: PhaseResult) -> None:
            self.count(spec, result)
            on_done(spec, result)

        self.inner.train_each(dispatched, counted, workers)

    def gate(self, result: GateResult) -> None:
        """Gates train nothing: passed through."""
        self.inner.gate(result)

    def enter(self, node: str, index: int) -> None:
        """Count the node the walk has reached."""
        self.inner.enter(node, index)
        self.artifact.progress.enter(node)
        self.artifact.update()


def slot_task_name(spec: TrainSpec) -> Callable[[], str]:
    """The task run's name, made where the task runs: the trial and the worker's GPU (``FOD_SLOT``)."""

    def name() -> str:
        slot = os.environ.get(SLOT_ENV)
        return f"{spec.task_run_name}-{slot}" if slot else spec.task_run_name

    return name


def run_identity(cfg: RunConfig) -> RunIdentity:
    """What must match for a re-run to continue an unfinished run."""
    resolved = {"plan": cfg.plan.model_dump(mode="json"), "force": cfg.force}
    return RunIdentity(
        plan=cfg.plan.name,
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
    run_dir = make_unique_dir(cfg.request.runs_dir, f"{cfg.plan.name}-{stamp}")
    write_identity(run_dir, identity)
    return run_dir


def name_flow_run() -> str:
    """Flow runs are named after the plan and profile."""
    from prefect.runtime import flow_run

    given = flow_run.parameters.get("request") or getattr(flow_run.parameters.get("cfg"), "request", None)
    request = OptimizeRequest.model_validate(given) if given is not None else None
    plan = request.plan.stem if request else "plan"
    profile = (request.profile if request else None) or "full"
    return f"{plan}-{profile}-{time.strftime('%m%d-%H%M%S')}"


@flow(name="fod-optimize", flow_run_name=name_flow_run, log_prints=True)
def optimize(request: OptimizeRequest) -> Decision:
    """Validate the request, walk the tree to a terminal, deploy or keep the baseline, write the report.

    The deployments' entrypoint (the UI's form is this request).
    """
    return walk_run(prepare(request))


@flow(name="fod-optimize", flow_run_name=name_flow_run, log_prints=True, validate_parameters=False)
def optimize_prepared(cfg: RunConfig) -> Decision:
    """The same flow for a request the command line has already validated: nothing is read twice."""
    return walk_run(cfg)


def walk_run(cfg: RunConfig) -> Decision:
    """Open (or resume) the run folder, walk the tree to a terminal, finish it and write the report.

    A training that ends in an error raises ``TrainingError`` out of here: the flow run fails, the
    journal has recorded the error, and running the same request again resumes this run.
    """
    from flows.flow_runs import close_stale_flow_runs
    from flows.signals import reinstall

    reinstall()  # the command's Ctrl-C/SIGTERM handling, over Prefect's SIGTERM bridge (flows/signals.py)
    logger = get_run_logger()
    for warning in cfg.warnings:
        logger.warning(warning)
    run_dir, notes = open_run(cfg, run_identity(cfg))
    for note in notes:
        logger.warning(note)
    logger.info(f"run folder {run_dir}")
    with locked(run_dir):
        write_dataset_copy(cfg.dataset, run_dir)
        journal = Journal(run_dir)
        close_stale_flow_runs(journal, logger.warning)
        progress = ProgressArtifact(WalkProgress(cfg.plan, cfg.force))
        state = walk_tree(cfg, run_dir, ProgressingExecutor(PrefectExecutor(cfg, run_dir), progress))
        deployed = journal.terminal_done(state.terminal)
        if deployed is None:
            try:
                deployed = finish_terminal(cfg, run_dir, state)
            except DeployError as exc:
                journal.record_error(exc.run, str(exc))
                raise
            kill_point("journal:terminal")
            journal.record_terminal(state.terminal, deployed)
        decision = build_decision(cfg, run_dir, state, deployed)
        report = write_report(cfg, run_dir, decision)
        progress.progress.finish()
        progress.update()
    logger.info(f"terminal {decision.terminal}; report {report}")
    return decision
