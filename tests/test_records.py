"""Reading Ultralytics results.csv files: every real curve in ../shared/curves, and each quirk by hand."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from flows.engine.records.results import EpochRecord
from flows.engine.records.results_csv import (
    RecordError,
    best_epoch,
    epoch_durations,
    fitness,
    read_results_csv,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
CURVES = SHARED / "curves"
MANIFEST = CURVES / "MANIFEST.tsv"
needs_curves = pytest.mark.skipif(not MANIFEST.is_file(), reason=f"real curves not found at {CURVES}")

HEADER_NEW = (
    "epoch,time,train/box_loss,train/cls_loss,train/dfl_loss,metrics/precision(B),metrics/recall(B),"
    "metrics/mAP50(B),metrics/mAP50-95(B),val/box_loss,val/cls_loss,val/dfl_loss,lr/pg0,lr/pg1,lr/pg2"
)


def manifest_rows() -> list[dict[str, str]]:
    """MANIFEST.tsv rows, or none when ../shared is absent (the tests then skip)."""
    if not MANIFEST.is_file():
        return []
    with MANIFEST.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def first_raw_epoch(path: Path) -> int:
    """The epoch number written on a file's first data line (0 in older Ultralytics releases)."""
    line = path.read_text(encoding="utf-8").splitlines()[1]
    return int(float(line.split(",")[0]))


def write(tmp_path: Path, text: str, name: str = "results.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def new_row(epoch: int, time: float, map50: float, map50_95: float) -> str:
    return f"{epoch},{time},1.5,2.5,1.2,0.6,0.5,{map50},{map50_95},1.4,2.2,1.3,0.01,0.01,0.01"


# --- every real curve ----------------------------------------------------------------------------


@needs_curves
@pytest.mark.parametrize("row", manifest_rows(), ids=lambda row: f"{row['n']}.csv")
def test_real_curve_matches_manifest(row: dict[str, str]) -> None:
    path = CURVES / f"{row['n']}.csv"
    records = read_results_csv(path)
    # MANIFEST's `epochs` counts rows; file 11 is a resumed run whose 121 rows hold 120 unique epochs
    # (epoch 1 written twice, once on each side of a git merge conflict): we keep one row per epoch.
    expected_epochs = int(row["epochs_arg"]) if row["n"] == "11" else int(row["epochs"])
    assert len(records) == expected_epochs
    assert [r.epoch for r in records] == list(range(1, expected_epochs + 1))
    assert records[-1].map50_95 == pytest.approx(float(row["final_mAP50-95"]), abs=1e-6)

    # MANIFEST's best is the highest mAP50-95, its epoch in the file's own (possibly 0-based) numbering.
    top = max(records, key=lambda r: r.map50_95 or 0.0)
    assert top.map50_95 == pytest.approx(float(row["best_mAP50-95"]), abs=1e-6)
    shift = 1 if first_raw_epoch(path) == 0 else 0
    assert top.epoch == int(row["best_epoch"]) + shift


@needs_curves
@pytest.mark.parametrize("row", manifest_rows(), ids=lambda row: f"{row['n']}.csv")
def test_best_epoch_is_first_max_fitness_on_real_curve(row: dict[str, str]) -> None:
    records = read_results_csv(CURVES / f"{row['n']}.csv")
    best = best_epoch(records)
    assert best is not None
    top = max(fitness(r) for r in records)
    assert fitness(best) == top
    assert best.epoch == min(r.epoch for r in records if fitness(r) == top)
    if row["n"] != "33":  # see the next test: there fitness and mAP50-95 disagree
        assert best.map50_95 == pytest.approx(float(row["best_mAP50-95"]), abs=1e-6)


@needs_curves
def test_best_epoch_follows_fitness_not_map50_95() -> None:
    """File 33: epoch 50 has the top mAP50-95 (0.43517) but epoch 41's mAP50 gives it a higher fitness."""
    records = read_results_csv(CURVES / "33.csv")
    best = best_epoch(records)
    assert best is not None
    assert (best.epoch, best.map50_95) == (41, 0.43514)
    assert max(r.map50_95 or 0 for r in records) == 0.43517


@needs_curves
def test_resumed_run_with_merge_markers_keeps_last_row_per_epoch() -> None:
    """File 11: epoch 1 (0-based) is written on both sides of a conflict; the later side wins."""
    records = read_results_csv(CURVES / "11.csv")
    assert records[1].epoch == 2
    assert records[1].losses["train/box_loss"] == 1.2729  # the second copy, not HEAD's 1.2779


@needs_curves
def test_custom_loss_columns_are_kept() -> None:
    records = read_results_csv(CURVES / "33.csv")
    assert set(records[0].losses) == {
        f"{split}/{part}_{head}"
        for split in ("train", "val")
        for part in ("box", "cls", "dfl")
        for head in ("om", "oo")
    }
    assert set(records[0].lr) == {"lr/pg0", "lr/pg1", "lr/pg2"}


@needs_curves
def test_real_infinite_losses_become_none() -> None:
    records = read_results_csv(CURVES / "3.csv")
    assert records[0].losses["val/cls_loss"] is None
    assert records[0].losses["val/box_loss"] == 0.99757


@needs_curves
def test_real_durations_from_time_column() -> None:
    records = read_results_csv(CURVES / "29.csv")
    durations = epoch_durations(records)
    assert len(durations) == 50
    assert durations[0] == pytest.approx(217.4)
    assert durations[1] == pytest.approx(427.245 - 217.4)
    assert sum(durations) == pytest.approx(records[-1].time_s)
    assert epoch_durations(read_results_csv(CURVES / "23.csv")) == []  # older file: no time column


# --- each quirk, by hand -------------------------------------------------------------------------


def test_padded_zero_based_file_without_time(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "      epoch,  train/box_loss,  metrics/precision(B),  metrics/recall(B),"
        "  metrics/mAP50(B),  metrics/mAP50-95(B),  val/box_loss,  lr/pg0\n"
        "          0,           1.5,       0.4,       0.3,       0.2,       0.1,    1.7,   0.07\n"
        "          1,           1.2,       0.5,       0.4,       0.3,       0.2,    1.6,   0.06\n",
    )
    records = read_results_csv(path)
    assert records == (
        EpochRecord(
            epoch=1,
            precision=0.4,
            recall=0.3,
            map50=0.2,
            map50_95=0.1,
            losses={"train/box_loss": 1.5, "val/box_loss": 1.7},
            lr={"lr/pg0": 0.07},
        ),
        EpochRecord(
            epoch=2,
            precision=0.5,
            recall=0.4,
            map50=0.3,
            map50_95=0.2,
            losses={"train/box_loss": 1.2, "val/box_loss": 1.6},
            lr={"lr/pg0": 0.06},
        ),
    )
    assert epoch_durations(records) == []


def test_one_based_file_with_time(tmp_path: Path) -> None:
    path = write(tmp_path, "\n".join([HEADER_NEW, new_row(1, 10.0, 0.3, 0.2), new_row(2, 25.5, 0.4, 0.3)]))
    records = read_results_csv(path)
    assert [r.epoch for r in records] == [1, 2]
    assert [r.time_s for r in records] == [10.0, 25.5]
    assert epoch_durations(records) == [10.0, 15.5]
    assert records[0].losses == {
        "train/box_loss": 1.5,
        "train/cls_loss": 2.5,
        "train/dfl_loss": 1.2,
        "val/box_loss": 1.4,
        "val/cls_loss": 2.2,
        "val/dfl_loss": 1.3,
    }


def test_nan_and_inf_become_none(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "epoch,train/box_loss,metrics/precision(B),metrics/recall(B),metrics/mAP50(B),metrics/mAP50-95(B),lr/pg0\n"
        "1,nan,inf,-inf,NaN,0.1,\n",
    )
    (record,) = read_results_csv(path)
    assert record.losses == {"train/box_loss": None}
    assert (record.precision, record.recall, record.map50, record.map50_95) == (None, None, None, 0.1)
    assert record.lr == {"lr/pg0": None}


def test_resumed_rows_and_merge_markers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "\n".join(
            [
                HEADER_NEW,
                new_row(1, 10, 0.1, 0.05),
                "<<<<<<< HEAD",
                new_row(2, 20, 0.2, 0.10),
                "=======",
                new_row(2, 21, 0.25, 0.12),
                new_row(3, 31, 0.3, 0.15),
                ">>>>>>> 41feda3f",
                "",
                new_row(3, 33, 0.35, 0.18),  # resumed again: the last row of epoch 3 wins
            ]
        ),
    )
    records = read_results_csv(path)
    assert [(r.epoch, r.time_s, r.map50_95) for r in records] == [(1, 10, 0.05), (2, 21, 0.12), (3, 33, 0.18)]


def test_rows_out_of_order_come_back_sorted(tmp_path: Path) -> None:
    path = write(tmp_path, "\n".join([HEADER_NEW, new_row(2, 20, 0.2, 0.1), new_row(1, 10, 0.1, 0.05)]))
    assert [r.epoch for r in read_results_csv(path)] == [1, 2]


def test_header_only_is_an_empty_record(tmp_path: Path) -> None:
    assert read_results_csv(write(tmp_path, HEADER_NEW + "\n")) == ()


def test_best_epoch_first_on_ties_and_none_without_metrics() -> None:
    a = EpochRecord(epoch=1, map50=0.5, map50_95=0.3)
    b = EpochRecord(epoch=2, map50=0.5, map50_95=0.3)
    c = EpochRecord(epoch=3, map50=0.9, map50_95=0.29)  # fitness 0.351 > 0.32
    assert best_epoch([a, b]) is a
    assert best_epoch([a, b, c]) is c
    assert best_epoch([]) is None
    assert best_epoch([EpochRecord(epoch=1)]) is None


# --- files that are not a results.csv ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("", 1, "empty"),
        ("\n  \n", 1, "empty"),
        ("name,size\nfoo,3\n", 1, "no 'epoch' column"),
        ("epoch,train/box_loss,metrics/mAP50(B)\n1,0.5,0.3\n", 1, "no 'metrics/mAP50-95' column"),
        ("\n" + HEADER_NEW + "\n1,2,3\n", 3, "3 values for 15 columns"),
        (HEADER_NEW + "\n" + new_row(1, 1, 0.1, 0.1).replace("0.6", "high"), 2, "not a number"),
        ("epoch,metrics/mAP50-95(B)\n1.5,0.2\n", 2, "not a whole number"),
        ("epoch,metrics/mAP50-95(B)\n-1,0.2\n", 2, "not a whole number"),
    ],
    ids=["empty", "blank", "no-epoch", "no-map", "short-row", "text-value", "fractional-epoch", "negative"],
)
def test_not_a_results_csv(tmp_path: Path, text: str, line: int, problem: str) -> None:
    path = write(tmp_path, text, "bad.csv")
    with pytest.raises(RecordError, match=problem) as caught:
        read_results_csv(path)
    assert f"{path}:{line}:" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_missing_file_is_a_record_error(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match="cannot be read"):
        read_results_csv(tmp_path / "absent.csv")
