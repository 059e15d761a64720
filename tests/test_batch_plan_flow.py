"""The VRAM batch planner in the plan and the flow (issue 12): validated before anything runs, and on a
machine without a GPU the phase trains with its fixed batch and the report says why.

The planner's search itself is tested on fake memory curves in ``test_batch_planner.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SHIPPED_PLAN

from flows.engine.config import OptimizeRequest, collect_problems, prepare

ONE_PHASE = ROOT / "benchmarks" / "plans" / "one_phase.yaml"


def plan_with(tmp_path: Path, source: Path, edit) -> Path:
    doc = yaml.safe_load(source.read_text(encoding="utf-8"))
    edit(doc)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def error_lines(plan: Path, data: Path) -> list[str]:
    return [
        p.line()
        for p in collect_problems(OptimizeRequest(plan=plan, data=data)).problems
        if p.severity == "error"
    ]


def test_budget_that_monitors_and_gates_do_not_share_is_refused(tmp_path, demo_data):
    """Phase 2 planned for 18 GB while its monitor and gate read 20 GB: one line each, naming the key."""

    def plan_phase2(doc):
        doc["nodes"]["phase2"]["batch_plan"] = {"budget_gb": 18, "figure": "nvml_peak"}

    lines = error_lines(plan_with(tmp_path, SHIPPED_PLAN, plan_phase2), demo_data)
    assert any("nodes.phase2.monitors[0]" in line and "differs from" in line for line in lines), lines
    assert any("nodes.gate2.conditions[2]" in line and "20 GB differs" in line for line in lines), lines

    def matching(doc):
        doc["nodes"]["phase2"]["batch_plan"] = {"budget_gb": 20, "figure": "nvml_peak"}

    assert error_lines(plan_with(tmp_path, SHIPPED_PLAN, matching), demo_data) == []


def test_planned_phase_needs_its_effective_batch(tmp_path, demo_data):
    def no_effective(doc):
        node = doc["nodes"]["phase1"]
        node["batch_plan"] = {"budget_gb": 18}
        del node["effective_batch"]

    lines = error_lines(plan_with(tmp_path, ONE_PHASE, no_effective), demo_data)
    assert any("nodes.phase1.effective_batch" in line for line in lines), lines


def test_budget_in_mib_is_refused(tmp_path, demo_data):
    def mib(doc):
        doc["nodes"]["phase1"]["batch_plan"] = {"budget_gb": 18432}

    lines = error_lines(plan_with(tmp_path, ONE_PHASE, mib), demo_data)
    assert any("nodes.phase1.batch_plan.budget_gb" in line and "looks like MiB" in line for line in lines)


def test_forced_batch_turns_planning_off(tmp_path, demo_data):
    """The CPU profiles force the batch: nothing to plan, the forced batch trains."""
    cfg = prepare(OptimizeRequest(plan=SHIPPED_PLAN, data=demo_data, profile="smoke"))
    assert cfg.batch_plan_of("phase1") is None


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.integration
def test_without_a_gpu_the_fixed_batch_trains_and_the_report_says_why(tmp_path, demo_data):
    """A real CPU training of a planned phase: the probe says there is no GPU, batch 8 × 2 = 16 trains."""
    from flows.cli import describe_plan
    from flows.fod_flow import optimize_prepared

    def plan_phase1(doc):
        doc["nodes"]["phase1"]["batch_plan"] = {"budget_gb": 18}

    plan = plan_with(tmp_path, ONE_PHASE, plan_phase1)
    cfg = prepare(
        OptimizeRequest(
            plan=plan, data=demo_data, runs_dir=tmp_path / "runs", overrides={"imgsz": 64, "epochs": 1}
        )
    )
    assert "phase1: batch planned on the device before training" in describe_plan(cfg)
    decision = optimize_prepared(cfg)
    [phase1] = decision.phases
    assert phase1.status == "completed", phase1.reason
    assert phase1.batch_plan is not None and phase1.batch_plan.status == "fallback"
    assert (
        "not a CUDA GPU" in (phase1.batch_plan.reason or "") and "fixed batch 8" in phase1.batch_plan.reason
    )
    assert (phase1.batch_used, phase1.accumulate, phase1.effective_batch) == (8, 2, 16)
    run_dir = tmp_path / "runs" / decision.run_id
    saved = json.loads((run_dir / "phases" / "phase1" / "batch_plan.json").read_text(encoding="utf-8"))
    assert saved["status"] == "fallback"
    report = (run_dir / "REPORT.md").read_text(encoding="utf-8")
    assert "## Batch plans (VRAM planner)" in report and "not a CUDA GPU" in report


def test_dry_run_probe_batch_shows_the_measurement_or_why_there_is_none(tmp_path, demo_data):
    """--dry-run --probe-batch runs the planner now: on this machine it says there is no GPU to measure."""
    import subprocess
    import sys

    def plan_phase1(doc):
        doc["nodes"]["phase1"]["batch_plan"] = {"budget_gb": 18}

    plan = plan_with(tmp_path, ONE_PHASE, plan_phase1)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.optimize",
            "--plan",
            str(plan),
            "--data",
            str(demo_data),
            "--dry-run",
            "--probe-batch",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    [line] = [ln for ln in out.stdout.splitlines() if ln.startswith("  phase1: batch not planned")]
    assert "not a CUDA GPU" in line and "fixed batch 8 is used" in line and "8 × 2 = effective 16" in line
