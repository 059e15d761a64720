"""The export step for real: Ultralytics' ONNX export, ONNX Runtime validation and timing, on the CPU.

The project's demo weights (yolo11n-p2, mAP50-95 ≈ 0.75 on the demo data) give parity a figure worth
checking; a damaged copy of the export must fail it; a flow trains the P2-lite model (the demo's
deployed one), times it for a latency gate and deploys it with its export.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from flows.demo_weights import CHECKPOINT_NAME, WEIGHTS_DIR
from flows.engine.config import OptimizeRequest, prepare
from flows.engine.decisions.gates import evaluate_gate
from flows.engine.errors import EXIT_RUN_ERROR, DeployError
from flows.engine.plan.export_settings import ExportSettings
from flows.engine.plan.schema import GateNode
from flows.engine.records.journal import Journal
from tasks.trainers.export import ExportContext, damage_onnx, export_and_check, require_parity, sha256_of

pytestmark = pytest.mark.integration

DEMO_WEIGHTS = WEIGHTS_DIR / CHECKPOINT_NAME
ONE_PHASE = ROOT / "benchmarks" / "plans" / "one_phase.yaml"


@pytest.fixture(scope="module")
def p2_export(demo_data, tmp_path_factory):
    """The demo's yolo11n-p2 weights exported to ONNX at the demo's 160 px, checked and timed."""
    out = tmp_path_factory.mktemp("p2-export")
    return export_and_check(DEMO_WEIGHTS, demo_data, ExportSettings(), imgsz=160, out_dir=out), out


def test_the_p2_model_exports_to_onnx_scores_what_best_pt_scores_and_is_timed(p2_export):
    report, out = p2_export
    [onnx] = report.models
    assert onnx.format == "onnx" and onnx.file == out / "best.onnx" and onnx.skipped is None
    assert onnx.sha256 == sha256_of(onnx.file) and onnx.bytes == onnx.file.stat().st_size
    assert report.weights_sha256 == sha256_of(DEMO_WEIGHTS)
    parity = onnx.parity
    assert parity is not None and parity.passed, parity.text()
    assert parity.reference.map50_95 > 0.5, "a figure worth comparing"
    for timed in (onnx.latency, report.reference):
        assert timed is not None and timed.runs == 100 and timed.warmup == 10 and timed.imgsz == 160
        for spread in (timed.total, timed.model, timed.preprocess, timed.postprocess):
            assert 0 < spread.median <= spread.p95
        assert timed.total.median > timed.model.median  # pre- and post-processing are apart
    assert report.reference.format == "pytorch" and onnx.latency.format == "onnx"
    require_parity("deploy", report)  # does not raise


def test_the_same_weights_and_settings_are_not_exported_again(p2_export, demo_data):
    report, out = p2_export
    before = (out / "best.onnx").stat().st_mtime_ns
    again = export_and_check(DEMO_WEIGHTS, demo_data, ExportSettings(), imgsz=160, out_dir=out)
    assert again == report and (out / "best.onnx").stat().st_mtime_ns == before


def test_a_damaged_export_fails_parity_and_stops_the_deploy_with_both_figures(p2_export, demo_data, tmp_path):
    report, out = p2_export
    bad = damage_onnx(out / "best.onnx", tmp_path / "best.onnx")
    context = ExportContext(demo_data, ExportSettings(), 160, tmp_path)
    checked = context.check("onnx", bad, out / "best.pt")
    assert checked.parity is not None and not checked.parity.passed
    assert checked.parity.reference == report.models[0].parity.reference
    broken = report.model_copy(update={"models": (checked,)})
    with pytest.raises(DeployError) as caught:
        require_parity("deploy_phase2", broken)
    message = str(caught.value)
    assert message.startswith("deploy_phase2: the exported model does not match best.pt: onnx: mAP50-95 ")
    assert (
        f"{checked.parity.exported.map50_95:.4f} exported vs {checked.parity.reference.map50_95:.4f}"
        in message
    )


def lite_plan(tmp: Path, max_ms: float) -> Path:
    """The one-phase plan with the demo's P2-lite phase (demo weights, head trained), a latency gate and
    an exporting deploy."""
    doc = yaml.safe_load(ONE_PHASE.read_text(encoding="utf-8"))
    doc["nodes"]["phase1"].update(  # the demo profile's phase2, 12 of its 20 epochs
        model="yolo11n-p2-lite.yaml",
        pretrained=str(DEMO_WEIGHTS),
        args={"epochs": 12, "lr0": 0.02, "freeze": 26, "warmup_epochs": 0},
    )
    doc["nodes"]["gate1"]["conditions"] = [
        {"check": "latency", "max_ms": max_ms, "format": "onnx", "stat": "p95"},
        {"check": "completed"},
    ]
    doc["nodes"]["deploy_phase1"]["export"] = {"formats": ["onnx"], "latency": {"warmup": 5, "runs": 100}}
    path = tmp / "plan.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def run_command(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m flows.optimize ARGV`` against the session's Prefect server."""
    from prefect.settings import PREFECT_API_URL

    environment = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PYTHONPATH": str(ROOT),
        **env,
    }
    return subprocess.run([sys.executable, "-m", "flows.optimize", *argv], check=False, cwd=ROOT,
                          env=environment, capture_output=True, text=True, timeout=600)  # fmt: skip


@pytest.mark.usefixtures("prefect_server")
def test_a_p2_lite_phase_timed_for_its_gate_a_broken_export_stops_the_deploy_and_a_rerun_deploys(tmp_path):
    """On the demo's own data (48 train images): the lite model's new head learns enough in 12 epochs
    for a damaged export to score visibly less than best.pt."""
    from flows.demo_data import generate_demo_dataset
    from flows.fod_flow import optimize_prepared

    demo_data = generate_demo_dataset(tmp_path / "demo")
    plan, runs = lite_plan(tmp_path, max_ms=60_000), tmp_path / "runs"
    first = run_command(["--plan", str(plan), "--data", str(demo_data), "--runs-dir", str(runs)],
                        FOD_DAMAGE_EXPORT="onnx")  # fmt: skip
    out = first.stdout + first.stderr
    assert first.returncode == EXIT_RUN_ERROR, out[-3000:]
    assert "deploy_phase1: the exported model does not match best.pt: onnx: mAP50-95 " in first.stderr, out[
        -3000:
    ]
    assert "exported vs" in first.stderr and "best.pt (" in first.stderr and "Traceback" not in out
    [run_dir] = [p for p in runs.iterdir() if p.name != "models"]
    assert not list((runs / "models").glob("*/v*/best.pt")), "nothing reached the registry"
    assert ("error", "deploy_phase1") in [(e.kind, e.key) for e in Journal(run_dir).entries()]

    # fixed (here: no more damage), the same request resumes: nothing trains again, the deploy exports anew
    request = OptimizeRequest(plan=plan, data=demo_data, runs_dir=runs)
    decision = optimize_prepared(prepare(request))
    assert decision.run_id == run_dir.name and decision.terminal == "deploy_phase1", decision.gates
    assert [e.key for e in Journal(run_dir).entries() if e.kind == "train"] == ["phase1"]
    [phase] = decision.phases
    assert phase.metrics.map50_95 > 0.2, "a figure a damaged export visibly misses"
    timed = phase.export  # the gate's export, in the training process, damaged in the first run
    assert timed is not None and not timed.model("onnx").parity.passed
    measured = timed.latency("onnx").total.p95
    [row, _] = decision.gates[0].rows
    assert row.condition == "latency onnx p95 (total) ms" and row.observed == f"{measured:.2f}"
    assert "parity FAILED" in row.note

    # the two sides of the measured figure
    gate = GateNode.model_validate(yaml.safe_load(plan.read_text(encoding="utf-8"))["nodes"]["gate1"])
    for max_ms, outcome in ((measured, "pass"), (measured * 0.999, "fail")):
        conds = [gate.conditions[0].model_copy(update={"max_ms": max_ms}), gate.conditions[1]]
        assert (
            evaluate_gate("gate1", gate.model_copy(update={"conditions": conds}), phase, {}).outcome
            == outcome
        )

    deployed = decision.deployed_export
    assert deployed is not None and deployed.model("onnx").parity.passed, deployed.parity_failures()
    assert deployed.model("onnx").latency.runs == 100 and deployed.model("onnx").latency.warmup == 5
    version = Path(decision.deployed_model).parent
    onnx = version / "best.onnx"
    assert version.name == "v1" and onnx.is_file() and sha256_of(onnx) == deployed.model("onnx").sha256
    card = (version / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "## Exported for deployment" in card and deployed.model("onnx").sha256 in card
    report = (run_dir / "REPORT.md").read_text(encoding="utf-8")
    assert "## Exported for deployment" in report and "| onnx | best.onnx |" in report
    assert "phase1: exported and timed for its gate" in report  # the damaged one, shown apart


@pytest.mark.gpu
def test_tensorrt_fp16_exports_and_is_timed_on_a_gpu(demo_data, tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    shutil.copy(DEMO_WEIGHTS, tmp_path / "demo.pt")
    settings = ExportSettings(formats=("onnx", "engine"), half=True, device="0")
    report = export_and_check(tmp_path / "demo.pt", demo_data, settings, imgsz=160, out_dir=tmp_path / "x")
    engine = report.model("engine")
    assert engine is not None and engine.skipped is None and engine.parity is not None
    assert engine.latency is not None and engine.latency.device == "0"
