"""The VRAM batch planner: its search on fake memory curves (the hardware boundary), the accumulation
arithmetic, its records and messages; the real probe on CPU (no GPU: the fixed batch, and why); the
GPU benchmark refusing a machine without CUDA."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from conftest import GOLFBALL, ROOT, SHIPPED_PLAN, needs_shared
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from flows.engine.decisions.batch_planner import (
    accumulation_for,
    choose_batch,
    describe_settings,
    plan_batch,
    render_batch_plan,
)
from flows.engine.errors import TrainingError
from flows.engine.plan.batch_settings import BatchPlanSettings, VramBound, budget_mismatches, plan_problems
from flows.engine.plan.devices import parse_devices
from flows.engine.records.batch_plan import BatchPlan, ProbeMeasurement
from flows.engine.records.results import TrainSpec
from tasks.step import BATCH_PLAN_FILE, planned_batch
from tasks.trainers.memory_probe import (
    CudaMemoryProbe,
    ProbeRequest,
    densest_first,
    is_memory_error,
    largest_train_imgsz,
    measure_once,
    measurement_from,
    probe_overrides,
)

CONTEXT_GB = 0.5
"""What NVML sees beyond torch's reserved memory in the fakes: the CUDA context."""


class CurveProbe:
    """A fake card: torch's peak at a batch is ``curve(batch)`` GB, NVML's half a GB more; above
    ``capacity_gb`` the batch runs out of memory. Records which batches were measured."""

    def __init__(
        self, curve: Callable[[int], float], capacity_gb: float = 24.0, *, nvml: bool = True
    ) -> None:
        self.curve = curve
        self.capacity_gb = capacity_gb
        self.nvml = nvml
        self.calls: list[int] = []

    def unavailable(self) -> str | None:
        return None

    def measure(self, batch: int) -> ProbeMeasurement:
        self.calls.append(batch)
        torch_gb = self.curve(batch)
        if torch_gb + CONTEXT_GB > self.capacity_gb:
            return ProbeMeasurement(
                batch=batch, status="oom", gpu_name="Fake 24GB", message="CUDA out of memory"
            )
        return ProbeMeasurement(
            batch=batch,
            status="ok",
            torch_peak_gb=torch_gb,
            nvml_peak_gb=torch_gb + CONTEXT_GB if self.nvml else None,
            gpu_name="Fake 24GB",
            total_gb=self.capacity_gb,
            message="" if self.nvml else "NVML init failed",
        )


class NoGpuProbe:
    """A machine without CUDA: nothing may be measured."""

    def unavailable(self) -> str | None:
        return "no CUDA device: fake"

    def measure(self, batch: int) -> ProbeMeasurement:
        raise AssertionError("a probe that is unavailable must not be asked to measure")


class BrokenProbe(CurveProbe):
    """A probe whose process fails at one batch (a bug or a bad dataset, not memory)."""

    def measure(self, batch: int) -> ProbeMeasurement:
        if batch > 2:
            self.calls.append(batch)
            return ProbeMeasurement(batch=batch, status="error", message="KeyError: 'img'")
        return super().measure(batch)


def linear(batch: int) -> float:
    """1.5 GB per image on 1.5 GB of weights, optimizer and workspace: NVML 2 + 1.5 × batch."""
    return 1.5 + 1.5 * batch


def stepwise(batch: int) -> float:
    """Flat stretches with jumps (allocator segments, a cuDNN algorithm switch): 6, 10, 16, 22 GB per 4."""
    return [6.0, 10.0, 16.0, 22.0, 30.0][min(math.ceil(batch / 4) - 1, 4)]


def budget(**kw: object) -> BatchPlanSettings:
    """The plan's Phase 1 budget (18 GB, 1 GB margin: the target is 17 GB)."""
    return BatchPlanSettings(budget_gb=18, **kw)  # type: ignore[arg-type]


def measured_peak(plan: BatchPlan, batch: int) -> float | None:
    return next(s.peak_gb for s in plan.steps if s.batch == batch)


# ---------------------------------------------------------------- the search on fakes


def test_linear_curve_finds_the_largest_batch_under_the_target_and_verifies_it():
    probe = CurveProbe(linear)
    plan = plan_batch(budget(), probe, fixed_batch=6, effective_batch=None)
    assert plan.status == "planned" and plan.batch == 10  # NVML 2 + 1.5 × 10 = 17.0 ≤ 17, 11 gives 18.5
    assert plan.largest_fitting == 10 and plan.smallest_over == 11
    assert 10 in probe.calls and 11 in probe.calls  # the choice and its neighbour were really measured
    assert len(probe.calls) <= plan.settings.max_probes and len(set(probe.calls)) == len(probe.calls)
    assert measured_peak(plan, 10) == pytest.approx(17.0) and plan.chosen_peak_gb == pytest.approx(17.0)
    assert plan.fit is not None and plan.fit.slope_gb == pytest.approx(1.5)
    assert all(s.peak_gb is None or s.fits == (s.peak_gb <= 17.0) for s in plan.steps)


def test_stepwise_curve_is_bracketed_by_measurements_not_by_the_line():
    probe = CurveProbe(stepwise)
    plan = plan_batch(budget(), probe, fixed_batch=6, effective_batch=None)
    assert plan.batch == 12  # 9–12 peak at 16.5 GB (NVML), 13 jumps to 22.5
    assert {12, 13} <= set(probe.calls)
    assert len(probe.calls) <= plan.settings.max_probes
    assert plan.chosen_peak_gb == pytest.approx(16.5)


def test_figure_decides_which_peak_meets_the_budget():
    """NVML is 0.5 GB above torch's reserved memory: a torch budget fits one image more here."""
    torch_only = plan_batch(
        budget(figure="torch_peak"), CurveProbe(linear), fixed_batch=6, effective_batch=None
    )
    nvml = plan_batch(budget(figure="nvml_peak"), CurveProbe(linear), fixed_batch=6, effective_batch=None)
    assert (torch_only.batch, nvml.batch) == (10, 10)  # 16.5 ≤ 17 and 17.0 ≤ 17; 11: 18.0 / 18.5
    tight = budget(figure="torch_peak", margin_gb=1.25)  # target 16.75
    assert plan_batch(tight, CurveProbe(linear), fixed_batch=6, effective_batch=None).batch == 10
    assert (
        plan_batch(budget(margin_gb=1.25), CurveProbe(linear), fixed_batch=6, effective_batch=None).batch == 9
    )


def test_out_of_memory_counts_as_over_the_budget():
    """A 12 GB card under a generous budget: the search stops at what the card holds."""
    probe = CurveProbe(linear, capacity_gb=12.0)
    plan = plan_batch(budget(), probe, fixed_batch=6, effective_batch=None)
    assert plan.batch == 6  # NVML 11.0 GB; batch 7 needs 12.5 > 12 and runs out of memory
    assert any(s.measurement.status == "oom" and s.batch == 7 for s in plan.steps)


def test_budget_below_the_smallest_batch_fails_clearly_before_training(tmp_path):
    probe = CurveProbe(lambda b: 10.0 + 5.0 * b)
    plan = plan_batch(
        BatchPlanSettings(budget_gb=12),
        probe,
        fixed_batch=6,
        effective_batch=18,
        where="nodes.phase1.batch_plan",
    )
    assert plan.status == "failed" and plan.failed and plan.batch is None
    assert probe.calls == [2]  # nothing more is tried once the smallest batch does not fit
    assert plan.reason == (
        "nodes.phase1.batch_plan: batch 2 (min_batch) needs 20.50 GB (both) on Fake 24GB, above budget_gb 12 "
        "− margin_gb 1 = 11 GB; raise budget_gb, lower imgsz or min_batch, or use a smaller model"
    )
    # the training step refuses to start the phase with that plan (recorded beside its files)
    spec = TrainSpec(
        node="phase1",
        plan="fod",
        model=Path("yolo11n.yaml"),
        data=tmp_path / "data.yaml",
        run_dir=tmp_path,
        batch_plan=BatchPlanSettings(budget_gb=12),
    )
    (tmp_path / BATCH_PLAN_FILE).write_text(plan.model_dump_json(), encoding="utf-8")
    with pytest.raises(TrainingError, match=r"batch 2 \(min_batch\) needs 20.50 GB"):
        planned_batch(spec, lambda _: None)
    assert render_batch_plan(plan)[0].startswith(
        "batch plan FAILED (budget 12 GB (both) − margin 1 GB = 11 GB)"
    )


def test_smallest_batch_out_of_memory_fails_too():
    plan = plan_batch(budget(), CurveProbe(linear, capacity_gb=4.0), fixed_batch=6, effective_batch=18)
    assert plan.failed and "batch 2 (min_batch) runs out of memory on Fake 24GB" in plan.reason


def test_whole_range_fitting_stops_at_the_effective_batch():
    """A batch above the effective batch cannot accumulate less than one step: it is the ceiling."""
    probe = CurveProbe(lambda b: 1.0 + 0.1 * b)
    plan = plan_batch(budget(), probe, fixed_batch=6, effective_batch=16)
    assert plan.batch == 16 and max(probe.calls) == 16
    assert plan.accumulation is not None and plan.accumulation.accumulate == 1
    assert any("every batch up to the effective batch 16 fits" in n for n in plan.notes)


def test_probe_spent_keeps_the_largest_measured_fit_and_says_what_was_not_measured():
    probe = CurveProbe(stepwise)
    plan = plan_batch(budget(max_probes=3), probe, fixed_batch=6, effective_batch=None)
    assert len(probe.calls) == 3
    assert plan.batch == plan.largest_fitting and plan.batch in probe.calls
    assert measured_peak(plan, plan.batch) <= 17.0
    assert plan.smallest_over is None  # 2, 4, 8 all fit: no upper end was found in 3 measurements
    assert "stopped after 3 measurements (max_probes); batches above 8 were not measured" in plan.notes
    bracketed = plan_batch(budget(max_probes=4), CurveProbe(stepwise), fixed_batch=6, effective_batch=None)
    assert (bracketed.largest_fitting, bracketed.smallest_over) == (8, 14)  # the line through 4 and 8 said 14
    assert "stopped after 4 measurements (max_probes); batches 9–13 were not measured" in bracketed.notes


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(min_value=0.0, max_value=3.0), min_size=64, max_size=64),
    st.floats(min_value=0.5, max_value=8.0),
    st.floats(min_value=6.0, max_value=40.0),
)
def test_any_rising_curve_gives_a_measured_batch_that_fits(increments, base, budget_gb):
    """Whatever the (non-decreasing) curve: the batch chosen was measured under the target, and with
    probes enough it is the largest such batch."""
    peaks = [base + sum(increments[:b]) for b in range(1, 65)]
    settings_ = BatchPlanSettings(budget_gb=budget_gb, margin_gb=0.5, max_probes=32)
    probe = CurveProbe(lambda b: peaks[b - 1] - CONTEXT_GB, capacity_gb=1e9)
    plan = plan_batch(settings_, probe, fixed_batch=6, effective_batch=None)
    fitting = [b for b in range(2, 65) if peaks[b - 1] <= settings_.target_gb + 1e-9]
    if not fitting:
        assert plan.failed and probe.calls == [2]
        return
    assert plan.batch in probe.calls and peaks[plan.batch - 1] <= settings_.target_gb + 1e-9
    assert plan.batch == max(fitting)
    assert len(set(probe.calls)) == len(probe.calls)  # no batch is measured twice


# ---------------------------------------------------------------- the effective batch


def test_effective_batch_kept_exactly_where_the_batch_divides_it():
    for batch, effective, accumulate in ((6, 18, 3), (9, 18, 2), (8, 16, 2), (16, 16, 1)):
        acc = accumulation_for(batch, effective)
        assert (acc.accumulate, acc.effective_batch, acc.exact, acc.note) == (accumulate, effective, True, "")
        assert acc.nbs == effective and acc.weight_decay_scale == 1.0


def test_nearest_achievable_effective_batch_with_a_note_where_it_does_not_divide():
    acc = accumulation_for(10, 18)  # Ultralytics: max(round(18 / 10), 1) = 2
    assert (acc.accumulate, acc.effective_batch, acc.exact) == (2, 20, False)
    assert acc.weight_decay_scale == pytest.approx(20 / 18)
    assert acc.note == (
        "batch 10 cannot keep the effective batch 18 exactly: Ultralytics accumulates 2 step(s), "
        "effective 20 (+11.1%); weight decay × 1.111"
    )
    assert accumulation_for(12, 16).effective_batch == 12  # round(1.33) = 1: one step, effective 12
    assert accumulation_for(4, 18).effective_batch == 16  # round(4.5) = 4 (Python rounds half to even)


def test_planner_prefers_the_largest_batch_that_keeps_the_effective_batch():
    plan = plan_batch(budget(), CurveProbe(linear), fixed_batch=6, effective_batch=18)
    assert plan.largest_fitting == 10 and plan.batch == 9  # 10 × 2 = 20 would move 18 by 11 %
    assert plan.accumulation is not None and plan.accumulation.exact
    assert (plan.accumulation.accumulate, plan.accumulation.effective_batch) == (2, 18)
    assert plan.notes[0].startswith("batch 9 instead of the largest fitting 10: 10 × 2 = 20 would move")
    assert plan.train_args() == {"batch": 9}
    assert plan.chosen_peak_gb == pytest.approx(17.0)  # 9 was not measured: bounded by 10's peak
    assert "peak ≤ 17.00 GB (measured at batch 10)" in render_batch_plan(plan)[0]


def test_no_batch_within_tolerance_takes_the_largest_with_the_nearest_effective_batch():
    batch, note = choose_batch(10, 2, 13, tolerance=0.0)  # 13 is prime: no divisor between 2 and 10
    assert batch == 10 and "no batch from 2 to 10 keeps the effective batch 13 within 0%" in note
    plan = plan_batch(budget(effective_tolerance=0.0), CurveProbe(linear), fixed_batch=6, effective_batch=13)
    assert plan.batch == 10 and plan.accumulation is not None
    assert (plan.accumulation.effective_batch, plan.accumulation.exact) == (10, False)
    assert any("cannot keep the effective batch 13 exactly" in n for n in plan.notes)
    assert choose_batch(10, 2, 13, tolerance=0.1)[0] == 7  # 7 × 2 = 14: 7.7 % off


# ---------------------------------------------------------------- fallbacks


def test_without_a_gpu_the_fixed_batch_is_used_and_said():
    plan = plan_batch(budget(), NoGpuProbe(), fixed_batch=6, effective_batch=18)
    assert plan.status == "fallback" and plan.batch == 6 and plan.steps == ()
    assert plan.reason == "no CUDA device: fake; the plan's fixed batch 6 is used"
    assert plan.accumulation is not None and (plan.accumulation.accumulate, plan.accumulation.exact) == (
        3,
        True,
    )
    assert render_batch_plan(plan) == [
        "batch not planned (budget 18 GB (both) − margin 1 GB = 17 GB): no CUDA device: fake; "
        "the plan's fixed batch 6 is used; batch 6 × 3 = effective 18"
    ]


def test_probe_error_falls_back_to_the_fixed_batch_with_the_message():
    probe = BrokenProbe(linear)
    plan = plan_batch(budget(), probe, fixed_batch=6, effective_batch=18)
    assert plan.status == "fallback" and plan.batch == 6 and probe.calls == [2, 4]
    assert plan.reason == "the memory probe at batch 4 failed (KeyError: 'img'); fixed batch used"
    assert len(plan.steps) == 2  # what was measured is kept for the report


def test_nvml_budget_without_nvml_falls_back_and_names_the_setting():
    plan = plan_batch(
        budget(figure="nvml_peak"),
        CurveProbe(linear, nvml=False),
        fixed_batch=6,
        effective_batch=18,
        where="nodes.phase1.batch_plan",
    )
    assert plan.status == "fallback" and plan.batch == 6
    assert "could not read nvml_peak (NVML init failed), the figure nodes.phase1.batch_plan.figure names" in (
        plan.reason
    )
    both = plan_batch(budget(), CurveProbe(linear, nvml=False), fixed_batch=6, effective_batch=None)
    assert both.batch == 10  # 'both' reads the larger known figure: torch's 16.5 GB at 10


# ---------------------------------------------------------------- settings, validation, records


def test_settings_reject_bad_values_with_the_key_and_what_to_do():
    cases = {
        "margin_gb (18) must be below budget_gb (18)": {"budget_gb": 18, "margin_gb": 18},
        "budget_gb = 18432 looks like MiB; VRAM is in GB": {"budget_gb": 18432},
        "min_batch (16) is above max_batch (8)": {"budget_gb": 18, "min_batch": 16, "max_batch": 8},
        "Extra inputs are not permitted": {"budget_gb": 18, "budget": 20},
        "Input should be 'nvml_peak', 'torch_peak' or 'both'": {"budget_gb": 18, "figure": "nvml"},
        "Input should be a finite number": {"budget_gb": float("inf")},
    }
    for expected, document in cases.items():
        with pytest.raises(ValidationError, match=re.escape(expected)):
            BatchPlanSettings.model_validate(document)


def test_plan_problems_name_the_key_path_of_each_culprit():
    problems = plan_problems(
        budget(min_batch=4),
        source="plan.yaml",
        where="nodes.phase1.batch_plan",
        fixed_batch=-1,
        effective_batch=None,
        space=("nodes.phase3.space", ["lr0", "imgsz"]),
        forced=("profiles.smoke.force", ["batch", "epochs"]),
    )
    lines = [p.line() for p in problems]
    assert lines == [
        "plan.yaml: nodes.phase1.effective_batch: nodes.phase1.batch_plan needs the effective batch the batch "
        "must keep",
        "plan.yaml: nodes.phase1.args.batch: a planned phase still needs a fixed batch ≥ 1 (used without a GPU), "
        "got -1; AutoBatch (-1 or a fraction) and batch_plan exclude each other",
        "plan.yaml: nodes.phase3.space.imgsz: changes each trial's memory, but nodes.phase1.batch_plan plans one "
        "batch for all trials; remove imgsz from the space or batch_plan from the base",
        "warning: plan.yaml: profiles.smoke.force.batch: the profile forces the batch, so "
        "nodes.phase1.batch_plan is skipped for this profile",
    ]
    assert (
        plan_problems(budget(), source="p", where="nodes.a.batch_plan", fixed_batch=6, effective_batch=18)
        == []
    )
    low = plan_problems(
        budget(min_batch=8), source="p", where="nodes.a.batch_plan", fixed_batch=6, effective_batch=6
    )
    assert [p.where for p in low] == ["nodes.a.batch_plan.min_batch"]


def test_monitors_and_gates_must_read_the_planners_budget():
    bounds = [
        VramBound(where="nodes.phase2.monitors[0]", figure="nvml_peak", max_gb=20),
        VramBound(where="nodes.gate2.conditions[2]", figure="nvml_peak", max_gb=18),
        VramBound(where="nodes.gate2.conditions[3]", figure="torch_peak", max_gb=20),
    ]
    assert budget_mismatches(BatchPlanSettings(budget_gb=20), bounds[:1], "nodes.phase2.batch_plan") == []
    problems = budget_mismatches(
        BatchPlanSettings(budget_gb=20, figure="nvml_peak"), bounds, "nodes.phase2.batch_plan"
    )
    assert problems == [
        (
            "nodes.gate2.conditions[2]",
            "VRAM bound 18 GB differs from nodes.phase2.batch_plan.budget_gb 20 GB, the budget the batch is "
            "planned for; use one number for both",
        ),
        (
            "nodes.gate2.conditions[3]",
            "reads torch_peak but nodes.phase2.batch_plan.figure is nvml_peak: the planner does not measure "
            "what this check reads; set nodes.phase2.batch_plan.figure to torch_peak or both",
        ),
    ]


def test_plan_record_round_trips_through_json_and_renders_for_the_report():
    plan = plan_batch(budget(), CurveProbe(stepwise), fixed_batch=6, effective_batch=24)
    again = BatchPlan.model_validate_json(plan.model_dump_json())
    assert again == plan
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        BatchPlan.model_validate({**plan.model_dump(), "surprise": 1})
    text = render_batch_plan(plan)
    assert text[0] == (
        "batch planned on Fake 24GB (budget 18 GB (both) − margin 1 GB = 17 GB): batch 12 × 2 = effective 24 "
        "(kept exactly), peak 16.50 GB; largest fitting 12, fixed batch was 6"
    )
    assert any(line.strip().startswith("batch 13 (") and line.endswith("→ over 17 GB") for line in text)
    md = render_batch_plan(plan, markdown=True)
    assert "| batch | why | NVML peak | torch peak | images/s | verdict |" in md
    assert "| 12 | " in "\n".join(md) and "| over 17 GB |" in "\n".join(md)
    line = describe_settings(budget(), fixed_batch=6, effective_batch=18)
    assert line == (
        "batch planned on the device before training: largest of 2–18 with peak both ≤ 18 − 1 = 17 GB, "
        "at most 8 measurements; without a GPU the fixed batch 6 is used"
    )


# ---------------------------------------------------------------- the real probe's pure parts


def test_probe_helpers_mirror_ultralytics():
    assert largest_train_imgsz(640, 0.0) == 640
    assert largest_train_imgsz(640, 0.5) == 960  # randrange(320, 992) // 32 * 32 reaches 960 at most
    assert largest_train_imgsz(640, 0.25) == 800
    assert [parse_devices(d).index for d in (None, "", "0", "1", "cuda:2", "cpu", "mps", "0,1")] == [
        0,
        0,
        0,
        1,
        2,
        None,
        None,
        None,
    ]
    assert densest_first([1, 5, 0, 3], batch=3, batches=2) == [[1, 3, 0], [2, 1, 3]]
    assert is_memory_error(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_memory_error(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not is_memory_error(RuntimeError("shape mismatch"))


def test_probe_overrides_keep_what_changes_memory_and_drop_what_would_train_or_resume(tmp_path):
    request = ProbeRequest(
        model="m.yaml",
        data="d.yaml",
        args={
            "imgsz": 640,
            "multi_scale": 0.5,
            "amp": True,
            "freeze": 3,
            "batch": 6,
            "resume": True,
            "workers": 8,
            "cache": "ram",
            "epochs": 100,
            "mosaic": 1.0,
        },
        batch=10,
        nbs=18,
        device="0",
        work_dir=str(tmp_path),
    )
    args = probe_overrides(request, tmp_path)
    assert args["batch"] == 10 and args["nbs"] == 18 and args["imgsz"] == 960 and args["multi_scale"] == 0.0
    assert (args["amp"], args["freeze"], args["epochs"], args["mosaic"]) == (True, 3, 100, 1.0)
    assert (args["workers"], args["cache"], args["plots"]) == (0, False, False)
    assert "resume" not in args and args["project"] == str(tmp_path) and args["name"] == "batch-10"


def test_parent_reads_a_dead_or_failing_probe_as_an_error():
    crashed = measurement_from(None, None, 8, waited_s=3.0, exitcode=-9)
    assert (
        crashed.status == "error"
        and crashed.message == "probe process ended without a result (killed by signal 9)"
    )
    hung = measurement_from(None, None, 8, waited_s=600.0, exitcode=None)
    assert "no answer within 600 s" in hung.message
    raised = measurement_from(
        "error", "Traceback...\n  File x\nValueError: bad data\n", 8, waited_s=1, exitcode=0
    )
    assert (raised.status, raised.message) == ("error", "ValueError: bad data")


def test_probe_on_a_cpu_device_says_there_is_no_vram_to_plan():
    probe = CudaMemoryProbe("m.yaml", "d.yaml", {"device": "cpu"})
    assert probe.unavailable() == "the phase trains on device 'cpu', not a CUDA GPU: there is no VRAM to plan"
    assert "several GPUs" in (CudaMemoryProbe("m.yaml", "d.yaml", {"device": "0,1"}).unavailable() or "")


# ---------------------------------------------------------------- real runs on this machine (CPU)


@needs_shared
def test_real_probe_without_cuda_falls_back_to_the_fixed_batch_and_says_why():
    """The planner asked for on a machine without a GPU: the real probe answers 'no CUDA' at once,
    the plan's fixed batch is used, and the record and its text say why."""
    import torch

    from fod_models import resolve_model

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the planner would really measure")
    probe = CudaMemoryProbe(
        resolve_model("yolo11n-p2.yaml"), GOLFBALL, {"imgsz": 64, "epochs": 1}, effective_batch=8
    )
    plan = plan_batch(budget(), probe, fixed_batch=4, effective_batch=8, where="nodes.phase1.batch_plan")
    assert plan.status == "fallback" and plan.batch == 4 and plan.steps == ()
    assert plan.reason.startswith("no CUDA device: torch.cuda.is_available() is False (torch ")
    assert plan.reason.endswith("; the plan's fixed batch 4 is used")
    assert plan.accumulation is not None and (
        plan.accumulation.accumulate,
        plan.accumulation.effective_batch,
    ) == (
        2,
        8,
    )
    assert (
        "batch not planned" in render_batch_plan(plan)[0]
        and "batch 4 × 2 = effective 8" in render_batch_plan(plan)[0]
    )


@needs_shared
@pytest.mark.integration
def test_real_probe_process_trains_steps_of_the_real_model_on_the_real_data(tmp_path):
    """The probe's child path on CPU: Ultralytics' setup of yolo11n-p2 on golfball, two steps on the
    densest images and the validation pass, in a spawned process. No GPU: no memory figures."""
    from fod_models import resolve_model

    request = ProbeRequest(
        model=str(resolve_model("yolo11n-p2.yaml")),
        data=str(GOLFBALL),
        args={"imgsz": 64, "epochs": 1, "optimizer": "SGD", "lr0": 0.01, "seed": 0, "deterministic": False},
        batch=2,
        nbs=8,
        device="cpu",
        iterations=2,
        work_dir=str(tmp_path),
    )
    m = measure_once(request, timeout_s=240)
    assert m.status == "ok", m.message
    assert m.batch == 2 and m.images_per_s is not None and m.images_per_s > 0
    assert (m.torch_peak_gb, m.nvml_peak_gb, m.gpu_name) == (None, None, None)
    assert (tmp_path / "batch-2" / "args.yaml").is_file()  # Ultralytics' own trainer set the run up
    recorded = yaml.safe_load((tmp_path / "batch-2" / "args.yaml").read_text(encoding="utf-8"))
    assert (recorded["batch"], recorded["nbs"], recorded["imgsz"], recorded["workers"]) == (2, 8, 64, 0)


@needs_shared
@pytest.mark.integration
def test_fallback_batch_is_what_a_real_cpu_training_uses(tmp_path):
    """The fallback's arguments through the real trainer: batch 4 with effective batch 8 trains 4 × 2."""
    from flows.engine.records.results import TrainSpec
    from fod_models import resolve_model
    from tasks.trainers.ultra import UltralyticsTrainer

    model = resolve_model("yolo11n-p2.yaml")
    plan = plan_batch(
        budget(), CudaMemoryProbe(model, GOLFBALL, {"device": "cpu"}), fixed_batch=4, effective_batch=8
    )
    assert plan.status == "fallback"
    args = {
        "imgsz": 64,
        "epochs": 1,
        "device": "cpu",
        "workers": 0,
        "plots": False,
        "optimizer": "SGD",
        "lr0": 0.01,
        "seed": 0,
        "deterministic": False,
        **plan.train_args(),
    }
    spec = TrainSpec(
        plan="t",
        node="phase1",
        model=model,
        data=GOLFBALL,
        args=args,
        effective_batch=8,
        run_dir=tmp_path / "phase1",
    )
    result = UltralyticsTrainer(device="cpu", log=lambda line: None).train(spec, lambda event: None)
    assert result.status == "completed", result.reason
    assert (result.batch_used, result.accumulate, result.effective_batch) == (4, 2, 8)


# ---------------------------------------------------------------- the benchmark


def load_benchmark() -> ModuleType:
    """benchmarks/ is not a package: import the script by path."""
    spec = importlib.util.spec_from_file_location(
        "bench_vram_planner", ROOT / "benchmarks" / "vram_planner.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_benchmark_measures_the_plans_phases_and_judges_the_target():
    bench = load_benchmark()
    doc = yaml.safe_load(SHIPPED_PLAN.read_text(encoding="utf-8"))
    phase1 = {**doc["defaults"], **doc["nodes"]["phase1"]["args"]}
    assert {k: phase1[k] for k in bench.PHASE_ARGS} == bench.PHASE_ARGS
    for model, node in (("yolo11m-p2.yaml", "phase1"), ("yolo11m-p2-lite.yaml", "phase2")):
        declared = doc["nodes"][node]
        assert bench.PHASE[model] == (declared["args"]["batch"], declared["effective_batch"])
        assert declared.get("model") == model
    met = {"planner_batch": 9, "largest_fits": 10, "tries": [{"batch": 9, "status": "ok"}]}
    assert bench.verdict(met) == "met: 9/10 = 90%"
    assert bench.verdict({"planner_batch": 8, "largest_fits": 10, "tries": []}) == "MISSED: 8/10 = 80%"
    oom = {"planner_batch": 10, "largest_fits": 10, "tries": [{"batch": 10, "status": "oom"}]}
    assert bench.verdict(oom).startswith("MISSED") and "out of memory at it" in bench.verdict(oom)
    assert "| yolo11m-p2.yaml | 9 | 10 |" in bench.markdown_table([{"model": "yolo11m-p2.yaml", **met}])
