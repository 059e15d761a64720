"""The training step: the run journal is the one record of what is done, for every caller.

A finished training is answered from the journal (not trained again, in this run folder only); the copy
beside its weights (``phase_result.json``) is written from the record, and put back when a kill took it;
an error is recorded and raised, or with ``on_error: continue`` recorded as a failed outcome; the flow's
executor asks the same step before it makes a task run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPLAYS, SHIPPED_PLAN

from flows.engine.config import OptimizeRequest, RunConfig, prepare
from flows.engine.decisions.walk import train_spec
from flows.engine.errors import TrainingError
from flows.engine.records.journal import Journal
from flows.engine.records.results import EpochEvent, PhaseResult, TrainSpec
from tasks.step import RESULT_FILE, TrainingStep


@pytest.fixture(scope="module")
def cfg(demo_data: Path) -> RunConfig:
    return prepare(OptimizeRequest(plan=SHIPPED_PLAN, data=demo_data, replay=REPLAYS / "deploy_phase1.yaml"))


class CountingTrainer:
    """The run's replay trainer, counting the trainings it is asked for; ``fail`` raises this error."""

    def __init__(self, cfg: RunConfig, fail: TrainingError | None = None) -> None:
        from tasks.trainers.replay import ReplayTrainer

        self.replay = ReplayTrainer(cfg.replay)
        self.fail = fail
        self.calls: list[str] = []

    def train(self, spec: TrainSpec, on_epoch: Callable[[EpochEvent], None]) -> PhaseResult:
        self.calls.append(spec.key)
        if self.fail is not None:
            raise self.fail
        return self.replay.train(spec, on_epoch)


def journal_kinds(run_dir: Path) -> list[tuple[str, str]]:
    lines = (run_dir / "journal.jsonl").read_text(encoding="utf-8").splitlines()
    return [(json.loads(line)["kind"], json.loads(line)["key"]) for line in lines]


def test_a_recorded_training_is_answered_from_the_journal(cfg, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    spec = train_spec(cfg, run_dir, "phase1")
    trainer = CountingTrainer(cfg)
    first = TrainingStep(trainer, Journal(run_dir))(spec)
    again = TrainingStep(trainer, Journal(run_dir))(spec)  # a re-run of the same run folder
    assert trainer.calls == ["phase1"], "trained once"
    assert again == first
    assert journal_kinds(run_dir) == [("train", "phase1")], "one record, written once"
    copy = PhaseResult.model_validate_json((spec.run_dir / RESULT_FILE).read_text(encoding="utf-8"))
    assert copy == first, "phase_result.json is the record's copy"

    (spec.run_dir / RESULT_FILE).unlink()  # killed between the record and its copy
    assert TrainingStep(trainer, Journal(run_dir)).finished(spec) == first
    assert (spec.run_dir / RESULT_FILE).is_file(), "the copy is written again from the record"

    other = tmp_path / "other-run"
    other.mkdir()
    TrainingStep(trainer, Journal(other))(train_spec(cfg, other, "phase1"))
    assert trainer.calls == ["phase1", "phase1"], "another run folder trains again"


def test_without_a_journal_nothing_is_finished_and_the_training_runs(cfg, tmp_path):
    spec = train_spec(cfg, tmp_path, "phase1")
    trainer = CountingTrainer(cfg)
    step = TrainingStep(trainer)
    step(spec)
    step(spec)
    assert trainer.calls == ["phase1", "phase1"]
    assert not (tmp_path / "journal.jsonl").exists()


def test_an_error_is_recorded_and_raised_or_with_on_error_continue_a_failed_outcome(cfg, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    spec = train_spec(cfg, run_dir, "phase1")
    error = TrainingError("phase1", "data loader died", "train.log")
    lines: list[str] = []
    step = TrainingStep(CountingTrainer(cfg, fail=error), Journal(run_dir), error=lines.append)
    with pytest.raises(TrainingError, match="data loader died"):
        step(spec)
    assert journal_kinds(run_dir) == [("error", "phase1")]
    assert step.finished(spec) is None, "an error finishes nothing: a re-run trains it again"
    assert any("the run stops here" in line for line in lines), lines

    tolerant = spec.model_copy(update={"on_error": "continue"})
    result = step(tolerant)
    assert (result.status, result.reason) == ("failed", "data loader died")
    assert journal_kinds(run_dir)[-1] == ("train", "phase1")
    assert step.finished(tolerant) == result, "a failed outcome is a finished training"


@pytest.mark.usefixtures("prefect_server")
def test_the_flow_executor_asks_the_step_before_it_makes_a_task_run(cfg, tmp_path):
    from prefect import flow
    from prefect.client.orchestration import get_client

    from flows.fod_flow import PrefectExecutor

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    spec = train_spec(cfg, run_dir, "phase1")

    @flow
    def twice() -> tuple[PhaseResult, PhaseResult, str]:
        from prefect.runtime import flow_run

        ex = PrefectExecutor(cfg, run_dir)
        return ex.train(spec), PrefectExecutor(cfg, run_dir).train(spec), flow_run.id

    first, again, flow_run_id = twice()
    assert again == first
    assert journal_kinds(run_dir) == [("train", "phase1")]

    async def task_runs() -> list[str]:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        return [run.name for run in runs]

    import asyncio

    assert asyncio.run(task_runs()) == ["train-phase1"], "the journalled training made no second task run"
