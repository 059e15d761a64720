"""The search's Optuna study on real SQLite files: enqueued designs, resume after kill -9, pruning on real
curves through the replay trainer, seeded samplers, ties, storage references, concurrent writers, and
the plan-side settings' rules."""

from __future__ import annotations

import multiprocessing
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Literal

import pytest
from conftest import ROOT, SHARED, needs_shared
from pydantic import Field, ValidationError

from flows.engine.decisions.stoppers import Stoppers
from flows.engine.decisions.study import (
    SearchStudy,
    StudyConfig,
    StudyError,
    TrialReporter,
    best_of,
    repair_journal,
    savings_of,
    storage_for,
    study_config,
)
from flows.engine.plan.sampling import sample_trials
from flows.engine.plan.schema import Design, SearchNode
from flows.engine.plan.search_rules import missing_packages, search_problems, trial_count
from flows.engine.plan.search_settings import (
    FullRun,
    HyperbandSettings,
    MedianSettings,
    NoPruner,
    PrunerSettings,
    StudySettings,
    SuccessiveHalvingSettings,
    TrialSchedule,
)
from flows.engine.records.results import PhaseResult, TrainSpec, TrialHook, ValMetrics

CURVES = SHARED / "curves"
SPACE = {
    "lr0": [0.008, 0.01, 0.012],
    "warmup_epochs": [3.0, 5.0, 7.0],
    "box": [8.0, 10.0, 12.0],
    "dfl": [1.5, 2.0, 2.5],
    "scale": [0.6, 0.7, 0.8],
}


def config(tmp_path: Path, **kw: Any) -> StudyConfig:
    """The shipped plan's Phase 3 as a study in tmp_path/optuna.db (overridable)."""
    base: dict[str, Any] = {
        "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
        "name": "run-1/phase3",
        "space": SPACE,
        "method": "latin",
        "max_trials": 9,
        "seed": 0,
        "trial_epochs": 20,
    }
    return StudyConfig(**{**base, **kw})


def report(study: SearchStudy, number: int, epoch: int, value: float | None) -> bool:
    """Report a trial's epoch as its training does (its ``TrialReporter``); True: the pruner says stop."""
    return TrialReporter(study.config.hook(number))(epoch, value) is not None


def run_trial(study: SearchStudy, number: int, values: list[float]) -> None:
    """Report ``values`` epoch by epoch until pruned, then finish with the best value."""
    done = 0
    for epoch, value in enumerate(values, start=1):
        done = epoch
        if report(study, number, epoch, value):
            break
    study.finish(number, value=max(values[:done]), epochs=done)


# --------------------------------------------------------------------------- design and resume
def test_design_points_are_enqueued_once_in_design_order(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    study = SearchStudy.open(cfg)
    expected = sample_trials(SPACE, "latin", 9, seed=0)
    records = study.trials()
    assert [r.number for r in records] == list(range(9))
    assert [r.point for r in records] == expected
    assert {r.state for r in records} == {"waiting"}

    again = SearchStudy.open(cfg)  # a re-run opens the same study: nothing enqueued twice
    assert [(r.number, r.point) for r in again.trials()] == [(r.number, r.point) for r in records]
    first = again.next_trial()
    assert first is not None and (first.number, first.point, first.resumed) == (0, expected[0], False)
    # the study parameters are level indices of the numeric factors (ordered), the real point beside them
    params = again.study.get_trials()[0].params
    assert params == {f"{k}_level": SPACE[k].index(v) for k, v in expected[0].items()}


def test_a_study_made_for_another_design_is_not_reused(tmp_path: Path) -> None:
    SearchStudy.open(config(tmp_path))
    with pytest.raises(StudyError, match="another space or design"):
        SearchStudy.open(config(tmp_path, seed=1))


KILLED_WORKER = textwrap.dedent(
    """
    import os, signal, sys
    from flows.engine.decisions.study import SearchStudy, StudyConfig, TrialReporter
    study = SearchStudy.open(StudyConfig.model_validate_json(sys.argv[1]))
    first = study.next_trial()
    for epoch in range(1, 6):
        TrialReporter(study.config.hook(first.number))(epoch, 0.30 + 0.01 * epoch)
    study.finish(first.number, value=0.35, epochs=5)
    second = study.next_trial()
    for epoch in range(1, 4):
        TrialReporter(study.config.hook(second.number))(epoch, 0.20 + 0.01 * epoch)
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of trial 1
    """
)


def test_a_killed_search_hands_out_the_interrupted_trial_first_and_never_a_finished_one(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path, max_trials=4, n_trials=4)
    done = subprocess.run(
        [sys.executable, "-c", KILLED_WORKER, cfg.model_dump_json()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == -9, done.stderr[-2000:]

    study = SearchStudy.open(cfg)  # a new process's view: the kill left trial 1 RUNNING
    states = {r.number: r.label for r in study.trials()}
    assert states == {0: "complete", 1: "running (epoch 3)", 2: "waiting", 3: "waiting"}
    resumed = study.next_trial()
    assert resumed is not None and (resumed.number, resumed.resumed, resumed.epochs_done) == (1, True, 3)
    assert resumed.point == sample_trials(SPACE, "latin", 4, seed=0, n_trials=4)[1]
    assert study.next_trial().number == 1  # still unfinished: handed out again, not a new one
    run_trial(study, 1, [0.9, 0.9, 0.9, 0.24])  # the resumed training repeats epochs 1-3: kept as they were
    assert dict(study.trials()[1].curve) == pytest.approx({1: 0.21, 2: 0.22, 3: 0.23, 4: 0.24})

    handed = []
    while (ticket := study.next_trial()) is not None:
        handed.append(ticket.number)
        run_trial(study, ticket.number, [0.4, 0.5])
    assert handed == [2, 3]
    assert [r.state for r in study.trials()] == ["complete"] * 4


# --------------------------------------------------------------------------- pruning on real curves
def replay_search(
    tmp_path: Path, curves: list[str], pruner: dict[str, Any], *, prefix: bool = False
) -> SearchStudy:
    """Trials replaying the given shared curves through the replay trainer, reporting as the train task
    will: each epoch into the study through the trial's hook; a stop reason raises StopTraining."""
    from tasks.trainers.replay import ReplayTrainer

    spec_file = tmp_path / "replay.yaml"
    entries = "\n".join(f"      - csv: {CURVES / name}.csv" for name in curves)
    spec_file.write_text(
        f"nodes:\n  phase3:\n    trials:\n{entries}\n    full:\n      csv: {CURVES / curves[0]}.csv\n",
        encoding="utf-8",
    )
    trainer = ReplayTrainer.from_file(spec_file)
    space = {"seed": list(range(len(curves)))}
    cfg = config(tmp_path, method="grid", space=space, max_trials=len(curves), pruner=pruner, prefix=prefix)
    study = SearchStudy.open(cfg)
    while (ticket := study.next_trial()) is not None:
        spec = TrainSpec(
            node="phase3",
            role="trial",
            trial=ticket.number,
            plan="test",
            model=Path("yolo11n.yaml"),
            data=Path("data.yaml"),
            args={"epochs": 100 if prefix else 20},
            run_dir=tmp_path / "phases" / "phase3" / f"trial-{ticket.number:02d}",
        )
        spec = spec.model_copy(update={"trial_hook": ticket.hook})
        study.finish_result(ticket.number, trainer.train(spec, Stoppers(spec)))
    return study


@needs_shared
@pytest.mark.parametrize(
    "pruner",
    [
        SuccessiveHalvingSettings(kind="successive_halving", min_resource=4, reduction_factor=2),
        MedianSettings(kind="median", n_startup_trials=2, n_warmup_steps=4),
    ],
    ids=["successive_halving", "median"],
)
def test_pruning_stops_a_clearly_bad_curve_at_a_rung_and_not_a_clearly_good_one(
    tmp_path: Path, pruner: Any
) -> None:
    # 35 (fish, mAP50-95 ~0.6 by epoch 10) twice, then 27 (craters, ~0.02 at epoch 4), then 29 (FOD, ~0.8)
    study = replay_search(tmp_path, ["35", "35", "27", "29"], pruner.model_dump())
    records = study.trials()
    assert [r.label for r in records] == ["complete", "complete", "pruned at epoch 4", "complete"]
    assert records[2].epochs == 4 and len(records[2].curve) == 4
    assert records[3].epochs == 20
    best = study.best()
    assert best is not None and best.trial.number == 3 and not best.all_tie
    saved = study.savings(full_epochs=100, full_run="restart")
    assert (saved.trial_epochs_used, saved.phase_epochs, saved.seed_epochs) == (64, 164, 180)


@needs_shared
def test_prefix_trials_stop_at_trial_epochs_on_the_full_schedule(tmp_path: Path) -> None:
    study = replay_search(tmp_path, ["29", "35"], {"kind": "none"}, prefix=True)
    records = study.trials()
    assert [(r.state, r.epochs) for r in records] == [("complete", 20), ("complete", 20)]
    assert records[0].value is not None and records[0].value > records[1].value  # type: ignore[operator]
    saved = study.savings(full_epochs=100, full_run="continue")
    assert (saved.phase_epochs, saved.seed_epochs) == (40 + 80, 40 + 100)


def test_without_a_pruner_every_trial_trains_all_its_epochs(tmp_path: Path) -> None:
    cfg = config(tmp_path, method="grid", space={"x": [0, 1, 2]}, max_trials=3)
    study = SearchStudy.open(cfg)
    while (ticket := study.next_trial()) is not None:
        run_trial(study, ticket.number, [0.9 - 0.4 * ticket.number] * 20)
    assert [(r.state, r.epochs) for r in study.trials()] == [("complete", 20)] * 3


def test_a_pruned_trial_stays_pruned_when_resumed_elsewhere(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        method="grid",
        space={"x": [0, 1]},
        max_trials=2,
        pruner={"kind": "successive_halving", "min_resource": 2, "reduction_factor": 2},
    )
    study = SearchStudy.open(cfg)
    run_trial(study, study.next_trial().number, [0.5] * 20)  # type: ignore[union-attr]
    ticket = study.next_trial()
    assert ticket is not None
    reporter = TrialReporter(ticket.hook)
    assert reporter(1, 0.1) is None
    assert "pruned at epoch 2" in (reporter(2, 0.1) or "")
    # killed before finish(): the trial is RUNNING; resumed in another process, it is stopped at once
    again = TrialReporter(SearchStudy.open(cfg).next_trial().hook)  # type: ignore[union-attr]
    assert "pruned at epoch 2" in (again(3, 0.9) or "")
    record = study.finish(ticket.number, value=0.1, epochs=3)
    assert (record.state, record.pruned_at, record.epochs) == ("pruned", 2, 3)
    assert study.finish(ticket.number, value=0.9, epochs=20).state == "pruned"  # finishing twice: no change


# --------------------------------------------------------------------------- samplers
def sampler_points(tmp_path: Path, method: str, name: str, stop_after: int | None = None) -> list[dict]:
    """Points a seeded sampler proposes for 6 trials of a deterministic objective; ``stop_after``
    reopens the study (a new object, as after a kill) after that many trials."""
    cfg = config(
        tmp_path,
        storage=f"sqlite:///{tmp_path / name}",
        method=method,
        max_trials=6,
        seed=7,
        sampler={"startup_trials": 2},
    )
    study = SearchStudy.open(cfg)
    points = []
    while (ticket := study.next_trial()) is not None:
        points.append(ticket.point)
        score = ticket.point["lr0"] * 10 + ticket.point["box"] / 100
        run_trial(study, ticket.number, [score] * 20)
        if stop_after is not None and len(points) == stop_after:
            study = SearchStudy.open(cfg)
    return points


@pytest.mark.integration
def test_a_seeded_tpe_sampler_gives_the_same_points_twice_and_after_a_reopen(tmp_path: Path) -> None:
    first = sampler_points(tmp_path, "tpe", "a.db")
    assert len(first) == 6 and len({str(p) for p in first}) == 6  # six distinct points, within the budget
    assert all(p[k] in SPACE[k] for p in first for k in SPACE)
    assert sampler_points(tmp_path, "tpe", "b.db") == first
    assert sampler_points(tmp_path, "tpe", "c.db", stop_after=3) == first


@pytest.mark.parametrize("method", ["qmc", "gp"])
@pytest.mark.integration
def test_seeded_qmc_and_gp_samplers_give_the_same_points_twice(tmp_path: Path, method: str) -> None:
    if missing := missing_packages(method):
        pytest.skip(f"{method} needs {', '.join(missing)} (pip install {' '.join(missing)})")
    first = sampler_points(tmp_path, method, "a.db")
    assert len(first) == 6 and len({str(p) for p in first}) == 6
    assert sampler_points(tmp_path, method, "b.db") == first


# --------------------------------------------------------------------------- choosing the best
def test_the_best_trial_skips_diverged_ones_and_keeps_the_first_on_ties(tmp_path: Path) -> None:
    """Trials scored from the trainer's results, the one scoring (``finish_result``): diverged, no score."""
    study = SearchStudy.open(config(tmp_path, method="grid", space={"x": [0, 1, 2, 3]}, max_trials=4))
    results = [
        PhaseResult(node="phase3", trial=0, metrics=ValMetrics(map50_95=0.5)),
        PhaseResult(node="phase3", trial=1, metrics=ValMetrics(map50_95=0.9), diverged=True),
        PhaseResult(node="phase3", trial=2, metrics=ValMetrics(map50_95=0.7)),
        PhaseResult(node="phase3", trial=3, metrics=ValMetrics(map50_95=0.7)),
    ]
    for result in results:
        ticket = study.next_trial(reclaim_running=False)
        assert ticket is not None and ticket.number == result.trial
        study.finish_result(ticket.number, result)
    best = study.best()
    assert best is not None and best.trial.number == 2
    lone = SearchStudy.open(
        config(tmp_path, name="run-1/lone", method="grid", space={"x": [0]}, max_trials=1)
    )
    assert lone.next_trial(reclaim_running=False) is not None
    lone.finish_result(0, PhaseResult(node="phase3", trial=0, status="failed"))
    assert lone.best() is None


def test_best_takes_the_first_of_tied_trials_and_ignores_pruned_and_failed_ones(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        method="grid",
        space={"x": [0, 1, 2, 3]},
        max_trials=4,
        pruner={"kind": "successive_halving", "min_resource": 1, "reduction_factor": 2},
    )
    study = SearchStudy.open(cfg)
    tickets = [study.next_trial(reclaim_running=False) for _ in range(4)]
    assert [t.number for t in tickets if t] == [0, 1, 2, 3]
    assert not report(study, 0, 1, 0.5) and not report(study, 1, 1, 0.5)
    study.finish(0, value=0.5, epochs=20)
    study.finish(1, value=0.5, epochs=20)
    assert report(study, 2, 1, 0.1)  # behind both at the first rung: pruned
    study.finish(2, value=0.9, epochs=1)  # its best.pt value (higher) does not count: it was pruned
    study.finish_result(
        3,
        PhaseResult(
            node="phase3", trial=3, status="diverged", diverged=True, metrics=ValMetrics(map50_95=0.99)
        ),
    )
    labels = [r.label for r in study.trials()]
    assert labels == ["complete", "complete", "pruned at epoch 1", "failed"]
    best = study.best()
    assert best is not None and (best.trial.number, best.all_tie, best.scored) == (0, True, 2)

    records = study.trials()
    better = best_of([records[0], records[1].model_copy(update={"value": 0.6})])
    assert better is not None and (better.trial.number, better.all_tie) == (1, False)
    assert best_of(records[:1]).all_tie is False  # type: ignore[union-attr]
    assert best_of([r for r in records if r.state != "complete"]) is None
    assert savings_of(records, 20, 100, "continue").trial_epochs_used == 20 + 20 + 1 + 0


# --------------------------------------------------------------------------- storages
def test_storage_urls_env_references_and_the_journal_file(tmp_path: Path, monkeypatch: Any) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere' / 'study.db'}"
    SearchStudy.open(config(tmp_path, storage=url))
    assert (tmp_path / "elsewhere" / "study.db").is_file()

    monkeypatch.setenv("FOD_TEST_OPTUNA", url)
    by_env = SearchStudy.open(config(tmp_path, storage="env:FOD_TEST_OPTUNA"))
    assert len(by_env.trials()) == 9  # the same study, found through the environment
    assert by_env.next_trial().hook.storage == "env:FOD_TEST_OPTUNA"  # type: ignore[union-attr]
    monkeypatch.delenv("FOD_TEST_OPTUNA")
    with pytest.raises(StudyError, match="set FOD_TEST_OPTUNA"):
        storage_for("env:FOD_TEST_OPTUNA")

    journal = tmp_path / "optuna.journal"
    study = SearchStudy.open(config(tmp_path, storage=f"journal:{journal}", max_trials=3, n_trials=3))
    run_trial(study, study.next_trial().number, [0.3] * 20)  # type: ignore[union-attr]
    with open(journal, "ab") as handle:  # a kill -9 in the middle of an append
        handle.write(b'{"op_code": 5, "worker_id": "x", "trial_id"')
    assert repair_journal(journal) is True and journal.read_bytes().endswith(b"\n")
    assert repair_journal(journal) is False
    reopened = SearchStudy.open(config(tmp_path, storage=f"journal:{journal}", max_trials=3, n_trials=3))
    assert [r.state for r in reopened.trials()] == ["complete", "waiting", "waiting"]


def postgres_driver() -> str | None:
    """A synchronous PostgreSQL driver SQLAlchemy can use for Optuna's RDB storage, if installed."""
    import importlib.util

    return next((name for name in ("psycopg2", "psycopg") if importlib.util.find_spec(name)), None)


def test_a_postgresql_url_is_a_study_storage(tmp_path: Path) -> None:
    from test_deployments import postgres_bindir, postgres_cluster

    driver = postgres_driver()
    if driver is None or postgres_bindir() is None:
        pytest.skip("needs PostgreSQL server binaries and a driver (pip install psycopg2-binary)")
    with postgres_cluster(tmp_path) as url:
        storage = url.replace("postgresql+asyncpg", f"postgresql+{driver}")
        cfg = config(tmp_path, storage=storage, max_trials=3, n_trials=3)
        study = SearchStudy.open(cfg)
        ticket = study.next_trial()
        assert ticket is not None and ticket.hook.storage == storage
        reporter = TrialReporter(ticket.hook)
        assert [reporter(epoch, 0.5) for epoch in range(1, 21)] == [None] * 20
        study.finish(ticket.number, value=0.5, epochs=20)
        again = SearchStudy.open(cfg)
        assert [r.label for r in again.trials()] == ["complete", "waiting", "waiting"]
        assert again.next_trial().number == 1  # type: ignore[union-attr]


def test_study_config_from_a_plan_node_stores_the_study_in_the_search_folder(tmp_path: Path) -> None:
    node = draft_node(study={"storage": None})
    cfg = study_config(node, node_name="phase3", run_id="fod-20250101-000000", search_dir=tmp_path / "p3")
    assert cfg.storage == f"sqlite:///{(tmp_path / 'p3' / 'optuna.db').resolve()}"
    assert cfg.name == "fod-20250101-000000/phase3" and cfg.metric == "map50_95" and not cfg.prefix
    journal = study_config(
        draft_node(study={"storage": "journal"}, trial_schedule="prefix", full_run="continue"),
        node_name="phase3",
        run_id="r",
        search_dir=tmp_path,
    )
    assert journal.storage == f"journal:{(tmp_path / 'optuna.journal').resolve()}" and journal.prefix


def _report_from_worker(hooks_json: list[str], epochs: int, out: Any) -> None:
    """One worker process: report every epoch of the trials it was given, as a training's callback does."""
    done = []
    for hook_json in hooks_json:
        hook = TrialHook.model_validate_json(hook_json)
        reporter = TrialReporter(hook)
        for epoch in range(1, epochs + 1):
            reporter(epoch, 0.1 + 0.01 * hook.number + 0.001 * epoch)
        done.append(hook.number)
    out.put(done)


@pytest.mark.integration
def test_two_processes_reporting_into_one_sqlite_study_at_once_do_not_corrupt_it(tmp_path: Path) -> None:
    """As the engine runs a search side by side: the walk (one process) hands out the trials and finishes
    them; two worker processes report their trials' epochs into the one SQLite study at the same time.

    (Handing out trials stays with one process: Optuna's RDB storage pops a waiting trial with SELECT ...
    FOR UPDATE, which SQLite ignores, so two processes popping at once could get the same trial.)"""
    cfg = config(tmp_path, pruner={"kind": "median", "n_startup_trials": 8, "n_warmup_steps": 1})
    study = SearchStudy.open(cfg)
    tickets = [study.next_trial(exclude=frozenset(range(n))) for n in range(9)]
    assert [t.number for t in tickets] == list(range(9))  # type: ignore[union-attr]
    hooks = [t.hook.model_dump_json() for t in tickets]  # type: ignore[union-attr]
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    workers = [context.Process(target=_report_from_worker, args=(hooks[i::2], 20, out)) for i in range(2)]
    for worker in workers:
        worker.start()
    taken = [out.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert sorted(taken[0] + taken[1]) == list(range(9))
    for ticket in tickets:
        study.finish(ticket.number, value=0.1 + 0.01 * ticket.number, epochs=20)  # type: ignore[union-attr]

    records = SearchStudy.open(cfg).trials()
    assert [r.state for r in records] == ["complete"] * 9
    assert all(len(r.curve) == 20 for r in records)  # not one epoch lost
    with sqlite3.connect(tmp_path / "optuna.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# --------------------------------------------------------------------------- plan-side settings
class DraftDesign(Design):
    """``Design`` with the Optuna samplers, as schema.py is to declare it."""

    method: Literal["grid", "orthogonal", "latin", "random", "tpe", "qmc", "gp"]  # type: ignore[assignment]


class DraftSearchNode(SearchNode):
    """``SearchNode`` with the study fields, exactly as docs/SEARCH.md proposes them for schema.py."""

    design: DraftDesign  # type: ignore[assignment]
    trial_schedule: TrialSchedule = "short"
    full_run: FullRun = "restart"
    pruner: PrunerSettings = Field(default_factory=NoPruner)
    study: StudySettings = Field(default_factory=StudySettings)


def draft_node(**kw: Any) -> DraftSearchNode:
    doc = {
        "kind": "search",
        "base": "phase1",
        "space": SPACE,
        "design": {"method": "latin", "max_trials": 9},
        "trial_epochs": 20,
        "full_epochs": 100,
        "next": "gate3",
        **kw,
    }
    return DraftSearchNode.model_validate(doc)


def problems_of(node: DraftSearchNode) -> list[tuple[str, str]]:
    n, full = trial_count(node.design, 9), node.full_epochs or 100
    return [(p.where, p.severity) for p in search_problems(node, full_epochs=full, n_trials=n)]


def test_the_shipped_search_with_study_defaults_has_no_problems() -> None:
    node = draft_node()
    assert isinstance(node.pruner, NoPruner) and node.study.storage is None
    assert problems_of(node) == []
    pruned = draft_node(pruner="successive_halving", trial_schedule="prefix", full_run="continue")
    assert isinstance(pruned.pruner, SuccessiveHalvingSettings) and problems_of(pruned) == []
    sh = SuccessiveHalvingSettings(kind="successive_halving", min_resource=3, reduction_factor=2)
    assert sh.rungs(20) == [3, 6, 12]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"full_run": "continue"}, [("full_run", "error")]),
        ({"trial_schedule": "prefix", "full_epochs": 20}, [("trial_schedule", "error")]),
        (
            {"pruner": {"kind": "successive_halving", "min_resource": 20}},
            [("pruner.min_resource", "error")],
        ),
        (
            {"pruner": {"kind": "successive_halving", "min_resource": 10, "min_early_stopping_rate": 1}},
            [("pruner.min_resource", "error")],
        ),
        ({"pruner": {"kind": "hyperband", "max_resource": 40}}, [("pruner.max_resource", "error")]),
        (
            {"pruner": {"kind": "hyperband", "min_resource": 1, "reduction_factor": 2}},
            [("pruner", "warning")],
        ),
        ({"pruner": {"kind": "median", "n_warmup_steps": 20}}, [("pruner.n_warmup_steps", "error")]),
        ({"pruner": {"kind": "median", "n_startup_trials": 9}}, [("pruner.n_startup_trials", "error")]),
        ({"study": {"sampler": {"startup_trials": 2}}}, [("study.sampler", "error")]),
        (
            {"design": {"method": "tpe", "max_trials": 9}, "study": {"sampler": {"startup_trials": 9}}},
            [("study.sampler.startup_trials", "warning")],
        ),
        ({"study": {"storage": "postgresql://fod:secret@db/optuna"}}, [("study.storage", "warning")]),
        ({"space": {**SPACE, "box_level": [1, 2]}}, [("space.box_level", "error")]),
    ],
)
def test_search_settings_rules(changes: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert problems_of(draft_node(**changes)) == expected


@pytest.mark.parametrize(
    "changes",
    [
        {"pruner": {"kind": "median", "min_resource": 3}},  # a parameter of another pruner
        {"pruner": "asha"},
        {"pruner": {"kind": "successive_halving", "reduction_factor": 1}},
        {"study": {"storage": "redis://localhost"}},
        {"study": {"storage": "sqlite:///relative.db"}},
        {"study": {"name": "has spaces"}},
        {"full_run": "resume"},
        {"study": {"sampler": {"n_startup_trials": 3}}},
    ],
)
def test_bad_search_settings_are_schema_errors(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        draft_node(**changes)


def test_pruner_settings_build_optunas_pruners() -> None:
    import optuna

    assert isinstance(NoPruner().make(20), optuna.pruners.NopPruner)
    sh = SuccessiveHalvingSettings(kind="successive_halving", min_resource=3, reduction_factor=3).make(20)
    assert isinstance(sh, optuna.pruners.SuccessiveHalvingPruner)
    hb = HyperbandSettings(kind="hyperband", min_resource=2, reduction_factor=3)
    assert isinstance(hb.make(20), optuna.pruners.HyperbandPruner) and hb.brackets(20) == 3
    assert isinstance(MedianSettings(kind="median").make(20), optuna.pruners.MedianPruner)


def test_importing_the_modules_does_not_import_optuna() -> None:
    code = (
        "import sys, flows.engine.decisions.study, flows.engine.plan.search_settings; "
        "sys.exit('optuna' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False, timeout=120).returncode == 0


def test_one_count_of_a_searchs_trials(tmp_path: Path) -> None:
    """The validation, the dry run's epochs and prices, and the study's budget count trials one way."""
    sampler = Design(method="tpe", max_trials=12, n_trials=5)
    assert trial_count(sampler) == trial_count(sampler, 9) == 5
    assert trial_count(Design(method="tpe", max_trials=12)) == 12
    assert trial_count(Design(method="grid", max_trials=12)) == 12
    assert trial_count(Design(method="grid", max_trials=12), 9) == 9, "a fixed design: its points"
    assert config(tmp_path, method="tpe", max_trials=12, n_trials=5).budget == trial_count(sampler)


def test_planned_epochs_and_the_one_line_description_of_a_search() -> None:
    from flows.engine.plan.search_rules import describe_study, planned_search_epochs

    seed = draft_node()
    assert planned_search_epochs(seed, full_epochs=100, n_trials=9) == (280, 280)
    pruned = draft_node(
        pruner={"kind": "successive_halving", "min_resource": 4, "reduction_factor": 2},
        trial_schedule="prefix",
        full_run="continue",
    )
    assert planned_search_epochs(pruned, full_epochs=100, n_trials=9) == (20 + 8 * 4 + 80, 180 + 80)
    median = draft_node(pruner={"kind": "median", "n_startup_trials": 3, "n_warmup_steps": 5})
    assert planned_search_epochs(median, full_epochs=100, n_trials=9) == (3 * 20 + 6 * 5 + 100, 280)
    text = describe_study(pruned, full_epochs=100)
    assert text == (
        "prefix trials: the first 20 epochs of the 100-epoch schedule; successive halving pruning (judged at "
        "epochs 4, 8, 16; best_so_far); the best continues to 100 epochs; study in sqlite"
    )


def test_a_sampler_design_is_described_in_one_line() -> None:
    from flows.engine.plan.search_rules import describe_sampler_design

    node = draft_node(design={"method": "tpe", "max_trials": 12, "n_trials": 9, "seed": 3})
    assert describe_sampler_design(node.design, node.study.sampler) == (
        "Optuna TPE sampler, 9 trials, seed 3; the first 4 at random"
    )
