"""kill -9 at many points, then the same command again: same decision, no epoch trained twice, no corrupt file.

Replay-trainer points use the named kill points of ``flows.engine.faults`` (FOD_KILL_AT); two more points kill
real tiny Ultralytics training mid-phase from outside. Every run talks to one real Prefect server.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import REPLAYS, ROOT

pytestmark = pytest.mark.slow
EPOCH_LINE = re.compile(r"- (?P<label>[\w -]+?): epoch (?P<epoch>\d+)/(?P<planned>\d+) ")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `prefect server start` on SQLite for this module's command-line runs."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "w", encoding="utf-8")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(url, server)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


def wait_healthy(url: str, server: subprocess.Popen, timeout_s: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, "prefect server exited"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("prefect server did not start")


def run(args: list[str], api: str, cwd: Path, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real command line, optionally told to SIGKILL itself at a named point."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "1", "PREFECT_API_URL": api}
    env.pop("FOD_KILL_AT", None)
    if kill_at:
        env["FOD_KILL_AT"] = kill_at
    cmd = [sys.executable, "-m", "flows.optimize", *args]
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    out, _ = proc.communicate(timeout=900)
    with_children_gone(proc.pid)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def with_children_gone(pgid: int) -> None:
    """A killed flow leaves its training child to its watchdog; make sure nothing of the group survives."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def trained_epochs(*outputs: str) -> Counter:
    """(run label, epoch) pairs the logs report as trained."""
    return Counter((m["label"], int(m["epoch"])) for out in outputs for m in EPOCH_LINE.finditer(out))


def decision_of(runs: Path) -> tuple[Path, dict]:
    folders = [p for p in runs.glob("fod-yolo11m-p2-*") if p.is_dir()]
    assert len(folders) == 1, f"expected one run folder (resumed), got {folders}"
    return folders[0], json.loads((folders[0] / "decision.json").read_text(encoding="utf-8"))


def essentials(decision: dict) -> dict:
    """What must equal an uninterrupted run's decision."""
    return {
        "terminal": decision["terminal"],
        "path": decision["path"],
        "gates": [(g["node"], g["outcome"], [r["observed"] for r in g["rows"]]) for g in decision["gates"]],
        "metrics": [(p["node"], p["trial"], p["metrics"], p["epochs_done"]) for p in decision["phases"]],
        "trials": [(t["trial"], t["metrics"]) for t in decision["trials"]],
    }


def assert_files_sound(run_dir: Path) -> None:
    """Every JSON file parses, the journal has no torn line and no step twice, the registry is whole."""
    for path in run_dir.rglob("*.json"):
        json.loads(path.read_text(encoding="utf-8"))
    lines = (run_dir / "journal.jsonl").read_text(encoding="utf-8").splitlines()
    keys = [json.loads(line)["key"] for line in lines]
    assert len(keys) == len(set(keys)), Counter(keys).most_common(3)
    assert (run_dir / "REPORT.md").read_text(encoding="utf-8").startswith("# fod-yolo11m-p2")
    for version in (run_dir.parent / "models").glob("*/v*"):
        assert {p.name for p in version.iterdir()} >= {"best.pt", "MODEL_CARD.md", "SOURCE_RUN"}


REPLAY_POINTS = [
    ("deploy_phase3", "epoch:phase1:20"),  # during a train node (safe does not stop it on mAP50-95)
    ("deploy_phase3", "journal:phase1"),  # after a node's journal line, before its phase_result.json
    ("deploy_phase3", "journal:gate:gate1"),  # between a gate and its journal line
    ("deploy_phase3", "epoch:phase3:12"),  # during a search trial (each trial replays 20 epochs)
    ("deploy_phase3", "journal:phase3/trial-04"),  # after a trial's journal line, before the study is told
    ("deploy_phase3", "journal:phase3/full"),  # after the search's full run
    ("deploy_phase3", "deploy"),  # halfway through a deploy
    ("deploy_phase3", "journal:terminal"),  # after the deploy, before its journal line
    ("deploy_phase3", "report"),  # after REPORT.md, before decision.json
    ("keep_baseline", "epoch:phase2:2"),  # Phase 2 on the keep-baseline branch, before its early stop at 3
]


def replay_args(spec: str, demo_data: Path) -> list[str]:
    return ["--data", str(demo_data), "--runs-dir", "runs", "--replay", str(REPLAYS / f"{spec}.yaml")]


SIDE_BY_SIDE = 2
"""Replayed runs at once (each in its own folder, all on the one server): the module's wall time halves."""


@pytest.fixture(scope="module")
def references(
    api_url: str, demo_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[dict, Counter]]:
    """Uninterrupted runs of each replay, to compare with."""

    specs = sorted({s for s, _ in REPLAY_POINTS})
    folders = {spec: tmp_path_factory.mktemp(f"ref-{spec}") for spec in specs}

    def reference(spec: str) -> tuple[dict, Counter]:
        cwd = folders[spec]
        out = run(replay_args(spec, demo_data), api_url, cwd)
        assert out.returncode == 0, out.stdout[-3000:]
        return essentials(decision_of(cwd / "runs")[1]), trained_epochs(out.stdout)

    with ThreadPoolExecutor(max_workers=SIDE_BY_SIDE) as pool:
        return dict(zip(specs, pool.map(reference, specs), strict=True))


def selected_points(request: pytest.FixtureRequest) -> list[tuple[str, str]]:
    """The replay points this session will actually test (so ``-k`` runs only those)."""
    ids = {
        item.callspec.params["point"]
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_kill_at_point_then_rerun"
    }
    return [(spec, point) for spec, point in REPLAY_POINTS if point in ids] or REPLAY_POINTS


@pytest.fixture(scope="module")
def killed_and_resumed(
    request: pytest.FixtureRequest, api_url: str, demo_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]]:
    """Each selected point: the run killed there, then the same command again (side by side)."""

    points = selected_points(request)
    folders = {point: tmp_path_factory.mktemp(re.sub(r"\W+", "-", point)) for _, point in points}

    def kill_then_rerun(spec: str, point: str) -> tuple[Path, Any, Any]:
        cwd = folders[point]
        killed = run(replay_args(spec, demo_data), api_url, cwd, kill_at=point)
        resumed = (
            run(replay_args(spec, demo_data), api_url, cwd) if killed.returncode == -signal.SIGKILL else None
        )
        return cwd, killed, resumed

    with ThreadPoolExecutor(max_workers=SIDE_BY_SIDE) as pool:
        futures = {point: pool.submit(kill_then_rerun, spec, point) for spec, point in points}
        return {point: future.result() for point, future in futures.items()}


@pytest.mark.parametrize(("spec", "point"), REPLAY_POINTS, ids=[p for _, p in REPLAY_POINTS])
def test_kill_at_point_then_rerun(spec, point, references, killed_and_resumed):
    cwd, killed, resumed = killed_and_resumed[point]
    assert killed.returncode == -signal.SIGKILL, f"never reached kill point {point}: {killed.stdout[-2000:]}"
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    run_dir, decision = decision_of(cwd / "runs")
    expected, expected_epochs = references[spec]
    assert essentials(decision) == expected
    epochs = trained_epochs(killed.stdout, resumed.stdout)
    assert max(epochs.values()) == 1, f"trained twice: {[k for k, n in epochs.items() if n > 1][:5]}"
    assert set(epochs) == set(expected_epochs)
    assert_files_sound(run_dir)


def wait_for(
    path_glob: str,
    root: Path,
    proc: subprocess.Popen,
    log: Path,
    epoch: tuple[str, int],
    timeout_s: float = 400,
) -> None:
    """Wait for a whole checkpoint and for ``epoch`` (run label, epoch number) to be logged.

    Ultralytics writes last.pt in one non-atomic write, and a kill during it (a torn file, set aside by the
    resume; tests/test_resume.py) is not the point tested here. The epoch's log line travels from the
    training child through the flow's logger after last.pt is on disk; a kill before it arrives would
    leave the epoch trained but unlogged, and the epoch count (``trained_epochs``) reads the logs."""
    from flows.engine.data.checks import weights_problem

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        whole = any(weights_problem(p) is None for p in root.glob(path_glob))
        if whole and epoch in trained_epochs(log.read_text(encoding="utf-8", errors="replace")):
            return
        assert proc.poll() is None, "the run ended before the kill point"
        time.sleep(0.2)
    raise TimeoutError(f"{path_glob} and the log line of {epoch}")


@pytest.mark.parametrize("node", ["phase2"])
def test_kill_real_training_mid_phase_then_resume(node, api_url, demo_data, tmp_path):
    """Real Ultralytics: kill -9 after the phase's first epoch checkpoint; the re-run resumes from last.pt.

    Phase 2: the re-run also answers phase1 and gate1 from the journal. Phase 1 killed mid-training and
    resumed is the first stop of test_signals' chain (SIGINT), so it is not trained a second time here."""
    plan = tmp_path / "plan.yaml"
    text = (ROOT / "configs" / "fod_plan.yaml").read_text(encoding="utf-8")
    plan.write_text(text.replace("    force: # over every run, trials included\n      imgsz: 64\n      epochs: 1\n",
                                 "    force: # over every run, trials included\n      imgsz: 64\n      epochs: 3\n"), encoding="utf-8")  # fmt: skip
    args = ["--plan", str(plan), "--data", str(demo_data), "--runs-dir", "runs", "--profile", "smoke"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "1", "PREFECT_API_URL": api_url}
    log = tmp_path / "first.log"
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.optimize", *args],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        wait_for(f"runs/fod-yolo11m-p2-*/phases/{node}/weights/last.pt", tmp_path, proc, log, (node, 1))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    first = log.read_text(encoding="utf-8", errors="replace")
    time.sleep(2)  # the orphaned training child notices its parent is gone and exits
    resumed = run(args, api_url, tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert f"{node}: resuming the interrupted training" in resumed.stdout
    run_dir, decision = decision_of(tmp_path / "runs")
    assert decision["terminal"] == "keep_baseline"
    epochs = trained_epochs(first, resumed.stdout)
    assert max(epochs.values()) == 1, f"trained twice: {[k for k, n in epochs.items() if n > 1]}"
    assert {e for (label, e) in epochs if label == node} == {1, 2, 3}
    phase = next(p for p in decision["phases"] if p["node"] == node)
    assert phase["epochs_done"] == 3 and phase["status"] == "completed"
    assert_files_sound(run_dir)


PRUNED_POINTS = ["epoch:phase3:7", "journal:phase3/trial-03", "journal:phase3/full"]
"""A pruned search (successive halving, first rung at epoch 5): killed inside a trial, after a (pruned)
trial's journal line (before the study is told), and after the continued full run."""


@pytest.fixture(scope="module")
def pruned_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped plan with Phase 3 pruned by successive halving (its other settings as shipped)."""
    import yaml

    doc = yaml.safe_load((ROOT / "configs" / "fod_plan.yaml").read_text(encoding="utf-8"))
    doc["nodes"]["phase3"]["pruner"] = {
        "kind": "successive_halving",
        "min_resource": 5,
        "reduction_factor": 2,
    }
    path = tmp_path_factory.mktemp("pruned-plan") / "plan.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pruned_reference(api_url, demo_data, pruned_plan, tmp_path_factory) -> tuple[dict, Counter]:
    cwd = tmp_path_factory.mktemp("ref-pruned")
    args = ["--plan", str(pruned_plan), "--data", str(demo_data), "--runs-dir", "runs"]
    out = run([*args, "--replay", str(REPLAYS / "deploy_phase3.yaml")], api_url, cwd)
    assert out.returncode == 0, out.stdout[-3000:]
    return essentials(decision_of(cwd / "runs")[1]), trained_epochs(out.stdout)


@pytest.mark.parametrize("point", PRUNED_POINTS)
def test_kill_during_a_pruned_search_then_rerun(
    point, api_url, demo_data, pruned_plan, pruned_reference, tmp_path
):
    """Same terminal, best trial and figures as the uninterrupted pruned search; no finished trial retrained."""
    args = ["--plan", str(pruned_plan), "--data", str(demo_data), "--runs-dir", "runs"]
    args += ["--replay", str(REPLAYS / "deploy_phase3.yaml")]
    killed = run(args, api_url, tmp_path, kill_at=point)
    assert killed.returncode == -signal.SIGKILL, f"never reached kill point {point}: {killed.stdout[-2000:]}"
    resumed = run(args, api_url, tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    run_dir, decision = decision_of(tmp_path / "runs")
    expected, expected_epochs = pruned_reference
    assert essentials(decision) == expected
    states = [(t["number"], t["state"], t["pruned_at"]) for t in decision["search_trials"]]
    assert any(state == "pruned" for _, state, _ in states), states
    epochs = trained_epochs(killed.stdout, resumed.stdout)
    assert max(epochs.values()) == 1, f"trained twice: {[k for k, n in epochs.items() if n > 1][:5]}"
    assert set(epochs) == set(expected_epochs)
    assert_files_sound(run_dir)
