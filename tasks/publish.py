"""Prefect tasks that publish: gate tables, the terminal's action, the report and decision.json.

Artifacts carry stable keys (plan + node), so the Prefect UI can compare runs of a plan.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from flows.engine.config import RunConfig
from flows.engine.data.contact_sheet import draw_contact_sheet
from flows.engine.data.dataset import DATASET_COPY
from flows.engine.data.profile import plot_histogram
from flows.engine.decisions.walk import WalkState
from flows.engine.faults import kill_point
from flows.engine.fsutil import write_text_once
from flows.engine.outputs.registry import baseline_record, deploy
from flows.engine.outputs.report import plot_curves, plot_sizes, render_report
from flows.engine.plan.exports import deploy_export
from flows.engine.plan.resolve import planned_epochs
from flows.engine.plan.schema import DeployNode, Plan, SearchNode
from flows.engine.plan.tree import successors, tree_view
from flows.engine.plan.ultra_defaults import ultralytics_default
from flows.engine.records.export import ExportReport
from flows.engine.records.results import Decision, GateResult, PhaseResult
from tasks.trainers.offline import offline_environment


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


UNFINISHED_MAX = 99.0
"""The progress bar shows 100 only when the walk has finished (the last epochs are not the last step)."""


@dataclass
class WalkProgress:
    """Nodes and epochs done of planned, for the flow's progress artifact.

    Which branch the walk takes is known only at the gates, so "planned" is what is done plus the
    longest remaining branch (epochs of the worst case, as ``--dry-run`` prints them). It shrinks
    as gates decide, a node that trained fewer epochs than planned (an early stop) counts what it
    did, and at the terminal done equals planned: 100 %.
    """

    plan: Plan
    force: dict[str, Any] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)
    epochs: dict[str, int] = field(default_factory=dict)
    trials: dict[str, int] = field(default_factory=lambda: {"done": 0, "running": 0, "pruned": 0})
    """A search's trials: finished, training right now (side by side), and pruned among the finished."""
    finished: bool = False
    _memo: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)

    def enter(self, node: str) -> None:
        """The walk reached ``node``."""
        self.path.append(node)

    def trained(self, node: str, epochs: int) -> None:
        """A training of ``node`` (a phase, a trial or a full run) ended after ``epochs`` epochs."""
        self.epochs[node] = self.epochs.get(node, 0) + max(epochs, 0)

    def trial_started(self) -> None:
        """A trial was dispatched (side by side: several run at once)."""
        self.trials["running"] += 1

    def trial_finished(self, pruned: bool) -> None:
        """A trial ended (``pruned``: its pruner stopped it)."""
        self.trials["running"] = max(self.trials["running"] - 1, 0)
        self.trials["done"] += 1
        self.trials["pruned"] += int(pruned)

    def finish(self) -> None:
        """The walk ended at its terminal."""
        self.finished = True

    @property
    def nodes_done(self) -> int:
        """Nodes the walk has left (all of its path once it has finished)."""
        return len(self.path) if self.finished else max(len(self.path) - 1, 0)

    @property
    def nodes_planned(self) -> int:
        """Nodes done, plus the current node and the longest branch after it."""
        if not self.path:
            return self._longest(self.plan.start)[0]
        return len(self.path) + (0 if self.finished else self._after(self.path[-1])[0])

    @property
    def epochs_done(self) -> int:
        """Epochs trained so far (resumed and journalled trainings included)."""
        return sum(self.epochs.values())

    @property
    def epochs_planned(self) -> int:
        """Epochs done, plus what the current node still plans, plus the longest branch after it."""
        if not self.path:
            return self._longest(self.plan.start)[1]
        if self.finished:
            return self.epochs_done
        current = self.path[-1]
        left = max(self._epochs_of(current) - self.epochs.get(current, 0), 0)
        return self.epochs_done + left + self._after(current)[1]

    @property
    def percent(self) -> float:
        """Progress by epochs (by nodes for a plan that trains nothing); 100 only once finished."""
        if self.finished:
            return 100.0
        done, planned = (self.epochs_done, self.epochs_planned)
        if planned == 0:
            done, planned = self.nodes_done, self.nodes_planned
        return min(100.0 * done / planned, UNFINISHED_MAX) if planned else 0.0

    def describe(self) -> str:
        """One line for the artifact's description."""
        text = (
            f"{self.plan.name}: {self.nodes_done} of {self.nodes_planned} nodes, "
            f"{self.epochs_done} of {self.epochs_planned} epochs done"
        )
        if self.trials["done"] or self.trials["running"]:
            t = self.trials
            text += f"; trials {t['done']} done ({t['pruned']} pruned), {t['running']} running"
        if self.finished:
            return f"{text}; terminal {self.path[-1]}"
        return f"{text}; at {self.path[-1]}" if self.path else text

    def _epochs_of(self, node: str) -> int:
        return planned_epochs(self.plan, node, self.force)[1]

    def _next(self, node: str) -> list[str]:
        return [target for target in successors(self.plan, node) if target in self.plan.nodes]

    def _after(self, node: str) -> tuple[int, int]:
        """(nodes, epochs) of the longest branch after ``node``; each is its own maximum."""
        branches = [self._longest(target) for target in self._next(node)]
        return (max((b[0] for b in branches), default=0), max((b[1] for b in branches), default=0))

    def _longest(self, node: str) -> tuple[int, int]:
        """(nodes, epochs) of the longest branch from ``node`` to a terminal, ``node`` included."""
        if node not in self._memo:  # the tree is acyclic (validated), so this ends
            nexts = [self._longest(target) for target in self._next(node)]
            self._memo[node] = (
                1 + max((n for n, _ in nexts), default=0),
                self._epochs_of(node) + max((e for _, e in nexts), default=0),
            )
        return self._memo[node]


class ProgressArtifact:
    """The flow's progress artifact (key ``progress-<plan>``), created once and moved as the walk goes."""

    def __init__(self, progress: WalkProgress) -> None:
        self.progress = progress
        self.key = artifact_key("progress", progress.plan.name)
        self.id: UUID = create_progress_artifact(
            progress=progress.percent, key=self.key, description=progress.describe()
        )

    def update(self) -> None:
        """Publish the current figures."""
        update_progress_artifact(
            self.id, progress=self.progress.percent, description=self.progress.describe()
        )


@task(name="gate", task_run_name="gate-{result.node}")
def publish_gate(result: GateResult, plan: str) -> GateResult:
    """Log the gate's table and publish it as a table artifact."""
    logger = get_run_logger()
    for row in result.rows:
        logger.info(f"{result.node}: {row.condition}: {row.observed} vs {row.threshold} → {row.verdict}")
    logger.info(f"{result.node}: {result.outcome.upper()} → {result.next}")
    create_table_artifact(
        key=artifact_key("gate", plan, result.node),
        table=[row.model_dump() for row in result.rows],
        description=f"Gate {result.node} on {result.subject}: {result.outcome} → {result.next}",
    )
    return result


@task(name="terminal")
def finish_terminal(cfg: RunConfig, run_dir: Path, state: WalkState) -> tuple[Path | None, str | None]:
    """Deploy the winner into the registry, or record that the baseline stays."""
    plan = cfg.plan
    node = plan.nodes[state.terminal]
    logger = get_run_logger()
    if node.kind == "deploy":
        registry = cfg.request.runs_dir / plan.registry
        phase = state.results[node.phase]
        export = deployed_export(cfg, run_dir, state.terminal, phase, logger.info)
        target = deploy(
            registry, run_dir.name, plan.name, phase, state.gates, state.path, cfg.data_fingerprint, export
        )
        logger.info(f"deployed {node.phase} → {target}")
        return target, node.phase
    text = baseline_record(plan.baseline.name, plan.baseline.map50_95, state.gates)
    write_text_once(run_dir / "BASELINE_KEPT.md", text)
    logger.info(text)
    return None, None


def deployed_export(
    cfg: RunConfig, run_dir: Path, name: str, phase: PhaseResult, log: Callable[[str], None]
) -> ExportReport | None:
    """The deploy node's export of the phase's best.pt, checked (parity) and timed, before the registry
    gets a version; None when the node exports nothing or the run replays records (no real weights).

    An export whose figures differ from best.pt's beyond the tolerance raises ``DeployError``."""
    settings = deploy_export(cfg.plan, name)
    if settings is None:
        return None
    if cfg.replay is not None:
        log(f"{name}: a replayed run has no real weights to export; best.pt only")
        return None
    if phase.weights is None:
        return None  # deploy() says what is missing
    from tasks.trainers.export import export_and_check, export_dir, require_parity

    with offline_environment():
        report = export_and_check(
            Path(phase.weights),
            run_dir / DATASET_COPY,
            settings,
            imgsz=int(phase.args.get("imgsz", ultralytics_default("imgsz"))),
            out_dir=export_dir(Path(phase.weights)),
            log=log,
        )
    require_parity(name, report)
    return report


def build_decision(
    cfg: RunConfig, run_dir: Path, state: WalkState, deployed: tuple[Path | None, str | None]
) -> Decision:
    """Everything decision.json holds."""
    kind = cfg.plan.nodes[state.terminal].kind
    return Decision(
        plan=cfg.plan.name,
        run_id=run_dir.name,
        profile=cfg.request.profile,
        terminal=state.terminal,
        terminal_kind="deploy" if kind == "deploy" else "keep_baseline",
        path=tuple(state.path),
        gates=tuple(state.gates),
        phases=tuple(state.results.values()),
        trials=tuple(state.trials),
        search_trials=tuple(state.search_trials),
        warnings_and_notes=(*cfg.warnings, *state.notes),
        deployed_model=deployed[0],
        deployed_from=deployed[1],
        baseline_name=cfg.plan.baseline.name,
        baseline_map50_95=cfg.plan.baseline.map50_95,
        data_fingerprint=cfg.data_fingerprint,
        data_profile=cfg.data_profile,
        deployed_export=recorded_export(cfg, state, deployed[0]),
    )


def recorded_export(cfg: RunConfig, state: WalkState, deployed: Path | None) -> ExportReport | None:
    """The deployed model's export report (a resumed run reads the one its deploy wrote)."""
    if deployed is None or cfg.replay is not None or deploy_export(cfg.plan, state.terminal) is None:
        return None
    from tasks.trainers.export import export_dir, read_report

    node = cfg.plan.nodes[state.terminal]
    phase = state.results.get(node.phase) if isinstance(node, DeployNode) else None
    if phase is None or phase.weights is None:
        return None
    return read_report(export_dir(Path(phase.weights)))


def space_keys(cfg: RunConfig) -> list[str]:
    """Every searched argument, for the trials table."""
    keys: list[str] = []
    for node in cfg.plan.nodes.values():
        if isinstance(node, SearchNode):
            keys += [k for k in node.space if k not in keys]
    return keys


@task(name="report")
def write_report(cfg: RunConfig, run_dir: Path, decision: Decision) -> Path:
    """curves.png, REPORT.md, the markdown artifact, then decision.json (which marks the run finished).

    A run killed while writing its report rewrites the same content on resume (never different content).
    """
    png = run_dir / "curves.png"
    if not png.exists():
        png = plot_curves([*decision.phases, *decision.trials], png)
    histogram = run_dir / "data_profile.png"
    if decision.data_profile is not None and not histogram.exists():
        histogram = plot_histogram(decision.data_profile, histogram)
    sizes = run_dir / "sizes.png"
    if not sizes.exists():
        sizes = plot_sizes(decision.phases, sizes)
    near = decision.data_profile.near_duplicates if decision.data_profile is not None else None
    contact = run_dir / "near_duplicates.png"
    if near is not None and not contact.exists():
        contact = draw_contact_sheet(near, contact)
    text = render_report(
        decision,
        tree_view(cfg.plan),
        png.name if png else None,
        space_keys(cfg),
        histogram.name if histogram and histogram.exists() else None,
        sizes.name if sizes else None,
        contact.name if contact and contact.exists() else None,
    )
    report = write_text_once(run_dir / "REPORT.md", text)
    create_markdown_artifact(
        key=artifact_key("report", cfg.plan.name),
        markdown=text,
        description=f"{cfg.plan.name}: {decision.terminal}",
    )
    kill_point("report")
    write_text_once(run_dir / "decision.json", decision.model_dump_json(indent=2))
    return report
