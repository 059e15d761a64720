"""Read Ultralytics training records (``results.csv``) into ``EpochRecord``s.

``read_results_csv(path)`` reads any release's file the same way: padded names and values, epochs from 0,
extra loss columns and git merge-conflict markers are handled; when an epoch repeats (a resumed run
appends rows) the last row wins; non-finite values become None; records come back sorted and unique.
Anything that is not a results.csv raises ``RecordError`` naming file and line. The rules in full:
docs/REPLAY.md. Pure: no torch, Ultralytics or Prefect.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from flows.engine.records.results import EpochRecord

MERGE_MARKERS = ("<<<<<<<", "=======", ">>>>>>>")
"""Prefixes of the lines git leaves in a file with a merge conflict."""

METRIC_PREFIXES = {
    "precision": "metrics/precision",
    "recall": "metrics/recall",
    "map50": "metrics/mAP50(",
    "map50_95": "metrics/mAP50-95",
}
"""How each ``EpochRecord`` metric field is found among the columns (boxes ``(B)`` preferred)."""

FITNESS_WEIGHTS = (0.1, 0.9)
"""Ultralytics' fitness (mAP50, mAP50-95), which picks the epoch saved as best.pt."""


class RecordError(ValueError):
    """A file that cannot be read as an Ultralytics results.csv; the message names file and line."""


@dataclass(frozen=True)
class _Columns:
    """Where each kind of value sits in a row, found once from the header."""

    epoch: int
    metrics: dict[str, int]
    losses: dict[str, int]
    lr: dict[str, int]
    time: int | None


def read_results_csv(path: Path) -> tuple[EpochRecord, ...]:
    """Parse a results.csv into 1-based, unique, epoch-sorted records (last row wins on repeats)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordError(f"{path}: cannot be read as a results.csv ({exc})") from exc
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if _is_data(line)]
    if not lines:
        raise RecordError(f"{path}:1: empty file, not a results.csv")
    header_number, header_line = lines[0]
    header = _split(header_line)
    columns = _find_columns(header, path, header_number)
    rows = [_parse_row(_split(line), header, columns, path, number) for number, line in lines[1:]]
    return _normalise(rows)


def best_epoch(records: Sequence[EpochRecord]) -> EpochRecord | None:
    """Return the record best.pt comes from: max 0.1*mAP50 + 0.9*mAP50-95, the first on ties.

    Missing metrics count as 0, as in Ultralytics. None when no record has any mAP at all.
    """
    scored = [r for r in records if r.map50 is not None or r.map50_95 is not None]
    if not scored:
        return None
    return max(scored, key=fitness)  # max() keeps the first of equal keys


def fitness(record: EpochRecord) -> float:
    """Ultralytics' fitness of one epoch (missing metrics count as 0)."""
    w50, w50_95 = FITNESS_WEIGHTS
    return w50 * (record.map50 or 0.0) + w50_95 * (record.map50_95 or 0.0)


def epoch_durations(records: Sequence[EpochRecord]) -> list[float]:
    """Seconds each epoch took, from the cumulative ``time`` column; empty when the record lacks it.

    The first epoch's duration is its cumulative time. Epochs without a time are left out.
    """
    durations: list[float] = []
    previous = 0.0
    for record in records:
        if record.time_s is None:
            continue
        durations.append(record.time_s - previous)
        previous = record.time_s
    return durations


def median_after_first(values: Iterable[float]) -> float | None:
    """Median of all values but the first (warm-up epoch), or of the only one; None when empty."""
    values = list(values)
    if not values:
        return None
    return statistics.median(values[1:] or values)


def _is_data(line: str) -> bool:
    """False for blank lines and git merge-conflict markers."""
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith(MERGE_MARKERS)


def _split(line: str) -> list[str]:
    """Split one CSV line and strip the padding older Ultralytics releases wrote."""
    return [cell.strip() for cell in next(csv.reader([line]))]


def _find_columns(header: list[str], path: Path, line: int) -> _Columns:
    """Locate epoch, metric, loss, lr and time columns; reject a header that is not a results.csv."""
    if "epoch" not in header:
        raise RecordError(f"{path}:{line}: no 'epoch' column, not a results.csv (header: {header[:4]}...)")
    found = {field: _metric(header, prefix) for field, prefix in METRIC_PREFIXES.items()}
    metrics = {field: index for field, index in found.items() if index is not None}
    if "map50_95" not in metrics:
        raise RecordError(f"{path}:{line}: no 'metrics/mAP50-95' column, not a results.csv")
    return _Columns(
        epoch=header.index("epoch"),
        metrics=metrics,
        losses={name: i for i, name in enumerate(header) if name.startswith(("train/", "val/"))},
        lr={name: i for i, name in enumerate(header) if name.startswith("lr/")},
        time=header.index("time") if "time" in header else None,
    )


def _metric(header: list[str], prefix: str) -> int | None:
    """Index of the box metric column with this prefix (``(B)`` first), or None."""
    matches = [i for i, name in enumerate(header) if name.startswith(prefix)]
    boxes = [i for i in matches if _is_box(header[i])]
    chosen = boxes or matches
    return chosen[0] if chosen else None


def _is_box(name: str) -> bool:
    """True for a box metric column such as ``metrics/mAP50-95(B)``."""
    return name.endswith("(B)")


def _parse_row(cells: list[str], header: list[str], columns: _Columns, path: Path, line: int) -> dict:
    """Turn one data line into record fields with the file's own epoch number (made 1-based later)."""
    if len(cells) != len(header):
        raise RecordError(f"{path}:{line}: {len(cells)} values for {len(header)} columns")
    epoch = _number(cells[columns.epoch], path, line, "epoch")
    if epoch is None or epoch != int(epoch) or epoch < 0:
        raise RecordError(f"{path}:{line}: epoch {cells[columns.epoch]!r} is not a whole number >= 0")
    values = {field: _number(cells[i], path, line, header[i]) for field, i in columns.metrics.items()}
    return dict(
        epoch=int(epoch),
        **values,
        losses={name: _number(cells[i], path, line, name) for name, i in columns.losses.items()},
        lr={name: _number(cells[i], path, line, name) for name, i in columns.lr.items()},
        time_s=None if columns.time is None else _number(cells[columns.time], path, line, "time"),
    )


def _number(cell: str, path: Path, line: int, column: str) -> float | None:
    """Parse a value; empty, ``nan`` and ``inf`` become None, text that is not a number is an error."""
    if not cell:
        return None
    try:
        value = float(cell)
    except ValueError as exc:
        raise RecordError(f"{path}:{line}: column {column!r} holds {cell!r}, not a number") from exc
    return value if math.isfinite(value) else None


def _normalise(rows: list[dict]) -> tuple[EpochRecord, ...]:
    """Make epochs 1-based, keep the last row of each epoch and sort; validate every record."""
    if not rows:
        return ()
    shift = 1 if min(row["epoch"] for row in rows) == 0 else 0
    latest: dict[int, dict] = {row["epoch"] + shift: row for row in rows}  # later rows replace earlier ones
    return tuple(EpochRecord(**{**latest[epoch], "epoch": epoch}) for epoch in sorted(latest))
