"""The VRAM batch planner: the largest batch whose measured peak stays under a budget, same effective batch.

Why: the plan picks batches by hand ("6 fits", "8-10 should fit"). Guessing low wastes the card;
guessing high costs an out-of-memory restart hours into a run. Ultralytics' AutoBatch aims at a
fraction of the card, knows nothing of the plan's budget (18 GB in Phase 1, 20 GB in Phase 2) and
ignores accumulation, so the effective batch, and with it the tuned learning rate, moves silently.

This module is the pure part: settings a user writes under a phase (``BatchPlanSettings``), the
search over a ``MemoryProbe`` (the hardware boundary: ``tasks/trainers/memory_probe.py`` on CUDA, a
small fake in tests), the accumulation arithmetic Ultralytics applies, and frozen records of every
measurement, the fit and the choice (``BatchPlan``) for the phase result, the report and --dry-run.
No torch, no Prefect, no GPU. Of the engine it imports only ``plan/problems.py`` (standard library
only), so ``schema.py`` and ``records/results.py`` can import it without a cycle.

The search, in short: measure the smallest allowed batch (if it does not fit, stop: a clear failure
before training); then pick each next candidate from a straight line through measured points
(interpolating between the largest batch that fits and the smallest that does not, or extrapolating
from the two largest that fit), with doubling and bisection as guards against step-shaped memory
curves; every candidate is really measured, so the largest fitting batch is always a measured one,
never a prediction. Memory is assumed not to decrease with the batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from flows.engine.plan.problems import Problem

PlanFigure = Literal["nvml_peak", "torch_peak", "both"]
"""Which peak the budget applies to; the same names as a gate's VRAM ``figure``."""
ULTRALYTICS_NBS = 64
"""Ultralytics' default nominal batch size, used when a phase declares no effective batch."""
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


class MemoryProbe(Protocol):
    """The hardware boundary: measures peak memory of real training steps at a batch size."""

    def unavailable(self) -> str | None:
        """Why nothing can be measured here (no CUDA, a CPU device, no NVML for an NVML budget), or None."""
        ...

    def measure(self, batch: int) -> ProbeMeasurement:
        """Train a few steps at ``batch`` and report the peaks; an out-of-memory error is status ``oom``."""
        ...


StepReason = Literal["first", "ladder", "fit", "bisect"]
"""Why a batch was measured: the smallest allowed, doubling, a line's prediction, or bisection."""
FIRST: StepReason = "first"


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


class PlanningFailed(Exception):
    """Raised by ``require_batch`` when the budget is below the smallest batch: no training may start."""

    def __init__(self, plan: BatchPlan) -> None:
        super().__init__(plan.reason)
        self.plan = plan


# ---------------------------------------------------------------- accumulation


def accumulation_for(batch: int, effective_batch: int | None) -> Accumulation:
    """Accumulation steps and the effective batch Ultralytics trains with, given ``nbs = effective_batch``.

    Exact when ``batch`` divides the effective batch; else Ultralytics' ``round`` gives the nearest
    product it can reach, and the note says so (and by how much the weight decay is scaled).
    """
    if batch < 1:
        raise ValueError(f"batch must be ≥ 1, got {batch}")
    nbs = effective_batch if effective_batch is not None else ULTRALYTICS_NBS
    accumulate = max(round(nbs / batch), 1)
    product = batch * accumulate
    exact = product == nbs
    note = ""
    if effective_batch is None:
        note = f"no effective_batch declared: Ultralytics' nbs {ULTRALYTICS_NBS} gives {batch} × {accumulate}"
    elif not exact:
        note = (
            f"batch {batch} cannot keep the effective batch {nbs} exactly: Ultralytics accumulates "
            f"{accumulate} step(s), effective {product} ({(product - nbs) / nbs:+.1%}); weight decay × "
            f"{product / nbs:.3f}"
        )
    return Accumulation(
        batch=batch,
        declared_effective_batch=effective_batch,
        nbs=nbs,
        accumulate=accumulate,
        effective_batch=product,
        exact=exact,
        weight_decay_scale=product / nbs,
        note=note,
    )


def deviation(batch: int, effective_batch: int) -> float:
    """Relative change of the effective batch at ``batch`` (0 where the batch divides it)."""
    return abs(accumulation_for(batch, effective_batch).effective_batch - effective_batch) / effective_batch


def choose_batch(
    largest_fitting: int, min_batch: int, effective_batch: int | None, tolerance: float
) -> tuple[int, str]:
    """The largest batch ≤ ``largest_fitting`` whose effective batch stays within ``tolerance``.

    Memory does not decrease with the batch, so every batch below a measured fitting one fits too.
    Returns the batch and a note ('' when it is the largest fitting one).
    """
    if effective_batch is None:
        return largest_fitting, ""
    for batch in range(largest_fitting, min_batch - 1, -1):
        if deviation(batch, effective_batch) <= tolerance + 1e-12:
            if batch == largest_fitting:
                return batch, ""
            wide = accumulation_for(largest_fitting, effective_batch)
            return batch, (
                f"batch {batch} instead of the largest fitting {largest_fitting}: "
                f"{largest_fitting} × {wide.accumulate} = {wide.effective_batch} would move the effective "
                f"batch {effective_batch} by {deviation(largest_fitting, effective_batch):.0%} "
                f"(effective_tolerance {tolerance:g})"
            )
    return largest_fitting, (
        f"no batch from {min_batch} to {largest_fitting} keeps the effective batch {effective_batch} within "
        f"{tolerance:.0%}; the largest fitting batch is used with the nearest achievable effective batch"
    )


# ---------------------------------------------------------------- measurements and fit


def peak_of(measurement: ProbeMeasurement, figure: PlanFigure) -> float | None:
    """The figure a budget reads from a measurement; ``both``: the larger of the known ones."""
    if measurement.status != "ok":
        return None
    if figure == "nvml_peak":
        return measurement.nvml_peak_gb
    if figure == "torch_peak":
        return measurement.torch_peak_gb
    known = [v for v in (measurement.nvml_peak_gb, measurement.torch_peak_gb) if v is not None]
    return max(known) if known else None


def fit_line(points: Sequence[tuple[int, float]], target_gb: float) -> LinearFit:
    """Least-squares line through ``(batch, peak_gb)`` points (two or more distinct batches)."""
    xs = [float(b) for b, _ in points]
    ys = [float(p) for _, p in points]
    if len(set(xs)) < 2:
        raise ValueError("a line needs measurements at two different batches")
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = mean_y - slope * mean_x
    predicted = math.floor((target_gb - intercept) / slope + 1e-9) if slope > 0 else None
    return LinearFit(
        slope_gb=slope,
        intercept_gb=intercept,
        batches=tuple(int(b) for b, _ in points),
        predicted_batch=predicted,
    )


class Search:
    """State of one search: what was measured, the bracket [largest fitting, smallest over]."""

    def __init__(self, settings: BatchPlanSettings, upper: int) -> None:
        self.settings = settings
        self.upper = upper
        self.steps: list[ProbeStep] = []
        self.fit: LinearFit | None = None

    @property
    def lo(self) -> ProbeStep | None:
        """The largest measured batch that fits."""
        fitting = [s for s in self.steps if s.fits]
        return max(fitting, key=lambda s: s.batch) if fitting else None

    @property
    def hi(self) -> ProbeStep | None:
        """The smallest measured batch that does not fit (over the target or out of memory)."""
        over = [s for s in self.steps if not s.fits]
        return min(over, key=lambda s: s.batch) if over else None

    def record(self, batch: int, why: StepReason, measurement: ProbeMeasurement) -> ProbeStep:
        """Keep one measurement and whether it fits."""
        peak = peak_of(measurement, self.settings.figure)
        fits = measurement.status == "ok" and peak is not None and peak <= self.settings.target_gb + 1e-9
        step = ProbeStep(batch=batch, why=why, measurement=measurement, peak_gb=peak, fits=fits)
        self.steps.append(step)
        return step

    def done(self) -> bool:
        """The bracket is closed, the whole range fits, or the probes are spent."""
        lo, hi = self.lo, self.hi
        if lo is None or len(self.steps) >= self.settings.max_probes:
            return True
        return lo.batch >= self.upper or (hi is not None and hi.batch - lo.batch <= 1)

    def next_candidate(self) -> tuple[int, StepReason]:
        """The next batch to measure and why: a line through measured points, doubling or bisection."""
        lo, hi = self.lo, self.hi
        assert lo is not None
        ceiling = hi.batch - 1 if hi is not None else self.upper
        points = self.line_points(lo, hi)
        guess: int | None = None
        if points is not None and not self.stalled():
            self.fit = fit_line(points, self.settings.target_gb)
            guess = self.fit.predicted_batch if self.fit.predicted_batch is not None else ceiling
        if guess is not None:
            return min(max(guess, lo.batch + 1), ceiling), "fit"
        if hi is None:
            return min(max(2 * lo.batch, lo.batch + 1), ceiling), "ladder"
        return (lo.batch + hi.batch) // 2, "bisect"

    def line_points(self, lo: ProbeStep, hi: ProbeStep | None) -> list[tuple[int, float]] | None:
        """Interpolate between the bracket's ends when both were measured; else the two largest fits."""
        if hi is not None and hi.peak_gb is not None and lo.peak_gb is not None:
            return [(lo.batch, lo.peak_gb), (hi.batch, hi.peak_gb)]
        fitting = sorted((s.batch, s.peak_gb) for s in self.steps if s.fits and s.peak_gb is not None)
        if len(fitting) < 2 or fitting[-1][1] <= fitting[-2][1]:
            return None  # no rise seen yet (a flat step of the curve): double instead
        return fitting[-2:]

    def stalled(self) -> bool:
        """The last two line guesses landed on the same side: the curve is not straight here, bisect."""
        fits = [s for s in self.steps if s.why == "fit"]
        return len(fits) >= 2 and fits[-1].fits == fits[-2].fits and self.steps[-1].why == "fit"


# ---------------------------------------------------------------- the planner


def plan_batch(
    settings: BatchPlanSettings,
    probe: MemoryProbe,
    *,
    fixed_batch: int,
    effective_batch: int | None,
    where: str = "batch_plan",
) -> BatchPlan:
    """Plan a phase's batch on the device it will train on; never raises for what the device answers.

    ``fixed_batch`` is the phase's ``args.batch`` (used when nothing can be measured);
    ``effective_batch`` the phase's declared one (it caps the batch: a larger batch would need
    fewer than one accumulation step). Returns a ``BatchPlan`` with status ``planned``,
    ``fallback`` (no GPU, a probe error: the fixed batch, and why) or ``failed`` (the smallest batch
    does not fit the budget: the phase must not start).
    """
    start = BatchPlan(status="fallback", where=where, settings=settings, fixed_batch=fixed_batch)
    reason = probe.unavailable()
    if reason is not None:
        return fallback(start, f"{reason}; the plan's fixed batch {fixed_batch} is used", effective_batch)
    upper = min(settings.max_batch, effective_batch or settings.max_batch)
    if settings.min_batch > upper:
        why = f"{where}.min_batch {settings.min_batch} is above the effective batch {effective_batch}"
        return amend(start, status="failed", reason=why)
    search = Search(settings, upper)
    batch, why = settings.min_batch, FIRST
    while True:
        step = search.record(batch, why, probe.measure(batch))
        broken = unusable(step, settings, where)
        if broken is not None:
            return fallback(start, broken, effective_batch, search)
        if search.lo is None:
            failure = {"status": "failed", "reason": too_small_budget(step, settings, where)}
            return amend(start, **failure, **context(search))
        if search.done():
            return chosen(start, search, effective_batch)
        batch, why = search.next_candidate()


def require_batch(plan: BatchPlan) -> int:
    """The batch to train with; raises ``PlanningFailed`` (with the one-line reason) when there is none."""
    if plan.batch is None:
        raise PlanningFailed(plan)
    return plan.batch


def unusable(step: ProbeStep, settings: BatchPlanSettings, where: str) -> str | None:
    """Why a measurement stops the search (a probe error, a figure it cannot read), or None."""
    m = step.measurement
    if m.status == "error":
        return f"the memory probe at batch {m.batch} failed ({m.message or 'no message'}); fixed batch used"
    if m.status == "ok" and step.peak_gb is None:
        said = f" ({m.message})" if m.message else ""
        return (
            f"the memory probe at batch {m.batch} could not read {settings.figure}{said}, the figure "
            f"{where}.figure names; fixed batch used (set figure: torch_peak where NVML is unavailable)"
        )
    return None


def too_small_budget(step: ProbeStep, settings: BatchPlanSettings, where: str) -> str:
    """The one-line failure when even the smallest batch does not fit."""
    if step.measurement.status == "oom":
        needs = "runs out of memory"
    else:
        needs = f"needs {gb(step.peak_gb)} ({settings.figure})"
    gpu = f" on {step.measurement.gpu_name}" if step.measurement.gpu_name else ""
    return (
        f"{where}: batch {step.batch} (min_batch) {needs}{gpu}, above budget_gb {settings.budget_gb:g} − "
        f"margin_gb {settings.margin_gb:g} = {settings.target_gb:g} GB; raise budget_gb, lower imgsz or "
        "min_batch, or use a smaller model"
    )


def context(search: Search) -> dict[str, object]:
    """The fields every plan with measurements carries."""
    first = search.steps[0].measurement if search.steps else None
    lo, hi = search.lo, search.hi
    return {
        "steps": tuple(search.steps),
        "fit": search.fit,
        "largest_fitting": lo.batch if lo else None,
        "smallest_over": hi.batch if hi else None,
        "gpu_name": first.gpu_name if first else None,
        "total_gb": first.total_gb if first else None,
    }


def amend(plan: BatchPlan, **update: object) -> BatchPlan:
    """A copy of ``plan`` with ``update`` applied and validated (``model_copy`` would not validate)."""
    return BatchPlan.model_validate({**dict(plan), **update})


def fallback(
    start: BatchPlan, reason: str, effective_batch: int | None, search: Search | None = None
) -> BatchPlan:
    """The plan's fixed batch, with why nothing better could be chosen."""
    acc = accumulation_for(start.fixed_batch, effective_batch)
    update: dict[str, object] = {
        "status": "fallback",
        "reason": reason,
        "batch": start.fixed_batch,
        "accumulation": acc,
        "notes": (acc.note,) if acc.note else (),
    }
    return amend(start, **update, **(context(search) if search is not None else {}))


def chosen(start: BatchPlan, search: Search, effective_batch: int | None) -> BatchPlan:
    """The plan once the search ended: the largest fitting batch that keeps the effective batch."""
    settings = search.settings
    lo, hi = search.lo, search.hi
    assert lo is not None
    batch, note = choose_batch(lo.batch, settings.min_batch, effective_batch, settings.effective_tolerance)
    acc = accumulation_for(batch, effective_batch)
    notes = [n for n in (note, acc.note) if n]
    spent = f"stopped after {len(search.steps)} measurements (max_probes)"
    if hi is not None and hi.batch - lo.batch > 1:
        notes.append(f"{spent}; batches {lo.batch + 1}–{hi.batch - 1} were not measured")
    elif hi is None and lo.batch < search.upper:
        notes.append(f"{spent}; batches above {lo.batch} were not measured")
    if lo.batch >= search.upper and search.upper < settings.max_batch:
        notes.append(
            f"every batch up to the effective batch {search.upper} fits; larger would not accumulate"
        )
    measured = {s.batch: s.peak_gb for s in search.steps}
    update: dict[str, object] = {
        "status": "planned",
        "batch": batch,
        "accumulation": acc,
        "chosen_peak_gb": measured.get(batch, lo.peak_gb),
        "notes": tuple(notes),
    }
    return amend(start, **update, **context(search))


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


# ---------------------------------------------------------------- rendering


def gb(value: float | None) -> str:
    """A memory figure for text."""
    return "–" if value is None else f"{value:.2f} GB"


def headline(plan: BatchPlan) -> str:
    """One line: what batch the phase trains with and why."""
    s = plan.settings
    acc = plan.accumulation
    budget = f"budget {s.budget_gb:g} GB ({s.figure}) − margin {s.margin_gb:g} GB = {s.target_gb:g} GB"
    if plan.status == "failed":
        return f"batch plan FAILED ({budget}): {plan.reason}"
    assert acc is not None
    train = f"batch {acc.batch} × {acc.accumulate} = effective {acc.effective_batch}"
    if plan.status == "fallback":
        return f"batch not planned ({budget}): {plan.reason}; {train}"
    on = f" on {plan.gpu_name}" if plan.gpu_name else ""
    kept = "kept exactly" if acc.exact else "nearest achievable"
    measured = any(s.batch == acc.batch for s in plan.steps)
    peak = f"peak {gb(plan.chosen_peak_gb)}"
    if not measured:
        peak = f"peak ≤ {gb(plan.chosen_peak_gb)} (measured at batch {plan.largest_fitting})"
    return (
        f"batch planned{on} ({budget}): {train} ({kept}), {peak}; "
        f"largest fitting {plan.largest_fitting}, fixed batch was {plan.fixed_batch}"
    )


def verdict_of(step: ProbeStep, target_gb: float) -> str:
    """What a measurement said about its batch."""
    if step.measurement.status == "oom":
        return "out of memory"
    return "fits" if step.fits else f"over {target_gb:g} GB"


def step_text(step: ProbeStep, target_gb: float) -> str:
    """One measurement as text."""
    m = step.measurement
    speed = f", {m.images_per_s:.1f} img/s" if m.images_per_s else ""
    return (
        f"batch {step.batch} ({step.why}): NVML {gb(m.nvml_peak_gb)}, torch {gb(m.torch_peak_gb)}{speed} "
        f"→ {verdict_of(step, target_gb)}"
    )


def fit_text(fit: LinearFit) -> str:
    """The last line the search used."""
    where = ", ".join(str(b) for b in fit.batches)
    predicted = "no rise" if fit.predicted_batch is None else f"predicts batch {fit.predicted_batch}"
    return f"fit: {fit.slope_gb:.3f} GB per image + {fit.intercept_gb:.2f} GB (batches {where}) → {predicted}"


def render_batch_plan(plan: BatchPlan, *, markdown: bool = False) -> list[str]:
    """The record as a few lines: the headline, each measurement, the fit and the notes.

    Plain text for --dry-run and logs; ``markdown=True`` gives a bullet and a table for REPORT.md.
    """
    if not markdown:
        lines = [headline(plan)]
        lines += [f"  {step_text(s, plan.target_gb)}" for s in plan.steps]
        lines += [f"  {fit_text(plan.fit)}"] if plan.fit is not None else []
        lines += [f"  note: {n}" for n in plan.notes]
        return lines
    lines = [f"- {headline(plan)}"]
    if plan.steps:
        lines += [
            "",
            "| batch | why | NVML peak | torch peak | images/s | verdict |",
            "|---:|---|---:|---:|---:|---|",
        ]
        for s in plan.steps:
            m = s.measurement
            speed = "–" if not m.images_per_s else f"{m.images_per_s:.1f}"
            lines.append(
                f"| {s.batch} | {s.why} | {gb(m.nvml_peak_gb)} | {gb(m.torch_peak_gb)} | {speed} "
                f"| {verdict_of(s, plan.target_gb)} |"
            )
        lines.append("")
    if plan.fit is not None:
        lines.append(f"- {fit_text(plan.fit)}")
    lines += [f"- note: {n}" for n in plan.notes]
    return lines


def describe_settings(settings: BatchPlanSettings, *, fixed_batch: int, effective_batch: int | None) -> str:
    """What --dry-run prints for a planned phase when no probe is asked for."""
    upper = min(settings.max_batch, effective_batch or settings.max_batch)
    return (
        f"batch planned on the device before training: largest of {settings.min_batch}–{upper} with peak "
        f"{settings.figure} ≤ {settings.budget_gb:g} − {settings.margin_gb:g} = {settings.target_gb:g} GB, "
        f"at most {settings.max_probes} measurements; without a GPU the fixed batch {fixed_batch} is used"
    )
