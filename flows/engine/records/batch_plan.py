"""The VRAM batch planner's records: every measurement, the fit, the accumulation and the choice
(``BatchPlan``), for the phase result, the report and --dry-run.

Made by ``flows/engine/decisions/batch_planner.py``; pure: pydantic only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flows.engine.plan.batch_settings import BatchPlanSettings, Frozen


class ProbeMeasurement(Frozen):
    """One measurement at one batch: a few real training steps in a fresh process, or why not."""

    batch: int = Field(ge=1)
    status: Literal["ok", "oom", "error"]
    torch_peak_gb: float | None = None
    """``torch.cuda.max_memory_reserved`` of the probe process: Ultralytics' GPU_mem, at its peak."""
    nvml_peak_gb: float | None = None
    """Peak device-wide used memory from NVML while the probe ran (what the VRAM gates read)."""
    nvml_before_gb: float | None = None
    """Device memory in use before the probe process touched CUDA: other processes on the card."""
    images_per_s: float | None = None
    """Training-step throughput of the probe (data prepared beforehand); indicative only."""
    seconds: float | None = None
    gpu_name: str | None = None
    total_gb: float | None = None
    message: str = ""


StepReason = Literal["first", "ladder", "fit", "bisect"]
"""Why a batch was measured: the smallest allowed, doubling, a line's prediction, or bisection."""


class ProbeStep(Frozen):
    """A measurement as the search used it."""

    batch: int
    why: StepReason
    measurement: ProbeMeasurement
    peak_gb: float | None
    """The figure compared with the target (None: out of memory, nothing to read)."""
    fits: bool


class LinearFit(Frozen):
    """A straight line of peak memory over batch size through measured points."""

    slope_gb: float
    """GB per image of batch."""
    intercept_gb: float
    batches: tuple[int, ...]
    """The measured batches the line goes through."""
    predicted_batch: int | None
    """Largest batch the line puts at or under the target; None when the line does not rise."""

    def at(self, batch: int) -> float:
        """Predicted peak at ``batch``."""
        return self.intercept_gb + self.slope_gb * batch


class Accumulation(Frozen):
    """What Ultralytics makes of a batch and ``nbs``: ``accumulate = max(round(nbs / batch), 1)``."""

    batch: int
    declared_effective_batch: int | None
    """The phase's ``effective_batch`` (None: none declared, Ultralytics' nbs 64 applies)."""
    nbs: int
    accumulate: int
    effective_batch: int
    exact: bool
    weight_decay_scale: float
    """Ultralytics scales weight decay by ``batch * accumulate / nbs``."""
    note: str = ""


class BatchPlan(Frozen):
    """The planner's record for one phase: every measurement, the fit, the choice, or why there was none."""

    status: Literal["planned", "fallback", "failed"]
    reason: str = ""
    """Fallback: why the fixed batch is used; failed: why the phase must not start; planned: empty."""
    where: str = ""
    """Key path of the settings in the plan (``nodes.phase1.batch_plan``), for messages."""
    settings: BatchPlanSettings
    fixed_batch: int
    """The phase's own ``args.batch``: used when nothing could be measured."""
    batch: int | None = None
    """The batch to train with; None when the plan failed."""
    largest_fitting: int | None = None
    """Largest measured batch whose peak stayed at or under the target."""
    smallest_over: int | None = None
    """Smallest measured batch over the target or out of memory (None: none was)."""
    accumulation: Accumulation | None = None
    chosen_peak_gb: float | None = None
    """Measured peak at the chosen batch, or at the largest fitting one when the choice is smaller."""
    steps: tuple[ProbeStep, ...] = ()
    fit: LinearFit | None = None
    gpu_name: str | None = None
    total_gb: float | None = None
    notes: tuple[str, ...] = ()

    @property
    def target_gb(self) -> float:
        """Budget minus margin."""
        return self.settings.target_gb

    @property
    def failed(self) -> bool:
        """True when the phase must not train (its smallest batch does not fit the budget)."""
        return self.status == "failed"

    def train_args(self) -> dict[str, int]:
        """The Ultralytics arguments this plan sets (``batch``); ``nbs`` stays the phase's effective batch."""
        return {} if self.batch is None else {"batch": self.batch}
