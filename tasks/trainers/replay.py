"""A trainer that replays recorded Ultralytics runs (``results.csv``) instead of training.

``ReplayTrainer(replay_spec).train(spec, on_epoch)`` has the real trainer's interface: it streams one
``EpochEvent`` per recorded epoch (the first ``spec.epochs``; a shorter record ends the run "stopped"),
writes ``results.csv`` and placeholder weights into ``spec.run_dir``, and returns the metrics of the epoch
best.pt comes from, so any branch of a plan walks in seconds on real curves. The SPEC (``--replay``) is
loaded and checked once, in validation (``records/replay_spec.py``); its format: docs/REPLAY.md.
Pure: no torch, Ultralytics or Prefect.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from flows.engine.decisions.monitors import StopTraining
from flows.engine.faults import kill_point, worker_gone_point
from flows.engine.fsutil import atomic_write_text, write_text_once
from flows.engine.plan.ultra_defaults import ultralytics_default
from flows.engine.records.replay_spec import ReplaySpec, RunEntry, load_replay_spec
from flows.engine.records.results import EpochEvent, EpochRecord, PhaseResult, TrainSpec, ValMetrics
from flows.engine.records.results_csv import best_epoch, epoch_durations, median_after_first, read_results_csv

DIVERGED_REASON = "NaN/Inf loss; recoveries exhausted"


class ReplayTrainer:
    """Replays recorded results.csv files in place of training (same interface as the real trainer)."""

    def __init__(self, replay: ReplaySpec) -> None:
        self.spec = replay

    @classmethod
    def from_file(cls, path: Path) -> ReplayTrainer:
        """A trainer for the SPEC file at ``path`` (loaded and checked now; tests and benchmarks)."""
        return cls(load_replay_spec(path))

    def train(self, spec: TrainSpec, on_epoch: Callable[[EpochEvent], None]) -> PhaseResult:
        """Replay the node's recorded run: stream its epochs, write its files, return its result."""
        entry = self.spec.entry_for(spec.node, spec.trial)
        planned = spec.epochs
        recorded = adjust_records(read_results_csv(entry.csv)[: max(planned, 0)], entry)
        speeds = epoch_speeds(recorded, entry)
        stop_reason = None
        done = epochs_already_trained(spec)
        pause = epoch_pauses(recorded, entry)
        for index, record in enumerate(recorded):
            if index < done:
                continue  # replayed before the interruption: like Ultralytics' resume, not trained again
            if pause[index]:
                time.sleep(pause[index])
            last = index == len(recorded) - 1
            try:
                on_epoch(
                    EpochEvent(
                        **spec.ref().model_dump(),
                        epochs_planned=planned,
                        record=record,
                        images_per_s=speeds[index],
                        torch_reserved_gb=entry.torch_peak_reserved_gb,
                        nvml_used_gb=entry.nvml_peak_used_gb,
                        nan_recoveries=entry.nan_recoveries if last else 0,
                    )
                )
            except StopTraining as stop:  # early stop: the run ends after this epoch, as a real one would
                stop_reason = stop.reason
                recorded = recorded[: index + 1]
                keep_continue_checkpoint(spec, record.epoch)
                break
            save_last_checkpoint(spec, record.epoch)
            kill_point(f"epoch:{spec.node}:{record.epoch}")
            kill_point(f"epoch:{spec.key}:{record.epoch}")  # one trial's process (a worker, side by side)
            worker_gone_point(f"epoch:{spec.key}:{record.epoch}")  # its worker and its nanny, for good
        weights, results_csv = write_run_files(spec, entry, recorded)
        result = build_result(spec, entry, recorded, weights=weights, results_csv=results_csv)
        if stop_reason is not None:
            return result.model_copy(update={"status": "stopped", "reason": stop_reason})
        return result


LAST_CHECKPOINT = Path("weights") / "last.pt"


def save_last_checkpoint(spec: TrainSpec, epoch: int) -> None:
    """Like Ultralytics' last.pt after every epoch: here a placeholder naming the last finished epoch."""
    atomic_write_text(spec.run_dir / LAST_CHECKPOINT, f"REPLAY CHECKPOINT\nepoch: {epoch}\n", overwrite=True)


def keep_continue_checkpoint(spec: TrainSpec, epoch: int) -> None:
    """A prefix trial stopped after ``epoch`` keeps a checkpoint its search's full run can continue from."""
    if spec.trial_hook is not None and spec.trial_hook.prefix:
        from flows.engine.decisions.study import CONTINUE_CHECKPOINT

        text = f"REPLAY CHECKPOINT\nepoch: {epoch}\n"
        atomic_write_text(spec.run_dir / CONTINUE_CHECKPOINT, text, overwrite=True)


def epochs_already_trained(spec: TrainSpec) -> int:
    """Epochs already replayed when resuming from the run's own placeholder last.pt, or continuing the best
    trial's checkpoint (a search's full run with ``full_run: continue``); 0 otherwise."""
    start = spec.resume_checkpoint or spec.continue_checkpoint
    if start is None or not Path(start).is_file():
        return 0
    for line in Path(start).read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("epoch:") and line.split(":", 1)[1].strip().isdigit():
            return int(line.split(":", 1)[1])
    return 0


def epoch_pauses(records: Sequence[EpochRecord], entry: RunEntry) -> list[float]:
    """Seconds a replayed epoch takes: ``epoch_seconds``, or the record's durations × ``time_scale``."""
    if entry.epoch_seconds is not None:
        return [entry.epoch_seconds] * len(records)
    if entry.time_scale is not None:
        durations = epoch_durations(records)
        if len(durations) == len(records):
            return [max(d, 0.0) * entry.time_scale for d in durations]
    return [0.0] * len(records)


def adjust_records(records: Sequence[EpochRecord], entry: RunEntry) -> tuple[EpochRecord, ...]:
    """Apply the entry's ``scale_map`` and ``offset_map50_95`` to every epoch (clipped to 0..1)."""
    if entry.scale_map is None and entry.offset_map50_95 is None:
        return tuple(records)
    scale, offset = entry.scale_map or 1.0, entry.offset_map50_95 or 0.0
    return tuple(
        record.model_copy(
            update={
                "map50": _clip(record.map50, scale, 0.0),
                "map50_95": _clip(record.map50_95, scale, offset),
            }
        )
        for record in records
    )


def _clip(value: float | None, scale: float, offset: float) -> float | None:
    """Scale, shift and clip a metric to 0..1; None stays None."""
    return None if value is None else min(max(value * scale + offset, 0.0), 1.0)


def epoch_speeds(records: Sequence[EpochRecord], entry: RunEntry) -> list[float | None]:
    """Training images/s of each replayed epoch: the entry's figure, or train_images / epoch seconds."""
    if entry.images_per_s is not None or entry.train_images is None:
        return [entry.images_per_s] * len(records)
    durations = epoch_durations(records)
    if len(durations) != len(records):
        return [None] * len(records)
    return [entry.train_images / d if d > 0 else None for d in durations]


def run_speed(records: Sequence[EpochRecord], entry: RunEntry) -> float | None:
    """The run's images/s as PhaseResult defines it: median over epochs after the first."""
    if entry.images_per_s is not None:
        return entry.images_per_s
    speeds = [s for s in epoch_speeds(records, entry) if s is not None]
    return median_after_first(speeds)


def batch_figures(spec: TrainSpec, entry: RunEntry) -> dict[str, int | None]:
    """Batch, accumulation and effective batch as Ultralytics computes them (trainer: nbs / batch)."""
    raw = spec.args.get("batch", ultralytics_default("batch"))
    requested = raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 1 else None
    used = entry.batch_used or requested
    nbs = spec.effective_batch or _int_or_none(spec.args.get("nbs")) or ultralytics_default("nbs")
    accumulate = max(round(nbs / used), 1) if used else None
    return {
        "batch_requested": requested,
        "batch_used": used,
        "nbs": nbs,
        "accumulate": accumulate,
        "effective_batch": used * accumulate if used and accumulate else None,
    }


def _int_or_none(value: object) -> int | None:
    """An int argument, or None for anything else."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def status_of(entry: RunEntry, replayed: Sequence[EpochRecord], planned: int) -> tuple[str, str | None]:
    """Status and reason of a replayed run: diverged, stopped short, failed (nothing) or completed."""
    if entry.diverged:
        return "diverged", DIVERGED_REASON
    if not replayed:
        return "failed", f"nothing to replay: {planned} epochs planned"
    if len(replayed) < planned:
        return "stopped", f"the record ends after {len(replayed)} of {planned} planned epochs"
    return "completed", None


def build_result(
    spec: TrainSpec,
    entry: RunEntry,
    replayed: Sequence[EpochRecord],
    *,
    weights: Path,
    results_csv: Path,
) -> PhaseResult:
    """Assemble the PhaseResult a real run with this curve would have produced."""
    best = best_epoch(replayed)
    status, reason = status_of(entry, replayed, spec.epochs)
    batch = batch_figures(spec, entry)
    return PhaseResult(
        **spec.ref().model_dump(),
        status=status,
        reason=reason,
        metrics=_metrics_of(best),
        history=tuple(replayed),
        epochs_planned=spec.epochs,
        epochs_done=len(replayed),
        nan_recoveries=entry.nan_recoveries,
        diverged=entry.diverged,
        **batch,
        images_per_s=run_speed(replayed, entry),
        inference_ms=entry.inference_ms,
        torch_peak_reserved_gb=entry.torch_peak_reserved_gb,
        nvml_peak_used_gb=entry.nvml_peak_used_gb,
        gpu_name=entry.gpu_name,
        wall_s=replayed[-1].time_s if replayed else None,
        weights=weights,
        results_csv=results_csv,
        args={**spec.args, "nbs": batch["nbs"]},
        evaluation=entry.evaluation,
    )


def _metrics_of(best: EpochRecord | None) -> ValMetrics:
    """The final validation of best.pt: the best epoch's figures."""
    if best is None:
        return ValMetrics()
    return ValMetrics(precision=best.precision, recall=best.recall, map50=best.map50, map50_95=best.map50_95)


def write_run_files(spec: TrainSpec, entry: RunEntry, replayed: Sequence[EpochRecord]) -> tuple[Path, Path]:
    """Write run_dir/results.csv (the replayed rows) and the placeholder run_dir/weights/best.pt."""
    results_csv = write_text_once(spec.run_dir / "results.csv", format_results_csv(replayed))
    note = (
        f"REPLAY PLACEHOLDER - not a model.\nnode: {spec.node}\ntrial: {spec.trial}\n"
        f"replayed record: {entry.csv}\nepochs replayed: {len(replayed)} of {spec.epochs}\n"
    )
    weights = write_text_once(spec.run_dir / "weights" / "best.pt", note)
    return weights, results_csv


METRIC_COLUMNS = {
    "precision": "metrics/precision(B)",
    "recall": "metrics/recall(B)",
    "map50": "metrics/mAP50(B)",
    "map50_95": "metrics/mAP50-95(B)",
}


def format_results_csv(records: Sequence[EpochRecord]) -> str:
    """Records as a results.csv in today's Ultralytics layout (1-based epochs, ``nan`` for missing)."""
    first = records[0] if records else EpochRecord(epoch=1)
    train = [k for k in first.losses if k.startswith("train/")]
    val = [k for k in first.losses if k.startswith("val/")]
    has_time = any(r.time_s is not None for r in records)
    header = ["epoch", *(["time"] if has_time else []), *train, *METRIC_COLUMNS.values(), *val, *first.lr]
    lines = [",".join(header)]
    for r in records:
        values = [
            *([r.time_s] if has_time else []),
            *(r.losses.get(k) for k in train),
            *(getattr(r, field) for field in METRIC_COLUMNS),
            *(r.losses.get(k) for k in val),
            *(r.lr.get(k) for k in first.lr),
        ]
        lines.append(",".join([str(r.epoch), *(_cell(v) for v in values)]))
    return "\n".join(lines) + "\n"


def _cell(value: float | None) -> str:
    """A CSV cell: ``nan`` for a missing value, full precision otherwise."""
    return "nan" if value is None or not math.isfinite(value) else repr(float(value))
