"""Shared fixtures: paths, a plan factory, and one Prefect test server for the session."""

from __future__ import annotations

import copy
import os
import shutil
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
if "FOD_HASH_CACHE_DIR" not in os.environ:  # the near-duplicate hash cache: not the user's home
    import tempfile

    os.environ["FOD_HASH_CACHE_DIR"] = tempfile.mkdtemp(prefix="fod-hash-cache-")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GOLFBALL = SHARED / "datasets" / "golfball_small" / "data.yaml"
SHIPPED_PLAN = ROOT / "configs" / "fod_plan.yaml"
REPLAYS = ROOT / "tests" / "replays"

needs_shared = pytest.mark.skipif(not GOLFBALL.is_file(), reason=f"../shared datasets not found at {SHARED}")


def leaky_golfball(root: Path, copies: int = 4) -> tuple[Path, list[Path]]:
    """golfball with re-encoded, shrunk, brightened and flipped copies of train images added to val
    (labels copied, a flip's mirrored): a data.yaml, and the copies."""
    from PIL import Image, ImageEnhance, ImageOps

    source = GOLFBALL.parent
    for split in ("train", "val"):
        shutil.copytree(source / "images" / split, root / "images" / split)
        shutil.copytree(source / "labels" / split, root / "labels" / split)
    changes = [
        lambda im: im,
        lambda im: im.resize((im.width // 2, im.height // 2)),
        lambda im: ImageEnhance.Brightness(im).enhance(1.15),
        ImageOps.mirror,
    ]
    made = []
    for k, train in enumerate(sorted((root / "images" / "train").iterdir())[:copies]):
        with Image.open(train) as im:
            picture = changes[k % len(changes)](im.convert("RGB"))
        made.append(root / "images" / "val" / f"copy_{k}.jpg")
        picture.save(made[-1], quality=70)
        rows = (root / "labels" / "train" / f"{train.stem}.txt").read_text().split("\n")
        if k % len(changes) == 3:  # mirrored: x -> 1 - x
            rows = [
                " ".join([r.split()[0], f"{1 - float(r.split()[1]):.6f}", *r.split()[2:]]) for r in rows if r
            ]
        (root / "labels" / "val" / f"copy_{k}.txt").write_text("\n".join(rows))
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: golf_ball\n")
    return data, made


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
