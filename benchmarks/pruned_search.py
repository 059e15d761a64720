"""Pruned Phase-3 searches on real curves: does pruning pick the exhaustive search's best trial, and what
does it save?

Why this exists: the search node runs on an Optuna study with a pruner (``flows/engine/decisions/study.py``).
Pruning is only worth having if the pruned search still picks the trial the exhaustive one picks (or one
as good) while training far fewer trial epochs. This script measures both on searches built from the 18
real Ultralytics records of ``../shared/curves`` and writes the tables of docs/SEARCH.md.

Searches. A seeded generator builds 9-trial searches of two families, half each. Every trial's curve is
a smoothed shape (a record's 3-epoch moving average over the window divided by its score) times the
trial's gain, plus the real epoch-to-epoch noise of a partner record (that record minus its moving
average, relative to the record's score, times the search's level). The families differ in where the
shape comes from:

- ``alike`` (one dataset and model, the hyper-parameters differ): every trial has the search's base
  record B's shape, read ``s_i`` times as fast (epoch ``e * s_i``, ``s_i`` log-uniform in 0.8-1.25:
  warm-up and lr0 move the rise). A faster trial is further along at epoch 20 too, as a real
  unconverged trial is; so its speed shows in its score as well as in its early epochs;
- ``unlike`` (trials that learn as differently as unrelated trainings: the pessimistic bound): trial i
  has its partner record P_i's shape, which says nothing about its score.

The gain is ``level * g_i``: ``level`` is B's score, ``g_i = 1 + spread * z_i`` (z standard normal;
``spread`` uniform in 1-4 % per search) the part of the trial's score that early epochs do not show.
Base and partners are drawn from the records whose window is a learning curve (score >= 0.2: a
from-scratch run still at zero has no shape to lend). Scores are what the engine uses: mAP50-95 of the
best-fitness epoch (best.pt). The window a trial trains is, for ``prefix`` trials, the record's first
20 epochs (a real long schedule's first 20 epochs: what a prefix trial trains); for ``short`` trials,
the whole record resampled to 20 epochs (an approximation of a 20-epoch schedule).

Calibration and check. The 18 curves are split in two pools (alternate lines of MANIFEST.tsv):
calibration 1 5 9 13 17 21 25 31 35, held out 3 7 11 15 19 23 27 29 33 (29 is the FOD run). Pruner
settings are chosen per pruner kind on searches drawn from the calibration pool only (a grid of Optuna
parameters, run through the study module on Optuna's in-memory storage for speed): the setting with the
fewest trial epochs among those whose pick is within 0.005 mAP50-95 of the exhaustive best in >= 90 % of
the searches. They are checked on searches drawn from the held-out pool, replayed as the engine runs
them: the replay trainer streams each trial's epochs, the trial's ``TrialReporter`` reports them into a
real SQLite study (a file in a temporary folder) and its stop reason raises ``StopTraining``; each trial
is finished from the trainer's ``PhaseResult``. The same held-out searches are also run in memory; the
decisions must be identical (``sqlite_equals_memory``).

Figures: same-best rate (the pruned search's best trial is the exhaustive one's), within-0.005 rate (its
exhaustive score is at most 0.005 mAP50-95 below the exhaustive best; same best counts), mean and worst
regret (exhaustive best's score minus the pick's), true regret (the same on the scores without noise,
for the pruned pick and for the exhaustive pick: how much real quality each loses), share of trial
epochs used (of 9 x 20), and Phase 3 epochs: trials plus the full run of 100,
less the winner's 20 when it continues from its checkpoint (prefix only), against the seed's
9 x 20 + 100 = 280.

Run:  .venv/bin/python benchmarks/pruned_search.py [--calibration 40] [--held-out 24] [--seed 0]
      [--modes prefix short] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flows.engine.decisions.study import SearchStudy, StudyConfig, TrialReporter  # noqa: E402
from flows.engine.records.results import EpochRecord, TrainSpec  # noqa: E402
from flows.engine.records.results_csv import best_epoch, read_results_csv  # noqa: E402
from tasks.step import TrainingStep  # noqa: E402

CURVES = REPO.parent / "shared" / "curves"
CALIBRATION = ("1", "5", "9", "13", "17", "21", "25", "31", "35")
HELD_OUT = ("3", "7", "11", "15", "19", "23", "27", "29", "33")
TRIALS = 9
TRIAL_EPOCHS = 20
FULL_EPOCHS = 100
SEED_EPOCHS = TRIALS * TRIAL_EPOCHS + FULL_EPOCHS
SAME_BEST_TARGET = 0.90
WITHIN_TARGET = 0.90
WITHIN = 0.005
SHARE_TARGET = 0.45
SPEED_RANGE = (0.8, 1.25)
MIN_SHAPE_SCORE = 0.2
FAMILIES = ("alike", "unlike")
SPREAD_RANGE = (0.01, 0.04)

VALUES = ("epoch", "best_so_far")
GRIDS: dict[str, list[dict[str, Any]]] = {
    "successive_halving": [
        {"kind": "successive_halving", "min_resource": m, "reduction_factor": r, "value": v}
        for m, r, v in itertools.product((2, 3, 4, 5, 6, 8, 10), (2, 3, 4), VALUES)
    ],
    "hyperband": [
        {"kind": "hyperband", "min_resource": m, "reduction_factor": r, "value": v}
        for m, r, v in itertools.product((1, 2, 3, 4, 5, 6, 8), (2, 3, 4), VALUES)
    ],
    "median": [
        {"kind": "median", "n_startup_trials": n, "n_warmup_steps": w, "value": v}
        for n, w, v in itertools.product((1, 2, 3, 4, 5), (2, 3, 4, 5, 6, 8, 10, 12), VALUES)
    ],
}
"""The Optuna parameters tried on the calibration searches (first rungs all before epoch 20)."""


# ----------------------------------------------------------------------------- searches
@dataclass(frozen=True)
class Curve:
    """One real record: mAP50-95 and mAP50 per epoch (missing values as 0)."""

    name: str
    map50_95: np.ndarray
    map50: np.ndarray


@dataclass(frozen=True)
class Search:
    """Nine trials' curves over the trial window, and how they were made."""

    index: int
    pool: str
    mode: str
    family: str
    base: str
    partners: tuple[str, ...]
    speeds: tuple[float, ...]
    spread: float
    trials: tuple[tuple[EpochRecord, ...], ...]
    true_scores: tuple[float, ...]
    """Each trial's score without the epoch-to-epoch noise: what its hyper-parameters are worth."""


def load_curves() -> dict[str, Curve]:
    """Every shared record, epochs made 1-based and unique by the engine's own reader."""
    curves = {}
    for name in CALIBRATION + HELD_OUT:
        records = read_results_csv(CURVES / f"{name}.csv")
        curves[name] = Curve(
            name,
            np.array([r.map50_95 or 0.0 for r in records]),
            np.array([r.map50 or 0.0 for r in records]),
        )
    return curves


def window(curve: Curve, mode: str, speed: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The trial's 20 epochs read from the record: its first 20 (prefix) or the whole record resampled
    (short); ``speed`` reads epoch ``e * speed`` instead (linear between recorded epochs)."""
    last = len(curve.map50_95)
    epochs = np.arange(1, TRIAL_EPOCHS + 1, dtype=float) * speed
    if mode == "short":
        epochs = epochs * last / TRIAL_EPOCHS
    epochs = np.clip(epochs, 1, last)
    recorded = np.arange(1, last + 1)
    return np.interp(epochs, recorded, curve.map50_95), np.interp(epochs, recorded, curve.map50)


def score_of(records: Sequence[EpochRecord]) -> float:
    """What the engine scores a trial by: mAP50-95 of the best-fitness epoch (best.pt)."""
    best = best_epoch(records)
    return 0.0 if best is None or best.map50_95 is None else best.map50_95


def as_records(m95: np.ndarray, m50: np.ndarray) -> tuple[EpochRecord, ...]:
    return tuple(
        EpochRecord(epoch=e + 1, map50_95=float(a), map50=float(b))
        for e, (a, b) in enumerate(zip(m95, m50, strict=True))
    )


def smooth(values: np.ndarray) -> np.ndarray:
    """The centred 3-epoch moving average (ends: the two-epoch average)."""
    padded = np.concatenate([values[:1], values, values[-1:]])
    return (padded[:-2] + padded[1:-1] + padded[2:]) / 3


def shape_of(curve: Curve, mode: str, speed: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The window's smoothed curve read ``speed`` times as fast, divided by the score of the smoothed
    curve at its own pace: it ends near 1 at speed 1, above 1 when faster (further along at epoch 20)."""
    m95, m50 = (smooth(v) for v in window(curve, mode, speed))
    score = score_of(as_records(*(smooth(v) for v in window(curve, mode)))) or 1e-6
    return m95 / score, m50 / score


def noise_of(curve: Curve, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """The window's real epoch-to-epoch noise relative to its score: the curve minus its smoothed curve,
    divided by the curve's score (a trial takes it times its own score)."""
    m95, m50 = window(curve, mode)
    score = score_of(as_records(m95, m50)) or 1e-6
    return (m95 - smooth(m95)) / score, (m50 - smooth(m50)) / score


def learning_curves(curves: dict[str, Curve], pool: Sequence[str], mode: str) -> list[str]:
    """Curves of the pool whose window is a learning curve (score >= MIN_SHAPE_SCORE): a window still at
    zero (a from-scratch run's first epochs) has no shape to lend."""
    return [name for name in pool if score_of(as_records(*window(curves[name], mode))) >= MIN_SHAPE_SCORE]


def make_search(
    curves: dict[str, Curve], pool: Sequence[str], mode: str, family: str, index: int, seed: int
) -> Search:
    """One seeded search from the pool (see the module docstring for the two families)."""
    rng = np.random.default_rng([seed, index, FAMILIES.index(family), 0 if mode == "prefix" else 1])
    usable = learning_curves(curves, pool, mode)
    base = str(rng.choice(usable))
    partners = tuple(str(p) for p in rng.choice([p for p in usable if p != base], size=TRIALS, replace=True))
    speeds = tuple(float(np.exp(rng.uniform(*np.log(SPEED_RANGE)))) for _ in range(TRIALS))
    spread = float(rng.uniform(*SPREAD_RANGE))
    level = score_of(as_records(*window(curves[base], mode)))
    trials, true_scores = [], []
    for partner, speed in zip(partners, speeds, strict=True):
        gain = level * (1.0 + spread * float(rng.standard_normal()))
        source = (curves[base], mode, speed) if family == "alike" else (curves[partner], mode)
        s95, s50 = shape_of(*source)
        n95, n50 = noise_of(curves[partner], mode)
        m95, m50 = gain * s95 + level * n95, gain * s50 + level * n50
        trials.append(as_records(np.clip(m95, 0.0, 1.0), np.clip(m50, 0.0, 1.0)))
        true_scores.append(score_of(as_records(np.clip(gain * s95, 0, 1), np.clip(gain * s50, 0, 1))))
    where = "calibration" if tuple(pool) == CALIBRATION else "held-out"
    speeds = speeds if family == "alike" else ()
    return Search(
        index, where, mode, family, base, partners, speeds, spread, tuple(trials), tuple(true_scores)
    )


# ----------------------------------------------------------------------------- running a search
@dataclass
class Outcome:
    """One run of a search: the chosen trial and the epochs each trial trained."""

    best: int | None
    epochs: list[int]
    states: list[str]

    @property
    def used(self) -> int:
        return sum(self.epochs)


def study_config(search: Search, pruner: dict[str, Any], storage: str) -> StudyConfig:
    """The search as a study: one factor ``trial`` 0..8 enqueued in order, so trial number = curve index."""
    return StudyConfig(
        storage=storage,
        name=f"bench-{search.pool}-{search.mode}-{search.family}-{search.index}-{pruner['kind']}",
        space={"trial": list(range(TRIALS))},
        method="grid",
        max_trials=TRIALS,
        trial_epochs=TRIAL_EPOCHS,
        prefix=search.mode == "prefix",
        pruner=pruner,
    )


def run_in_memory(search: Search, pruner: dict[str, Any]) -> Outcome:
    """Calibration: the study module and Optuna's pruner on Optuna's in-memory storage, epoch by epoch."""
    study = SearchStudy.open(study_config(search, pruner, f"memory:{uuid.uuid4().hex}"))
    while (ticket := study.next_trial()) is not None:
        records = search.trials[ticket.point["trial"]]
        reporter = TrialReporter(ticket.hook)
        done = len(records)
        for record in records:
            if reporter(record.epoch, record.map50_95) is not None:
                done = record.epoch
                break
        study.finish(ticket.number, value=score_of(records[:done]), epochs=done)
    return outcome_of(study)


def run_replayed(search: Search, pruner: dict[str, Any], folder: Path) -> Outcome:
    """Check: the replay trainer streams each trial into a real SQLite study through the trial's hook."""
    from tasks.trainers.replay import ReplayTrainer, format_results_csv

    folder.mkdir(parents=True, exist_ok=True)
    spec_file = folder / "replay.yaml"
    if not spec_file.is_file():
        lines = ["nodes:", "  phase3:", "    trials:"]
        for number, records in enumerate(search.trials):
            csv = folder / f"trial-{number}.csv"
            csv.write_text(format_results_csv(records), encoding="utf-8")
            lines.append(f"      - csv: {csv.name}")
        lines += ["    full:", f"      csv: {folder / 'trial-0.csv'}"]
        spec_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    step = TrainingStep(ReplayTrainer.from_file(spec_file))  # the engine's step: its stoppers decide
    run = folder / f"run-{pruner['kind']}"
    study = SearchStudy.open(study_config(search, pruner, f"sqlite:///{folder.resolve() / 'optuna.db'}"))
    while (ticket := study.next_trial()) is not None:
        spec = TrainSpec(
            node="phase3",
            role="trial",
            trial=ticket.number,
            plan="bench",
            model=Path("yolo11m-p2.yaml"),
            data=Path("data.yaml"),
            args={"epochs": FULL_EPOCHS if search.mode == "prefix" else TRIAL_EPOCHS},
            run_dir=run / f"trial-{ticket.number:02d}",
        )
        spec = spec.model_copy(update={"trial_hook": ticket.hook})
        study.finish_result(ticket.number, step.run(spec))
    return outcome_of(study)


def outcome_of(study: SearchStudy) -> Outcome:
    records = study.trials()
    best = study.best()
    return Outcome(
        best=None if best is None else best.trial.number,
        epochs=[r.epochs for r in records],
        states=[r.label for r in records],
    )


# ----------------------------------------------------------------------------- figures
@dataclass
class Tally:
    """Figures of one pruner setting over a set of searches, against their exhaustive runs."""

    same: int = 0
    within: int = 0
    regrets: list[float] = field(default_factory=list)
    true_regrets: list[float] = field(default_factory=list)
    exhaustive_true_regrets: list[float] = field(default_factory=list)
    used: list[int] = field(default_factory=list)
    n: int = 0

    def add(self, search: Search, exhaustive: Outcome, pruned: Outcome) -> None:
        scores = [score_of(t) for t in search.trials]
        best = scores[exhaustive.best] if exhaustive.best is not None else 0.0
        picked = scores[pruned.best] if pruned.best is not None else 0.0
        self.n += 1
        self.same += pruned.best == exhaustive.best
        self.within += picked >= best - WITHIN
        self.regrets.append(best - picked)
        truth = max(search.true_scores)
        self.true_regrets.append(
            truth - (search.true_scores[pruned.best] if pruned.best is not None else 0.0)
        )
        self.exhaustive_true_regrets.append(
            truth - (search.true_scores[exhaustive.best] if exhaustive.best is not None else 0.0)
        )
        self.used.append(pruned.used)

    def summary(self, mode: str) -> dict[str, float]:
        used = statistics.mean(self.used) if self.used else 0.0
        figures = {
            "searches": self.n,
            "same_best": self.same / self.n if self.n else 0.0,
            "within_0_005": self.within / self.n if self.n else 0.0,
            "mean_regret": statistics.mean(self.regrets) if self.regrets else 0.0,
            "max_regret": max(self.regrets, default=0.0),
            "true_regret": statistics.mean(self.true_regrets) if self.true_regrets else 0.0,
            "exhaustive_true_regret": (
                statistics.mean(self.exhaustive_true_regrets) if self.exhaustive_true_regrets else 0.0
            ),
            "share": used / (TRIALS * TRIAL_EPOCHS),
            "trial_epochs": used,
            "phase3_restart": used + FULL_EPOCHS,
        }
        if mode == "prefix":
            figures["phase3_continue"] = used + FULL_EPOCHS - TRIAL_EPOCHS
        return figures


def evaluate(
    searches: Sequence[Search], exhaustive: Sequence[Outcome], run: Callable[[Search], Outcome], mode: str
) -> tuple[dict[str, float], list[Outcome]]:
    tally, outcomes = Tally(), []
    for search, full in zip(searches, exhaustive, strict=True):
        outcome = run(search)
        tally.add(search, full, outcome)
        outcomes.append(outcome)
    return tally.summary(mode), outcomes


def choose(results: list[tuple[dict[str, Any], dict[str, float]]]) -> tuple[dict[str, Any], dict[str, float]]:
    """Fewest trial epochs among settings within 0.005 of the best in >= 90 %; else the most accurate."""
    good = [r for r in results if r[1]["within_0_005"] >= WITHIN_TARGET]
    if good:
        return min(good, key=lambda r: (r[1]["share"], -r[1]["within_0_005"], -r[1]["same_best"]))
    return max(results, key=lambda r: (r[1]["within_0_005"], r[1]["same_best"], -r[1]["share"]))


# ----------------------------------------------------------------------------- main
def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.strip()
    import optuna

    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": str(len(__import__("os").sched_getaffinity(0))),
        "cpu": cpu,
        "python": platform.python_version(),
        "spread": f"{SPREAD_RANGE[0]:g}-{SPREAD_RANGE[1]:g}",
        "optuna": optuna.__version__,
        "commit": commit or "unknown",
    }


def searches_of(curves: dict[str, Curve], pool: Sequence[str], mode: str, n: int, seed: int) -> list[Search]:
    """``n`` seeded searches from ``pool``, alternating the two families."""
    return [make_search(curves, pool, mode, FAMILIES[i % 2], i, seed) for i in range(n)]


def calibrate(
    cal: Sequence[Search], cal_full: Sequence[Outcome], mode: str, log: Callable[[str], None]
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every grid setting on the calibration searches; the chosen setting per pruner kind."""
    chosen, rows = {}, {}
    for kind, grid in GRIDS.items():
        start = time.time()
        rows[kind] = {
            "grid": [by_family(cal, cal_full, [run_in_memory(s, p) for s in cal], mode, p) for p in grid]
        }
        chosen[kind], summary = choose([(row["setting"], row["all"]) for row in rows[kind]["grid"]])
        log(f"{mode} {kind}: chose {chosen[kind]} in {time.time() - start:.0f} s: {fmt(summary)}")
    return chosen, rows


def check_held_out(
    held: Sequence[Search],
    chosen: dict[str, dict[str, Any]],
    mode: str,
    work: Path,
    log: Callable[[str], None],
) -> tuple[dict[str, Any], bool]:
    """The chosen settings on the held-out searches, replayed into SQLite; and the same runs in memory."""
    none = {"kind": "none"}
    full = [run_in_memory(s, none) for s in held]
    checked = min(4, len(held))  # the exhaustive runs too, on SQLite, for a few searches
    agree = all(
        run_replayed(s, none, folder_of(work, s)).epochs == f.epochs
        for s, f in zip(held[:checked], full, strict=False)
    )
    table: dict[str, Any] = {"none": by_family(held, full, full, mode, none)}
    for kind, setting in chosen.items():
        start = time.time()
        replayed = [run_replayed(s, setting, folder_of(work, s)) for s in held]
        memory = [run_in_memory(s, setting) for s in held]
        agree = agree and all(
            (a.best, a.epochs) == (b.best, b.epochs) for a, b in zip(replayed, memory, strict=True)
        )
        table[kind] = by_family(held, full, replayed, mode, setting)
        table[kind]["example_states"] = replayed[0].states
        log(
            f"{mode} {kind} held out, replayed into SQLite in {time.time() - start:.0f} s: "
            f"{fmt(table[kind]['all'])}"
        )
    return table, agree


def folder_of(work: Path, search: Search) -> Path:
    return work / search.mode / f"{search.pool}-{search.family}-{search.index}"


def by_family(
    searches: Sequence[Search],
    exhaustive: Sequence[Outcome],
    runs: Sequence[Outcome],
    mode: str,
    setting: dict[str, Any],
) -> dict[str, Any]:
    """Figures over all searches and per family."""
    row: dict[str, Any] = {"setting": setting}
    for family in ("all", *FAMILIES):
        tally = Tally()
        for search, full, run in zip(searches, exhaustive, runs, strict=True):
            if family in ("all", search.family):
                tally.add(search, full, run)
        row[family] = tally.summary(mode)
    return row


def run_mode(
    curves: dict[str, Curve],
    mode: str,
    n_cal: int,
    n_held: int,
    seed: int,
    work: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Calibrate on the calibration pool's searches, check on the held-out pool's, for one trial schedule."""
    cal = searches_of(curves, CALIBRATION, mode, n_cal, seed)
    held = searches_of(curves, HELD_OUT, mode, n_held, seed + 1)
    none = {"kind": "none"}
    cal_full = [run_in_memory(s, none) for s in cal]
    chosen, grid = calibrate(cal, cal_full, mode, log)
    calibration = {"none": by_family(cal, cal_full, cal_full, mode, none)}
    for kind, setting in chosen.items():
        runs = [run_in_memory(s, setting) for s in cal]
        calibration[kind] = by_family(cal, cal_full, runs, mode, setting)
    held_out, agree = check_held_out(held, chosen, mode, work, log)
    return {
        "mode": mode,
        "calibration": calibration,
        "held_out": held_out,
        "grid": grid,
        "sqlite_equals_memory": agree,
        "searches": [
            {
                "pool": s.pool,
                "family": s.family,
                "index": s.index,
                "base": s.base,
                "partners": s.partners,
                "speeds": [round(v, 3) for v in s.speeds],
                "spread": round(s.spread, 4),
            }
            for s in (*cal, *held)
        ],
    }


def fmt(summary: dict[str, float]) -> str:
    text = (
        f"same {100 * summary['same_best']:.0f} %, within {100 * summary['within_0_005']:.0f} %, "
        f"share {100 * summary['share']:.0f} %, regret mean {summary['mean_regret']:.4f} "
        f"max {summary['max_regret']:.4f}"
    )
    if "phase3_continue" in summary:
        text += f", Phase 3 {summary['phase3_continue']:.0f} (continue)"
    return text + f" / {summary['phase3_restart']:.0f} (restart) vs {SEED_EPOCHS}"


def setting_text(setting: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in setting.items() if k != "kind") or "–"


def table_row(result: dict[str, Any], kind: str, where: str, label: str, family: str) -> str:
    """One line of the main table."""
    row = result[where][kind]
    f = row[family]
    first = (where, family) == ("calibration", "all")
    name, what = (kind, setting_text(row["setting"])) if first else ("", "")
    cont = f"{f['phase3_continue']:.0f}" if "phase3_continue" in f else "–"
    return (
        f"| {name} | {what} | {label}, {family} ({f['searches']}) | {100 * f['same_best']:.0f} % | "
        f"{100 * f['within_0_005']:.0f} % | {f['mean_regret']:.4f} / {f['max_regret']:.4f} | "
        f"{f['true_regret']:.4f} / {f['exhaustive_true_regret']:.4f} | "
        f"{f['trial_epochs']:.0f} ({100 * f['share']:.0f} %) | {cont} | {f['phase3_restart']:.0f} |"
    )


def markdown(results: list[dict[str, Any]], info: dict[str, str]) -> str:
    """The tables of docs/SEARCH.md."""
    lines = [
        f"{info['date']}; `nproc` {info['nproc']}, {info['cpu']}; Python {info['python']}, Optuna "
        f"{info['optuna']}; commit {info['commit']}; spread {info['spread']}; {info['seconds']} s",
        "",
    ]
    for result in results:
        mode = result["mode"]
        lines += [
            f"**{mode} trials** (held-out decisions on SQLite identical to in-memory: "
            f"{result['sqlite_equals_memory']})",
            "",
            "| pruner | setting (calibrated) | searches | same best | within 0.005 | regret mean / max "
            "| true regret: pruned / exhaustive | trial epochs (share) | Phase 3 continue "
            "| Phase 3 restart |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for kind in ("none", *GRIDS):
            for where, label in (("calibration", "calibration"), ("held_out", "held out")):
                for family in ("all", *FAMILIES):
                    lines.append(table_row(result, kind, where, label, family))
        lines += [
            "",
            f"Trade-offs on the calibration searches ({mode}): each setting that is more accurate "
            "than every cheaper one (within 0.005 / trial-epoch share; same best in brackets)",
            "",
        ]
        lines += ["| pruner | setting | within 0.005 (same best) | share |", "|---|---|---|---|"]
        for kind in GRIDS:
            best = -1.0
            for row in sorted(result["grid"][kind]["grid"], key=lambda r: r["all"]["share"]):
                f = row["all"]
                if f["within_0_005"] > best:
                    best = f["within_0_005"]
                    lines.append(
                        f"| {kind} | {setting_text(row['setting'])} | {100 * f['within_0_005']:.0f} % "
                        f"({100 * f['same_best']:.0f} %) | {100 * f['share']:.0f} % |"
                    )
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calibration", type=int, default=40, help="searches from the calibration pool")
    parser.add_argument("--held-out", type=int, default=30, help="searches from the held-out pool (>= 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", nargs="+", default=["prefix", "short"], choices=["prefix", "short"])
    parser.add_argument("--out", type=Path, help="write every figure as JSON here")
    parser.add_argument("--keep-work", action="store_true", help="keep the replay folders and SQLite files")
    parser.add_argument(
        "--spread",
        nargs=2,
        type=float,
        default=None,
        metavar=("LOW", "HIGH"),
        help="range of the per-search spread of trial scores (fractions; default 0.01 0.04)",
    )
    args = parser.parse_args(argv)
    if args.spread:
        global SPREAD_RANGE  # noqa: PLW0603 - one knob for a sensitivity run, read by make_search
        SPREAD_RANGE = (args.spread[0], args.spread[1])
    if not CURVES.is_dir():
        print(f"the shared curves are not at {CURVES}", file=sys.stderr)
        return 2
    curves = load_curves()
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="fod-pruned-search-"))
    started = time.time()

    def log(line: str) -> None:
        print(f"[{time.time() - started:6.0f} s] {line}", flush=True)

    results = [
        run_mode(curves, mode, args.calibration, args.held_out, args.seed, work, log) for mode in args.modes
    ]
    info["seconds"] = f"{time.time() - started:.0f}"
    print(markdown(results, info))
    if args.out:
        args.out.write_text(
            json.dumps({"machine": info, "results": results}, indent=2, default=str), encoding="utf-8"
        )
    if not args.keep_work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work folder kept: {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
