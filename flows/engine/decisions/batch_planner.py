"""The VRAM batch planner: the largest batch whose measured peak stays under a budget, same effective batch.

The pure part: ``plan_batch(settings, probe, fixed_batch=..., effective_batch=...)`` searches over a
``MemoryProbe`` (the hardware boundary: ``tasks/trainers/memory_probe.py`` on CUDA, a fake in tests)
and returns a ``BatchPlan`` (``records/batch_plan.py``): every candidate is measured, so the batch chosen
is never a prediction. ``accumulation_for`` is the accumulation Ultralytics applies, ``render_batch_plan``
the record's text. The settings and their checks are ``plan/batch_settings.py``. Why and how it
searches: docs/VRAM_PLANNER.md. No torch, Prefect or GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from flows.engine.plan.batch_settings import BatchPlanSettings, PlanFigure
from flows.engine.plan.ultra_defaults import ultralytics_default
from flows.engine.records.batch_plan import (
    Accumulation,
    BatchPlan,
    LinearFit,
    ProbeMeasurement,
    ProbeStep,
    StepReason,
)


class MemoryProbe(Protocol):
    """The hardware boundary: measures peak memory of real training steps at a batch size."""

    def unavailable(self) -> str | None:
        """Why nothing can be measured here (no CUDA, a CPU device, no NVML for an NVML budget), or None."""
        ...

    def measure(self, batch: int) -> ProbeMeasurement:
        """Train a few steps at ``batch`` and report the peaks; an out-of-memory error is status ``oom``."""
        ...


FIRST: StepReason = "first"


# ---------------------------------------------------------------- accumulation


def accumulation_for(batch: int, effective_batch: int | None) -> Accumulation:
    """Accumulation steps and the effective batch Ultralytics trains with, given ``nbs = effective_batch``.

    Exact when ``batch`` divides the effective batch; else Ultralytics' ``round`` gives the nearest
    product it can reach, and the note says so (and by how much the weight decay is scaled).
    """
    if batch < 1:
        raise ValueError(f"batch must be ≥ 1, got {batch}")
    nbs = effective_batch if effective_batch is not None else ultralytics_default("nbs")
    accumulate = max(round(nbs / batch), 1)
    product = batch * accumulate
    exact = product == nbs
    note = ""
    if effective_batch is None:
        note = f"no effective_batch declared: Ultralytics' nbs {nbs} gives {batch} × {accumulate}"
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
