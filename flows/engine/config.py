"""The one validated configuration object of a run, and how it is prepared.

``OptimizeRequest`` is what a user gives (command line, or a Prefect deployment's form).
``prepare`` checks *everything* — plan schema, tree, Ultralytics arguments, model files,
dataset, replay spec — and returns a ``RunConfig`` or raises ``PlanError`` listing every
problem, before a run folder exists or any training starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flows.engine.data.checks import check_runs_dir, weights_problem
from flows.engine.data.dataset import ResolvedDataset, inspect_dataset
from flows.engine.plan.batch_settings import BatchPlanSettings
from flows.engine.plan.devices import node_device_problems, spread_devices
from flows.engine.plan.exports import export_problems
from flows.engine.plan.loader import load_plan
from flows.engine.plan.problems import PlanError, Problem, errors_of
from flows.engine.plan.resolve import inherited, node_args, resolve_path, trial_args
from flows.engine.plan.schema import GateNode, MetricCheck, Plan, SearchNode, TrainNode, VramCheck
from flows.engine.plan.ultra_defaults import ultralytics_default
from flows.engine.plan.validate import check_plan
from flows.engine.records.profile import DataProfile
from flows.engine.records.replay_spec import ReplaySpec, ReplaySpecError, load_replay_spec


class OptimizeRequest(BaseModel):
    """What a user asks for; the flow's parameters and the CLI's options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    plan: Path = Field(description="Plan file (YAML), e.g. configs/fod_plan.yaml")
    data: Path = Field(description="Ultralytics dataset YAML")
    profile: str | None = Field(default=None, description="A profile of the plan, e.g. smoke")
    runs_dir: Path = Field(default=Path("runs"), description="Where run folders and the model registry live")
    replay: Path | None = Field(
        default=None, description="Replay SPEC: replay recorded results.csv instead of training"
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Ultralytics arguments forced on every run (e.g. device: 0)"
    )
    resume: Literal["auto", "never", "force"] = Field(
        default="auto",
        description="auto: continue an unfinished run of the same plan, data and code; never: always a "
        "new run folder; force: continue the newest unfinished run even if something changed",
    )


class RunConfig(BaseModel):
    """A request after validation, with the plan loaded and everything resolved that can be."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request: OptimizeRequest
    plan: Plan
    force: dict[str, Any]
    plan_dir: Path
    dataset: ResolvedDataset
    """The dataset as its author meant it; trainings read its resolved copy in the run folder."""
    data_profile: DataProfile | None = None
    """Images, instances and box sizes per split and class, leakage, plan-sanity checks (before any GPU)."""
    replay: ReplaySpec | None = None
    """The replay SPEC, loaded and checked once; None: real Ultralytics training."""
    warnings: tuple[str, ...] = ()

    @property
    def data(self) -> Path:
        """The user's dataset YAML (absolute)."""
        return self.dataset.source

    @property
    def data_fingerprint(self) -> str:
        """The dataset's fingerprint, from its resolved file list."""
        return self.dataset.fingerprint

    @property
    def trainer(self) -> Literal["ultralytics", "replay"]:
        """Which trainer back-end runs the trainings."""
        return "replay" if self.replay is not None else "ultralytics"

    def args_for(self, node: str) -> dict[str, Any]:
        """Merged Ultralytics arguments of a train node."""
        return node_args(self.plan, node, self.force)

    def trial_args_for(self, node: str, point: dict[str, Any], *, full: bool = False) -> dict[str, Any]:
        """Merged arguments of a search trial or of its full run."""
        return trial_args(self.plan, node, point, self.force, full=full)

    def model_of(self, node: str) -> Path:
        """The model a train node (or a search, through its base) trains."""
        return resolve_model_path(self.plan, node, self.plan_dir)

    def pretrained_of(self, node: str) -> Path | None:
        """Local pretrained weights of a train node (or a search's base)."""
        return resolve_path(inherited(self.plan, base_of(self.plan, node), "pretrained"), self.plan_dir)

    def effective_batch_of(self, node: str) -> int | None:
        """Effective batch of a train node (or a search's base)."""
        return inherited(self.plan, base_of(self.plan, node), "effective_batch")

    def grad_clip_of(self, node: str) -> float | Literal["off"] | None:
        """Gradient-clipping norm of a train node (or a search's base); ``"off"``: no clipping."""
        return inherited(self.plan, base_of(self.plan, node), "grad_clip_norm")

    def batch_plan_of(self, node: str) -> BatchPlanSettings | None:
        """The batch planner's settings of a train node (or a search's base); None: the fixed batch.

        A profile that forces the batch (the CPU profiles) turns planning off: the batch is given.
        """
        if "batch" in self.force:
            return None
        return inherited(self.plan, base_of(self.plan, node), "batch_plan")


def base_of(plan: Plan, node: str) -> str:
    """A search trains its base's model; a train node its own."""
    target = plan.nodes[node]
    return target.base if isinstance(target, SearchNode) else node


def resolve_model_path(plan: Plan, node: str, plan_dir: Path) -> Path:
    """Resolve a node's model name through fod_models (scaled names like yolo11m-p2.yaml)."""
    from fod_models import resolve_model

    value = inherited(plan, base_of(plan, node), "model")
    return Path(resolve_model(value, base_dir=plan_dir))


def check_models(plan: Plan, source: str, plan_dir: Path, force: dict[str, Any]) -> list[Problem]:
    """Every train node has a model that resolves, existing pretrained weights, and a fitting imgsz."""
    from fod_models import ModelSpecError, check_imgsz, resolve_model

    problems: list[Problem] = []
    for name, node in plan.nodes.items():
        if not isinstance(node, TrainNode):
            continue
        where = f"nodes.{name}"
        value = inherited(plan, name, "model")
        if value is None:
            problems.append(
                Problem(source, f"{where}.model", "no model: set model: (or base: a node that has one)")
            )
            continue
        try:
            model = resolve_model(value, base_dir=plan_dir)
        except (ModelSpecError, FileNotFoundError) as exc:
            problems.append(Problem(source, f"{where}.model", str(exc)))
            continue
        weights = resolve_path(inherited(plan, name, "pretrained"), plan_dir)
        if weights is not None and (message := weights_problem(weights)):
            problems.append(Problem(source, f"{where}.pretrained", message))
        imgsz = node_args(plan, name, force).get("imgsz", ultralytics_default("imgsz"))
        if isinstance(imgsz, int) and (message := check_imgsz(imgsz, model)):
            problems.append(Problem(source, f"{where}.args.imgsz", message))
    return problems


def check_batch_plans(plan: Plan, source: str, force: dict[str, Any]) -> list[Problem]:
    """Planned phases must keep an effective batch and a fixed fallback batch, and every VRAM monitor and
    gate of the phase must read the budget the planner plans for (one number, one figure)."""
    from flows.engine.plan.batch_settings import (
        MONITOR_FIGURES,
        VramBound,
        budget_mismatches,
        plan_problems,
    )

    problems: list[Problem] = []
    for name, node in plan.nodes.items():
        settings = inherited(plan, name, "batch_plan") if isinstance(node, TrainNode) else None
        if settings is None:
            continue
        where = f"nodes.{name}.batch_plan"
        searches = [(n, s) for n, s in plan.nodes.items() if isinstance(s, SearchNode) and s.base == name]
        problems += plan_problems(
            settings,
            source=source,
            where=where,
            fixed_batch=node_args(plan, name).get("batch"),
            effective_batch=inherited(plan, name, "effective_batch"),
            space=(f"nodes.{searches[0][0]}.space", searches[0][1].space) if searches else None,
            forced=("force", force) if force else None,
        )
        bounds = [
            VramBound(where=f"nodes.{name}.monitors[{i}]", figure=MONITOR_FIGURES[m.figure], max_gb=m.max)
            for i, m in enumerate(node.monitors)
            if m.figure in MONITOR_FIGURES and m.max is not None
        ]
        judged = {name, *(n for n, _ in searches)}
        bounds += [
            VramBound(where=f"nodes.{g}.conditions[{i}]", figure=c.figure, max_gb=c.max_gb)
            for g, gate in plan.nodes.items()
            if isinstance(gate, GateNode) and gate.subject in judged
            for i, c in enumerate(gate.conditions)
            if isinstance(c, VramCheck)
        ]
        problems += [Problem(source, at, text) for at, text in budget_mismatches(settings, bounds, where)]
    return problems


def check_evaluation(plan: Plan, source: str, dataset: ResolvedDataset | None) -> list[Problem]:
    """Size buckets that overlap or leave gaps, and gates that read an unknown bucket or class."""
    from flows.engine.plan.buckets import bucket_problems, reference_problems

    problems = bucket_problems(plan.evaluation, source=source)
    names = dataset.names if dataset is not None else None
    for name, node in plan.nodes.items():
        if not isinstance(node, GateNode):
            continue
        for i, cond in enumerate(node.conditions):
            if isinstance(cond, MetricCheck) and cond.images == "clean":
                problems += clean_problems(plan, source, f"nodes.{name}.conditions[{i}].images")
            if isinstance(cond, MetricCheck):
                problems += reference_problems(
                    metric=cond.metric,
                    bucket=cond.bucket,
                    class_ref=cond.class_,
                    settings=plan.evaluation,
                    names=names,
                    source=source,
                    where=f"nodes.{name}.conditions[{i}]",
                )
    return problems


def clean_problems(plan: Plan, source: str, where: str) -> list[Problem]:
    """A gate on ``@clean`` figures needs the evaluation (which computes them) and the leakage check."""
    needed = {"evaluation": plan.evaluation.enabled, "leakage": plan.leakage.enabled}
    off = [what for what, on in needed.items() if not on]
    if not off:
        return []
    return [
        Problem(
            source,
            where,
            f"images: clean needs {' and '.join(off)} enabled (the @clean figures are the evaluation's "
            f"figures without the validation images the leakage check finds in train)",
        )
    ]


def profile_data(plan: Plan, dataset: ResolvedDataset, plan_dir: Path, force: dict[str, Any]) -> DataProfile:
    """The dataset's profile at the plan's image size, with each phase's largest stride for the P5 check."""
    from flows.engine.data.dataset import dataset_images
    from flows.engine.data.profile import PhaseShape, profile_dataset
    from fod_models import max_stride, resolve_model

    shapes = []
    for name, node in plan.nodes.items():
        if isinstance(node, TrainNode) and (model := inherited(plan, name, "model")) is not None:
            imgsz = node_args(plan, name, force).get("imgsz", ultralytics_default("imgsz"))
            shapes.append(PhaseShape(name, int(imgsz), max_stride(resolve_model(model, base_dir=plan_dir))))
    imgsz = int({**plan.defaults, **force}.get("imgsz", ultralytics_default("imgsz")))
    return profile_dataset(
        dataset_images(dataset), dataset.names, imgsz=imgsz, phases=shapes, leakage=plan.leakage
    )


def check_replay(path: Path, plan: Plan) -> tuple[ReplaySpec | None, list[Problem]]:
    """A replay SPEC must parse and cover every node that trains; it is loaded here, once."""
    try:
        spec = load_replay_spec(path)
    except ReplaySpecError as exc:
        return None, list(exc.problems)  # one line each, naming the SPEC file once
    missing = spec.missing_nodes(plan.train_nodes())
    problems = [
        Problem(
            str(path), f"nodes.{node}", "no recorded run for this node and no default (add one, or a default)"
        )
        for node in missing
    ]
    return (None if problems else spec), problems


@dataclass
class Checked:
    """Everything validation found: what loaded, and every problem (errors and warnings)."""

    plan: Plan | None = None
    force: dict[str, Any] = field(default_factory=dict)
    dataset: ResolvedDataset | None = None
    profile: DataProfile | None = None
    replay: ReplaySpec | None = None
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What validation changed to run the plan as meant (a run-wide GPU list spread over a search)."""


def collect_problems(request: OptimizeRequest) -> Checked:
    """Load the plan, the dataset and the replay SPEC once, and gather every problem with them."""
    dataset, data_problems = inspect_dataset(request.data)
    runs_problems = check_runs_dir(request.runs_dir)
    try:
        plan, force = load_plan(request.plan, request.profile)
    except PlanError as exc:
        return Checked(problems=[*exc.problems, *data_problems, *runs_problems])
    force = {**force, **request.overrides}
    problems = check_plan(plan, str(request.plan)) + node_device_problems(plan, str(request.plan))
    plan, force, notes = spread_devices(plan, force)
    if not errors_of(problems):
        from flows.engine.plan.ultra_args import check_plan_args

        problems += check_plan_args(plan, str(request.plan), force)
        problems += check_models(plan, str(request.plan), request.plan.parent, force)
        problems += check_batch_plans(plan, str(request.plan), force)
        problems += check_evaluation(plan, str(request.plan), dataset)
        problems += export_problems(plan, str(request.plan))
    problems += data_problems + runs_problems
    profile = None
    if dataset is not None and not errors_of(problems):
        from flows.engine.data.profile import warning_problems

        profile = profile_data(plan, dataset, request.plan.parent, force)
        problems += warning_problems(profile, plan=str(request.plan), data=str(request.data))
    replay = None
    if request.replay is not None:
        replay, replay_problems = check_replay(request.replay, plan)
        problems += replay_problems
    found = {"dataset": dataset, "profile": profile, "replay": replay}
    return Checked(plan=plan, force=force, problems=problems, notes=notes, **found)


def prepare(request: OptimizeRequest) -> RunConfig:
    """Validate a request completely, once: return the config, or raise ``PlanError`` with every problem.

    The plan, the dataset (images, labels, its one reading) and the replay SPEC are read here and
    carried in the config; nothing later reads them from the user's files again.
    """
    checked = collect_problems(request)
    errors = errors_of(checked.problems)
    if errors or checked.plan is None or checked.dataset is None:
        raise PlanError(errors)
    warnings = [p.line() for p in checked.problems if p.severity == "warning"]
    return RunConfig(
        request=request,
        plan=checked.plan,
        force=checked.force,
        plan_dir=request.plan.resolve().parent,
        dataset=checked.dataset,
        data_profile=checked.profile,
        replay=checked.replay,
        warnings=(*warnings, *checked.notes, *checked.dataset.notes),
    )
