"""The early-decision corpus (benchmarks/curves) and its calibration: how runs are read and split, the
conformal quantile, the shipped constants against the committed corpus, and the safety target on the
report half."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

from early_calibration import (
    Curve,
    clopper_pearson_upper,
    conformal_quantile,
    decision_terms,
    folds_by_group,
    rule_with,
    score,
)
from early_corpus import SOURCES, load_corpus, split_of

from flows.engine.decisions.early import (
    BOUND_SHAPE,
    CALIBRATED_QUANTILES,
    MIN_FRACTION,
    POLICY_RISK,
    BoundShape,
    MetricRule,
    decidable_from,
    metric_upper_bound,
    rule_for,
)
from flows.engine.records.results import EpochRecord

HEADER = "epoch,metrics/precision(B),metrics/recall(B),metrics/mAP50(B),metrics/mAP50-95(B)"
COLUMNS = (
    "id\trepo\tpath\tcommit\trows\targs_path\tepochs_arg\tpatience\tclose_mosaic\tmodel\timgsz\tbatch"
    "\toptimizer\tcos_lr\tlrf\tpretrained\tfamily\tnotes"
)


def write_run(folder: Path, run_id: str, rows: list[tuple[int, float]]) -> None:
    """A corpus file: (epoch, mAP50-95) rows, mAP50 a little above, precision and recall made up."""
    lines = [HEADER] + [f"{e},0.5,0.5,{min(1.0, m + 0.2):.5f},{m:.5f}" for e, m in rows]
    (folder / f"{run_id}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def source_line(run_id: str, repo: str, epochs_arg: str = "", family: str = "v8", close: str = "") -> str:
    """A SOURCES.tsv row with only what the loader reads filled in."""
    cells = [run_id, repo, "runs/detect/train/results.csv", "0" * 40, "0", "", epochs_arg, "", close]
    cells += ["", "", "", "", "", "", "", family, ""]
    return "\t".join(cells)


def rising(epochs: int, top: float = 0.6, start: int = 1) -> list[tuple[int, float]]:
    """A smooth rising curve."""
    return [(e, top * (1 - math.exp(-(e - start + 1) / 10))) for e in range(start, start + epochs)]


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> tuple[Path, Path]:
    """Six runs with the quirks real records have."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_run(corpus, "r1", rising(40))
    resumed = rising(30) + [(e, m + 0.01) for e, m in rising(40)[25:]]  # epochs 26-30 again, then on
    write_run(corpus, "r2", resumed)
    write_run(corpus, "r3", rising(60))  # patience: 60 of 100 planned
    write_run(corpus, "r4", rising(10))  # too short
    write_run(corpus, "r5", rising(40))  # a fork of r1
    write_run(corpus, "r6", [(e - 1, m) for e, m in rising(55)])  # 0-based epochs, 5 rows past its 50
    sources = tmp_path / "SOURCES.tsv"
    rows = [
        source_line("r1", "a/one", "40"),
        source_line("r2", "a/one", "40"),
        source_line("r3", "b/two", "100"),
        source_line("r4", "c/three", "10"),
        source_line("r5", "d/fork", "40"),
        source_line("r6", "e/five", "50", family="v5", close="10"),
    ]
    sources.write_text("\n".join([COLUMNS, *rows]) + "\n", encoding="utf-8")
    return sources, corpus


def test_runs_are_read_as_the_engine_reads_records(tiny_corpus):
    corpus = load_corpus(*tiny_corpus)
    runs = {r.name: r for r in corpus.runs}
    assert set(runs) == {"r1", "r2", "r3", "r6"}
    assert dict(corpus.dropped) == {"r4": "planned 10 epochs (< 20)", "r5": "the same curve as r1"}
    resumed = runs["r2"]  # the last row of a repeated epoch wins
    assert len(resumed.records) == 40 and resumed.records[25].map50_95 == pytest.approx(
        rising(40)[25][1] + 0.01, abs=1e-5
    )
    assert (runs["r3"].epochs_planned, runs["r3"].completed) == (100, False)
    assert [r.epoch for r in runs["r6"].records] == list(range(1, 51))  # 1-based, cut at its planned 50
    assert runs["r6"].close_mosaic == 0 and runs["r1"].close_mosaic == 10  # YOLOv5 has no close_mosaic


def test_a_repository_is_in_one_half_only(tiny_corpus):
    corpus = load_corpus(*tiny_corpus)
    assert all(r.split == split_of(r.repo) for r in corpus.runs)
    assert split_of("A/One") == split_of("a/one")
    halves = {split_of(f"owner{i}/name") for i in range(20)}
    assert halves == {"calibration", "report"}


# ----------------------------------------------------------------------------- the conformal quantile


def test_conformal_quantile_takes_the_rank_the_risk_needs():
    scores = [float(i) for i in range(1, 100)]  # 99 scores
    assert conformal_quantile(scores, 0.01) == 99.0  # ⌈100 × 0.99⌉ = 99th smallest
    assert conformal_quantile(scores[:98], 0.01) == math.inf  # 98 scores: too few for 1 %
    assert conformal_quantile(scores, 0.05) == 95.0  # ⌈100 × 0.95⌉
    assert conformal_quantile(scores, 0.5) == 50.0


def test_score_is_the_most_headrooms_a_curve_still_rose():
    values = [0.4 + 0.002 * e for e in range(1, 61)] + [0.6] * 40  # a plateau, then a step at epoch 61
    curve = Curve("step", "g", tuple(values), 0.6, 100, 10)
    rule = rule_with(BOUND_SHAPE, 0.3)
    terms = decision_terms(curve, rule)
    needed = score(curve, terms, BOUND_SHAPE)
    assert needed > 0
    at_needed = rule.model_copy(update={"quantile": needed})
    bounds = [metric_upper_bound(values[:k], 100, at_needed) for k in terms.epochs]
    assert min(b for b in bounds if b is not None) == pytest.approx(0.6)  # covered, just
    below = rule.model_copy(update={"quantile": needed * 0.99})
    assert any(metric_upper_bound(values[:k], 100, below) < 0.6 for k in terms.epochs)


def test_a_noisy_curve_widens_its_own_bound_and_a_rising_one_is_not_read_as_flat():
    """The shipped shape (whatever quantile it is taken at) has both properties the issue asks for."""
    rule = MetricRule(shape=BOUND_SHAPE, quantile=1.0, risk=0.01, min_fraction=MIN_FRACTION)
    seen = decidable_from(100, rule)  # epochs so far: the first the rule may decide at
    smooth = [0.3 + 0.001 * e for e in range(1, seen + 1)]
    noisy = [v + 0.06 * (-1) ** e for e, v in enumerate(smooth, start=1)]
    flat = [0.5] * seen
    rising_curve = [0.39 + 0.005 * e for e in range(1, seen + 1)]  # 0.005 per epoch
    room = {name: metric_upper_bound(v, 100, rule) - max(v) for name, v in
            (("smooth", smooth), ("noisy", noisy), ("flat", flat), ("rising", rising_curve))}  # fmt: skip
    assert room["noisy"] > room["smooth"] and room["rising"] > room["flat"]
    assert room["rising"] >= 0.005 * (100 - seen) * BOUND_SHAPE.slope_weight - 1e-9


def test_folds_keep_every_repository_whole():
    curves = [Curve(f"c{i}", f"repo{i % 7}", (0.1,), 0.1, 10, 0) for i in range(30)]
    folds = folds_by_group(curves, 5)
    assert sorted(i for f in folds for i in f) == list(range(30))
    for fold in folds:
        groups = {curves[i].group for i in fold}
        assert all(curves[i].group not in groups for other in folds if other is not fold for i in other)


def test_clopper_pearson_upper_bound():
    assert clopper_pearson_upper(0, 149) < 0.02 < clopper_pearson_upper(0, 147)  # 1 − 0.05^(1/n)
    assert clopper_pearson_upper(0, 100) == pytest.approx(1 - 0.05 ** (1 / 100))
    assert clopper_pearson_upper(3, 100) > 0.03


# ----------------------------------------------------------------------------- the committed corpus


needs_corpus = pytest.mark.skipif(not SOURCES.is_file(), reason=f"no corpus at {SOURCES}")


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


@needs_corpus
def test_the_corpus_holds_enough_real_runs_split_by_repository(corpus):
    assert len(corpus.runs) >= 200 and len(corpus.repos()) >= 100
    assert not corpus.repos("calibration") & corpus.repos("report")
    assert len(corpus.half("calibration")) >= 99  # a finite quantile at 1 % needs 99 runs
    files = {p.stem for p in (SOURCES.parent / "corpus").glob("*.csv")}
    listed = {r.name for r in corpus.runs} | {name for name, _ in corpus.dropped}
    assert files == listed


@pytest.fixture(scope="module")
def bench():
    """benchmarks/early_decisions.py (its calibration and report)."""
    import early_decisions

    return early_decisions


@pytest.fixture(scope="module")
def calibration(corpus, bench):
    """The calibration half's choice of shape and first decision point, and every quantile."""
    return bench.calibrate(corpus.half("calibration"))


@needs_corpus
def test_shipped_shape_is_the_calibration_halfs_choice(calibration):
    assert calibration["shape"] == BOUND_SHAPE.model_dump() and calibration["min_fraction"] == MIN_FRACTION
    scores = sorted(calibration["scores"]["map50_95"])
    n, safe = len(scores), calibration["quantiles"]["map50_95"]["safe"]
    assert n == calibration["curves"] and math.isfinite(safe) == (n >= 99)  # ⌈(n + 1) × 0.99⌉ ≤ n
    if math.isfinite(safe):
        assert safe == scores[math.ceil((n + 1) * 0.99) - 1]


@needs_corpus
def test_a_rule_ships_only_where_it_met_its_target_on_the_report_half(corpus, calibration, bench):
    """The engine's quantiles are the calibration's, kept where the report half showed a false-stop rate
    ≤ the policy's risk with a 95 % upper bound ≤ twice it (safe: the issue's 2 %); nothing else decides."""
    results = bench.report(corpus.half("report"), calibration)
    assert bench.shippable(calibration, results) == CALIBRATED_QUANTILES
    for r in results:
        if r["set"] != "report half":
            continue
        risk = POLICY_RISK[r["policy"]]
        met = r["rule"] is not None and r["false_rate"] <= risk and r["false_upper95"] <= 2 * risk
        assert r["shipped"] == met == (rule_for(r["policy"], r["metric"]) is not None), (
            r["metric"],
            r["policy"],
        )


def test_a_shape_is_a_weighted_sum_of_its_terms():
    shape = BoundShape(slope_weight=2.0, noise_weight=1.0, floor=0.5, mosaic_lift=0.1)
    from flows.engine.decisions.early import HeadroomTerms

    assert shape.combine(HeadroomTerms(rise=0.1, noise=0.02, left=0.5, mosaic=1.0)) == pytest.approx(
        0.2 + 0.02 + 0.25 + 0.1
    )
    assert EpochRecord(epoch=1).map50_95 is None
