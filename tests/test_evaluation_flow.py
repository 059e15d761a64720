"""Accuracy by object size and class, and how sure a gate is (issue 10), through the flow.

A real tiny training: best.pt is evaluated again by size bucket and class, the gate reads a bucket's
figure and the overall one with bootstrap intervals, the report and the model card show them; the same
evaluation saved as JSON is carried by the replay trainer (an addition to the SPEC format).
The evaluation's arithmetic (AP equal to Ultralytics', known-answer buckets, intervals) is tested in
``test_metrics.py``; real evaluations on the shared datasets in ``test_evaluate_real.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SHARED, needs_shared

from flows.engine.config import OptimizeRequest, prepare
from flows.engine.decisions.gates import evaluate_gate
from flows.engine.plan.schema import GateNode
from flows.engine.records.results import PhaseResult

pytestmark = pytest.mark.usefixtures("prefect_server")

ONE_PHASE = ROOT / "benchmarks" / "plans" / "one_phase.yaml"
SIZE_GATE = [
    {"check": "metric", "metric": "map50_95", "min": 0.9},
    {
        "check": "metric",
        "metric": "recall",
        "min": 0.0,
        "bucket": "16-32",
        "class": "bolt",
        "require": "lower_bound",
    },
    {"check": "metric", "metric": "map50_95", "min": 0.0, "images": "clean"},
]
LEAKED = 3
"""Train images copied (re-encoded, other names) into val: what the @clean figures leave out."""


def with_leaked_copies(data: Path, root: Path) -> Path:
    """The demo dataset with ``LEAKED`` of its train images re-encoded into val under other names."""
    import shutil

    from PIL import Image

    shutil.copytree(data.parent, root)
    train = sorted((root / "images" / "train").iterdir())[:LEAKED]
    for k, image in enumerate(train):
        with Image.open(image) as im:
            im.convert("RGB").save(root / "images" / "val" / f"frame_{k}.jpg", quality=70)
        shutil.copy(
            root / "labels" / "train" / f"{image.stem}.txt", root / "labels" / "val" / f"frame_{k}.txt"
        )
    copy = root / data.name
    copy.write_text(copy.read_text(encoding="utf-8").replace(f"path: {data.parent}", f"path: {root}"))
    return copy


def gate_with(conditions: list[dict]) -> GateNode:
    return GateNode.model_validate(
        {"kind": "gate", "subject": "phase1", "conditions": conditions, "on_pass": "a", "on_fail": "b"}
    )


@pytest.fixture(scope="module")
def evaluated_run(demo_data, tmp_path_factory):
    """One real training of the one-phase plan whose gate also reads recall of 16–32 px bolts."""
    from flows.fod_flow import optimize_prepared

    base = tmp_path_factory.mktemp("evaluated")
    doc = yaml.safe_load(ONE_PHASE.read_text(encoding="utf-8"))
    doc["nodes"]["gate1"]["conditions"] = SIZE_GATE
    plan = base / "plan.yaml"
    plan.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    data = with_leaked_copies(demo_data, base / "data")
    request = OptimizeRequest(
        plan=plan, data=data, runs_dir=base / "runs", overrides={"imgsz": 64, "epochs": 1}
    )
    decision = optimize_prepared(prepare(request))
    return decision, base / "runs" / decision.run_id


def test_best_pt_is_evaluated_by_size_and_class_with_intervals(evaluated_run):
    decision, _ = evaluated_run
    [phase1] = decision.phases
    ev = phase1.evaluation
    assert ev is not None and ev.sizes is not None and ev.intervals is not None
    assert [b.name for b in ev.settings.buckets] == ["lt16", "16-32", "32-64", "gt64"]
    assert ev.intervals.resamples >= 1000 and ev.intervals.level == 0.95
    for metric in ("precision", "recall", "map50", "map50_95"):
        interval = ev.interval(metric)
        assert interval is not None and interval.low <= interval.high
        assert ev.figure(metric) == pytest.approx(phase1.metrics.get(metric), abs=1e-6), (
            "the final validation's"
        )
    assert ev.sizes.class_id("bolt") == 0


def test_the_gate_reads_a_bucket_of_a_class_and_shows_intervals(evaluated_run):
    decision, run_dir = evaluated_run
    rows = decision.gates[0].rows
    assert rows[0].condition == "map50_95" and "[" in rows[0].observed, "observed with its interval"
    assert rows[1].condition == "recall [16-32, bolt]" and rows[1].threshold == "≥ 0.0000 (lower bound)"
    assert "lower bound" in rows[1].note
    report = (run_dir / "REPORT.md").read_text(encoding="utf-8")
    assert "## Accuracy by object size and class" in report and "| < 16 px |" in report
    assert " – " not in report and "None" not in report
    assert (run_dir / "sizes.png").is_file() or "no object" in report


def test_leaked_val_images_are_counted_left_out_of_clean_and_shown(evaluated_run):
    """The copies are in decision.json's counts, the @clean figures leave them out, the gate reads
    them, and the report shows both figures and the pairs as a contact sheet."""
    decision, run_dir = evaluated_run
    saved = json.loads((run_dir / "decision.json").read_text(encoding="utf-8"))
    near = saved["data_profile"]["near_duplicates"]
    assert near["val_in_train"] == LEAKED and near["cross"]["val"] == LEAKED
    clean = decision.phases[0].evaluation.clean
    assert clean is not None and clean.left_out == LEAKED and clean.images == 8
    row = decision.gates[0].rows[2]
    assert row.condition == "map50_95@clean" and row.observed.startswith(f"{clean.get('map50_95'):.4f}")
    report = (run_dir / "REPORT.md").read_text(encoding="utf-8")
    assert f"| clean 8 ({LEAKED} left out) |" in report
    assert "### Near-duplicates by content" in report and "frame_0.jpg" in report
    assert "![near-duplicate pairs](near_duplicates.png)" in report
    assert (run_dir / "near_duplicates.png").is_file()


def test_marginal_decisions_are_flagged_whatever_the_policy(evaluated_run):
    """A threshold inside the figure's interval is marginal, judged on the figure or on its lower bound;
    one outside is not. (The run's own tiny-model intervals have no width, so this one is set.)"""
    from flows.engine.records.evaluation import Interval

    decision, _ = evaluated_run
    [phase1] = decision.phases
    wide = phase1.evaluation.intervals.model_copy(update={"map50": Interval(low=0.40, high=0.60, level=0.95)})
    subject = phase1.model_copy(
        update={
            "metrics": phase1.metrics.model_copy(update={"map50": 0.5}),
            "evaluation": phase1.evaluation.model_copy(update={"intervals": wide}),
        }
    )
    cases = [
        ("observed", 0.55, "fail", True),
        ("lower_bound", 0.45, "fail", True),
        ("observed", 0.3, "pass", False),
    ]
    for require, minimum, verdict, marginal in cases:
        condition = {"check": "metric", "metric": "map50", "min": minimum, "require": require}
        row = evaluate_gate("g", gate_with([condition]), subject, {}).rows[0]
        assert (row.verdict, row.marginal) == (verdict, marginal), (require, minimum, row)
        assert row.observed == "0.5000 [0.4000, 0.6000]"


@needs_shared
def test_replay_carries_a_saved_evaluation(evaluated_run, tmp_path):
    """``evaluation:`` in a replay SPEC (a JSON of ``python -m tasks.trainers.evaluate --json``): the replayed
    result holds it and a bucket gate reads it."""
    from flows.engine.decisions.walk import train_spec
    from flows.engine.records.replay_spec import load_replay_spec
    from tasks.trainers.replay import ReplayTrainer

    decision, _ = evaluated_run
    saved = tmp_path / "evaluation.json"
    saved.write_text(decision.phases[0].evaluation.model_dump_json(), encoding="utf-8")
    spec_file = tmp_path / "replay.yaml"
    spec_file.write_text(
        f"default:\n  csv: {SHARED / 'curves' / '23.csv'}\n  evaluation: evaluation.json\n", encoding="utf-8"
    )
    replay = load_replay_spec(spec_file)
    cfg = prepare(
        OptimizeRequest(plan=ONE_PHASE, data=Path(decision.phases[0].evaluation.data), replay=spec_file)
    )
    result = ReplayTrainer(replay).train(train_spec(cfg, tmp_path / "run", "phase1"), lambda _: None)
    assert result.evaluation == decision.phases[0].evaluation
    row = evaluate_gate("g", gate_with(SIZE_GATE[1:]), result, {}).rows[0]
    assert row.condition == "recall [16-32, bolt]" and row.verdict in ("pass", "fail")
    assert json.loads(result.model_dump_json())["evaluation"]["settings"]["confidence"] == 0.95
    assert isinstance(
        PhaseResult.model_validate_json(result.model_dump_json()).evaluation.sizes.classes, tuple | list
    )
