"""The VRAM batch planner's plan-side settings: what a user writes under a phase as ``batch_plan:``
(``BatchPlanSettings``), and the checks of a plan that uses them (``plan_problems``,
``budget_mismatches``), found before anything runs.

The planner itself (the search over a memory probe, the accumulation arithmetic) is
``flows/engine/decisions/batch_planner.py``; its records (``BatchPlan``…) are
``flows/engine/records/batch_plan.py``. Pure: pydantic only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from flows.engine.plan.problems import Problem

PlanFigure = Literal["nvml_peak", "torch_peak", "both"]
"""Which peak the budget applies to; the same names as a gate's VRAM ``figure``."""
MIB_LOOKING_GB = 2048
MONITOR_FIGURES: dict[str, PlanFigure] = {"nvml_used_gb": "nvml_peak", "torch_reserved_gb": "torch_peak"}
"""A per-epoch monitor's figure, in the planner's (and the gates') names."""
MEMORY_ARGS = frozenset(
    {"batch", "imgsz", "multi_scale", "amp", "compile", "freeze", "optimizer", "mosaic", "mixup", "cutmix"}
)
"""Ultralytics arguments that change a training's GPU memory: sizes and precision, the optimizer's state
(AdamW keeps two buffers per weight, SGD one), and the augmentations that multiply boxes per image (the
loss's assigner allocates per box and anchor)."""


class Frozen(BaseModel):
    """Immutable, strict: these records cross process boundaries and come from users."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class BatchPlanSettings(Frozen):
    """What a user writes under a train node as ``batch_plan:`` to have its batch planned on the device.

    The node's ``args.batch`` stays: it is the batch used where nothing can be measured (no GPU).
    """

    budget_gb: float = Field(gt=0, description="Peak VRAM the phase may use, in GB (GiB, as measured).")
    margin_gb: float = Field(
        default=1.0, ge=0, description="Kept free below the budget: the probe's few steps are not hours."
    )
    figure: PlanFigure = Field(
        default="both",
        description="Peak compared with the budget: NVML device memory, torch reserved, or the larger.",
    )
    min_batch: int = Field(
        default=2, ge=1, le=1024, description="Smallest batch allowed (BatchNorm needs 2)."
    )
    max_batch: int = Field(default=64, ge=1, le=1024, description="Largest batch tried.")
    max_probes: int = Field(default=8, ge=2, le=32, description="Measurements at most (one process each).")
    iterations: int = Field(default=3, ge=2, le=100, description="Training steps per measurement.")
    effective_tolerance: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Largest relative change of the effective batch accepted for a larger batch "
        "(0.1: batch 10 x 2 = 20 for a declared 18 is refused, batch 9 x 2 = 18 is taken).",
    )
    timeout_s: float = Field(default=600.0, gt=0, le=7200, description="Seconds one measurement may take.")

    @field_validator("budget_gb", "margin_gb")
    @classmethod
    def _gigabytes(cls, value: float, info: object) -> float:
        if value > MIB_LOOKING_GB:
            name = getattr(info, "field_name", "budget_gb")
            raise ValueError(f"{name} = {value:g} looks like MiB; VRAM is in GB (e.g. 18)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> BatchPlanSettings:
        if self.margin_gb >= self.budget_gb:
            raise ValueError(
                f"margin_gb ({self.margin_gb:g}) must be below budget_gb ({self.budget_gb:g}): "
                "the planner aims at budget_gb - margin_gb"
            )
        if self.min_batch > self.max_batch:
            raise ValueError(f"min_batch ({self.min_batch}) is above max_batch ({self.max_batch})")
        return self

    @property
    def target_gb(self) -> float:
        """The peak a batch may reach: budget minus margin."""
        return self.budget_gb - self.margin_gb


# ---------------------------------------------------------------- plan validation helpers


class VramBound(Frozen):
    """A VRAM bound elsewhere in the plan that reads the same phase: a monitor or a gate's condition."""

    where: str
    """Key path, e.g. ``nodes.phase1.monitors[0]`` or ``nodes.gate2.conditions[2]``."""
    figure: PlanFigure
    """In the planner's names; a monitor's ``nvml_used_gb`` is ``nvml_peak`` (see ``MONITOR_FIGURES``)."""
    max_gb: float


def covers(planned: PlanFigure, read: PlanFigure) -> bool:
    """True when a budget on ``planned`` also bounds what a check on ``read`` sees."""
    return planned in ("both", read)


def budget_mismatches(
    settings: BatchPlanSettings, bounds: Iterable[VramBound], where: str
) -> list[tuple[str, str]]:
    """(key path, message) for each VRAM monitor or gate that does not read the planner's budget.

    The planner picks the batch against ``budget_gb`` on ``figure``; a monitor or gate of the same
    phase that reads another number or another figure would judge a batch by a rule it was not
    chosen for (a gate below the budget fails a batch the planner called safe).
    """
    problems = []
    for bound in bounds:
        if not math.isclose(bound.max_gb, settings.budget_gb, rel_tol=0, abs_tol=1e-9):
            problems.append(
                (
                    bound.where,
                    f"VRAM bound {bound.max_gb:g} GB differs from {where}.budget_gb {settings.budget_gb:g} "
                    "GB, the budget the batch is planned for; use one number for both",
                )
            )
        if not covers(settings.figure, bound.figure):
            problems.append(
                (
                    bound.where,
                    f"reads {bound.figure} but {where}.figure is {settings.figure}: the planner does not "
                    f"measure what this check reads; set {where}.figure to {bound.figure} or both",
                )
            )
    return problems


def plan_problems(
    settings: BatchPlanSettings,
    *,
    source: str,
    where: str,
    fixed_batch: object,
    effective_batch: int | None,
    space: tuple[str, Iterable[str]] | None = None,
    forced: tuple[str, Iterable[str]] | None = None,
) -> list[Problem]:
    """Every reason a planned phase cannot run as written, found before anything runs.

    ``where`` is the settings' key path (``nodes.phase1.batch_plan``); ``fixed_batch`` the node's
    merged ``args.batch``; ``space`` a search's (key path, space keys) when a search tunes from this
    node; ``forced`` the profile's (key path, forced keys).
    """
    node = where.rsplit(".", 1)[0]
    problems: list[Problem] = []
    if effective_batch is None:
        problems.append(
            Problem(
                source, f"{node}.effective_batch", f"{where} needs the effective batch the batch must keep"
            )
        )
    elif settings.min_batch > effective_batch:
        problems.append(
            Problem(
                source,
                f"{where}.min_batch",
                f"{settings.min_batch} is above effective_batch {effective_batch}; lower min_batch",
            )
        )
    if isinstance(fixed_batch, bool) or not isinstance(fixed_batch, int) or fixed_batch < 1:
        problems.append(
            Problem(
                source,
                f"{node}.args.batch",
                f"a planned phase still needs a fixed batch ≥ 1 (used without a GPU), got {fixed_batch!r}; "
                "AutoBatch (-1 or a fraction) and batch_plan exclude each other",
            )
        )
    if space is not None:
        space_where, keys = space
        for key in sorted(set(keys) & MEMORY_ARGS):
            problems.append(
                Problem(
                    source,
                    f"{space_where}.{key}",
                    f"changes each trial's memory, but {where} plans one batch for all trials; "
                    f"remove {key} from the space or batch_plan from the base",
                )
            )
    if forced is not None and "batch" in set(forced[1]):
        problems.append(
            Problem(
                source,
                f"{forced[0]}.batch",
                f"the profile forces the batch, so {where} is skipped for this profile",
                severity="warning",
            )
        )
    return problems
