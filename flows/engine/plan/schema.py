"""The plan file's schema: a declarative decision tree of training phases, searches, gates and terminals.

These pydantic v2 models are the one validated config object that travels through the
engine. Every model forbids unknown keys, so a typo is an error, not a silently ignored
setting. Cross-node rules (reachability, cycles, targets) live in ``validate.py``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from flows.engine.base import Strict, check_inside, check_path_text, parse_fraction
from flows.engine.plan.batch_settings import BatchPlanSettings
from flows.engine.plan.buckets import EvaluationSettings
from flows.engine.plan.export_settings import ExportSettings, TimedFormat
from flows.engine.plan.leakage import LeakageSettings
from flows.engine.plan.search_settings import (
    FullRun,
    NoPruner,
    PrunerSettings,
    StudySettings,
    TrialSchedule,
    TrialWorkers,
)

MetricName = Literal["precision", "recall", "map50", "map50_95"]
SpeedFigure = Literal["images_per_s"]
VramFigure = Literal["nvml_peak", "torch_peak", "both"]
UnknownPolicy = Literal["pass", "fail"]
OnError = Literal["stop", "continue"]
NODE_NAME = r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$"


class Baseline(Strict):
    """The model in service today; what 'keep the baseline' keeps."""

    name: str
    map50_95: float = Field(description="Its mAP50-95 as a fraction (0.9331 = 93.31 %).")
    weights: str | None = None

    @field_validator("map50_95", mode="before")
    @classmethod
    def _fraction(cls, value: Any) -> float:
        return parse_fraction(value, what="baseline.map50_95")

    @field_validator("weights")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return check_path_text(value, what="weights")


class Monitor(Strict):
    """A per-epoch check that raises a visible warning (and optionally stops the phase)."""

    name: str
    figure: Literal["precision", "recall", "map50", "map50_95", "nvml_used_gb", "torch_reserved_gb"]
    min: float | None = None
    max: float | None = None
    by_epoch: int | None = Field(default=None, ge=1, description="Only checked at this epoch and later.")
    action: Literal["warn", "stop"] = "warn"

    @model_validator(mode="after")
    def _one_bound(self) -> Monitor:
        if (self.min is None) == (self.max is None):
            raise ValueError(f"monitor {self.name!r}: give exactly one of min or max")
        for bound in (self.min, self.max):
            if bound is None:
                continue
            if self.figure in ("precision", "recall", "map50", "map50_95"):
                parse_fraction(bound, what=f"monitor {self.name!r} {self.figure}")
            elif bound < 0:
                raise ValueError(f"monitor {self.name!r}: {self.figure} bound must be ≥ 0 GB, got {bound:g}")
            elif bound > 2048:
                raise ValueError(f"monitor {self.name!r}: {bound:g} looks like MiB; VRAM is in GB (e.g. 18)")
        return self


class TrainNode(Strict):
    """One training phase: a model, its Ultralytics arguments and where to go next."""

    kind: Literal["train"]
    description: str = ""
    base: str | None = Field(default=None, description="Inherit model and args from this train node.")
    model: str | None = None
    pretrained: str | None = None
    effective_batch: int | None = Field(default=None, ge=1, le=1024)
    batch_plan: BatchPlanSettings | None = Field(
        default=None,
        description="Plan the batch on the device before the phase trains: the largest under a VRAM "
        "budget, accumulation keeping effective_batch (docs/VRAM_PLANNER.md); args.batch stays the "
        "batch used where nothing can be measured.",
    )
    grad_clip_norm: float | Literal["off"] | None = Field(
        default=None,
        description="Clip the gradient norm at this value; unset: Ultralytics' own 10.0; off: no clipping.",
    )
    args: dict[str, Any] = Field(default_factory=dict)
    monitors: list[Monitor] = Field(default_factory=list)
    on_error: OnError = Field(
        default="stop",
        description="An error in this training (not an outcome such as a failed gate): stop the walk "
        "(the run fails, a re-run resumes), or continue: count it as a failed result and walk on.",
    )
    next: str

    @field_validator("model", "pretrained")
    @classmethod
    def _path(cls, value: str | None, info: Any) -> str | None:
        return check_path_text(value, what=info.field_name)

    @field_validator("grad_clip_norm", mode="plain")
    @classmethod
    def _clip(cls, value: Any) -> float | str | None:
        return parse_clip_norm(value)


CLIP_OFF = ("off", "none", "false", "no")


def parse_clip_norm(value: Any) -> float | Literal["off"] | None:
    """A phase's ``grad_clip_norm``: a finite number > 0, ``off`` (YAML ``off``/``false`` too), or unset.

    Unset keeps Ultralytics' hard-coded 10.0; ``off`` disables clipping altogether (the trainer
    subclass then skips ``clip_grad_norm_``). One error message, whatever was written.
    """
    if value is None:
        return None
    if value is False or (isinstance(value, str) and value.strip().lower() in CLIP_OFF):
        return "off"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(
            f"grad_clip_norm must be a number > 0 or off (no clipping), got {type(value).__name__} {value!r}"
        )
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"grad_clip_norm must be a finite number > 0 (or off to disable clipping), got {value!r}"
        )
    return float(value)


class Design(Strict):
    """How a search chooses its trials: fixed points (``sampling.py``: grid, orthogonal array, seeded latin
    hypercube, random) enqueued into the Optuna study, or one of Optuna's seeded samplers (tpe, qmc, gp)."""

    method: Literal["grid", "orthogonal", "latin", "random", "tpe", "qmc", "gp"]
    max_trials: int = Field(ge=1, le=1000)
    seed: int = 0
    n_trials: int | None = Field(default=None, ge=1)


class SearchNode(Strict):
    """A hyper-parameter search: trials → pick the best → one full run of the best."""

    kind: Literal["search"]
    description: str = ""
    base: str = Field(description="The train node whose model and args the search tunes from.")
    space: dict[str, list[Any]]
    design: Design
    trial_epochs: int = Field(ge=1)
    select: MetricName = "map50_95"
    full_epochs: int | None = Field(
        default=None, ge=1, description="Epochs of the full run; default: base's."
    )
    trial_schedule: TrialSchedule = Field(
        default="short",
        description="short: each trial is its own trial_epochs-epoch run (the seed's); prefix: a trial is "
        "the first trial_epochs epochs of the full run's schedule (learning rate, warm-up, close_mosaic).",
    )
    full_run: FullRun = Field(
        default="restart",
        description="restart: train the best point anew; continue: the best prefix trial goes on from its "
        "checkpoint to full_epochs (docs/SEARCH.md: what each costs and saves).",
    )
    pruner: PrunerSettings = Field(default_factory=NoPruner, description="Optuna's pruner for the trials.")
    study: StudySettings = Field(
        default_factory=StudySettings, description="The Optuna study: storage, name, sampler settings."
    )
    workers: TrialWorkers | None = Field(
        default=None,
        description="Trials side by side on a Dask cluster, one per GPU (None: one after another).",
    )
    monitors: list[Monitor] = Field(default_factory=list)
    on_error: OnError = Field(
        default="stop", description="An error in a trial or the full run: stop the walk, or continue."
    )
    next: str

    @field_validator("space")
    @classmethod
    def _levels(cls, space: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not space:
            raise ValueError("space is empty: name at least one argument and its levels")
        for key, levels in space.items():
            if not levels:
                raise ValueError(f"space.{key} has no levels")
        return space


class MetricCheck(Strict):
    """A validation metric of the subject's best.pt must reach a minimum.

    Overall, the figure is Ultralytics' own (the final validation); with ``bucket`` and/or ``class`` it is
    the COCO evaluator's figure for objects of that size and/or class (docs/EVALUATION.md). ``require:
    lower_bound`` asks the figure's bootstrap interval (at ``evaluation.confidence``) to clear ``min``.
    ``images: clean`` reads the figure on the validation images without a near-duplicate in train
    (``map50_95@clean``, docs/LEAKAGE.md).
    """

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, allow_inf_nan=False, populate_by_name=True
    )

    check: Literal["metric"]
    metric: MetricName
    min: float
    bucket: str | None = Field(
        default=None, description="A size bucket of the plan's evaluation (e.g. lt16)."
    )
    class_: str | int | None = Field(default=None, alias="class", description="A class by name or id.")
    require: Literal["observed", "lower_bound"] = "observed"
    images: Literal["all", "clean"] = Field(
        default="all",
        description="all: every validation image; clean: only those without a near-duplicate in train.",
    )
    on_unknown: UnknownPolicy | None = None

    @field_validator("min", mode="before")
    @classmethod
    def _fraction(cls, value: Any) -> float:
        return parse_fraction(value, what="min")

    @model_validator(mode="after")
    def _clean_overall(self) -> MetricCheck:
        if self.images == "clean" and (self.bucket is not None or self.class_ is not None):
            raise ValueError(
                "images: clean reads the overall figures (Ultralytics'); drop bucket/class, or images"
            )
        return self


class SpeedupCheck(Strict):
    """The subject must train at least ``min`` faster (fraction: 0.25 = 25 %) than another phase."""

    check: Literal["speedup"]
    vs: str
    min: float
    figure: SpeedFigure = "images_per_s"
    on_unknown: UnknownPolicy | None = None

    @field_validator("min", mode="before")
    @classmethod
    def _fraction(cls, value: Any) -> float:
        return parse_fraction(value, what="speedup min", upper=10.0)


class VramCheck(Strict):
    """Peak GPU memory of the subject must stay at or below ``max_gb``."""

    check: Literal["vram"]
    max_gb: float = Field(gt=0)
    figure: VramFigure = "nvml_peak"
    on_unknown: UnknownPolicy | None = None

    @field_validator("max_gb")
    @classmethod
    def _gigabytes(cls, value: float) -> float:
        if value > 2048:
            raise ValueError(f"max_gb = {value:g} looks like MiB; VRAM limits are in GB (e.g. 20)")
        return value


class FlagCheck(Strict):
    """A yes/no property of the run: it did not diverge, or it completed every planned epoch."""

    check: Literal["no_divergence", "completed"]
    on_unknown: UnknownPolicy | None = None


class LatencyCheck(Strict):
    """The subject's best.pt, exported and timed after its training, must answer within ``max_ms``.

    Timed as the deploy node the gate passes to exports it (its imgsz, batch, device; docs/EXPORT.md),
    or with the export defaults when the gate passes elsewhere. ``stat``: the median or the 95th
    percentile over the timed calls; ``part``: the whole call (pre-processing, model, NMS) or the model.
    """

    check: Literal["latency"]
    max_ms: float = Field(gt=0, le=600_000)
    format: TimedFormat = "onnx"
    stat: Literal["median", "p95"] = "p95"
    part: Literal["total", "model"] = "total"
    on_unknown: UnknownPolicy | None = None


Condition = Annotated[
    MetricCheck | SpeedupCheck | VramCheck | LatencyCheck | FlagCheck, Field(discriminator="check")
]


EarlyPolicy = Literal["off", "safe", "aggressive"]


class EarlySettings(Strict):
    """A gate's ``early:`` settings: whether (and how boldly) a running phase is stopped once the gate
    can no longer pass (the record of such a stop is ``EarlyDecision``).

    ``safe`` and ``aggressive`` state the risk of stopping a phase that would have passed (1 % and 5 %;
    docs/EARLY_DECISIONS.md); ``off`` trains every epoch.
    """

    policy: EarlyPolicy = "off"
    speed_tolerance: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="A speed-up condition is lost early only when the measured speed-up is below its "
        "minimum by more than this (fraction: 0.05 = 5 points).",
    )
    speed_after_epochs: int = Field(
        default=2, ge=1, description="Throughput counts as stable after this many epochs (warm-up excluded)."
    )


class GateNode(Strict):
    """All conditions on the subject's result must pass; the gate names where each outcome goes."""

    kind: Literal["gate"]
    description: str = ""
    subject: str
    conditions: list[Condition] = Field(min_length=1)
    on_unknown: UnknownPolicy = Field(
        default="fail", description="What a figure that could not be measured (no GPU: no VRAM) counts as."
    )
    early: EarlySettings = Field(default_factory=EarlySettings)
    on_pass: str
    on_fail: str


class DeployNode(Strict):
    """Terminal: copy the phase's best weights into the model registry with a model card.

    With ``export``, the weights are first exported to each format, each export is validated against
    best.pt (a difference beyond the tolerance stops the deploy) and timed; the files go into the version.
    """

    kind: Literal["deploy"]
    description: str = ""
    phase: str
    export: ExportSettings | None = Field(
        default=None, description="Export, check and time the deployed model (None: best.pt only)."
    )


class KeepBaselineNode(Strict):
    """Terminal: keep the baseline in service and record which gates failed by how much."""

    kind: Literal["keep_baseline"]
    description: str = ""


Node = Annotated[
    TrainNode | SearchNode | GateNode | DeployNode | KeepBaselineNode, Field(discriminator="kind")
]
TERMINAL_KINDS = ("deploy", "keep_baseline")


class Profile(Strict):
    """Overrides for small runs (e.g. ``smoke``), applied without copying the tree.

    ``defaults`` go under every node's args, ``force`` over everything (trials too), and
    ``nodes`` is deep-merged into the node definitions.
    """

    description: str = ""
    defaults: dict[str, Any] = Field(default_factory=dict)
    force: dict[str, Any] = Field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = Field(default_factory=dict)
    registry: str | None = None

    @field_validator("registry")
    @classmethod
    def _inside(cls, value: str | None) -> str | None:
        return None if value is None else check_inside(value, what="registry")


class Plan(Strict):
    """A whole plan file, after any profile has been applied.

    ``name`` is the file's ``plan:`` key (run folders, artifact keys and the registry are named after it);
    the file, the plan hash and every dump keep the key ``plan``.
    """

    model_config = ConfigDict(validate_by_alias=True, validate_by_name=False, serialize_by_alias=True)

    name: str = Field(alias="plan", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
    description: str = ""
    task: Literal["detect"] = "detect"
    baseline: Baseline
    registry: str = Field(default="models", description="Model registry folder, relative to the runs folder.")
    defaults: dict[str, Any] = Field(default_factory=dict)
    start: str
    nodes: dict[Annotated[str, Field(pattern=NODE_NAME)], Node]
    evaluation: EvaluationSettings = Field(
        default_factory=EvaluationSettings,
        description="After each training, best.pt evaluated again by object size and class, with bootstrap "
        "intervals for every gated figure (docs/EVALUATION.md).",
    )
    leakage: LeakageSettings = Field(
        default_factory=LeakageSettings,
        description="Near-duplicate images across splits by perceptual hash, found before training; the "
        "evaluation's @clean figures leave out the validation images with one in train (docs/LEAKAGE.md).",
    )
    profiles: dict[str, Profile] = Field(default_factory=dict)

    @field_validator("registry")
    @classmethod
    def _inside(cls, value: str) -> str:
        return check_inside(value, what="registry")

    def train_nodes(self) -> dict[str, TrainNode | SearchNode]:
        """Nodes that train (phases and searches), by name."""
        return {k: v for k, v in self.nodes.items() if isinstance(v, TrainNode | SearchNode)}
