"""Phase 3 across workers (issue 11): a search's trials side by side on a local Dask cluster that the
flow starts and stops, one trial per worker, each holding its worker's slot.

Replayed trials sleep per epoch (the replay SPEC's ``epoch_seconds``), so time is real: two trials run
at the same time, never two on one slot; a worker killed mid-trial has its trial re-queued and continued
from its last.pt, and the search ends as the serial one does; a worker gone for good leaves the search
to the other; one real tiny training runs on the cluster.
The Optuna study on PostgreSQL is tested in ``test_study.py``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import SHARED, SHIPPED_PLAN, needs_shared

from flows.engine.config import OptimizeRequest, prepare
from flows.engine.faults import KILL_ENV

pytestmark = [needs_shared, pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]

EPOCH_SECONDS = 0.15


def plan_with_workers(tmp_path: Path, cpu: int, **phase3: object) -> Path:
    doc = yaml.safe_load(SHIPPED_PLAN.read_text(encoding="utf-8"))
    doc["nodes"]["phase3"].update({"workers": {"cpu": cpu}, **phase3})
    path = tmp_path / f"plan-{cpu}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def replay_spec(tmp_path: Path) -> Path:
    """Phases 1 and 2 fail (curve 23), every trial replays a different real curve slowly, the full run 19."""
    trials = [13, 17, 19, 23, 29, 35, 3, 7, 9]
    lines = ["nodes:"]
    for node in ("phase1", "phase2"):
        lines.append(
            f"  {node}: {{csv: {SHARED / 'curves' / '23.csv'}, images_per_s: 40, nvml_peak_used_gb: 17.5}}"
        )
    lines += ["  phase3:", "    trials:"]
    lines += [
        f"      - {{csv: {SHARED / 'curves' / f'{n}.csv'}, epoch_seconds: {EPOCH_SECONDS}}}" for n in trials
    ]
    lines.append(f"    full: {{csv: {SHARED / 'curves' / '19.csv'}}}")
    spec = tmp_path / "replay.yaml"
    spec.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return spec


def walk(plan: Path, replay: Path, runs: Path):
    from flows.fod_flow import optimize_prepared

    return optimize_prepared(
        prepare(OptimizeRequest(plan=plan, data=replay.parent / "data.yaml", runs_dir=runs, replay=replay))
    )


@pytest.fixture
def dataset(demo_data: Path, tmp_path: Path) -> Path:
    (tmp_path / "data.yaml").write_text(demo_data.read_text(encoding="utf-8"), encoding="utf-8")
    return tmp_path / "data.yaml"


def newest_flow_run_logs() -> list[str]:
    """Every log line of the newest flow run on the test server (the flow's, its tasks' on any worker)."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    async def read() -> list[str]:
        async with get_client() as client:
            [run] = await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
            where = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
            messages: list[str] = []
            while page := await client.read_logs(log_filter=where, limit=200, offset=len(messages)):
                messages += [log.message for log in page]
            return messages

    return asyncio.run(read())


def overlapping(a, b) -> bool:
    return a.started_at < b.finished_at and b.started_at < a.finished_at


def test_trials_run_side_by_side_and_never_share_a_slot(dataset, tmp_path):
    """Two CPU workers: trials overlap in time, each held its worker's slot, no two at once on one slot;
    the best trial and the terminal are the serial search's."""
    replay = replay_spec(tmp_path)
    parallel = walk(plan_with_workers(tmp_path, 2), replay, tmp_path / "runs-parallel")
    serial_plan = plan_with_workers(tmp_path, 2)
    doc = yaml.safe_load(serial_plan.read_text(encoding="utf-8"))
    del doc["nodes"]["phase3"]["workers"]
    serial_plan.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    serial = walk(serial_plan, replay, tmp_path / "runs-serial")

    trials = parallel.trials
    assert len(trials) == 9 and {t.slot for t in trials} == {"cpu-0", "cpu-1"}
    assert any(overlapping(a, b) for i, a in enumerate(trials) for b in trials[i + 1 :]), "side by side"
    for i, a in enumerate(trials):
        for b in trials[i + 1 :]:
            assert not (a.slot == b.slot and overlapping(a, b)), (a.key, b.key, a.slot)
    assert parallel.terminal == serial.terminal
    assert [(t.trial, t.metrics) for t in trials] == [(t.trial, t.metrics) for t in serial.trials]
    best = [n for n in parallel.warnings_and_notes if "best trial" in n or "tie" in n]
    assert best == [n for n in serial.warnings_and_notes if "best trial" in n or "tie" in n]


EPOCH_LINE = re.compile(r"phase3 trial (?P<trial>\d+): epoch (?P<epoch>\d+)/")


@pytest.mark.slow
def test_a_worker_killed_mid_trial_has_its_trial_continued_elsewhere(dataset, tmp_path, monkeypatch):
    """The worker training trial 1 dies (SIGKILL) after its epoch 5: the trial is re-queued, continues from
    its last.pt, and the search reaches the same best trial and terminal; every epoch is trained once."""
    replay = replay_spec(tmp_path)
    plan = plan_with_workers(tmp_path, 2)
    reference = walk(plan, replay, tmp_path / "runs-reference")
    monkeypatch.setenv(KILL_ENV, "epoch:phase3/trial-01:5")
    runs = tmp_path / "runs"
    decision = walk(plan, replay, runs)
    assert decision.terminal == reference.terminal
    assert [(t.trial, t.metrics) for t in decision.trials] == [(t.trial, t.metrics) for t in reference.trials]
    [run_dir] = [p for p in runs.iterdir() if p.name.startswith("fod-yolo11m-p2-")]
    events = [
        json.loads(line)
        for line in (run_dir / "phases" / "phase3" / "trial-01" / "epochs.jsonl").read_text().splitlines()
    ]
    epochs = Counter(e["record"]["epoch"] for e in events)
    assert sorted(epochs) == list(range(1, 21)) and max(epochs.values()) == 1, epochs
    resumed = [m for m in newest_flow_run_logs() if "trial-01: resuming the interrupted training" in m]
    assert resumed and str(run_dir) in resumed[0], "re-queued, it continued from its last.pt"


@pytest.mark.slow
def test_a_worker_that_never_comes_back_leaves_the_search_on_the_others(dataset, tmp_path, monkeypatch):
    """Trial 1's worker closes for good, its nanny too, after epoch 5: the one worker left trains the
    rest (trial 1 continued from its last.pt), with the same best trial and terminal."""
    replay = replay_spec(tmp_path)
    plan = plan_with_workers(tmp_path, 2)
    reference = walk(plan, replay, tmp_path / "runs-reference")
    monkeypatch.setenv(KILL_ENV, "gone:epoch:phase3/trial-01:5")
    decision = walk(plan, replay, tmp_path / "runs")
    assert decision.terminal == reference.terminal
    assert [(t.trial, t.metrics) for t in decision.trials] == [(t.trial, t.metrics) for t in reference.trials]
    [resumed] = [t for t in decision.trials if t.trial == 1]  # its result is the continued attempt's
    after = [t for t in decision.trials if t.started_at >= resumed.started_at]
    assert len(after) >= 3 and {t.slot for t in after} == {resumed.slot}, [(t.trial, t.slot) for t in after]


@pytest.mark.slow
def test_real_tiny_trainings_on_the_cluster(dataset, demo_data, tmp_path):
    """The smoke profile's three 1-epoch trials, really trained inside two Dask workers' processes."""
    from flows.fod_flow import optimize_prepared

    plan = plan_with_workers(tmp_path, 2)
    cfg = prepare(OptimizeRequest(plan=plan, data=demo_data, profile="smoke", runs_dir=tmp_path / "runs"))
    decision = optimize_prepared(cfg)
    assert len(decision.trials) == 3 and all(t.status == "completed" for t in decision.trials)
    assert {t.slot for t in decision.trials} <= {"cpu-0", "cpu-1"} and all(
        t.weights.is_file() for t in decision.trials
    )


def test_progress_counts_trials_done_running_and_pruned():
    """The progress artifact's line: trials done (pruned among them) and running side by side."""
    from flows.engine.plan.loader import load_plan
    from tasks.publish import WalkProgress

    plan, force = load_plan(SHIPPED_PLAN)
    progress = WalkProgress(plan, force)
    progress.enter("phase3")
    for _ in range(3):
        progress.trial_started()
    progress.trial_finished(pruned=True)
    progress.trial_finished(pruned=False)
    assert progress.trials == {"done": 2, "running": 1, "pruned": 1}
    assert "trials 2 done (1 pruned), 1 running" in progress.describe()
