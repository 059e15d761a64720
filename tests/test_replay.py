"""The replay trainer on real curves from ../shared/curves and from the project's own corpus
(benchmarks/curves/corpus), and the shipped replay SPECs (which read only the corpus: they run on a fresh
clone)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from flows.engine.fsutil import AlreadyExistsError
from flows.engine.records.replay_spec import ReplaySpecError, RunEntry, SearchEntry, load_replay_spec
from flows.engine.records.results import EpochEvent, PhaseResult, TrainSpec
from flows.engine.records.results_csv import read_results_csv
from tasks.trainers.replay import DIVERGED_REASON, ReplayTrainer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CURVES = SHARED / "curves"
CORPUS = ROOT / "benchmarks" / "curves" / "corpus"
"""Real public results.csv curves committed in the project (epoch, precision, recall, mAP50, mAP50-95)."""
REPLAYS = Path(__file__).resolve().parent / "replays"
SHIPPED = ["deploy_phase1", "deploy_phase2", "deploy_phase3", "keep_baseline"]
needs_curves = pytest.mark.skipif(
    not (CURVES / "29.csv").is_file(), reason=f"real curves not found at {CURVES}"
)


def write_spec(tmp_path: Path, text: str, name: str = "replay.yaml") -> Path:
    """A SPEC in tmp_path whose ``CURVES`` and ``CORPUS`` placeholders point at the real curves."""
    path = tmp_path / name
    text = textwrap.dedent(text).replace("CURVES", str(CURVES)).replace("CORPUS", str(CORPUS))
    path.write_text(text, encoding="utf-8")
    return path


def train_spec(tmp_path: Path, node: str = "phase1", trial: int | None = None, **args: object) -> TrainSpec:
    effective_batch = args.pop("effective_batch", None)
    run = f"{node}-{trial}" if trial is not None else node
    return TrainSpec(
        plan="test",
        node=node,
        trial=trial,
        model=Path("yolo11n.yaml"),
        data=Path("data.yaml"),
        args={"epochs": 100, **args},
        effective_batch=effective_batch,
        run_dir=tmp_path / "runs" / run,
    )


def replay(trainer: ReplayTrainer, spec: TrainSpec) -> tuple[PhaseResult, list[EpochEvent]]:
    events: list[EpochEvent] = []
    return trainer.train(spec, events.append), events


@pytest.fixture
def plain(tmp_path: Path) -> ReplayTrainer:
    return ReplayTrainer.from_file(write_spec(tmp_path, "nodes:\n  phase1:\n    csv: CURVES/29.csv\n"))


# --- replaying a curve ---------------------------------------------------------------------------


@needs_curves
def test_events_stream_the_recorded_epochs(tmp_path: Path, plain: ReplayTrainer) -> None:
    result, events = replay(plain, train_spec(tmp_path, epochs=50))
    records = read_results_csv(CURVES / "29.csv")
    assert [e.record for e in events] == list(records)
    assert {(e.node, e.trial, e.epochs_planned) for e in events} == {("phase1", None, 50)}
    assert result.history == records
    assert (result.status, result.reason, result.completed) == ("completed", None, True)
    assert (result.epochs_planned, result.epochs_done) == (50, 50)
    assert result.metrics.map50_95 == 0.93024  # epoch 50 is best.pt
    assert result.metrics.map50 == records[-1].map50
    assert result.wall_s == records[-1].time_s
    assert result.images_per_s is None  # no figure given and the number of training images is unknown


@needs_curves
def test_longer_curve_is_cut_at_planned_epochs(tmp_path: Path, plain: ReplayTrainer) -> None:
    result, events = replay(plain, train_spec(tmp_path, epochs=20))
    assert [e.record.epoch for e in events] == list(range(1, 21))
    assert (result.status, result.epochs_done, result.completed) == ("completed", 20, True)
    assert result.metrics.map50_95 == 0.90857  # best of the first 20 epochs, not of all 50


@needs_curves
def test_shorter_curve_stops_the_run(tmp_path: Path, plain: ReplayTrainer) -> None:
    result, events = replay(plain, train_spec(tmp_path))  # 100 planned, 50 recorded
    assert len(events) == 50
    assert (result.status, result.epochs_planned, result.epochs_done) == ("stopped", 100, 50)
    assert not result.completed
    assert "50 of 100" in (result.reason or "")


@needs_curves
def test_metrics_come_from_the_best_fitness_epoch(tmp_path: Path) -> None:
    trainer = ReplayTrainer.from_file(write_spec(tmp_path, "nodes:\n  p:\n    csv: CURVES/33.csv\n"))
    result, _ = replay(trainer, train_spec(tmp_path, "p", epochs=50))
    best = result.history[40]  # epoch 41: top fitness, though epoch 50 has the top mAP50-95
    assert result.metrics.model_dump() == {
        "precision": best.precision,
        "recall": best.recall,
        "map50": best.map50,
        "map50_95": 0.43514,
    }


@needs_curves
def test_written_files(tmp_path: Path, plain: ReplayTrainer) -> None:
    spec = train_spec(tmp_path, epochs=30)
    result, _ = replay(plain, spec)
    assert result.results_csv == spec.run_dir / "results.csv"
    assert result.weights == spec.run_dir / "weights" / "best.pt"
    assert read_results_csv(result.results_csv) == result.history
    note = result.weights.read_text(encoding="utf-8")
    assert "REPLAY" in note and "29.csv" in note
    again, _ = replay(plain, spec)  # a resumed step writes the very same files again: accepted
    assert again.results_csv == result.results_csv
    with pytest.raises(AlreadyExistsError):  # different content is never written over a run's files
        replay(plain, spec.model_copy(update={"args": {**spec.args, "epochs": 20}}))


# --- overrides -----------------------------------------------------------------------------------


@needs_curves
def test_figure_overrides(tmp_path: Path) -> None:
    trainer = ReplayTrainer.from_file(
        write_spec(
            tmp_path,
            """
            nodes:
              phase2:
                csv: CURVES/23.csv
                images_per_s: 52.5
                inference_ms: 3.1
                torch_peak_reserved_gb: 12.5
                nvml_peak_used_gb: 14.0
                gpu_name: NVIDIA RTX 4090
                nan_recoveries: 2
            """,
        )
    )
    result, events = replay(trainer, train_spec(tmp_path, "phase2"))
    assert (result.images_per_s, result.inference_ms, result.gpu_name) == (52.5, 3.1, "NVIDIA RTX 4090")
    assert (result.torch_peak_reserved_gb, result.nvml_peak_used_gb) == (12.5, 14.0)
    assert (result.nan_recoveries, result.status) == (2, "completed")
    assert {(e.images_per_s, e.torch_reserved_gb, e.nvml_used_gb) for e in events} == {(52.5, 12.5, 14.0)}
    assert [e.nan_recoveries for e in events][-2:] == [0, 2]


@needs_curves
def test_offset_and_scale_change_the_gated_metric(tmp_path: Path) -> None:
    trainer = ReplayTrainer.from_file(
        write_spec(
            tmp_path,
            """
            nodes:
              up: {csv: CURVES/25.csv, offset_map50_95: 0.16}
              down: {csv: CURVES/29.csv, scale_map: 0.5}
              clipped: {csv: CURVES/29.csv, scale_map: 2.0}
            """,
        )
    )
    up, events = replay(trainer, train_spec(tmp_path, "up"))
    assert up.metrics.map50_95 == pytest.approx(0.77149 + 0.16)
    assert events[-1].record.map50_95 == up.history[-1].map50_95  # monitors see what the gate sees
    assert up.metrics.precision == read_results_csv(CURVES / "25.csv")[-1].precision  # untouched
    down, _ = replay(trainer, train_spec(tmp_path, "down", epochs=50))
    assert (down.metrics.map50_95, down.metrics.map50) == pytest.approx((0.93024 / 2, 0.99388 / 2))
    clipped, _ = replay(trainer, train_spec(tmp_path, "clipped", epochs=50))
    assert max(r.map50 or 0 for r in clipped.history) == 1.0
    assert max(r.map50_95 or 0 for r in clipped.history) == 1.0


@needs_curves
def test_diverged_run(tmp_path: Path) -> None:
    trainer = ReplayTrainer.from_file(
        write_spec(tmp_path, "nodes:\n  p: {csv: CURVES/21.csv, diverged: true, nan_recoveries: 3}\n")
    )
    result, events = replay(trainer, train_spec(tmp_path, "p"))
    assert (result.status, result.reason, result.diverged) == ("diverged", DIVERGED_REASON, True)
    assert (result.epochs_done, result.nan_recoveries, events[-1].nan_recoveries) == (52, 3, 3)


@needs_curves
def test_images_per_s_from_time_column_when_image_count_given(tmp_path: Path) -> None:
    trainer = ReplayTrainer.from_file(
        write_spec(tmp_path, "nodes:\n  p: {csv: CURVES/29.csv, train_images: 1000}\n")
    )
    result, events = replay(trainer, train_spec(tmp_path, "p", epochs=3))
    # cumulative times 217.4, 427.245, ...: epoch 2 took 209.845 s
    assert events[0].images_per_s == pytest.approx(1000 / 217.4)
    assert events[1].images_per_s == pytest.approx(1000 / 209.845)
    durations = [217.4, 427.245 - 217.4, result.history[2].time_s - 427.245]  # type: ignore[operator]
    # the run figure: median over the epochs after the first (here the mean of epochs 2 and 3)
    assert result.images_per_s == pytest.approx((1000 / durations[1] + 1000 / durations[2]) / 2)


@needs_curves
@pytest.mark.parametrize(
    ("args", "effective_batch", "batch_used", "expected"),
    [
        ({}, None, None, (16, 16, 64, 4, 64)),  # Ultralytics defaults
        ({"batch": 6}, None, None, (6, 6, 64, 11, 66)),  # the plan's "batch 6, accumulate 3" trap
        ({"batch": 6}, 18, None, (6, 6, 18, 3, 18)),  # effective_batch turned into nbs
        ({"batch": 6}, 18, 3, (6, 3, 18, 6, 18)),  # OOM halving: accumulation recomputed
        ({"batch": 32}, None, None, (32, 32, 64, 2, 64)),
        ({"batch": 128}, None, None, (128, 128, 64, 1, 128)),  # never less than one step
        ({"batch": -1}, None, None, (None, None, 64, None, None)),  # AutoBatch: unknown without batch_used
        ({"batch": 10, "nbs": 40}, None, None, (10, 10, 40, 4, 40)),
    ],
)
def test_batch_figures_follow_ultralytics(
    tmp_path: Path,
    args: dict[str, object],
    effective_batch: int | None,
    batch_used: int | None,
    expected: tuple[int | None, ...],
) -> None:
    used = f", batch_used: {batch_used}" if batch_used else ""
    trainer = ReplayTrainer.from_file(write_spec(tmp_path, f"nodes:\n  p: {{csv: CURVES/29.csv{used}}}\n"))
    spec = train_spec(tmp_path, "p", epochs=2, effective_batch=effective_batch, **args)
    result, _ = replay(trainer, spec)
    observed = (
        result.batch_requested,
        result.batch_used,
        result.nbs,
        result.accumulate,
        result.effective_batch,
    )
    assert observed == expected
    assert result.args["nbs"] == expected[2]


# --- nodes, searches, defaults -------------------------------------------------------------------


SEARCH_SPEC = """
default:
  csv: CURVES/23.csv
nodes:
  phase3:
    trials:
      - csv: CURVES/29.csv
      - csv: CURVES/35.csv
    full:
      csv: CURVES/5.csv
  single:
    trials: {csv: CURVES/31.csv}
    full: {csv: CURVES/13.csv}
"""


@needs_curves
def test_search_trials_cycle_and_full_run(tmp_path: Path) -> None:
    trainer = ReplayTrainer.from_file(write_spec(tmp_path, SEARCH_SPEC))
    first = {n: read_results_csv(CURVES / f"{n}.csv")[0] for n in (29, 35, 31, 13, 5, 23)}
    expected = {0: 29, 1: 35, 2: 29, 3: 35}
    for trial, curve in expected.items():
        _, events = replay(trainer, train_spec(tmp_path, "phase3", trial, epochs=20))
        assert events[0].record == first[curve]
        assert events[0].trial == trial
    _, events = replay(trainer, train_spec(tmp_path, "phase3"))
    assert events[0].record == first[5]
    for trial in (0, 5):
        _, events = replay(trainer, train_spec(tmp_path, "single", trial, epochs=20))
        assert events[0].record == first[31]
    _, events = replay(trainer, train_spec(tmp_path, "single"))
    assert events[0].record == first[13]
    _, events = replay(trainer, train_spec(tmp_path, "anything_else", 4))  # the default, for trials too
    assert events[0].record == first[23]


def test_a_corpus_curve_without_loss_lr_or_time_columns_replays(tmp_path: Path) -> None:
    """The corpus keeps only epoch, precision, recall, mAP50 and mAP50-95 (k012: 0-based epochs, as
    Ultralytics 8.0 wrote them): read and replayed like a full results.csv. No loss column is needed: a
    diverged run is the entry's ``diverged``, and ``no_divergence`` reads that."""
    from flows.engine.decisions.gates import evaluate_gate
    from flows.engine.plan.schema import GateNode
    from flows.engine.records.results_csv import best_epoch

    csv = CORPUS / "k012.csv"
    header = csv.read_text(encoding="utf-8").splitlines()[0]
    assert header == "epoch,metrics/precision(B),metrics/recall(B),metrics/mAP50(B),metrics/mAP50-95(B)"
    records = read_results_csv(csv)
    assert [r.epoch for r in records] == list(range(1, 101))
    assert all(r.losses == {} and r.lr == {} and r.time_s is None for r in records)
    spec = "nodes:\n  p: {csv: CORPUS/k012.csv}\n  d: {csv: CORPUS/k012.csv, diverged: true, nan_recoveries: 3}\n"
    trainer = ReplayTrainer.from_file(write_spec(tmp_path, spec))
    result, events = replay(trainer, train_spec(tmp_path, "p"))
    assert [e.record for e in events] == list(records) and result.history == records
    assert (result.status, result.epochs_done, result.diverged) == ("completed", 100, False)
    best = best_epoch(records)
    assert result.metrics.map50_95 == best.map50_95 and result.metrics.precision == best.precision
    assert (result.wall_s, result.images_per_s) == (None, None)  # no time column, no figure given
    assert result.results_csv.read_text(encoding="utf-8").splitlines()[0] == header
    assert read_results_csv(result.results_csv) == records
    diverged, _ = replay(trainer, train_spec(tmp_path, "d"))
    assert (diverged.status, diverged.reason, diverged.nan_recoveries) == ("diverged", DIVERGED_REASON, 3)
    gate = GateNode.model_validate(
        {
            "kind": "gate",
            "subject": "p",
            "conditions": [{"check": "no_divergence"}],
            "on_pass": "a",
            "on_fail": "b",
        }
    )
    assert evaluate_gate("g", gate, result, {}).outcome == "pass"
    assert evaluate_gate("g", gate, diverged, {}).outcome == "fail"


@needs_curves
def test_missing_nodes(tmp_path: Path) -> None:
    spec = load_replay_spec(write_spec(tmp_path, "nodes:\n  phase1: {csv: CURVES/29.csv}\n"))
    assert spec.missing_nodes(["phase1", "phase2", "phase3"]) == ["phase2", "phase3"]
    assert spec.missing_nodes(["phase1"]) == []
    with pytest.raises(ReplaySpecError, match=r"replay\.yaml: nodes\.phase2: no entry"):
        ReplayTrainer(spec).train(train_spec(tmp_path, "phase2"), lambda event: None)
    with_default = load_replay_spec(write_spec(tmp_path, SEARCH_SPEC, "default.yaml"))
    assert with_default.missing_nodes(["phase1", "phase2", "phase3"]) == []


def test_csv_paths_are_relative_to_the_spec_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "run.csv").write_text(
        "epoch,metrics/mAP50(B),metrics/mAP50-95(B)\n1,0.5,0.25\n2,0.6,0.35\n", encoding="utf-8"
    )
    (tmp_path / "specs").mkdir()
    spec_path = tmp_path / "specs" / "r.yaml"
    spec_path.write_text("nodes:\n  p: {csv: ../records/run.csv}\n", encoding="utf-8")
    monkeypatch.chdir(
        tmp_path.parent
    )  # ../records/run.csv does not exist from here: only the SPEC's folder works
    result, _ = replay(ReplayTrainer.from_file(spec_path), train_spec(tmp_path, "p", epochs=2))
    assert (result.metrics.map50_95, result.status) == (0.35, "completed")


# --- bad SPECs -----------------------------------------------------------------------------------


@needs_curves
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nodes:\n  phase1: {csv: CURVES/29.csv, speed: 3}\n", r"nodes\.phase1\.speed: unknown key"),
        ("nodes:\n  phase1: {csv: CURVES/none.csv}\n", r"nodes\.phase1\.csv: .*file not found"),
        ("nodes:\n  phase1: {csv: CURVES/README.md}\n", r"nodes\.phase1\.csv: .*no 'epoch' column"),
        ("nodes:\n  phase1: {csv: CURVES/29.args.yaml}\n", r"nodes\.phase1\.csv: .*not a results\.csv"),
        ("nodes:\n  s: {trials: [], full: {csv: CURVES/29.csv}}\n", r"nodes\.s\.trials: "),
        ("nodes:\n  s: {trials: [{csv: CURVES/29.csv}]}\n", r"nodes\.s\.full: Field required"),
        (
            "nodes:\n  s:\n    trials: [{csv: CURVES/29.csv}, {csv: CURVES/29.csv, lr: 1}]\n"
            "    full: {csv: CURVES/29.csv}\n",
            r"nodes\.s\.trials\.1\.lr: unknown key",
        ),
        ("nodes:\n  p: {csv: CURVES/29.csv, images_per_s: fast}\n", r"nodes\.p\.images_per_s: "),
        ("nodes:\n  p: {csv: CURVES/29.csv, scale_map: -1}\n", r"nodes\.p\.scale_map: .*greater than 0"),
        ("default: {csv: CURVES/29.csv}\nnode: {}\n", r"node: unknown key"),
        ("default: {}\n", r"default\.csv: Field required"),
        ("{}\n", "nothing to replay"),
        ("- csv: x\n", "a mapping"),
        ("nodes: [\n", "not valid YAML"),
    ],
)
def test_bad_spec_is_rejected_up_front(tmp_path: Path, text: str, message: str) -> None:
    path = write_spec(tmp_path, text)
    with pytest.raises(ReplaySpecError, match=message) as caught:
        ReplayTrainer.from_file(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, ValueError)
    lines = str(caught.value).splitlines()
    assert lines == [problem.line() for problem in caught.value.problems]
    assert all(line.startswith(f"{path}: ") and line.count(str(path)) == 1 for line in lines), lines


FOUR_PROBLEMS = """
nodes:
  phase1: {csv: nowhere.csv, speed: 3}
  phase2: {csv: CORPUS/k012.csv, images_per_s: fast}
  phase3: {trials: [], full: {csv: CORPUS/k012.csv}}
"""


def test_every_problem_of_a_spec_is_a_line_of_its_own(tmp_path: Path) -> None:
    """Four problems: four problems and four lines, each naming the SPEC file once, its key path, and what
    is wrong (the command line prints them so: tests/test_bad_inputs.py)."""
    path = write_spec(tmp_path, FOUR_PROBLEMS)
    with pytest.raises(ReplaySpecError) as caught:
        load_replay_spec(path)
    problems = caught.value.problems
    assert [(p.source, p.where) for p in problems] == [
        (str(path), "nodes.phase1.csv"),
        (str(path), "nodes.phase1.speed"),
        (str(path), "nodes.phase2.images_per_s"),
        (str(path), "nodes.phase3.trials"),
    ]
    assert "file not found" in problems[0].message and "relative to the SPEC" in problems[0].message
    assert problems[1].message.startswith("unknown key") and "docs/REPLAY.md" in problems[1].message
    lines = str(caught.value).splitlines()
    assert lines == [p.line() for p in problems]
    assert all(line.count(str(path)) == 1 for line in lines), lines


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(ReplaySpecError, match="cannot read the replay SPEC"):
        load_replay_spec(tmp_path / "absent.yaml")


# --- the shipped replay SPECs walk every terminal of the shipped plan ----------------------------


def walk_shipped_plan(trainer: ReplayTrainer, tmp_path: Path, trials: int = 9) -> str:
    """The shipped plan's tree and gates, reduced to what the replays must reach.

    A gate needs a completed, non-diverged run; phase1 mAP50-95 >= 0.915; phase2 >= 0.905 and
    >= 25 % more images/s than phase1 and <= 20 GB NVML; phase3's full run (of the trial with the best
    mAP50-95) >= 0.915.
    """

    def run(node: str, trial: int | None = None) -> PhaseResult:
        result, events = replay(
            trainer, train_spec(tmp_path, node, trial, epochs=20 if trial is not None else 100)
        )
        assert [e.record for e in events] == list(result.history)
        return result

    def healthy(result: PhaseResult) -> bool:
        return result.completed and not result.diverged

    phase1 = run("phase1")
    if healthy(phase1) and (phase1.metrics.map50_95 or 0) >= 0.915:
        return "deploy_phase1"
    phase2 = run("phase2")
    faster = (phase2.images_per_s or 0) >= 1.25 * (phase1.images_per_s or float("inf"))
    small = phase2.nvml_peak_used_gb is not None and phase2.nvml_peak_used_gb <= 20
    if healthy(phase2) and (phase2.metrics.map50_95 or 0) >= 0.905 and faster and small:
        return "deploy_phase2"
    results = [run("phase3", trial) for trial in range(trials)]
    assert all(r.completed for r in results)
    full = run("phase3")
    if healthy(full) and (full.metrics.map50_95 or 0) >= 0.915:
        return "deploy_phase3"
    return "keep_baseline"


@pytest.mark.parametrize("terminal", SHIPPED)
def test_shipped_replays_read_only_curves_committed_in_the_project(terminal: str) -> None:
    """A fresh clone has no ../shared: every curve a shipped SPEC names is one of the corpus's."""
    path = REPLAYS / f"{terminal}.yaml"
    assert "shared" not in path.read_text(encoding="utf-8")
    spec = load_replay_spec(path)
    runs: list[RunEntry] = []
    for entry in [spec.default, *spec.nodes.values()]:
        if isinstance(entry, SearchEntry):
            runs += [*(entry.trials if isinstance(entry.trials, list) else [entry.trials]), entry.full]
        elif entry is not None:
            runs.append(entry)
    assert runs and all(run.csv.parent == CORPUS and run.csv.is_file() for run in runs), runs


@pytest.mark.parametrize("terminal", SHIPPED)
def test_shipped_replays_reach_their_terminal(tmp_path: Path, terminal: str) -> None:
    trainer = ReplayTrainer.from_file(REPLAYS / f"{terminal}.yaml")
    assert trainer.spec.missing_nodes(["phase1", "phase2", "phase3"]) == []
    assert walk_shipped_plan(trainer, tmp_path) == terminal
