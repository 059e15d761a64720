"""Walk the validated tree: train, gate, branch, until a terminal.

Pure orchestration: training is delegated to an ``Executor`` (Prefect tasks in the
flow, plain calls in tests), so this walk is the same code whatever runs the phases.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from flows.engine.config import RunConfig
from flows.engine.data.dataset import DATASET_COPY
from flows.engine.decisions.early import judging_gate, reference_speeds
from flows.engine.decisions.gates import evaluate_gate
from flows.engine.plan.exports import gate_export
from flows.engine.plan.sampling import describe_design
from flows.engine.plan.schema import GateNode, SearchNode, TrainNode
from flows.engine.plan.search_settings import TrialWorkers
from flows.engine.plan.ultra_defaults import ultralytics_default
from flows.engine.records.results import EarlyRule, GateResult, PhaseResult, RunRef, TrainSpec, TrialRecord

if TYPE_CHECKING:  # pragma: no cover
    from flows.engine.decisions.study import BestTrial


class Executor(Protocol):
    """What the walk needs from whoever runs it."""

    def train(self, spec: TrainSpec) -> PhaseResult:
        """Run one training (a phase, a trial or a search's full run)."""
        ...

    def train_each(
        self,
        next_spec: Callable[[], TrainSpec | None],
        on_done: Callable[[TrainSpec, PhaseResult], None],
        workers: TrialWorkers | None,
    ) -> None:
        """Train what ``next_spec`` hands out until it hands out None, telling ``on_done`` of each: a
        search's trials, side by side on ``workers`` where the executor can (else ``train_in_turn``)."""
        ...

    def gate(self, result: GateResult) -> None:
        """Publish a gate's evaluation (log, artifact)."""
        ...

    def enter(self, node: str, index: int) -> None:
        """Report that the walk reached a node (progress)."""
        ...


@dataclass
class WalkState:
    """What the walk has done so far."""

    path: list[str] = field(default_factory=list)
    results: dict[str, PhaseResult] = field(default_factory=dict)
    gates: list[GateResult] = field(default_factory=list)
    trials: list[PhaseResult] = field(default_factory=list)
    search_trials: list[TrialRecord] = field(default_factory=list)
    """Each search's trials as its study has them (state, pruned-at epoch), for the report."""
    notes: list[str] = field(default_factory=list)

    @property
    def terminal(self) -> str:
        """The node the walk ended on."""
        return self.path[-1]


def phase_dir(run_dir: Path, ref: RunRef) -> Path:
    """Where one training writes: phases/NODE, phases/NODE/trial-NN or phases/NODE/full (its key)."""
    return run_dir / "phases" / ref.key


def early_rule(
    cfg: RunConfig, ref: RunRef, args: dict[str, Any], results: Mapping[str, PhaseResult]
) -> EarlyRule | None:
    """What may stop a phase or a search's full run early: the gate that judges it, when its policy is on.

    Trials are not judged by a gate (the search's pruner decides for them).
    """
    judging = judging_gate(cfg.plan, ref.node) if ref.role != "trial" else None
    if judging is None or judging[1].early.policy == "off":
        return None
    name, gate = judging
    return EarlyRule(
        gate_name=name,
        gate=gate,
        reference_images_per_s=reference_speeds(gate, results),
        close_mosaic=int(args.get("close_mosaic", ultralytics_default("close_mosaic")) or 0),
    )


def spec_for(
    cfg: RunConfig,
    run_dir: Path,
    ref: RunRef,
    args: dict[str, Any],
    results: Mapping[str, PhaseResult] | None = None,
) -> TrainSpec:
    """A training's spec: the node's model, weights and stoppers, these arguments, the run's dataset copy.

    ``results``: what trained before it (the references of an early decision's speed-up conditions).
    """
    node = cfg.plan.nodes[ref.node]
    assert isinstance(node, TrainNode | SearchNode)
    return TrainSpec(
        **ref.model_dump(),
        plan=cfg.plan.name,
        model=cfg.model_of(ref.node),
        pretrained=cfg.pretrained_of(ref.node),
        data=run_dir / DATASET_COPY,
        args=args,
        effective_batch=cfg.effective_batch_of(ref.node),
        grad_clip_norm=cfg.grad_clip_of(ref.node),
        run_dir=phase_dir(run_dir, ref),
        monitors=tuple(node.monitors),
        on_error=node.on_error,
        batch_plan=cfg.batch_plan_of(ref.node),
        early=early_rule(cfg, ref, args, results or {}),
        evaluation=cfg.plan.evaluation if cfg.plan.evaluation.enabled else None,
        leakage=cfg.plan.leakage if cfg.plan.leakage.enabled else None,
        export=gate_export(cfg.plan, ref.node) if ref.role != "trial" else None,
    )


def train_spec(
    cfg: RunConfig, run_dir: Path, node: str, results: Mapping[str, PhaseResult] | None = None
) -> TrainSpec:
    """The spec of a train node."""
    return spec_for(cfg, run_dir, RunRef(node=node), cfg.args_for(node), results)


def search_spec(
    cfg: RunConfig,
    run_dir: Path,
    node: str,
    point: dict[str, Any],
    trial: int | None,
    results: Mapping[str, PhaseResult] | None = None,
) -> TrainSpec:
    """The spec of a search trial (``trial`` set) or of the full run of the best point (``trial`` None)."""
    full = trial is None
    ref = RunRef(node=node, role="full") if full else RunRef(node=node, role="trial", trial=trial)
    return spec_for(cfg, run_dir, ref, cfg.trial_args_for(node, point, full=full), results)


def best_note(name: str, metric: str, best: BestTrial) -> str:
    """What the report says about the choice: the best trial, or that every trial scored the same."""
    trial = best.trial
    shown = "n/a" if trial.value is None else f"{trial.value:.4f}"
    if best.all_tie:
        return (
            f"{name}: all {best.scored} trials tie at {metric} {shown}: no point is better than another; "
            f"the first, trial {trial.number} {trial.point}, is trained in full"
        )
    return f"{name}: best trial {trial.number} ({metric} {shown}): {trial.point}"


def design_line(name: str, node: SearchNode) -> str:
    """How the search chooses its trials, for the report's notes."""
    from flows.engine.plan.search_rules import describe_sampler_design
    from flows.engine.plan.search_settings import SAMPLER_METHODS

    d = node.design
    if d.method in SAMPLER_METHODS:
        return f"{name}: {describe_sampler_design(d, node.study.sampler)}"
    return f"{name}: {describe_design(node.space, d.method, d.max_trials, d.seed)}"


def trial_spec(cfg: RunConfig, run_dir: Path, name: str, number: int, point: dict, hook: Any) -> TrainSpec:
    """A trial's spec, reporting its epochs into its Optuna trial."""
    return search_spec(cfg, run_dir, name, point, number).model_copy(update={"trial_hook": hook})


def run_trials(
    ex: Executor, study: Any, make_spec: Callable[[Any], TrainSpec], node: SearchNode
) -> dict[int, PhaseResult]:
    """Train the trials the study hands out: one after another, or side by side when the search has
    workers and the executor can dispatch them (``train_each``). Each finished trial is journalled (by
    its training step) before the study is told, so a re-run finds it either way."""
    results: dict[int, PhaseResult] = {}
    in_flight: set[int] = set()

    def next_spec() -> TrainSpec | None:
        ticket = study.next_trial(exclude=frozenset(in_flight))
        if ticket is None:
            return None
        in_flight.add(ticket.number)
        return make_spec(ticket)

    def finished(spec: TrainSpec, result: PhaseResult) -> None:
        number = spec.trial if spec.trial is not None else -1
        in_flight.discard(number)
        results[number] = result
        study.finish_result(number, result)

    ex.train_each(next_spec, finished, node.workers)
    return results


def train_in_turn(
    ex: Executor, next_spec: Callable[[], TrainSpec | None], on_done: Callable[[TrainSpec, PhaseResult], None]
) -> None:
    """One training after another: ``train_each`` of an executor with nowhere else to train."""
    while (spec := next_spec()) is not None:
        on_done(spec, ex.train(spec))


def run_search(
    cfg: RunConfig, run_dir: Path, name: str, node: SearchNode, ex: Executor, state: WalkState
) -> PhaseResult:
    """Trials from the node's Optuna study → the best completed one → its full run (the search's result).

    The study (stored in the search's folder, or at the plan's storage URL) hands out the trials; each
    trial's epochs are reported into it and its pruner may stop the trial. A killed search resumes: the
    journal answers for finished trials (nothing is trained twice) and the interrupted trial is handed
    out again under its number, continuing from its last.pt. The full run restarts the best point, or
    continues the best prefix trial from its checkpoint (``full_run: continue``).
    """
    from flows.engine.decisions.study import CONTINUE_CHECKPOINT, SearchStudy, study_config

    state.notes.append(design_line(name, node))
    search_dir = run_dir / "phases" / name
    study = SearchStudy.open(study_config(node, node_name=name, run_id=run_dir.name, search_dir=search_dir))
    results = run_trials(ex, study, lambda t: trial_spec(cfg, run_dir, name, t.number, t.point, t.hook), node)
    for record in study.trials():  # finished before an interruption: the journal answers, nothing trains
        if record.number not in results:
            hook = study.config.hook(record.number)
            results[record.number] = ex.train(
                trial_spec(cfg, run_dir, name, record.number, record.point, hook)
            )
    state.trials += [results[n] for n in sorted(results)]
    state.search_trials += study.trials()
    best = study.best()
    if best is None:
        return PhaseResult(node=name, role="full", status="failed", reason="no trial completed with a score")
    winner = best.trial
    state.notes.append(best_note(name, node.select, best))
    full = search_spec(cfg, run_dir, name, winner.point, None, state.results)
    if node.full_run == "continue":
        trial_dir = phase_dir(run_dir, RunRef(node=name, role="trial", trial=winner.number))
        full = full.model_copy(update={"continue_checkpoint": trial_dir / CONTINUE_CHECKPOINT})
    state.notes.append(f"{name}: {study.savings(full_epochs=full.epochs, full_run=node.full_run).note()}")
    return ex.train(full)


def step(cfg: RunConfig, run_dir: Path, name: str, ex: Executor, state: WalkState) -> str | None:
    """Run one node; return the next node's name, or None at a terminal."""
    node = cfg.plan.nodes[name]
    if isinstance(node, TrainNode):
        state.results[name] = ex.train(train_spec(cfg, run_dir, name, state.results))
        return node.next
    if isinstance(node, SearchNode):
        state.results[name] = run_search(cfg, run_dir, name, node, ex, state)
        return node.next
    if isinstance(node, GateNode):
        result = evaluate_gate(name, node, state.results.get(node.subject), state.results)
        state.gates.append(result)
        ex.gate(result)
        return result.next
    return None


def walk_tree(cfg: RunConfig, run_dir: Path, ex: Executor) -> WalkState:
    """Walk from the start to a terminal."""
    state = WalkState()
    name: str | None = cfg.plan.start
    while name is not None:
        state.path.append(name)
        ex.enter(name, len(state.path))
        name = step(cfg, run_dir, name, ex, state)
    return state
