"""UltralyticsTrainer: real tiny trainings in a child process, and the result bookkeeping around them.

The training tests use the real golfball_small data set (120 train / 36 val images) at imgsz 64 on CPU.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from flows.engine.errors import ChildKilled, TrainingError
from flows.engine.records.results import EpochEvent, TrainSpec
from tasks.trainers import ultra_child as _train_child
from tasks.trainers.messages import ChildError, ChildResult
from tasks.trainers.ultra import Outcome, StopTraining, UltralyticsTrainer, build_result, terminate

SHARED = Path(__file__).resolve().parents[2] / "shared"
GOLFBALL = SHARED / "datasets" / "golfball_small" / "data.yaml"
P2_MODEL = Path(__file__).resolve().parents[1] / "fod_models" / "yolo11n-p2.yaml"
P2_UNSCALED = P2_MODEL.with_name("yolo11-p2.yaml")

needs_golfball = pytest.mark.skipif(not GOLFBALL.is_file(), reason=f"shared data set absent: {GOLFBALL}")

TINY_ARGS = dict(imgsz=64, epochs=2, batch=8, workers=0, device="cpu", plots=False)


def tiny_spec(run_dir: Path, model: Path = Path("yolo11n.yaml"), **changes: object) -> TrainSpec:
    """A 2-epoch CPU run of a nano model; ``yolo11n.yaml`` resolves inside Ultralytics' own cfg."""
    args = {**TINY_ARGS, **changes.pop("args", {})}  # type: ignore[dict-item]
    fields: dict = dict(
        plan="test",
        node="phase1",
        model=model,
        data=GOLFBALL,
        args=args,
        effective_batch=16,
        grad_clip_norm=5.0,
        run_dir=run_dir,
    )
    return TrainSpec(**{**fields, **changes})


def assert_metric(value: float | None) -> None:
    assert value is None or (isinstance(value, float) and 0.0 <= value <= 1.0), value


def assert_trained(result, events: list[EpochEvent], run_dir: Path, epochs: int) -> None:
    """The checks every successful real training must pass."""
    assert result.status == "completed", result.reason
    assert [e.record.epoch for e in events] == list(range(1, epochs + 1))
    assert all(e.epochs_planned == epochs and e.node == "phase1" for e in events)
    assert result.epochs_done == result.epochs_planned == epochs
    assert result.completed
    assert (result.accumulate, result.effective_batch, result.nbs) == (2, 16, 16)
    assert (result.batch_requested, result.batch_used) == (8, 8)
    for name in ("precision", "recall", "map50", "map50_95"):
        assert_metric(getattr(result.metrics, name))
        for record in result.history:
            assert_metric(getattr(record, name))
    assert result.weights is not None and result.weights.is_file()
    assert result.weights.resolve().is_relative_to(run_dir.resolve())
    assert result.weights.name == "best.pt"
    assert result.results_csv is not None
    assert result.results_csv.resolve() == (run_dir / "results.csv").resolve()
    assert len(result.history) == epochs
    assert result.history == tuple(e.record for e in events)


@needs_golfball
@pytest.mark.integration
def test_real_training_two_epochs_on_cpu(tmp_path: Path) -> None:
    """The default suite's proof that training works end to end (about 30 s on 2 cores)."""
    run_dir = tmp_path / "runs" / "phase1"
    events: list[EpochEvent] = []
    logs: list[str] = []
    result = UltralyticsTrainer(log=logs.append).train(tiny_spec(run_dir), events.append)

    assert_trained(result, events, run_dir, epochs=2)
    assert result.args["grad_clip_norm"] == 5.0, "the trainer subclass clipped with the phase's norm"
    assert result.args["nbs"] == 16
    assert result.args["project"] == str(run_dir.resolve().parent)
    assert result.nan_recoveries == 0
    assert not result.diverged
    assert result.images_per_s is not None and result.images_per_s > 0
    assert all(e.images_per_s and e.images_per_s > 0 for e in events)
    assert result.images_per_s == events[1].images_per_s, "median over epochs after the first"
    assert result.inference_ms is not None and result.inference_ms > 0
    assert result.torch_peak_reserved_gb is None and result.nvml_peak_used_gb is None, "CPU run"
    assert result.wall_s is not None and result.wall_s > 0
    assert events[0].record.time_s is not None and events[1].record.time_s > events[0].record.time_s
    assert "train/box_loss" in events[0].record.losses and "lr/pg0" in events[0].record.lr
    full_log = run_dir / "train.log"
    assert any(f"full log: {full_log}" in line for line in logs), "the parent's log names the full log"
    assert "Starting training for 2 epochs" in full_log.read_text(encoding="utf-8"), "Ultralytics' log"
    assert not any("Starting training" in line for line in logs), "Ultralytics' info lines stay in the file"
    assert not any("\r" in line or "\x1b[" in line for line in logs), "no progress bars or colour codes"
    assert len(logs) <= 3, logs
    assert multiprocessing.active_children() == []


@pytest.mark.gpu
@needs_golfball
def test_real_training_on_cuda_records_both_memory_figures(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    run_dir = tmp_path / "cuda"
    events: list[EpochEvent] = []
    spec = tiny_spec(run_dir, args={"device": "0", "workers": 2})
    result = UltralyticsTrainer().train(spec, events.append)
    assert_trained(result, events, run_dir, epochs=2)
    assert result.torch_peak_reserved_gb is not None and result.torch_peak_reserved_gb > 0
    assert result.nvml_peak_used_gb is not None and result.nvml_peak_used_gb > 0, "NVML device figure"
    assert result.gpu_name
    assert all(e.torch_reserved_gb is not None and e.nvml_used_gb is not None for e in events)


@pytest.mark.slow
@needs_golfball
@pytest.mark.skipif(not P2_UNSCALED.is_file(), reason=f"project P2 model absent: {P2_UNSCALED}")
def test_real_training_with_the_project_p2_model(tmp_path: Path) -> None:
    run_dir = tmp_path / "p2"
    events: list[EpochEvent] = []
    result = UltralyticsTrainer().train(tiny_spec(run_dir, model=P2_MODEL), events.append)
    assert_trained(result, events, run_dir, epochs=2)


@pytest.mark.slow
@needs_golfball
def test_stop_training_from_on_epoch_stops_after_the_first_epoch(tmp_path: Path) -> None:
    run_dir = tmp_path / "stopped"
    events: list[EpochEvent] = []

    def stop_at_once(event: EpochEvent) -> None:
        events.append(event)
        raise StopTraining("mAP plateau (test)")

    spec = tiny_spec(run_dir, args={"epochs": 3})
    result = UltralyticsTrainer().train(spec, stop_at_once)

    assert result.status == "stopped"
    assert result.reason == "mAP plateau (test)"
    assert [e.record.epoch for e in events] == [1]
    assert (result.epochs_done, result.epochs_planned) == (1, 3)
    assert not result.completed
    assert result.weights is not None and result.weights.name == "best.pt"
    assert result.inference_ms is not None, "best.pt was still validated"
    assert_metric(result.metrics.map50_95)


@pytest.mark.slow
@needs_golfball
def test_child_killed_mid_run_raises_child_killed_and_keeps_its_checkpoint(tmp_path: Path) -> None:
    """A SIGKILLed child (the OOM killer) is an error the train task retries once from last.pt."""

    def kill_child(event: EpochEvent) -> None:
        for child in multiprocessing.active_children():
            os.kill(child.pid, signal.SIGKILL)

    run_dir = tmp_path / "killed"
    with pytest.raises(ChildKilled, match="killed by SIGKILL"):
        UltralyticsTrainer().train(tiny_spec(run_dir), kill_child)
    assert (run_dir / "weights" / "last.pt").is_file(), "epoch 1's last.pt is kept for the retry"


@pytest.mark.slow
@needs_golfball
def test_exception_in_on_epoch_kills_the_child_and_propagates(tmp_path: Path) -> None:
    def explode(event: EpochEvent) -> None:
        raise RuntimeError("monitor crashed")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="monitor crashed"):
        UltralyticsTrainer().train(tiny_spec(tmp_path / "boom"), explode)
    assert multiprocessing.active_children() == []
    assert time.monotonic() - started < 60


@pytest.mark.slow
def _train_and_block(run_dir: Path, pid_file: Path) -> None:
    """A flow process: trains, and at the first epoch records its child's pid and hangs."""

    def block(event: EpochEvent) -> None:
        pid_file.write_text(" ".join(str(p.pid) for p in multiprocessing.active_children()))
        time.sleep(600)

    UltralyticsTrainer().train(tiny_spec(run_dir), block)


def _alive(pid: int) -> bool:
    """True while a process exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in {"Z", "X"}


@pytest.mark.slow
@needs_golfball
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to watch processes")
def test_killing_the_parent_ends_the_training_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    context = multiprocessing.get_context("spawn")
    flow = context.Process(target=_train_and_block, args=(tmp_path / "orphan", pid_file))
    flow.start()
    deadline = time.monotonic() + 120
    while not pid_file.exists() and time.monotonic() < deadline and flow.is_alive():
        time.sleep(0.2)
    assert pid_file.exists(), "the training never reached its first epoch"
    child = int(pid_file.read_text().split()[0])
    assert _alive(child)
    flow.kill()
    flow.join(10)
    deadline = time.monotonic() + 15
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    survived = _alive(child)
    if survived:
        os.kill(child, signal.SIGKILL)  # never leave an orphan behind a failing test
    assert not survived, "the orphaned training process must exit and free the GPU"


@pytest.mark.slow
def test_exception_in_the_child_raises_its_own_message(tmp_path: Path) -> None:
    """A data set that does not exist fails inside the child, before any training: an error, not an
    outcome, carrying the exception's own words; the traceback is in the run's train.log."""
    spec = tiny_spec(tmp_path / "bad", data=tmp_path / "missing.yaml")
    with pytest.raises(TrainingError) as caught:
        UltralyticsTrainer().train(spec, lambda event: None)
    assert "missing.yaml" in caught.value.message and "\n" not in caught.value.message
    assert caught.value.run == "phase1"
    assert "Traceback" in (tmp_path / "bad" / "train.log").read_text(encoding="utf-8")
    assert not list((tmp_path / "bad").rglob("*.pt")), "nothing was trained"


# ----------------------------------------------------------------------------- bookkeeping without training


def payload(**changes: object) -> ChildResult:
    """A child result as ``ultra_child.child_result`` builds it."""
    base: dict = dict(
        status="completed",
        reason=None,
        save_dir="unset",
        metrics=dict(precision=0.5, recall=0.4, map50=0.3, map50_95=0.2),
        inference_ms=3.0,
        nan_recoveries=0,
        batch_used=8,
        accumulate=2,
        effective_batch=16,
        nbs=16,
        images_per_s=[10.0, 30.0, 20.0],
        torch_peak_reserved_gb=5.5,
        nvml_peak_used_gb=6.25,
        gpu_name="NVIDIA H100",
        args={"batch": 8, "nbs": 16},
    )
    return ChildResult.model_validate({**base, **changes})


def test_build_result_reads_final_metrics_and_medians(tmp_path: Path) -> None:
    outcome = Outcome()
    outcome.result = payload(save_dir=str(tmp_path))
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "last.pt").write_bytes(b"x")
    result = build_result(tiny_spec(tmp_path), outcome, exitcode=0, wall_s=12.0)
    assert result.status == "completed"
    assert result.metrics.get("map50_95") == 0.2
    assert result.images_per_s == 25.0, "median of epochs after the first"
    assert result.weights == tmp_path / "weights" / "last.pt", "last.pt when there is no best.pt"
    assert result.results_csv is None
    assert (result.torch_peak_reserved_gb, result.nvml_peak_used_gb) == (5.5, 6.25)
    assert result.gpu_name == "NVIDIA H100"


def test_build_result_diverged_and_batch_reduction(tmp_path: Path) -> None:
    outcome = Outcome()
    outcome.result = payload(
        status="diverged",
        reason="Training failed: NaN persisted for 4 epochs",
        metrics={},
        nan_recoveries=3,
        batch_used=4,
        accumulate=4,
        effective_batch=16,
    )
    result = build_result(tiny_spec(tmp_path), outcome, exitcode=0, wall_s=1.0)
    assert result.status == "diverged" and result.diverged
    assert "NaN persisted" in (result.reason or "")
    assert result.nan_recoveries == 3
    assert (result.batch_requested, result.batch_used) == (8, 4), "batch halved after an OOM"
    assert (result.accumulate, result.effective_batch) == (4, 16), "effective batch kept"
    assert result.metrics.map50_95 is None


def test_build_result_without_a_result_raises_how_the_child_ended(tmp_path: Path) -> None:
    """No result: the child's own exception, a signal (retried once upstream), or a bare exit code."""
    with pytest.raises(ChildKilled, match=r"killed by SIGKILL \(the kernel.s out-of-memory killer"):
        build_result(tiny_spec(tmp_path), Outcome(), exitcode=-9, wall_s=1.0)
    with pytest.raises(ChildKilled, match="killed by SIGSEGV"):
        build_result(tiny_spec(tmp_path), Outcome(), exitcode=-11, wall_s=1.0)
    with pytest.raises(TrainingError, match="exited with code 70 without a result") as caught:
        build_result(tiny_spec(tmp_path), Outcome(), exitcode=70, wall_s=1.0)
    assert not isinstance(caught.value, ChildKilled)

    outcome = Outcome()
    outcome.error = ChildError(type="ValueError", message="bad data", traceback="Traceback ...")
    with pytest.raises(TrainingError) as caught:
        build_result(tiny_spec(tmp_path), outcome, exitcode=0, wall_s=1.0)
    assert caught.value.message == "ValueError: bad data"
    assert caught.value.log == str(tmp_path / "train.log")


def test_build_result_stop_request_wins_over_completed(tmp_path: Path) -> None:
    outcome = Outcome()
    outcome.result = payload()
    outcome.stop_reason = "plateau"
    result = build_result(tiny_spec(tmp_path), outcome, exitcode=0, wall_s=1.0)
    assert (result.status, result.reason) == ("stopped", "plateau")


def test_train_args_land_in_run_dir_and_translate_effective_batch(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(Path("rel") / "run", args={"device": None})
    args = _train_child.train_args(spec.model_copy(update={"args": {"epochs": 1}}), device="0")
    assert args["project"] == str(tmp_path / "rel") and args["name"] == "run" and args["exist_ok"] is True
    assert args["nbs"] == 16
    assert args["device"] == "0", "the machine's device fills in when the spec has none"
    cpu = _train_child.train_args(tiny_spec(tmp_path / "r"), device="0")
    assert cpu["device"] == "cpu", "a spec's own device is kept"
    assert _train_child.train_args(spec, device="0")["device"] == "0", "an explicit None is filled in too"
    with pytest.raises(ValueError, match="multi-GPU"):
        _train_child.train_args(spec, device="0,1")


@pytest.mark.parametrize(
    ("device", "index"),
    [("cpu", None), ("mps", None), ("0,1", None), ("0", 0), ("cuda:1", 1), (None, 0), ("", 0)],
)
def test_cuda_index_follows_the_device(device: str | None, index: int | None) -> None:
    from flows.engine.plan.devices import parse_devices  # what the child watches with NVML

    assert parse_devices(device).index == index


def test_finite_and_box_metrics() -> None:
    assert _train_child.finite("0.5") == 0.5
    assert _train_child.finite(math.nan) is None
    assert _train_child.finite(None) is None
    metrics = {"metrics/mAP50-95(B)": 0.25, "fitness": 0.9, "metrics/mAP50(B)": math.inf}
    assert _train_child.box_metrics(metrics) == dict(precision=None, recall=None, map50=None, map50_95=0.25)


def _ignore_sigterm_and_sleep(ready) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    time.sleep(60)


def test_terminate_kills_a_child_that_ignores_sigterm() -> None:
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    process = context.Process(target=_ignore_sigterm_and_sleep, args=(ready,))
    process.start()
    assert ready.wait(30), "child did not start"
    terminate(process, grace_s=0.5)
    assert not process.is_alive()
    assert process.exitcode == -signal.SIGKILL
