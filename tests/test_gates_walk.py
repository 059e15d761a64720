"""Gates and the tree walk as plain Python: no Prefect, no torch."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPLAYS, SHIPPED_PLAN, StepExecutor

from flows.engine.config import OptimizeRequest, prepare
from flows.engine.decisions.gates import evaluate_gate, shortfalls, speedup_of
from flows.engine.decisions.monitors import check_monitors
from flows.engine.decisions.walk import walk_tree
from flows.engine.plan.schema import GateNode, Monitor, SearchNode
from flows.engine.plan.tree import always_before, find_cycle, paths
from flows.engine.records.evaluation import Interval, MetricIntervals
from flows.engine.records.results import (
    EpochEvent,
    EpochRecord,
    GateResult,
    PhaseResult,
    TrainSpec,
    TrialRecord,
    ValMetrics,
)
from tasks.step import TrainingStep


def result(node: str = "p", **kw) -> PhaseResult:
    """A PhaseResult with sensible completed defaults."""
    base = {"epochs_planned": 10, "epochs_done": 10, "images_per_s": 100.0}
    base.update(kw)
    return PhaseResult(node=node, **base)


def gate(*conditions: dict, on_unknown: str = "fail") -> GateNode:
    return GateNode.model_validate(
        {
            "kind": "gate",
            "subject": "p",
            "conditions": list(conditions),
            "on_unknown": on_unknown,
            "on_pass": "yes",
            "on_fail": "no",
        }
    )


MAP = {"check": "metric", "metric": "map50_95", "min": 0.915}


def test_metric_gate_passes_at_threshold_and_fails_below():
    g = gate(MAP)
    assert evaluate_gate("g", g, result(metrics=ValMetrics(map50_95=0.915)), {}).next == "yes"
    failed = evaluate_gate("g", g, result(metrics=ValMetrics(map50_95=0.9149)), {})
    assert failed.outcome == "fail" and failed.next == "no"
    assert failed.rows[0].observed == "0.9149" and failed.rows[0].threshold == "≥ 0.9150"


def test_missing_metric_is_unknown_and_policy_decides():
    subject = result(metrics=ValMetrics(map50_95=None))
    assert evaluate_gate("g", gate(MAP), subject, {}).rows[0].verdict == "unknown"
    assert evaluate_gate("g", gate(MAP), subject, {}).outcome == "fail"
    assert evaluate_gate("g", gate(MAP, on_unknown="pass"), subject, {}).outcome == "pass"


def test_vram_unknown_without_gpu_uses_condition_policy():
    vram = {"check": "vram", "max_gb": 20, "figure": "nvml_peak", "on_unknown": "pass"}
    row = evaluate_gate("g", gate(vram), result(), {}).rows[0]
    assert (row.verdict, row.passed) == ("unknown", True)
    assert "unknown counts as pass" in row.note
    over = evaluate_gate("g", gate(vram), result(nvml_peak_used_gb=20.5), {})
    assert over.outcome == "fail"


def test_vram_both_reads_the_larger_figure():
    both = {"check": "vram", "max_gb": 18, "figure": "both"}
    r = result(nvml_peak_used_gb=17.0, torch_peak_reserved_gb=18.5)
    assert evaluate_gate("g", gate(both), r, {}).outcome == "fail"


def test_speedup_compares_images_per_second():
    cond = {"check": "speedup", "vs": "ref", "min": 0.25}
    ref = result("ref", images_per_s=40.0)
    assert speedup_of(result(images_per_s=50.0), ref) == pytest.approx(0.25)
    assert evaluate_gate("g", gate(cond), result(images_per_s=50.0), {"ref": ref}).outcome == "pass"
    assert evaluate_gate("g", gate(cond), result(images_per_s=49.9), {"ref": ref}).outcome == "fail"
    missing = evaluate_gate("g", gate(cond), result(images_per_s=50.0), {})
    assert missing.rows[0].verdict == "unknown" and "ref did not run" in missing.rows[0].note


def test_divergence_and_incomplete_runs_fail():
    flags = ({"check": "no_divergence"}, {"check": "completed"})
    diverged = result(
        diverged=True, status="diverged", reason="NaN loss; recoveries exhausted", nan_recoveries=3
    )
    rows = evaluate_gate("g", gate(*flags), diverged, {}).rows
    assert rows[0].verdict == "fail" and "recoveries exhausted" in rows[0].note
    stopped = evaluate_gate("g", gate(*flags), result(epochs_done=7, status="stopped"), {})
    assert stopped.rows[1].observed == "7/10" and stopped.outcome == "fail"


def test_gate_without_subject_result_fails():
    r = evaluate_gate("g", gate(MAP), None, {})
    assert r.outcome == "fail" and r.rows[0].observed == "no result"


def test_shortfalls_say_by_how_much():
    r = evaluate_gate("g", gate(MAP), result(metrics=ValMetrics(map50_95=0.9)), {})
    assert shortfalls(r) == ["g: map50_95 observed 0.9000, needed ≥ 0.9150"]


def test_a_search_whose_trials_all_tie_says_so():
    """Nine trials at mAP50-95 0.0000 (tiny models): no trial is 'the best', and the note says so."""
    from flows.engine.decisions.study import best_of
    from flows.engine.decisions.walk import best_note

    search = SearchNode.model_validate(
        {
            "kind": "search",
            "base": "p",
            "space": {"lr0": [0.01, 0.02]},
            "design": {"method": "grid", "max_trials": 2},
            "trial_epochs": 1,
            "next": "g",
        }
    )

    def trial(number: int, value: float | None, state: str = "complete") -> TrialRecord:
        return TrialRecord(number=number, point={"lr0": 0.01 * (number + 1)}, state=state, value=value)

    tied = [trial(i, 0.0) for i in range(3)]
    best = best_of(tied)
    assert best is not None and best.all_tie
    note = best_note("phase3", search.select, best)
    assert "all 3 trials tie at map50_95 0.0000" in note and "best trial" not in note
    spread = best_of([*tied[:2], trial(2, 0.1)])
    assert spread is not None and not spread.all_tie
    assert best_note("phase3", search.select, spread).startswith("phase3: best trial 2")
    assert not best_of(tied[:1]).all_tie, "one trial cannot tie"  # type: ignore[union-attr]
    assert not best_of([tied[0], trial(1, None, "failed")]).all_tie  # type: ignore[union-attr]


def test_figures_that_do_not_exist_read_na_with_the_reason():
    """The report's phase table and the model card never print None."""
    from flows.engine.outputs.registry import model_card
    from flows.engine.outputs.report import phase_rows

    cpu = result(
        node="phase1", status="diverged", diverged=True, batch_used=8, accumulate=2, effective_batch=16
    )
    unmeasured = result(node="phase2", images_per_s=None)
    text = "\n".join(phase_rows([cpu, unmeasured])) + model_card("p", "v1", cpu, [], ["phase1"], "abc")
    assert "None" not in text
    assert "n/a (diverged)" in text and "n/a (no GPU)" in text and "n/a (not trained)" in text
    assert "8×2=16" in text and "n/a (not measured)" in text


def test_monitors_warn_from_their_epoch_on():
    by50 = Monitor(name="m", figure="map50", min=0.99, by_epoch=50)
    vram = Monitor(name="v", figure="nvml_used_gb", max=18)

    def event(epoch: int, map50: float, nvml: float | None) -> EpochEvent:
        rec = EpochRecord(epoch=epoch, map50=map50)
        return EpochEvent(node="p", epochs_planned=100, record=rec, nvml_used_gb=nvml)

    assert check_monitors([by50, vram], event(10, 0.5, None)) == []
    hits = check_monitors([by50, vram], event(50, 0.5, 18.2))
    assert [h.monitor.name for h in hits] == ["m", "v"]
    assert "expected ≥ 0.99" in hits[0].message("phase1")


class PlainExecutor(StepExecutor):
    """Runs the walk without Prefect: the training step over the replay trainer (no journal), and lists
    for what was published."""

    def __init__(self, spec: Path):
        from tasks.trainers.replay import ReplayTrainer

        super().__init__(TrainingStep(ReplayTrainer.from_file(spec)), observe=self.count)
        self.gates: list[GateResult] = []
        self.entered: list[str] = []
        self.epochs = 0

    def count(self, _: EpochEvent) -> None:
        self.epochs += 1

    def gate(self, result: GateResult) -> None:
        self.gates.append(result)

    def enter(self, node: str, index: int) -> None:
        self.entered.append(node)


@pytest.mark.parametrize(
    ("spec", "terminal"),
    [
        ("deploy_phase1", "deploy_phase1"),
        ("deploy_phase3", "deploy_phase3"),
        ("keep_baseline", "keep_baseline"),
    ],
)
def test_walk_without_prefect(spec, terminal, demo_data, tmp_path):
    """The walk is plain Python: the same tree reaches the same terminal with any executor."""
    cfg = prepare(OptimizeRequest(plan=SHIPPED_PLAN, data=demo_data, replay=REPLAYS / f"{spec}.yaml"))
    ex = PlainExecutor(REPLAYS / f"{spec}.yaml")
    state = walk_tree(cfg, tmp_path, ex)
    assert state.terminal == terminal
    assert ex.entered == state.path
    assert [g.node for g in ex.gates] == [n for n in state.path if n.startswith("gate")]
    if "phase3" in state.path:
        assert len(state.trials) == 9
        assert {t.trial for t in state.trials} == set(range(9))
        assert all(t.epochs_done == 20 and t.epochs_planned == 100 for t in state.trials), "prefix trials"
        assert state.results["phase3"].epochs_planned == 100
        assert any("latin hypercube, 9 trials" in n for n in state.notes)


def test_tree_helpers_on_shipped_plan(demo_data):
    plan = prepare(OptimizeRequest(plan=SHIPPED_PLAN, data=demo_data)).plan
    assert find_cycle(plan) is None
    assert len(list(paths(plan))) == 4
    assert always_before(plan, "phase1", "gate2")
    assert not always_before(plan, "phase2", "deploy_phase1")


def test_replay_honours_stop_training(tmp_path):
    """A monitor's stop ends a replayed run after that epoch, as it would a real one."""
    from flows.engine.decisions.monitors import StopTraining
    from tasks.trainers.replay import ReplayTrainer

    def stop_at_3(event: EpochEvent) -> None:
        if event.record.epoch == 3:
            raise StopTraining("monitor said stop")

    spec = TrainSpec(plan="p", node="phase1", model=Path("m.yaml"), data=Path("d.yaml"), args={"epochs": 100},
                     run_dir=tmp_path / "phase1")  # fmt: skip
    result = ReplayTrainer.from_file(REPLAYS / "keep_baseline.yaml").train(spec, stop_at_3)
    assert (result.status, result.reason, result.epochs_done) == ("stopped", "monitor said stop", 3)


@pytest.mark.parametrize(
    ("device", "slots"),
    [
        (None, ["gpu-0"]),
        (0, ["gpu-0"]),
        ("1", ["gpu-1"]),
        ("0,1", ["gpu-0", "gpu-1"]),
        ("cpu", []),
        ("cuda:2", ["gpu-2"]),
    ],
)
def test_gpu_slots_name_one_limit_per_card(device, slots, tmp_path):
    from tasks.train import gpu_slots

    args = {} if device is None else {"device": device}
    spec = TrainSpec(
        plan="p", node="n", model=Path("m.yaml"), data=Path("d.yaml"), args=args, run_dir=tmp_path
    )
    assert gpu_slots(spec) == slots


# ----------------------------------------------------------------------------------------- @clean figures


def with_clean(all_map: float, clean_map: float | None) -> PhaseResult:
    """A result whose evaluation has figures on all images and, unless None, on the clean ones."""
    from flows.engine.records.evaluation import CleanFigures, Evaluation, OverallFigures

    clean = (
        None
        if clean_map is None
        else CleanFigures(
            rule="phash 8x8, Hamming distance ≤ 11",
            images=60,
            left_out=12,
            overall=OverallFigures(map50_95=clean_map),
            intervals=MetricIntervals(
                map50_95=Interval(low=clean_map - 0.02, high=clean_map + 0.02, level=0.95),
                level=0.95,
                resamples=1000,
                seed=0,
                images=60,
                seconds=0.1,
            ),
        )
    )
    evaluation = Evaluation(
        weights="w", data="d", imgsz=640, images=72, overall=OverallFigures(map50_95=all_map), clean=clean
    )
    return result(metrics=ValMetrics(map50_95=all_map), evaluation=evaluation)


def test_a_gate_on_the_clean_figure_reads_the_images_without_near_duplicates_in_train():
    """All images pass 0.915, the clean ones do not: the gate on @clean fails, the plain one passes."""
    subject = with_clean(0.93, 0.90)
    plain = evaluate_gate("g", gate(MAP), subject, {})
    clean = evaluate_gate("g", gate({**MAP, "images": "clean"}), subject, {})
    assert plain.outcome == "pass" and clean.outcome == "fail"
    [row] = clean.rows
    assert row.condition == "map50_95@clean" and row.observed.startswith("0.9000")
    assert "[0.8800, 0.9200]" in row.observed
    unknown = evaluate_gate("g", gate({**MAP, "images": "clean"}), with_clean(0.93, None), {})
    assert unknown.outcome == "fail" and unknown.rows[0].verdict == "unknown"


def test_clean_reads_the_overall_figures_only():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="images: clean reads the overall figures"):
        gate({**MAP, "images": "clean", "bucket": "lt16"})
