"""The benchmarks: the one-phase plan is valid and trains what the bare command trains; the timing
arithmetic is right; gpu_memory.py refuses a machine without CUDA."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from conftest import ROOT

from flows.engine.config import OptimizeRequest, prepare

BENCH = ROOT / "benchmarks"


def load_script(name: str) -> ModuleType:
    """Import a benchmark script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def overhead() -> ModuleType:
    return load_script("overhead")


@pytest.fixture(scope="module")
def gpu_memory() -> ModuleType:
    return load_script("gpu_memory")


def test_one_phase_plan_validates_and_matches_the_bare_command(overhead, demo_data):
    """The flow side trains exactly the bare command's training: same model, args and nbs."""
    from fod_models import resolve_model

    cfg = prepare(OptimizeRequest(plan=overhead.PLAN, data=demo_data, overrides={"epochs": 3}))
    assert cfg.plan.start == "phase1"
    assert set(cfg.plan.nodes) == {"phase1", "gate1", "deploy_phase1", "keep_baseline"}
    bare = {k: yaml.safe_load(v) for k, v in (arg.split("=", 1) for arg in overhead.BARE_ARGS)}
    nbs = bare.pop("nbs")
    assert cfg.args_for("phase1") == {**bare, "epochs": 3}
    assert cfg.effective_batch_of("phase1") == nbs
    assert cfg.model_of("phase1") == resolve_model(overhead.MODEL)


def test_one_phase_plan_passes_the_cli_dry_run(overhead, demo_data, tmp_path):
    """What the benchmark runs as (c): the CLI's --dry-run accepts the plan and prints its tree."""
    cmd = overhead.flow_command(demo_data, 2, tmp_path / "runs", dry_run=True)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "phase1 → gate1 → keep_baseline" in done.stdout
    assert "best case 2 epochs, worst case 2 epochs" in done.stdout
    assert not (tmp_path / "runs").exists()


def test_bare_command_names_the_resolved_model_and_the_same_epochs(overhead, demo_data, tmp_path):
    cmd = overhead.bare_command(demo_data, 2, tmp_path)
    assert Path(cmd[0]).name == "yolo" and cmd[1] == "train"
    assert cmd[2] == f"model={ROOT / 'fod_models' / 'yolo11n-p2.yaml'}"
    assert "epochs=2" in cmd and f"project={tmp_path}" in cmd and "name=bare" in cmd


def test_segments_split_the_flow_wall_time_without_gaps(overhead):
    marks = {
        "server_start": 9.0,
        "flow_begin": 22.0,
        "train_begin": 22.5,
        "train_end": 41.0,
        "flow_end": 43.0,
    }
    timed = overhead.Timed(wall_s=47.0, returncode=0, marks=marks)
    parts = overhead.segments_of(timed)
    assert parts == {
        "startup_s": 9.0,
        "server_s": 13.0,
        "flow_setup_s": 0.5,
        "train_task_s": 18.5,
        "after_train_s": 2.0,
        "shutdown_s": 4.0,
    }
    assert sum(parts.values()) == pytest.approx(timed.wall_s)


def test_segments_are_unknown_when_a_mark_is_missing(overhead):
    """A run against a running server logs no 'Starting temporary server': no made-up split."""
    timed = overhead.Timed(wall_s=30.0, returncode=0, marks={"flow_begin": 5.0, "train_begin": 6.0})
    parts = overhead.segments_of(timed)
    assert parts["startup_s"] is None and parts["server_s"] is None
    assert parts["flow_setup_s"] == 1.0 and parts["train_task_s"] is None and parts["shutdown_s"] is None


def test_phase_parts_compare_the_same_stretches_of_both_commands(overhead):
    bare = overhead.Timed(wall_s=17.0, returncode=0, marks={"banner": 4.0, "val_done": 14.0})
    flow = overhead.Timed(
        wall_s=47.0,
        returncode=0,
        marks={"train_begin": 22.0, "child_banner": 26.5, "child_val_done": 37.5, "phase_done": 41.0},
    )
    parts = overhead.phase_parts(bare, flow)
    assert parts["bare_start_s"] == 4.0 and parts["phase_start_s"] == 4.5
    assert parts["start_overhead_s"] == pytest.approx(0.5)
    assert parts["train_overhead_s"] == pytest.approx(1.0)
    assert parts["end_overhead_s"] == pytest.approx(0.5)


def test_summary_and_table_report_median_min_max(overhead):
    runs = [
        {"bare_s": 18.0, "flow_s": 45.0, "ratio_flow_over_bare": 2.5, "per_phase_overhead_s": 1.0},
        {"bare_s": 20.0, "flow_s": 40.0, "ratio_flow_over_bare": 2.0, "per_phase_overhead_s": -0.5},
        {"bare_s": 25.0, "flow_s": 60.0, "ratio_flow_over_bare": 2.4, "per_phase_overhead_s": 2.0},
    ]
    summary = overhead.summarize(runs)
    assert summary["bare_s"] == {"median": 20.0, "min": 18.0, "max": 25.0}
    assert summary["per_phase_overhead_s"]["min"] == -0.5
    assert "flow_setup_s" not in summary
    table = overhead.markdown_table(runs, summary)
    assert (
        "| (a) bare `yolo train`, whole command | 20.0 s | 18.0 s | 25.0 s | 18.0 s, 20.0 s, 25.0 s |"
        in table
    )
    assert "| ratio (b) / (a) | 2.40× | 2.00× | 2.50× |" in table
    assert "+1.0 s | -0.5 s | +2.0 s" in table


def test_min_to_min_uses_the_fastest_run_of_each_command(overhead):
    runs = [
        {"bare_s": 18.0, "flow_s": 45.0, "phase_wall_s": 20.0},
        {"bare_s": 20.0, "flow_s": 40.0, "phase_wall_s": 17.5},
    ]
    figures = overhead.min_to_min(overhead.summarize(runs))
    assert figures == pytest.approx(
        {"ratio_flow_over_bare": 40.0 / 18.0, "per_phase_overhead_s": -0.5, "per_run_overhead_s": 22.5}
    )
    assert overhead.min_to_min_line(figures).endswith("per-phase overhead -0.5 s, per-run overhead +22.5 s.")


def test_machine_info_and_versions_are_recorded(overhead):
    info = overhead.machine_info()
    assert info["nproc"] >= 1 and info["ram_gib"] > 0
    assert set(overhead.versions()) >= {"torch", "ultralytics", "prefect"}


@pytest.mark.parametrize("script", ["gpu_memory.py", "vram_planner.py"])
def test_gpu_benchmark_exits_2_with_its_message_without_cuda(tmp_path, script):
    """On a machine without CUDA a GPU benchmark refuses at once, before generating anything."""
    import torch

    if torch.cuda.is_available():
        pytest.skip(f"this machine has CUDA: {script} would really measure")
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert f"{script} needs a CUDA GPU" in done.stderr and "Nothing was measured" in done.stderr
    assert not out.exists()
    assert not out.exists()


def test_the_tensorrt_latency_benchmark_exits_2_with_its_reason_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: export.py --tensorrt would really measure")
    out = tmp_path / "trt.json"
    done = subprocess.run([sys.executable, str(BENCH / "export.py"), "--tensorrt", "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "export.py --tensorrt: no CUDA GPU on this machine" in done.stderr and not out.exists()


def test_gpu_memory_plans_a_few_hundred_iterations_per_run(gpu_memory):
    assert gpu_memory.epochs_for(300, 240, 6) == 8  # 40 batches per epoch
    assert gpu_memory.epochs_for(300, 240, 8) == 10  # 30 batches per epoch
    assert gpu_memory.epochs_for(10, 240, 8) == 2  # at least two: images/s skips the first epoch


def test_gpu_memory_specs_are_the_plan_phases_at_640(gpu_memory, tmp_path):
    spec = gpu_memory.make_spec("yolo11m-p2-lite.yaml", 8, tmp_path / "data.yaml", 10, "0", tmp_path)
    assert spec.model.name == "yolo11m-p2-lite.yaml" and spec.model.parent == ROOT / "fod_models"
    assert spec.args["imgsz"] == 640 and spec.args["batch"] == 8 and spec.args["device"] == "0"
    assert spec.effective_batch == 16 and spec.run_dir == tmp_path / "yolo11m-p2-lite-b8"


@pytest.mark.slow
def test_gpu_memory_measure_returns_a_row_from_a_real_training(gpu_memory, demo_data, tmp_path):
    """measure() through the engine's trainer, on CPU at a tiny size: the row carries the PhaseResult's
    figures (no VRAM on CPU), and the table prints it."""
    spec = gpu_memory.make_spec("yolo11n-p2-lite.yaml", 4, demo_data, 2, "cpu", tmp_path)
    spec = spec.model_copy(update={"args": {**spec.args, "imgsz": 64, "workers": 0}})
    row = gpu_memory.measure(spec, "cpu")
    assert row["status"] == "completed", row["reason"]
    assert row["epochs"] == 2 and row["batch_used"] == 4
    assert row["images_per_s"] is not None and row["images_per_s"] > 0
    assert row["torch_peak_reserved_gb"] is None and row["nvml_peak_used_gb"] is None
    table = gpu_memory.markdown_table([row])
    assert "| yolo11n-p2-lite.yaml | 4 | completed | 2 |" in table


@pytest.mark.slow
def test_overhead_benchmark_runs_end_to_end_and_finds_every_mark(overhead, tmp_path, capsys):
    """One real repeat of one epoch: both commands succeed and every log mark is found, so the table
    splits the flow's wall time completely (this breaks when Prefect or Ultralytics reword a line)."""
    import json

    out = tmp_path / "overhead.json"
    assert overhead.main(["--repeats", "1", "--epochs", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    run = report["runs"][0]
    parts = [run[key] for key, *_ in overhead.SEGMENTS]
    assert None not in parts
    assert sum(parts) == pytest.approx(run["flow_s"], abs=1e-6)
    for key in (
        "start_overhead_s",
        "train_overhead_s",
        "end_overhead_s",
        "dry_run_s",
        "phase_wall_s",
        "engine_cpu_s",
    ):
        assert run[key] is not None, key
    assert report["versions"]["prefect"] != "not installed"
    assert "| **per-phase overhead** = phase wall − (a) |" in capsys.readouterr().out


def test_run_timed_stamps_marked_lines_and_counts_the_commands_cpu(overhead):
    """Marks get the arrival time of their first matching line; CPU time covers the command's own work."""
    code = (
        "import time\n"
        "print('first', flush=True)\n"
        "end = time.process_time() + 0.4\n"
        "while time.process_time() < end: pass\n"
        "print('second', flush=True)\n"
        "print('second again', flush=True)\n"
    )
    marks = {
        "a": overhead.re.compile("^first"),
        "b": overhead.re.compile("^second"),
        "c": overhead.re.compile("x"),
    }
    timed = overhead.run_timed([sys.executable, "-c", code], dict(os.environ), marks)
    assert timed.returncode == 0
    assert set(timed.marks) == {"a", "b"}
    assert 0 <= timed.marks["a"] < timed.marks["b"] <= timed.wall_s
    assert timed.cpu_s is not None and timed.cpu_s >= 0.35
    assert timed.log.splitlines()[-1].endswith(" second again")
