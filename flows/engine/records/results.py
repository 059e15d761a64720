"""Typed results that cross the boundary between trainers and the decision logic.

Every trainer (real Ultralytics in a child process, or the replay trainer) returns a
``PhaseResult``; every per-epoch progress report is an ``EpochEvent``. Gates, monitors,
reports and the journal read only these types, so a new trainer plugs in without
touching the decision logic.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from flows.engine.base import Frozen
from flows.engine.plan.batch_settings import BatchPlanSettings
from flows.engine.plan.buckets import EvaluationSettings
from flows.engine.plan.export_settings import ExportSettings
from flows.engine.plan.leakage import LeakageSettings
from flows.engine.plan.schema import EarlyPolicy, GateNode, Monitor
from flows.engine.plan.search_settings import NoPruner, PrunerSettings
from flows.engine.plan.ultra_defaults import ultralytics_default
from flows.engine.records.batch_plan import BatchPlan
from flows.engine.records.evaluation import Evaluation
from flows.engine.records.export import ExportReport
from flows.engine.records.profile import DataProfile

Role = Literal["phase", "trial", "full"]
"""What a training is: a train node's phase, one trial of a search, or a search's full run."""


class RunRef(Frozen):
    """Which training this is, spelled one way everywhere (journal keys, task names, logs, folders).

    A phase is its node's name; a search trains trials ``node/trial-NN`` and then the full run of the
    best point ``node/full``, which is the search's result.
    """

    node: str
    role: Role = "phase"
    trial: int | None = Field(default=None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _role_from_trial(cls, data: object) -> object:
        """A record that names a trial number is a trial (older records had no ``role``)."""
        if isinstance(data, dict) and data.get("trial") is not None and "role" not in data:
            return {**data, "role": "trial"}
        return data

    @model_validator(mode="after")
    def _trial_iff_role(self) -> RunRef:
        if (self.role == "trial") != (self.trial is not None):
            raise ValueError(f"role {self.role!r} with trial {self.trial!r}: only a trial has a number")
        return self

    @property
    def key(self) -> str:
        """``phase1``, ``phase3/trial-03`` or ``phase3/full``: journal key and folder under phases/."""
        if self.role == "trial":
            return f"{self.node}/trial-{self.trial:02d}"
        return f"{self.node}/full" if self.role == "full" else self.node

    @property
    def label(self) -> str:
        """``phase1``, ``phase3 trial 3`` or ``phase3 full run``: how logs and reports name it."""
        if self.role == "trial":
            return f"{self.node} trial {self.trial}"
        return f"{self.node} full run" if self.role == "full" else self.node

    @property
    def task_run_name(self) -> str:
        """The Prefect task run's name: ``train-phase1``, ``trial-phase3-03``, ``full-phase3``."""
        if self.role == "trial":
            return f"trial-{self.node}-{self.trial:02d}"
        return f"full-{self.node}" if self.role == "full" else f"train-{self.node}"

    def ref(self) -> RunRef:
        """Just the identity (for records that name a training without carrying it)."""
        return RunRef(node=self.node, role=self.role, trial=self.trial)


class TrialHook(Frozen):
    """What a training needs to report its epochs into its trial and to learn when to stop.

    Carried by a trial's ``TrainSpec``, so the epoch callback of whatever process trains the trial can
    build a ``TrialReporter`` (``decisions/study.py``). ``storage`` is the reference as the plan gave it
    (``env:NAME`` stays unresolved, so no password is copied into specs and journals).
    """

    storage: str
    study_name: str
    number: int = Field(ge=0)
    metric: str = "map50_95"
    trial_epochs: int = Field(ge=1)
    prefix: bool = False
    """A prefix trial runs on the full run's schedule and stops at ``trial_epochs``."""
    pruner: PrunerSettings = Field(default_factory=NoPruner)


TrialStateName = Literal["waiting", "running", "complete", "pruned", "failed"]


class TrialRecord(Frozen):
    """One trial as the report and the walk see it."""

    number: int
    point: dict[str, Any]
    state: TrialStateName
    value: float | None = None
    """The select metric of the trial's best.pt (a pruned trial's at the epoch it stopped)."""
    epochs: int = 0
    """Epochs trained (for an unfinished trial: epochs reported so far)."""
    pruned_at: int | None = None
    curve: tuple[tuple[int, float], ...] = ()
    """(epoch, value reported to the pruner) for every reported epoch."""
    reason: str | None = None

    @property
    def label(self) -> str:
        """``complete``, ``pruned at epoch 4``, ``failed (…)``, ``running (epoch 3)`` or ``waiting``."""
        if self.state == "pruned":
            return f"pruned at epoch {self.pruned_at or self.epochs}"
        if self.state == "failed":
            return f"failed ({self.reason})" if self.reason else "failed"
        if self.state == "running":
            return f"running (epoch {self.epochs})"
        return self.state


class EpochRecord(Frozen):
    """One row of a training record (Ultralytics' results.csv), normalised.

    ``epoch`` is 1-based. Metrics are fractions (0..1); missing or non-finite values are None.
    """

    epoch: int = Field(ge=1)
    precision: float | None = None
    recall: float | None = None
    map50: float | None = None
    map50_95: float | None = None
    losses: dict[str, float | None] = Field(default_factory=dict)
    lr: dict[str, float | None] = Field(default_factory=dict)
    time_s: float | None = None
    """Cumulative wall time at the end of this epoch, when the record has it."""


class EpochEvent(RunRef):
    """Progress of one epoch, streamed from a trainer while it runs.

    This is the single per-epoch event of the engine: monitors, progress artifacts, early gate
    decisions and pruning all subscribe to it.
    """

    epochs_planned: int
    record: EpochRecord
    images_per_s: float | None = None
    torch_reserved_gb: float | None = None
    nvml_used_gb: float | None = None
    nan_recoveries: int = 0


class ValMetrics(Frozen):
    """Final validation of best.pt. Never Ultralytics' ``fitness``."""

    precision: float | None = None
    recall: float | None = None
    map50: float | None = None
    map50_95: float | None = None

    def get(self, name: str) -> float | None:
        """Return a metric by its plan name, or None when it is unknown."""
        value = getattr(self, name)
        return value if value is not None and math.isfinite(value) else None


class OomEvent(Frozen):
    """One out-of-memory error during a training, and what was done about it.

    Ultralytics 8.4 halves the batch and restarts the first epoch on an out-of-memory error
    (at most 3 times); accumulation is recomputed from ``nbs``, so the effective batch is kept.
    ``retry_batch`` is None when the error could not be resolved and ended the run.
    """

    epoch: int = Field(ge=1)
    batch: int
    """The batch at which memory ran out."""
    retry_batch: int | None = None
    """The halved batch training went on with; None: not resolved, the phase failed."""
    accumulate: int | None = None
    """Accumulation steps after the halving (effective batch = retry_batch × accumulate)."""
    message: str = ""


Status = Literal["completed", "stopped", "diverged", "out_of_memory", "failed"]
"""How a training ended. All are *outcomes* the gates judge: ``stopped`` early (a monitor, an early gate
decision, pruning, or a record that ends short), ``diverged`` (NaN recoveries exhausted),
``out_of_memory`` (batch halving could not resolve it). ``failed`` is an error that a node with
``on_error: continue`` turned into an outcome; by default an error stops the walk instead
(``TrainingError``)."""


class PhaseResult(RunRef):
    """Everything the decision logic and the report need to know about one training run."""

    status: Status = "completed"
    reason: str | None = None
    metrics: ValMetrics = ValMetrics()
    history: tuple[EpochRecord, ...] = ()
    epochs_planned: int = 0
    epochs_done: int = 0
    nan_recoveries: int = 0
    """Reloads of the last good checkpoint after a NaN/Inf loss or fitness (Ultralytics allows 3)."""
    nan_epochs: int = 0
    """Epochs that ended with a NaN/Inf loss or fitness, recovered or not (the first epoch cannot be)."""
    diverged: bool = False
    oom_events: tuple[OomEvent, ...] = ()
    """Every out-of-memory error: the batch it happened at and the halved batch, if any."""
    batch_requested: int | None = None
    batch_used: int | None = None
    """Batch after any automatic out-of-memory reduction."""
    accumulate: int | None = None
    effective_batch: int | None = None
    nbs: int | None = None
    images_per_s: float | None = None
    """Training throughput: median over epochs after the first."""
    inference_ms: float | None = None
    torch_peak_reserved_gb: float | None = None
    nvml_peak_used_gb: float | None = None
    gpu_name: str | None = None
    wall_s: float | None = None
    started_at: float | None = None
    """Wall-clock start and end of the training (Unix seconds), and the slot it held (``gpu-1``)."""
    finished_at: float | None = None
    slot: str | None = None
    weights: Path | None = None
    results_csv: Path | None = None
    args: dict[str, object] = Field(default_factory=dict)
    """The training arguments actually passed to Ultralytics."""
    batch_plan: BatchPlan | None = None
    """How the batch was planned on the device (measurements, fit, choice), or why the fixed one was used."""
    early_decision: EarlyDecision | None = None
    """Why the training was stopped before its planned epochs: its gate could no longer pass."""
    evaluation: Evaluation | None = None
    """best.pt evaluated again: figures by object size and class, bootstrap intervals of the gated figures."""
    export: ExportReport | None = None
    """best.pt exported, checked against itself and timed after training (a gate's latency condition)."""

    @property
    def completed(self) -> bool:
        """True when every planned epoch ran (early stop by patience counts as not completed)."""
        return self.epochs_planned > 0 and self.epochs_done >= self.epochs_planned


class TrainSpec(RunRef):
    """One fully resolved training run, handed to a trainer: what to train and what may stop it.

    ``args`` are Ultralytics training arguments already validated and merged
    (defaults → profile → node → trial); ``model``, ``data``, ``project`` and ``name``
    are not in ``args``: the trainer sets them from the fields below.

    Two words, used one way throughout: a training **resumes** from its own ``last.pt`` (an interrupted
    or killed one, with its own arguments: ``resume_checkpoint``); a search's full run **continues**
    from the best prefix trial's checkpoint (``weights/continue.pt``, ``full_run: continue``:
    ``continue_checkpoint``), which the trainer copies into the full run's folder and then resumes.
    """

    plan: str
    model: Path
    """Model YAML (scale in the file name, e.g. ``yolo11m-p2.yaml``) or a local checkpoint."""
    pretrained: Path | None = None
    """Local weights whose matching layers are transferred into ``model``."""
    data: Path
    args: dict[str, object] = Field(default_factory=dict)
    effective_batch: int | None = None
    """Turned into Ultralytics' ``nbs`` so that accumulation gives this effective batch."""
    grad_clip_norm: float | Literal["off"] | None = None
    """Gradient-norm clip of this run: None keeps Ultralytics' 10.0, ``"off"`` disables clipping."""
    run_dir: Path
    """Folder the trainer owns for this run (Ultralytics' project/name)."""
    resume_checkpoint: Path | None = None
    """This training's own last.pt to resume from (None: it starts from epoch 1)."""
    monitors: tuple[Monitor, ...] = ()
    """Per-epoch checks of the node (a search's apply to its trials and full run); ``stop`` ones end it."""
    on_error: Literal["stop", "continue"] = "stop"
    """What an error in this training does: stop the walk (default), or count as a ``failed`` outcome."""
    batch_plan: BatchPlanSettings | None = None
    """Plan the batch on the device before training (``args.batch`` is the fallback without a GPU)."""
    early: EarlyRule | None = None
    """Stop the training once the gate that will judge it can no longer pass (phases and full runs)."""
    evaluation: EvaluationSettings | None = None
    """After training, evaluate best.pt again by object size and class, with intervals (None: do not)."""
    leakage: LeakageSettings | None = None
    """The near-duplicate rule: the evaluation also gives the figures on the validation images without a
    near-duplicate in train (``@clean``; None: it does not)."""
    trial_hook: TrialHook | None = None
    """A search trial: report every epoch into its Optuna trial; stop when pruned (or at trial_epochs)."""
    continue_checkpoint: Path | None = None
    """A search's full run that continues the best prefix trial: that trial's ``weights/continue.pt``."""
    export: ExportSettings | None = None
    """After training, export best.pt, check it and time it (a gate's latency condition reads it)."""

    @property
    def epochs(self) -> int:
        """Epochs planned for this run."""
        return int(self.args.get("epochs", ultralytics_default("epochs")))  # type: ignore[call-overload]


EarlyCheck = Literal["metric", "speedup", "vram"]


class EarlyDecision(Frozen):
    """A condition of the judging gate found lost while its subject trains: why the phase was stopped."""

    gate: str | None = None
    subject: str
    policy: EarlyPolicy
    check: EarlyCheck
    condition: str
    """The condition as the gate table names it (``map50_95``, ``speed-up vs phase1 (images_per_s)``...)."""
    epoch: int
    epochs_planned: int
    observed: float
    """The figure so far: best so far (metric), speed-up so far, peak so far (VRAM)."""
    bound: float
    """The most the figure can still reach (metric), or the least it will end at (VRAM: the peak so far;
    speed-up: observed plus the plan's tolerance)."""
    threshold: float
    risk: float | None = None
    """The bound's stated risk of being wrong (metric conditions); None: settled by its nature."""
    epochs_saved: int
    seconds_per_epoch: float | None = None
    seconds_saved: float | None = None
    gpu_hours_saved: float | None = None
    reason: str


class EarlyRule(Frozen):
    """What a training needs to be stopped early: the gate that will judge it, and what that gate compares
    with (images/s of the reference phases of its speed-up conditions, finished before it starts)."""

    gate_name: str
    gate: GateNode
    reference_images_per_s: dict[str, float | None] = Field(default_factory=dict)
    close_mosaic: int = Field(default_factory=lambda: ultralytics_default("close_mosaic"))
    """The run's Ultralytics ``close_mosaic``: the last epochs train without mosaic (and often lift)."""


Verdict = Literal["pass", "fail", "unknown"]


class ConditionRow(Frozen):
    """One line of a gate table."""

    condition: str
    observed: str
    threshold: str
    verdict: Verdict
    passed: bool
    """Verdict after the gate's policy for unknown figures."""
    note: str = ""
    marginal: bool = False
    """The threshold lies inside the figure's confidence interval: another validation set could flip it."""


class GateResult(Frozen):
    """A gate's evaluation: its table and where the tree goes next."""

    node: str
    subject: str
    rows: tuple[ConditionRow, ...]
    outcome: Literal["pass", "fail"]
    next: str


class Decision(Frozen):
    """The outcome of one walk of the tree; what decision.json holds."""

    model_config = ConfigDict(validate_by_alias=True, validate_by_name=True, serialize_by_alias=True)

    plan: str
    run_id: str
    profile: str | None = None
    terminal: str
    terminal_kind: Literal["deploy", "keep_baseline"]
    path: tuple[str, ...]
    gates: tuple[GateResult, ...] = ()
    phases: tuple[PhaseResult, ...] = ()
    trials: tuple[PhaseResult, ...] = ()
    search_trials: tuple[TrialRecord, ...] = ()
    """Every search trial as its Optuna study has it: point, state (complete, pruned at epoch k), value."""
    warnings_and_notes: tuple[str, ...] = Field(default=(), alias="warnings")
    """The run's validation warnings, then the walk's notes (the search's design, its best trial, what
    pruning saved): the report's "Warnings and notes". Key ``warnings`` in decision.json."""
    deployed_model: Path | None = None
    deployed_from: str | None = None
    baseline_name: str | None = None
    baseline_map50_95: float | None = None
    data_fingerprint: str | None = None
    data_profile: DataProfile | None = None
    """The dataset's profile (images, instances, box sizes, leakage) the run was validated with."""
    deployed_export: ExportReport | None = None
    """The deployed model's exports: files, hashes, parity with best.pt, latency (None: best.pt only)."""
