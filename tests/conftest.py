"""Shared fixtures: paths, a plan factory, and one Prefect test server for the session."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:  # pragma: no cover
    from flows.engine.plan.search_settings import TrialWorkers
    from flows.engine.records.results import EpochEvent, GateResult, PhaseResult, TrainSpec
    from tasks.step import TrainingStep

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GOLFBALL = SHARED / "datasets" / "golfball_small" / "data.yaml"
SHIPPED_PLAN = ROOT / "configs" / "fod_plan.yaml"
REPLAYS = ROOT / "tests" / "replays"

needs_shared = pytest.mark.skipif(not GOLFBALL.is_file(), reason=f"../shared datasets not found at {SHARED}")


@pytest.fixture(scope="session")
def shipped_plan_doc() -> dict[str, Any]:
    """The shipped plan as a plain document."""
    return yaml.safe_load(SHIPPED_PLAN.read_text(encoding="utf-8"))


@pytest.fixture
def write_plan(tmp_path: Path, shipped_plan_doc: dict[str, Any]) -> Callable[..., Path]:
    """Write a variant of the shipped plan: ``write_plan(lambda doc: ...)`` mutates a copy."""

    def make(mutate: Callable[[dict[str, Any]], object] | None = None, name: str = "plan.yaml") -> Path:
        doc = copy.deepcopy(shipped_plan_doc)
        if mutate is not None:
            mutate(doc)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        return path

    return make


@pytest.fixture
def known_rule(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Early metric decisions with known constants (mAP50-95 only: quantile 0.5 of the default shape for
    ``safe``, from 30 % of the schedule), for tests of the walk's mechanics rather than of the calibration
    (tests/test_early_corpus.py checks the shipped constants against the corpus)."""
    from flows.engine.decisions import early

    monkeypatch.setattr(early, "CALIBRATED_QUANTILES", {"map50_95": {"safe": 0.5, "aggressive": 0.25}})
    monkeypatch.setattr(early, "BOUND_SHAPE", early.BoundShape())
    monkeypatch.setattr(early, "MIN_FRACTION", 0.3)
    return early.rule_for("safe", "map50_95")


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One real (ephemeral, SQLite) Prefect server for every flow test of the session.

    Prefect's logging is set up here, once: its console handler binds the stream it finds, and one found
    inside a test's ``capfd`` is closed for every later test."""
    from prefect.logging.configuration import setup_logging
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 180}),
        prefect_test_harness(server_startup_timeout=180),
    ):
        setup_logging()
        yield


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated demo dataset (small) for the session."""
    from flows.demo_data import generate_demo_dataset

    return generate_demo_dataset(
        tmp_path_factory.mktemp("demo") / "data", n_train=16, n_val=8, image_size=160
    )


class StepExecutor:
    """The walk's executor over a ``TrainingStep`` alone (no Prefect): each training through the step,
    each gate into the step's journal (once). ``observe`` sees every epoch of every training."""

    def __init__(self, step: TrainingStep, observe: Callable[[EpochEvent], None] | None = None) -> None:
        from tasks.step import observe_nothing

        self.step = step
        self.observe = observe or observe_nothing

    def train(self, spec: TrainSpec) -> PhaseResult:
        """The recorded result, or the training run now."""
        return self.step(spec, self.observe)

    def train_each(
        self,
        next_spec: Callable[[], TrainSpec | None],
        on_done: Callable[[TrainSpec, PhaseResult], None],
        workers: TrialWorkers | None,
    ) -> None:
        """A search's trials one after another (side by side is the flow's, on its Dask workers)."""
        from flows.engine.decisions.walk import train_in_turn

        train_in_turn(self, next_spec, on_done)

    def gate(self, result: GateResult) -> None:
        """Record the gate (a re-run's gate that is already recorded is not recorded twice)."""
        from tasks.step import record_gate_once

        record_gate_once(self.step.journal, result)

    def enter(self, node: str, index: int) -> None:
        """Nothing to show."""
