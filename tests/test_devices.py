"""The run's GPUs (`--set device=0,1,2,3` or the plan's defaults): phases on the first, a search's
trials side by side over all of them; on a search's GPU worker every training trains on device 0."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import SHIPPED_PLAN

from flows.engine.config import OptimizeRequest, prepare
from flows.engine.decisions.walk import search_spec, train_spec
from flows.engine.plan.devices import Devices, parse_devices
from flows.engine.plan.search_settings import TrialWorkers


@pytest.mark.parametrize(
    ("device", "gpus"),
    [("0,1", [0, 1]), ("cuda:2, 3", [2, 3]), ([0, 1, 2, 3], [0, 1, 2, 3]), ("0", None), (0, None),
     ("cpu", None), ("0,", None), ("0,x", None), (None, None)],
)  # fmt: skip
def test_every_spelling_of_several_gpus_reads_as_their_list(device, gpus):
    found = parse_devices(device).gpus
    assert (list(found) if len(found) > 1 else None) == gpus


SPELLINGS = [
    (None, Devices("cuda", (0,), ("0",))),
    ("", Devices("cuda", (0,), ("0",))),
    ("cuda", Devices("cuda", (0,), ("0",))),
    (0, Devices("cuda", (0,), ("0",))),
    (" 3 ", Devices("cuda", (3,), ("3",))),
    ("01", Devices("cuda", (1,), ("1",))),
    ("cuda:2", Devices("cuda", (2,), ("2",))),
    ("CPU", Devices("cpu", (), ("cpu",))),
    ("mps", Devices("mps", (), ("mps",))),
    ("0,1", Devices("cuda", (0, 1), ("0", "1"))),
    ("cuda:0,1", Devices("cuda", (0, 1), ("0", "1"))),
    ([2, 3], Devices("cuda", (2, 3), ("2", "3"))),
    (("0", "1"), Devices("cuda", (0, 1), ("0", "1"))),
    ([0], Devices("cuda", (0,), ("0",))),
    ("0,", Devices("cuda", (0,), ("0",))),
    ("0,x", Devices("other", (), ("0", "x"))),
    ("-1", Devices("other", (), ("-1",))),
    ("npu:0", Devices("other", (), ("npu:0",))),
]


@pytest.mark.parametrize(("device", "expected"), SPELLINGS)
def test_one_reading_of_a_device_argument(device, expected):
    devices = parse_devices(device)
    assert devices == expected
    assert devices.several == (len(expected.parts) > 1)
    assert devices.index == (expected.gpus[0] if len(expected.gpus) == 1 else None)


def test_the_reading_is_ultralytics_own(monkeypatch):
    """Every spelling reads as Ultralytics' ``parse_device`` canonicalises it ('' is its default GPU)."""
    from ultralytics.utils.torch_utils import parse_device

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for device, expected in SPELLINGS:
        if expected.parts == ("-1",):
            continue  # Ultralytics replaces -1 with an idle GPU it finds with NVML
        canonical = parse_device(device)
        assert (canonical or "0") == ",".join(expected.parts), device


def plan_with(tmp_path: Path, edit) -> Path:
    doc = yaml.safe_load(SHIPPED_PLAN.read_text(encoding="utf-8"))
    edit(doc)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def test_set_device_list_spreads_the_search_and_trains_phases_on_the_first(demo_data, tmp_path):
    cfg = prepare(OptimizeRequest(plan=SHIPPED_PLAN, data=demo_data, overrides={"device": "0,1,2,3"}))
    assert cfg.plan.nodes["phase3"].workers == TrialWorkers(devices=[0, 1, 2, 3])
    assert train_spec(cfg, tmp_path, "phase1", {}).args["device"] == "0"
    assert train_spec(cfg, tmp_path, "phase2", {}).args["device"] == "0"
    assert search_spec(cfg, tmp_path, "phase3", {"lr0": 0.01}, 0).args["device"] == "0"
    assert any("phase3 runs its trials side by side, one per GPU (4 at a time)" in w for w in cfg.warnings)
    plain = prepare(OptimizeRequest(plan=SHIPPED_PLAN, data=demo_data, overrides={"device": "1"}))
    assert plain.plan.nodes["phase3"].workers is None, "one GPU: the search stays serial"
    assert train_spec(plain, tmp_path, "phase1", {}).args["device"] == "1"


def test_plan_defaults_device_list_is_the_runs_gpus(demo_data, tmp_path):
    plan = plan_with(tmp_path, lambda doc: doc["defaults"].update(device="2,3"))
    cfg = prepare(OptimizeRequest(plan=plan, data=demo_data))
    assert cfg.plan.nodes["phase3"].workers == TrialWorkers(devices=[2, 3])
    assert train_spec(cfg, tmp_path, "phase1", {}).args["device"] == "2"


def test_a_search_with_its_own_workers_keeps_them(demo_data, tmp_path):
    plan = plan_with(tmp_path, lambda doc: doc["nodes"]["phase3"].update(workers={"cpu": 2}))
    cfg = prepare(OptimizeRequest(plan=plan, data=demo_data, overrides={"device": "0,1"}))
    assert cfg.plan.nodes["phase3"].workers == TrialWorkers(cpu=2)
    assert any("phase3 keeps its own workers" in w for w in cfg.warnings)


def test_on_a_gpu_worker_the_training_sees_its_card_as_device_0(demo_data, tmp_path, monkeypatch):
    from tasks.step import on_worker_gpu

    cfg = prepare(OptimizeRequest(plan=SHIPPED_PLAN, data=demo_data, overrides={"device": 3}))
    spec = search_spec(cfg, tmp_path, "phase3", {"lr0": 0.01}, 0)
    assert on_worker_gpu(spec).args["device"] == 3, "not on a worker: the plan's device"
    monkeypatch.setenv("FOD_SLOT", "gpu-3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert on_worker_gpu(spec).args["device"] == "0"
    monkeypatch.setenv("FOD_SLOT", "cpu-0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert on_worker_gpu(spec).args["device"] == 3, "a CPU worker leaves the device alone"
