"""Errors stop the walk; outcomes go on (issue 8 §2). Real tiny trainings, a real Prefect server.

- The validation folder disappears after validation, before the training child reads it: the run
  stops with Ultralytics' own message naming the folder, the flow run is Failed, the command line
  exits 3 with that message and no traceback, nothing after the failed phase ran, the journal holds
  the error; restoring the folder and running the same request again resumes the run to a terminal.
- A training child killed by SIGKILL (as the kernel's OOM killer does) is retried once from last.pt;
  killed twice, the run stops.
- ``on_error: continue`` turns the error into a failed result that its gate judges.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT

from flows.engine.config import OptimizeRequest, prepare
from flows.engine.errors import EXIT_RUN_ERROR, ChildKilled, TrainingError
from flows.engine.faults import CHILD_KILL_ENV, CHILD_KILL_TIMES_ENV
from flows.engine.records.journal import Journal

pytestmark = pytest.mark.usefixtures("prefect_server")

ONE_PHASE = ROOT / "benchmarks" / "plans" / "one_phase.yaml"
TINY = {"imgsz": 64, "epochs": 1}


def request_for(data: Path, runs: Path, plan: Path = ONE_PHASE, **tiny: Any) -> OptimizeRequest:
    """One tiny CPU training (phase1), then gate1 → keep_baseline."""
    return OptimizeRequest(plan=plan, data=data, runs_dir=runs, overrides={**TINY, **tiny})


def flow_run_states() -> list[str]:
    """The state names of every flow run on the test server, oldest first."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    async def read() -> list[str]:
        async with get_client() as client:
            runs = await client.read_flow_runs(sort=FlowRunSort.START_TIME_ASC, limit=200)
            return [run.state.name for run in runs if run.state is not None]

    return asyncio.run(read())


@pytest.fixture
def own_data(demo_data: Path, tmp_path: Path) -> Path:
    """A private copy of the demo dataset (the tests move its folders), written with ``path: .``."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(demo_data.parent, root)
    doc = yaml.safe_load((root / "data.yaml").read_text(encoding="utf-8"))
    doc["path"] = "."
    (root / "data.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return root / "data.yaml"


DRIVER = """
import os, sys
import flows.cli as cli

def move_val_then_run(cfg, real=cli.run_flow):  # after validation, before the training child reads the data
    os.rename(os.environ["VAL"], os.environ["VAL"] + "-moved")
    return real(cfg)

if __name__ == "__main__":
    if os.environ.get("MOVE_VAL"):
        cli.run_flow = move_val_then_run
    sys.exit(cli.run_cli(sys.argv[1:]))
"""


def run_command(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m flows.optimize ARGS`` (through a driver that can move a folder after validation),
    started in ``cwd``, against the session's Prefect server."""
    from prefect.settings import PREFECT_API_URL

    driver = cwd / "driver.py"
    driver.write_text(DRIVER, encoding="utf-8")
    environment = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PYTHONPATH": str(ROOT),
        **env,
    }
    return subprocess.run(
        [sys.executable, str(driver), *args],
        check=False,
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.integration
def test_missing_val_folder_stops_the_run_then_a_rerun_resumes(own_data, tmp_path):
    """Through the real command line, started in another folder: exit 3, the real message, no traceback."""
    val = own_data.parent / "images" / "val"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    runs = tmp_path / "runs"
    argv = ["--plan", str(ONE_PHASE), "--data", str(own_data), "--runs-dir", str(runs)]
    argv += ["--set", "imgsz=64", "--set", "epochs=1"]
    before = len(flow_run_states())

    first = run_command(argv, elsewhere, MOVE_VAL="1", VAL=str(val))
    assert first.returncode == EXIT_RUN_ERROR, first.stdout[-3000:] + first.stderr[-3000:]
    assert "images not found, missing path" in first.stderr and str(val) in first.stderr, first.stderr
    assert "Traceback" not in first.stderr + first.stdout
    assert "run the same command again" in first.stderr
    assert flow_run_states()[before:] == ["Failed"]
    [run_dir] = list(runs.iterdir())
    journal = Journal(run_dir)
    assert [(e.kind, e.key) for e in journal.entries()] == [("error", "phase1")]
    assert str(val) in (journal.errors()[0].message or "")
    assert not (run_dir / "decision.json").exists() and sorted(os.listdir(run_dir / "phases")) == ["phase1"]
    assert "Traceback" in (run_dir / "phases" / "phase1" / "train.log").read_text(encoding="utf-8")

    os.rename(f"{val}-moved", val)
    second = run_command(argv, elsewhere)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "terminal: keep_baseline" in second.stdout and "phase1  completed" in second.stdout
    assert f"resuming unfinished run {run_dir.name}" in second.stdout + second.stderr
    assert list(runs.iterdir()) == [run_dir], "the same run folder is continued"
    assert [(e.kind, e.key) for e in journal.entries()][:2] == [("error", "phase1"), ("train", "phase1")]
    assert json.loads((run_dir / "decision.json").read_text(encoding="utf-8"))["terminal"] == "keep_baseline"


@pytest.mark.integration
def test_child_killed_once_is_retried_from_last_pt(own_data, tmp_path, monkeypatch):
    """SIGKILL right after epoch 1 (its last.pt on disk): retried once, resumed from last.pt, completed."""
    from flows.fod_flow import optimize_prepared

    monkeypatch.setenv(CHILD_KILL_ENV, "phase1@1")
    monkeypatch.setenv(CHILD_KILL_TIMES_ENV, "1")
    decision = optimize_prepared(prepare(request_for(own_data, tmp_path / "runs", epochs=2)))
    [phase1] = decision.phases
    assert phase1.status == "completed" and phase1.epochs_done == 2
    assert [r.epoch for r in phase1.history] == [1, 2]
    run_dir = tmp_path / "runs" / decision.run_id
    log = (run_dir / "phases" / "phase1" / "train.log").read_text(encoding="utf-8")
    assert "weights/last.pt from epoch 2 to 2 total epochs" in log, "the retry resumed from last.pt"
    assert (run_dir / "phases" / "phase1" / ".fault-kills").read_text() == "1"


@pytest.mark.integration
def test_child_killed_twice_stops_the_run(own_data, tmp_path, monkeypatch):
    """Killed again after the retry: an error like any other, the flow run Failed, the journal says why."""
    from flows.fod_flow import optimize_prepared

    monkeypatch.setenv(CHILD_KILL_ENV, "phase1@1")
    monkeypatch.setenv(CHILD_KILL_TIMES_ENV, "2")
    cfg = prepare(request_for(own_data, tmp_path / "runs", epochs=3))
    before = len(flow_run_states())
    with pytest.raises(ChildKilled, match="killed by SIGKILL"):
        optimize_prepared(cfg)
    assert flow_run_states()[before:] == ["Failed"]
    [run_dir] = list((tmp_path / "runs").iterdir())
    assert [e.kind for e in Journal(run_dir).entries()] == ["error"]


@pytest.mark.integration
def test_on_error_continue_turns_the_error_into_a_failed_result(own_data, tmp_path):
    """A node that opts in: the error is its result (failed, with the message), and its gate judges it."""
    from flows.fod_flow import optimize_prepared

    doc = yaml.safe_load(ONE_PHASE.read_text(encoding="utf-8"))
    doc["nodes"]["phase1"]["on_error"] = "continue"
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    cfg = prepare(request_for(own_data, tmp_path / "runs", plan=plan))
    val = own_data.parent / "images" / "val"
    os.rename(val, val.with_name("val-moved"))
    decision = optimize_prepared(cfg)
    [phase1] = decision.phases
    assert phase1.status == "failed" and "images not found" in (phase1.reason or "")
    assert decision.terminal == "keep_baseline" and decision.gates[0].outcome == "fail"


def test_training_error_survives_pickling():
    """Prefect may carry a task's exception across processes: it must arrive whole."""
    import pickle

    error = ChildKilled("phase3/trial-02", "killed by SIGKILL", "/runs/x/train.log")
    again = pickle.loads(pickle.dumps(error))
    assert isinstance(again, ChildKilled) and isinstance(again, TrainingError)
    assert (again.run, again.message, again.log) == (error.run, error.message, error.log)
    assert str(again) == "phase3/trial-02: killed by SIGKILL (full log: /runs/x/train.log)"
