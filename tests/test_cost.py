"""The cost of every branch before it starts (issue 9 §3): epochs and GPU-hours, best and worst case,
and the most that early decisions and pruning can save; from an earlier run or a speed probe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SHARED, SHIPPED_PLAN, needs_shared

from flows.engine.config import OptimizeRequest, prepare
from flows.engine.decisions.cost import NodeSpeed, branch_costs, earliest_stop, hours_of, speeds_from_runs
from flows.engine.records.results import EpochRecord, PhaseResult


def test_shipped_plan_branches_naive_and_at_their_cheapest(demo_data, known_rule):
    """Worked by hand from the shipped plan: 100-epoch phases, 9 prefix trials of 20 epochs whose best
    continues to epoch 100 (80 more), safe early decisions on every gate (a metric from 30 % = epoch 30 with
    the ``known_rule`` constants, a VRAM bound from epoch 1), no pruner.

    deploy_phase1: phase1 passes gate1 → 100 in full.
    deploy_phase2: phase1 lost at 30, phase2 passes → 30 + 100.
    deploy_phase3: 30 + phase2 lost (VRAM from epoch 1) + 180 trials + a passing continued full run of 80.
    keep_baseline: the same, the full run lost at epoch 30 of its schedule → 30 + 1 + 180 + 30.
    """
    cfg = prepare(OptimizeRequest(plan=SHIPPED_PLAN, data=demo_data))
    costs = {c.path[-1]: c for c in branch_costs(cfg.plan, cfg.force, {})}
    assert {k: (c.epochs, c.min_epochs) for k, c in costs.items()} == {
        "deploy_phase1": (100, 100),
        "deploy_phase2": (200, 130),
        "deploy_phase3": (460, 291),
        "keep_baseline": (460, 241),
    }
    assert all(c.hours is None for c in costs.values()), "no throughput: no hours"
    gate2 = cfg.plan.nodes["gate2"]
    assert earliest_stop(gate2, 100) == 1
    assert (
        earliest_stop(
            gate2.model_copy(update={"early": gate2.early.model_copy(update={"policy": "off"})}), 100
        )
        == 100
    )


def test_hours_need_every_node_on_the_branch():
    speeds = {"a": NodeSpeed(node="a", seconds_per_epoch=360.0, source="x")}
    assert hours_of({"a": 10}, speeds) == 1.0
    assert hours_of({"a": 10, "b": 1}, speeds) is None


def test_speeds_come_from_the_records_clocks():
    """Seconds per epoch: the median of the epochs after the first (the first carries warm-up and caching)."""
    history = tuple(EpochRecord(epoch=e, time_s=t) for e, t in enumerate([50.0, 60.0, 72.0, 82.0], start=1))
    speeds = speeds_from_runs([PhaseResult(node="phase1", history=history)], "earlier run r1")
    assert speeds["phase1"].seconds_per_epoch == 10.0 and speeds["phase1"].source == "earlier run r1"


def dry_run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.optimize", *args, "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@needs_shared
@pytest.mark.integration
@pytest.mark.usefixtures("prefect_server")
def test_dry_run_gives_gpu_hours_from_an_earlier_run_of_the_plan(demo_data, tmp_path):
    """After one (replayed) run of the plan, --dry-run prices every branch from its records' clocks
    (curve 29 is a real FOD run with a ``time`` column)."""
    from flows.fod_flow import optimize

    runs = tmp_path / "runs"
    spec = tmp_path / "replay.yaml"
    spec.write_text(
        f"default:\n  csv: {SHARED / 'curves' / '29.csv'}\n  images_per_s: 40\n", encoding="utf-8"
    )
    optimize(OptimizeRequest(plan=SHIPPED_PLAN, data=demo_data, runs_dir=runs, replay=spec))
    out = dry_run(["--data", str(demo_data), "--runs-dir", str(runs)], tmp_path)
    assert out.returncode == 0, out.stderr
    assert (
        "cost per branch (GPU-hours" in out.stdout
        and "seconds per epoch (earlier run fod-yolo11m-p2-" in out.stdout
    )


@pytest.mark.integration
def test_probe_speed_trains_a_few_iterations_of_each_phase(demo_data, tmp_path):
    """--probe-speed on the smoke profile: a real short training per distinct phase, hours for every branch."""
    out = dry_run(
        ["--data", str(demo_data), "--profile", "smoke", "--runs-dir", str(tmp_path), "--probe-speed"],
        tmp_path,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.stdout.count("speed probe: ") == 2, "phase3 trains phase1's model and arguments: probed once"
    assert "cost per branch (GPU-hours" in out.stdout and "seconds per epoch (speed probe)" in out.stdout
    assert not any(tmp_path.iterdir()), "a dry run writes nothing in the runs folder"
