"""Export settings, latency conditions and their gate rows: pure logic, no Ultralytics run.

The export step itself (real ONNX exports, parity, timing) is in test_export_real.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import SHIPPED_PLAN
from pydantic import ValidationError

from flows.engine.decisions.early import decide
from flows.engine.decisions.gates import evaluate_gate
from flows.engine.plan.export_settings import ExportSettings
from flows.engine.plan.exports import export_lines, export_problems, gate_export
from flows.engine.plan.schema import GateNode, Plan
from flows.engine.records.export import ExportedModel, ExportReport, Figures, Latency, Parity, Spread
from flows.engine.records.results import EpochEvent, EpochRecord, PhaseResult


def shipped(**gate2: object) -> Plan:
    doc = yaml.safe_load(SHIPPED_PLAN.read_text(encoding="utf-8"))
    doc["nodes"]["gate2"].update(gate2)
    return Plan.model_validate(doc)


LATENCY = {"check": "latency", "max_ms": 25, "format": "onnx", "stat": "p95"}


def latency(fmt: str, median: float, p95: float) -> Latency:
    spread = Spread(median=median, p95=p95)
    small = Spread(median=0.5, p95=0.7)
    return Latency(format=fmt, device="cpu", imgsz=160, batch=1, warmup=10, runs=100,
                   preprocess=small, model=spread, postprocess=small,
                   total=Spread(median=median + 1.0, p95=p95 + 1.4))  # fmt: skip


def report(onnx_p95: float, parity_diff: float = 0.0, skipped: str | None = None) -> ExportReport:
    parity = Parity(reference=Figures(map50_95=0.7, map50=0.9),
                    exported=Figures(map50_95=0.7 + parity_diff, map50=0.9), tolerance=0.005)  # fmt: skip
    timed = latency("onnx", onnx_p95 - 3, onnx_p95)
    onnx = ExportedModel(format="onnx", file=Path("best.onnx"), sha256="ab", bytes=10, export_s=1.0,
                         parity=parity, latency=timed)  # fmt: skip
    if skipped:
        onnx = ExportedModel(format="onnx", skipped=skipped)
    return ExportReport(settings=ExportSettings(), weights=Path("best.pt"), weights_sha256="cd", imgsz=160,
                        reference=latency("pytorch", 20.0, 26.0), models=(onnx,))  # fmt: skip


def subject(export: ExportReport | None) -> PhaseResult:
    return PhaseResult(node="p", epochs_planned=10, epochs_done=10, export=export)


def gate(*conditions: dict) -> GateNode:
    return GateNode.model_validate(
        {"kind": "gate", "subject": "p", "conditions": list(conditions), "on_pass": "y", "on_fail": "n"}
    )


def test_export_settings_give_ultralytics_its_own_arguments():
    settings = ExportSettings(half=True, opset=17, imgsz=320, batch=2)
    args = settings.export_args("onnx", 160)
    assert args == {"format": "onnx", "imgsz": 160, "batch": 2, "dynamic": False, "simplify": True,
                    "device": "cpu", "quantize": 16, "opset": 17}  # fmt: skip
    assert "half" not in args  # Ultralytics 8.4 replaced half with quantize: 16
    assert ExportSettings(parity_tolerance="0.5%").parity_tolerance == pytest.approx(0.005)
    for bad in ({"formats": ["onnx", "onnx"]}, {"parity_tolerance": 5}, {"formats": ["tflite"]},
                {"latency": {"runs": 20}}, {"device": True}, {"halve": True}):  # fmt: skip
        with pytest.raises(ValidationError):
            ExportSettings.model_validate(bad)


def test_the_shipped_plan_exports_each_deploy_to_onnx_and_times_nothing_before_a_gate():
    plan = shipped()
    for name in ("deploy_phase1", "deploy_phase2", "deploy_phase3"):
        assert plan.nodes[name].export == ExportSettings(formats=("onnx",))
    assert all(gate_export(plan, node) is None for node in plan.train_nodes())
    assert export_problems(plan, "plan.yaml") == []
    assert len(export_lines(plan)) == 3


def test_a_latency_condition_exports_its_subject_as_the_deploy_it_passes_to():
    plan = shipped(conditions=[LATENCY, {"check": "latency", "max_ms": 40, "format": "pytorch"}])
    settings = gate_export(plan, "phase2")
    assert settings is not None and settings.formats == ("onnx",)
    assert settings.with_formats(()) == plan.nodes["deploy_phase2"].export.with_formats(())
    assert gate_export(plan, "phase1") is None
    only_torch = shipped(conditions=[{"check": "latency", "max_ms": 40, "format": "pytorch"}])
    assert gate_export(only_torch, "phase2").formats == ()  # best.pt is timed in every export step
    lines = export_lines(plan)
    assert any(line.startswith("phase2: exported") and "gate2" in line for line in lines)


def test_latency_of_a_format_nobody_exports_or_tensorrt_on_the_cpu_is_refused():
    plan = shipped(conditions=[{**LATENCY, "format": "openvino"}])
    [problem] = export_problems(plan, "plan.yaml")
    assert problem.where == "nodes.gate2.conditions[0].format" and "does not export" in problem.message
    doc = yaml.safe_load(SHIPPED_PLAN.read_text(encoding="utf-8"))
    doc["nodes"]["deploy_phase1"]["export"] = {"formats": ["onnx", "engine"]}
    [problem] = export_problems(Plan.model_validate(doc), "plan.yaml")
    assert problem.where == "nodes.deploy_phase1.export.device" and "GPU" in problem.message
    doc["nodes"]["deploy_phase1"]["export"] = {"formats": ["onnx", "engine"], "device": "0"}
    assert export_problems(Plan.model_validate(doc), "plan.yaml") == []
    doc["nodes"]["deploy_phase1"]["export"] = {"formats": []}  # best.pt timed only
    assert export_problems(Plan.model_validate(doc), "plan.yaml") == []


@pytest.mark.parametrize(
    ("cond", "verdict"),
    [
        ({**LATENCY, "max_ms": 16.3}, "fail"),  # total p95 = 15.0 + 1.4
        ({**LATENCY, "max_ms": 16.4}, "pass"),
        ({**LATENCY, "max_ms": 16.3, "part": "model"}, "pass"),
        ({**LATENCY, "max_ms": 14.9, "part": "model"}, "fail"),
        ({**LATENCY, "max_ms": 13.0, "stat": "median"}, "pass"),  # total median = 12 + 1
        ({**LATENCY, "max_ms": 12.9, "stat": "median"}, "fail"),
        ({**LATENCY, "max_ms": 26.0, "format": "pytorch", "part": "model"}, "pass"),
        ({**LATENCY, "max_ms": 25.9, "format": "pytorch", "part": "model"}, "fail"),
    ],
)
def test_a_latency_condition_reads_the_stat_and_part_it_names(cond, verdict):
    rows = evaluate_gate("g", gate(cond), subject(report(onnx_p95=15.0)), {}).rows
    assert rows[0].verdict == verdict and rows[0].passed == (verdict == "pass")
    assert rows[0].condition.startswith(f"latency {cond['format']} {cond.get('stat', 'p95')}")


def test_latency_without_a_measurement_is_unknown_and_says_why():
    cond = {**LATENCY, "on_unknown": "pass"}
    [row] = evaluate_gate("g", gate(cond), subject(None), {}).rows
    assert (row.verdict, row.passed) == ("unknown", True) and "not exported" in row.note
    skipped = report(15.0, skipped="TensorRT is not installed on this machine")
    [row] = evaluate_gate("g", gate(LATENCY), subject(skipped), {}).rows
    assert (row.verdict, row.passed) == ("unknown", False) and "TensorRT is not installed" in row.note
    [row] = evaluate_gate("g", gate(LATENCY), subject(report(15.0, parity_diff=-0.02)), {}).rows
    assert row.verdict == "pass" and "parity FAILED" in row.note and "0.6800 exported" in row.note


def test_parity_holds_within_the_tolerance_either_way_and_names_both_figures():
    assert report(15.0, parity_diff=0.005).parity_failures() == []
    assert report(15.0, parity_diff=-0.005).parity_failures() == []
    [line] = report(15.0, parity_diff=0.0051).parity_failures()
    assert line.startswith("onnx: mAP50-95 0.7051 exported vs 0.7000 best.pt (+0.0051, beyond ±0.005)")


def test_latency_conditions_are_never_decided_early():
    g = GateNode.model_validate({"kind": "gate", "subject": "p", "conditions": [{**LATENCY, "max_ms": 0.001}],
                                 "early": {"policy": "aggressive"}, "on_pass": "y", "on_fail": "n"})  # fmt: skip
    history = [
        EpochEvent(node="p", epochs_planned=100, record=EpochRecord(epoch=e, map50_95=0.01), images_per_s=1.0)
        for e in range(1, 60)
    ]
    assert decide(g, history, 100, {}) is None
