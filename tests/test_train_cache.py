"""Prefect caching of trainings: the key follows the resolved settings, the data and the code; results persist in the run.

The journal (tests/test_resume.py) decides what a resumed run skips; the Prefect cache is the second line:
a finished training asked for again (same settings, same data, same code, same run folder) returns its
persisted ``PhaseResult`` instead of training.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPLAYS, SHIPPED_PLAN, needs_shared

from flows.engine.config import OptimizeRequest, RunConfig, prepare
from flows.engine.decisions.walk import train_spec
from flows.engine.records.results import TrainSpec
from tasks.train import RESULTS_FOLDER, cached_train_task, train_cache_key, train_cache_key_of

pytestmark = needs_shared


@pytest.fixture(scope="module")
def cfg(demo_data: Path) -> RunConfig:
    return prepare(OptimizeRequest(plan=SHIPPED_PLAN, data=demo_data, replay=REPLAYS / "deploy_phase1.yaml"))


def spec_in(cfg: RunConfig, run_dir: Path) -> TrainSpec:
    return train_spec(cfg, run_dir, "phase1")


def test_key_is_stable_and_follows_every_setting(cfg, tmp_path):
    spec = spec_in(cfg, tmp_path / "run")
    key = train_cache_key_of(spec, cfg, version="v1")
    assert key == train_cache_key_of(spec.model_copy(), cfg, version="v1")
    assert key.startswith("train-phase1-")
    assert key == train_cache_key_of(spec.model_copy(update={"resume_from": Path("last.pt")}), cfg, "v1")
    changed = {
        "an argument": spec.model_copy(update={"args": {**spec.args, "lr0": 0.02}}),
        "the clip norm": spec.model_copy(update={"grad_clip_norm": "off"}),
        "the effective batch": spec.model_copy(update={"effective_batch": 32}),
        "the model": spec.model_copy(update={"model": Path("other.yaml")}),
        "the run folder": spec.model_copy(update={"run_dir": tmp_path / "other-run" / "phases" / "phase1"}),
        "the trial": spec.model_copy(update={"trial": 1}),
    }
    for what, other in changed.items():
        assert train_cache_key_of(other, cfg, version="v1") != key, what
    other_data = cfg.dataset.model_copy(update={"fingerprint": "x"})
    assert train_cache_key_of(spec, cfg.model_copy(update={"dataset": other_data}), "v1") != key
    assert train_cache_key_of(spec, cfg, version="v2") != key
    assert train_cache_key(None, {"spec": spec, "cfg": cfg}) == train_cache_key_of(spec, cfg)
    assert train_cache_key(None, {"spec": "not a spec", "cfg": cfg}) is None


@pytest.mark.usefixtures("prefect_server")
def test_finished_training_comes_from_the_cache(cfg, tmp_path):
    from prefect import flow

    spec = spec_in(cfg, tmp_path / "run")
    other = spec_in(cfg, tmp_path / "other-run")  # another run folder: never shares a result

    @flow
    def three_calls():
        first = cached_train_task(spec)(spec, cfg, return_state=True)
        again = cached_train_task(spec)(spec, cfg, return_state=True)
        changed = cached_train_task(other)(other, cfg, return_state=True)
        return first, again, changed

    first, again, changed = three_calls()
    assert first.is_completed() and first.name == "Completed"
    assert again.name == "Cached", "the same training again is served from the cache"
    assert changed.name == "Completed", "another run trains again"
    assert again.result() == first.result()
    stored = list((spec.run_dir / RESULTS_FOLDER).iterdir())
    assert [p.name for p in stored] == [train_cache_key_of(spec, cfg)], "persisted inside the run folder"
    assert stored[0].read_text(encoding="utf-8").lstrip().startswith("{"), "JSON, never a pickle"
