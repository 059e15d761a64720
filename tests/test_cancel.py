"""Cancel a run mid-phase as the UI does, then run it again: the training child is gone, the phase resumes.

The slow test uses a real ``prefect server start``, the deployments of prefect.yaml and a ``process``
worker (the stack of test_deployments), with real tiny Ultralytics training on the CPU: the ``smoke``
profile on the demo dataset, with phase1 given several epochs so that there is time to cancel it
after its first checkpoint, and gate1 opened (min 0) so that the second run ends at
``deploy_phase1`` right after the resumed phase. The cancel is the documented command,
``prefect flow-run cancel <id>``. A fast test checks how a resumed training's result counts the
epochs from before its checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from conftest import ROOT
from test_deployments import (
    PREFECT,
    Stack,
    deployed_stack,
    read_logs,
    read_run,
    tail,
    trigger,
    wait_final,
    wait_for_logs,
)

PHASE1_EPOCHS = 6
CHILD_GONE_S = 30.0
"""How long the training child may outlive the cancel: the worker's poll, SIGTERM, our terminate()."""
CHILD_LINE = re.compile(r"training process (?P<name>train-[\w-]+) started, pid (?P<pid>\d+)")
EPOCH_LINE = re.compile(r"^phase1: epoch (?P<epoch>\d+)/(?P<planned>\d+) ")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """This module's own server, pool, deployments and worker."""
    with deployed_stack(tmp_path_factory.mktemp("cancel-stack")) as deployed:
        yield deployed


def cancel_plan(folder: Path) -> Path:
    """The shipped plan; its smoke profile trains phase1 for PHASE1_EPOCHS epochs and gate1 lets it deploy."""
    doc = yaml.safe_load((ROOT / "configs" / "fod_plan.yaml").read_text(encoding="utf-8"))
    smoke = doc["profiles"]["smoke"]
    smoke["force"].pop("epochs")
    smoke["nodes"]["phase1"]["args"]["epochs"] = PHASE1_EPOCHS
    smoke["nodes"]["phase2"]["args"]["epochs"] = 1
    for condition in doc["nodes"]["gate1"]["conditions"]:
        if condition["check"] == "metric":
            condition["min"] = 0.0
    path = folder / "plan.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def wait_for_file(pattern: str, root: Path, run_id: Any, stack: Stack, timeout_s: float = 300) -> Path:
    """The first whole checkpoint matching ``pattern`` under ``root``, while the run is still going.

    Whole: Ultralytics writes last.pt in one non-atomic write; a torn one is set aside by the resume.
    """
    from flows.engine.data.checks import weights_problem

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := [p for p in sorted(root.glob(pattern)) if weights_problem(p) is None]:
            return found[0]
        state = read_run(run_id).state
        assert state is None or not state.is_final(), f"run ended before {pattern}: {state}"
        time.sleep(0.5)
    pytest.fail(f"no {pattern} after {timeout_s} s:\n{tail(stack.logs / 'worker.log')}")


def processes_of(run_id: Any) -> list[psutil.Process]:
    """Every live process started for this flow run (the flow process, its training child, loaders)."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get("PREFECT__FLOW_RUN_ID") == str(
                run_id
            ):
                found.append(proc)
    return found


def gone(pid: int) -> bool:
    """True when the process no longer runs (a zombie waiting to be reaped runs nothing)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def cancel(run_id: Any, stack: Stack) -> None:
    """`prefect flow-run cancel <id>`: what the UI's Cancel button does."""
    done = subprocess.run(
        [str(PREFECT), "flow-run", "cancel", str(run_id)],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_resumed_training_counts_the_epochs_before_its_checkpoint(tmp_path):
    """Ultralytics' resume reports only the epochs after last.pt: the result takes the rest from results.csv."""
    from flows.engine.records.results import EpochRecord, TrainSpec
    from tasks.trainers.messages import ChildResult
    from tasks.trainers.ultra import Outcome, build_result, records_already_trained

    run_dir = tmp_path / "phase1"
    (run_dir / "weights").mkdir(parents=True)
    (run_dir / "weights" / "last.pt").write_bytes(b"checkpoint after epoch 2")
    header = "epoch,time,metrics/precision(B),metrics/recall(B),metrics/mAP50(B),metrics/mAP50-95(B)"
    rows = [f"{e},{10 * e},0.1,0.1,0.{e},0.0{e}" for e in (1, 2, 3)]  # epoch 3 written, its checkpoint not
    (run_dir / "results.csv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    fresh = TrainSpec(
        plan="p",
        node="phase1",
        model=Path("yolo11n.yaml"),
        data=tmp_path / "d.yaml",
        args={"epochs": 4},
        run_dir=run_dir,
    )
    assert records_already_trained(fresh) == (), "a fresh training starts with no history"
    resumed = fresh.model_copy(update={"resume_checkpoint": run_dir / "weights" / "last.pt"})
    outcome = Outcome(records_already_trained(resumed))
    for epoch in (3, 4):  # what the resumed child reports: epoch 3 again, then 4
        outcome.add_epoch(EpochRecord(epoch=epoch, map50_95=0.5, map50=0.6))
    outcome.result = ChildResult(status="completed", save_dir=str(run_dir), batch_used=8, nbs=64)
    result = build_result(resumed, outcome, exitcode=0, wall_s=1.0)
    assert [r.epoch for r in result.history] == [1, 2, 3, 4]
    assert result.history[2].map50_95 == 0.5, "the retrained epoch's record replaces the stale row"
    assert result.epochs_done == 4 and result.completed


def smoke_request(tmp_path: Path, demo_data: Path, runs: Path) -> dict[str, str]:
    """The flow's parameters: the cancel plan's smoke profile on the demo dataset."""
    return {
        "plan": str(cancel_plan(tmp_path)),
        "data": str(demo_data),
        "profile": "smoke",
        "runs_dir": str(runs),
    }


def trigger_until_checkpoint(request: dict[str, str], runs: Path, stack: Stack) -> tuple[Any, Path]:
    """Start a run and wait for phase1's first whole last.pt: the flow run and that checkpoint."""
    first = trigger(request)
    return first, wait_for_file("*/phases/phase1/weights/last.pt", runs, first.id, stack)


@pytest.mark.slow
def test_cancel_mid_phase_then_resume(stack, demo_data, tmp_path):
    """Cancelled mid-phase: Cancelled, child gone within seconds, last.pt kept; the re-run resumes the phase."""
    runs = tmp_path / "runs"
    request = smoke_request(tmp_path, demo_data, runs)
    first, last = trigger_until_checkpoint(request, runs, stack)
    run_dir = last.parents[3]
    [line] = [m for m in map(CHILD_LINE.search, wait_for_logs(first.id, "training process")) if m]
    child = psutil.Process(int(line["pid"]))
    assert line["name"] == "train-phase1" and child.is_running(), line.group(0)
    assert "multiprocessing" in " ".join(child.cmdline()), child.cmdline()
    assert child.environ()["PREFECT__FLOW_RUN_ID"] == str(first.id)

    cancelled_at = time.monotonic()
    cancel(first.id, stack)
    while not gone(child.pid) and time.monotonic() - cancelled_at < CHILD_GONE_S:
        time.sleep(0.2)
    child_gone_s = time.monotonic() - cancelled_at
    assert gone(child.pid), f"training child {child.pid} still runs {CHILD_GONE_S} s after the cancel"
    print(f"training child gone {child_gone_s:.1f} s after `prefect flow-run cancel`")

    run = wait_final(first.id, stack, deadline_s=120)
    assert run.state.is_cancelled(), run.state
    deadline = time.monotonic() + 30
    while (left := processes_of(first.id)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, [(p.pid, p.cmdline()) for p in left]
    assert last.is_file(), "the interrupted phase's last.pt must be kept"
    phase1 = run_dir / "phases" / "phase1"
    assert not (phase1 / "phase_result.json").exists(), "phase1 was interrupted, not finished"
    assert not (run_dir / "decision.json").exists()

    second = wait_final(trigger(request).id, stack, deadline_s=600)
    logs = read_logs(second.id)
    assert second.state.is_completed(), f"{second.state}\n" + "\n".join(logs[-30:])
    assert [p.name for p in runs.iterdir() if p.is_dir() and p.name != "models"] == [run_dir.name]
    assert any(f"resuming unfinished run {run_dir.name}" in m for m in logs), logs[:20]
    assert any("phase1: resuming the interrupted training from" in m and "last.pt" in m for m in logs)
    resumed = sorted(int(m["epoch"]) for m in map(EPOCH_LINE.search, logs) if m)
    assert resumed and resumed[0] > 1 and resumed[-1] == PHASE1_EPOCHS, resumed
    result = json.loads((phase1 / "phase_result.json").read_text(encoding="utf-8"))
    assert result["status"] == "completed", result["status"]
    assert result["epochs_done"] == PHASE1_EPOCHS
    assert [r["epoch"] for r in result["history"]] == list(range(1, PHASE1_EPOCHS + 1))
    decision = json.loads((run_dir / "decision.json").read_text(encoding="utf-8"))
    assert decision["terminal"] == "deploy_phase1", decision["path"]


@pytest.mark.slow
def test_worker_stopped_by_sigterm_to_its_group_mid_phase_then_resume(stack, demo_data, tmp_path):
    """`timeout`, systemd or Ctrl-C stop the worker's whole group mid-phase: no process of the flow run
    is left and last.pt is kept; with a worker back the same request resumes the phase from it, and the
    flow run the stopped worker left Running is ended as Crashed, saying why."""
    runs = tmp_path / "runs"
    request = smoke_request(tmp_path, demo_data, runs)
    first, last = trigger_until_checkpoint(request, runs, stack)
    worker = stack.procs[-1]
    stopped_at = time.monotonic()
    os.killpg(worker.pid, signal.SIGTERM)
    worker.wait(timeout=60)
    deadline = time.monotonic() + 30
    while (left := processes_of(first.id)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, [(p.pid, p.cmdline()) for p in left]
    print(f"worker and flow run gone {time.monotonic() - stopped_at:.1f} s after SIGTERM to the group")
    assert last.is_file()
    # The worker ends the flow runs it supervises with SIGKILL: nothing in them can report, and the
    # one left Running holds the deployment's slot; the documented command ends it now.
    assert read_run(first.id).state.is_running()
    ended = subprocess.run(
        [sys.executable, "-m", "flows.flow_runs", str(last.parents[3])],
        env={**stack.env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ended.returncode == 0 and f"1 flow run(s) ended: {first.id}" in ended.stdout, ended

    stack.start_worker("worker-2.log")
    second = wait_final(trigger(request).id, stack, deadline_s=600)
    logs = read_logs(second.id)
    assert second.state.is_completed(), f"{second.state}\n" + "\n".join(logs[-30:])
    assert any("phase1: resuming the interrupted training from" in m for m in logs), logs[:20]
    state = read_run(first.id).state
    assert state.is_crashed() and "ended by `python -m flows.flow_runs`" in state.message, state
    decision = json.loads((last.parents[3] / "decision.json").read_text(encoding="utf-8"))
    assert decision["terminal"] == "deploy_phase1"
