"""The early-decision corpus: real Ultralytics detection curves of public repositories, read as the engine
reads records, cleaned, and split by repository into a calibration half and a report half.

Files: ``benchmarks/curves/SOURCES.tsv`` (one row per run: repository, path, commit, the run's arguments)
and ``benchmarks/curves/corpus/<id>.csv`` (the run's epoch and box metric columns, rows as recorded).
docs/EARLY_DECISIONS.md says how the corpus was gathered and what each half is for.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flows.engine.plan.ultra_defaults import ultralytics_default
from flows.engine.records.results import EpochRecord
from flows.engine.records.results_csv import read_results_csv

CURVES_DIR = Path(__file__).resolve().parent / "curves"
SOURCES = CURVES_DIR / "SOURCES.tsv"
CORPUS = CURVES_DIR / "corpus"
SPLIT_SALT = "fod-early-split-v1"
"""Changing the salt (or the split rule) makes a new split: figures on the old report half no longer count
as held out for a rule chosen on the new calibration half."""
MIN_ROWS = 25
"""Fewer epochs than this say nothing about how a schedule ends."""
MIN_PLANNED = 20


@dataclass(frozen=True)
class Source:
    """One row of SOURCES.tsv: where a run comes from and the arguments it was trained with."""

    id: str
    repo: str
    path: str
    commit: str
    rows: int
    args_path: str = ""
    epochs_arg: str = ""
    patience: str = ""
    close_mosaic: str = ""
    model: str = ""
    imgsz: str = ""
    batch: str = ""
    optimizer: str = ""
    cos_lr: str = ""
    lrf: str = ""
    pretrained: str = ""
    family: str = ""
    notes: str = ""


@dataclass(frozen=True)
class CorpusRun:
    """A run as the calibration and the benchmark read it."""

    source: Source
    records: tuple[EpochRecord, ...]
    """1-based, unique epochs (last row wins), cut at the planned epochs."""
    epochs_planned: int
    close_mosaic: int
    split: str

    @property
    def name(self) -> str:
        """The run's id in the corpus."""
        return self.source.id

    @property
    def repo(self) -> str:
        """The repository it comes from (the unit of the split)."""
        return self.source.repo.lower()

    @property
    def completed(self) -> bool:
        """True when the record holds every planned epoch (usable as a whole phase)."""
        return len(self.records) >= self.epochs_planned

    @property
    def csv(self) -> Path:
        """The corpus file (a results.csv the replay trainer reads)."""
        return CORPUS / f"{self.source.id}.csv"


@dataclass
class Corpus:
    """The usable runs and, for each file left out, why."""

    runs: list[CorpusRun]
    dropped: list[tuple[str, str]] = field(default_factory=list)

    def half(self, split: str) -> list[CorpusRun]:
        """The runs of one half (``calibration`` or ``report``)."""
        return [r for r in self.runs if r.split == split]

    def repos(self, split: str | None = None) -> set[str]:
        """Distinct repositories (of one half)."""
        return {r.repo for r in self.runs if split is None or r.split == split}


def read_sources(path: Path = SOURCES) -> list[Source]:
    """The source table, one ``Source`` per row."""
    with Path(path).open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    names = set(Source.__dataclass_fields__)
    return [Source(**{k: (v or "").strip() for k, v in row.items() if k in names}) for row in rows]  # type: ignore[arg-type]


def split_of(repo: str) -> str:
    """Calibration or report for a repository, from a salted hash of its name: blind to its curves, and
    stable when repositories are added (one already reported on stays in the report half)."""
    digest = hashlib.sha256(f"{SPLIT_SALT}:{repo.lower()}".encode()).hexdigest()
    return "calibration" if int(digest[:8], 16) % 2 == 0 else "report"


def planned_epochs(source: Source, records: Sequence[EpochRecord]) -> int:
    """The schedule the run was on: ``epochs`` of its arguments, else the epochs it recorded."""
    try:
        return int(float(source.epochs_arg))
    except ValueError:
        return records[-1].epoch


def close_mosaic_of(source: Source) -> int:
    """``close_mosaic`` of the run's arguments; YOLOv5 has none, others default to Ultralytics' 10."""
    if source.family == "v5":
        return 0
    try:
        return int(float(source.close_mosaic))
    except ValueError:
        return ultralytics_default("close_mosaic")


def fingerprint(records: Sequence[EpochRecord]) -> tuple[float | None, ...]:
    """What makes two runs the same curve (a fork's copy): every epoch's mAP50-95."""
    return tuple(None if r.map50_95 is None else round(r.map50_95, 5) for r in records)


def load_corpus(sources: Path = SOURCES, corpus: Path = CORPUS) -> Corpus:
    """Every usable run, with its half; runs left out (too short, no figure, a copy of another) with why."""
    kept: list[tuple[Source, tuple[EpochRecord, ...], int]] = []
    dropped: list[tuple[str, str]] = []
    seen: dict[tuple, str] = {}
    for source in read_sources(sources):
        records = read_results_csv(corpus / f"{source.id}.csv")
        planned = planned_epochs(source, records) if records else 0
        run = tuple(records[:planned])
        reason = why_unusable(run, planned)
        if reason is None and (twin := seen.get(fingerprint(run))) is not None:
            reason = f"the same curve as {twin}"
        if reason is not None:
            dropped.append((source.id, reason))
            continue
        seen[fingerprint(run)] = source.id
        kept.append((source, run, planned))
    runs = [
        CorpusRun(source, run, planned, close_mosaic_of(source), split_of(source.repo))
        for source, run, planned in kept
    ]
    return Corpus(runs, dropped)


def why_unusable(records: Sequence[EpochRecord], planned: int) -> str | None:
    """Why a run cannot calibrate or test the rule, or None."""
    if planned < MIN_PLANNED:
        return f"planned {planned} epochs (< {MIN_PLANNED})"
    if len(records) < MIN_ROWS:
        return f"{len(records)} epochs recorded (< {MIN_ROWS})"
    figures = [r.map50_95 for r in records if r.map50_95 is not None and math.isfinite(r.map50_95)]
    if not figures or max(figures) <= 0:
        return "no mAP50-95 figure above 0"
    return None
