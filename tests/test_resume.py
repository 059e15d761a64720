"""Resume: a crashed run continues where it stopped; nothing finished runs twice; changes are not resumed silently."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPLAYS, ROOT, SHIPPED_PLAN, StepExecutor

from flows.engine.config import OptimizeRequest, RunConfig, prepare
from flows.engine.decisions.walk import WalkState, walk_tree
from flows.engine.records.journal import (
    Journal,
    RunIdentity,
    RunLockedError,
    find_resumable,
    locked,
    write_identity,
)
from flows.engine.records.results import EpochEvent, PhaseResult, TrainSpec
from tasks.step import TrainingStep


class Crash(Exception):
    """Stands in for a power cut at a chosen training."""


class CountingTrainer:
    """The replay trainer, counting trainings and epochs; crashes before training number ``crash_at``."""

    def __init__(self, spec: Path, crash_at: int | None = None):
        from tasks.trainers.replay import ReplayTrainer

        self.replay = ReplayTrainer.from_file(spec)
        self.crash_at = crash_at
        self.trained: list[str] = []
        self.epochs = 0

    def train(self, spec: TrainSpec, on_epoch: Callable[[EpochEvent], None]) -> PhaseResult:
        if self.crash_at is not None and len(self.trained) == self.crash_at:
            raise Crash(spec.node)
        self.trained.append(f"{spec.node}/{spec.trial}")

        def count(event: EpochEvent) -> None:
            self.epochs += 1
            on_epoch(event)

        return self.replay.train(spec, count)


def walk_with(cfg: RunConfig, run_dir: Path, trainer: CountingTrainer) -> WalkState:
    """The walk with the training step every caller uses, recording into the run folder's journal."""
    return walk_tree(cfg, run_dir, StepExecutor(TrainingStep(trainer, Journal(run_dir))))


@pytest.mark.parametrize("crash_at", [0, 2, 6, 11])
def test_walk_resumes_after_crash_without_training_twice(crash_at, demo_data, tmp_path):
    """Crash before the Nth training, re-run: same terminal, every training exactly once overall."""
    replay = REPLAYS / "deploy_phase3.yaml"
    cfg = prepare(OptimizeRequest(plan=SHIPPED_PLAN, data=demo_data, replay=replay))
    clean = CountingTrainer(replay)
    expected = walk_with(cfg, _mk(tmp_path / "clean"), clean)

    run_dir = _mk(tmp_path / "crashed")
    first = CountingTrainer(replay, crash_at=crash_at)
    with pytest.raises(Crash):
        walk_with(cfg, run_dir, first)
    second = CountingTrainer(replay)
    state = walk_with(cfg, run_dir, second)

    assert state.terminal == expected.terminal == "deploy_phase3"
    assert state.path == expected.path
    assert sorted(first.trained + second.trained) == sorted(clean.trained)
    assert first.epochs + second.epochs == clean.epochs
    assert [g.outcome for g in state.gates] == [g.outcome for g in expected.gates]


def _mk(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def test_torn_last_journal_line_is_ignored_then_cut(tmp_path):
    journal = Journal(tmp_path)
    spec = TrainSpec(plan="p", node="a", model=Path("m"), data=Path("d"), run_dir=tmp_path / "a")
    journal.record_train(spec, PhaseResult(node="a"))
    with open(journal.path, "a", encoding="utf-8") as handle:
        handle.write('{"kind": "train", "key": "b", "at": 1, "res')  # killed mid-write
    assert list(journal.finished()) == ["a"]
    reopened = Journal(tmp_path)  # the resumed run cuts the torn line before appending
    reopened.record_train(spec.model_copy(update={"node": "c"}), PhaseResult(node="c"))
    assert list(reopened.finished()) == ["a", "c"]


def identity(**kw: str) -> RunIdentity:
    base = {
        "plan": "p",
        "plan_sha": "s1",
        "profile": None,
        "data": "d.yaml",
        "data_fingerprint": "f1",
        "code_version": "c1",
    }
    return RunIdentity(**{**base, **kw})


def test_changed_plan_or_data_is_not_resumed_silently(tmp_path):
    run = _mk(tmp_path / "p-20260101-000000")
    write_identity(run, identity())
    assert find_resumable(tmp_path, identity()) == (run, [])
    found, changes = find_resumable(tmp_path, identity(data_fingerprint="f2", plan_sha="s2"))
    assert found is None
    assert any("dataset's contents changed (f1 → f2)" in c for c in changes)
    assert any("plan's settings changed" in c for c in changes)
    (run / "decision.json").write_text("{}", encoding="utf-8")  # finished runs are never resumed
    assert find_resumable(tmp_path, identity()) == (None, [])


def test_run_folder_lock_is_exclusive(tmp_path):
    with locked(tmp_path):
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from flows.engine.records.journal import locked\nwith locked({str(tmp_path)!r}): pass",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        assert "RunLockedError" in child.stderr
    with locked(tmp_path):
        pass
    assert RunLockedError.__mro__[1] is RuntimeError


@pytest.mark.integration
def test_cli_kill_9_then_rerun_resumes_same_run(demo_data, tmp_path):
    """kill -9 the real command mid-walk; the same command again finishes the same run folder."""
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "flows.optimize", "--data", str(demo_data), "--runs-dir", str(runs)]
    cmd += ["--replay", str(REPLAYS / "keep_baseline.yaml")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "1"}
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    journal = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        found = list(runs.glob("fod-yolo11m-p2-*/journal.jsonl"))
        if found and len(found[0].read_text(encoding="utf-8").splitlines()) >= 3:
            journal = found[0]
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert journal is not None, "the run never got past its first steps"
    before = len(journal.read_text(encoding="utf-8").splitlines())
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    runs_made = [p for p in runs.glob("fod-yolo11m-p2-*") if p.is_dir()]
    changed = [line for line in out.stderr.splitlines() + out.stdout.splitlines() if "changed" in line]
    assert runs_made == [journal.parent], changed
    decision = json.loads((journal.parent / "decision.json").read_text(encoding="utf-8"))
    assert decision["terminal"] == "keep_baseline"
    keys = [json.loads(line)["key"] for line in journal.read_text(encoding="utf-8").splitlines()]
    assert len(keys) == len(set(keys)), "a finished step was recorded twice"
    assert len(keys) > before


class RecordingTrainer:
    """Remembers the spec it was asked to train; stands in for the trainer (no training needed here)."""

    def __init__(self) -> None:
        self.specs: list[TrainSpec] = []

    def train(self, spec: TrainSpec, on_epoch: Callable[[EpochEvent], None]) -> PhaseResult:
        self.specs.append(spec)
        raise Crash(spec.node)  # the result does not matter: what was asked is the point


def test_truncated_last_pt_is_set_aside_and_the_phase_starts_over(tmp_path):
    """A last.pt torn by a kill during Ultralytics' (non-atomic) write is kept aside, not resumed from."""
    torch = pytest.importorskip("torch")
    from flows.engine.data.checks import weights_problem

    run_dir = tmp_path / "run" / "phases" / "phase1"
    (run_dir / "weights").mkdir(parents=True)
    whole = tmp_path / "whole.pt"
    torch.save({"epoch": 3, "model": torch.zeros(64)}, whole)
    torn = whole.read_bytes()[: whole.stat().st_size // 2]
    last = run_dir / "weights" / "last.pt"
    last.write_bytes(torn)
    spec = TrainSpec(plan="p", node="phase1", model=Path("m.yaml"), data=Path("d.yaml"), run_dir=run_dir)
    lines: list[str] = []
    inner = RecordingTrainer()
    executor = TrainingStep(
        inner, Journal(_mk(tmp_path / "j")), log=lines.append, checkpoint_problem=weights_problem
    )

    with pytest.raises(Crash):
        executor(spec)
    assert inner.specs[-1].resume_checkpoint is None  # trained from the start
    assert not last.exists()
    assert (run_dir / "weights" / "last.damaged-1.pt").read_bytes() == torn  # nothing deleted
    assert any("cannot resume" in line and "last.damaged-1.pt" in line for line in lines), lines

    last.write_bytes(whole.read_bytes())  # a whole checkpoint is resumed from
    with pytest.raises(Crash):
        executor(spec)
    assert inner.specs[-1].resume_checkpoint == last
