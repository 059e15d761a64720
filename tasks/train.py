"""Prefect task: one training (phase, trial or a search's full run) as a task run.

A thin shell around ``tasks.step.TrainingStep``, which does the work and keeps the record: this task
names the task run, sends the step's messages to the run's logger, turns each epoch into a log line and
a progress bar in the UI, and holds the GPU's concurrency slot while it trains.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from flows.engine.config import RunConfig
from flows.engine.plan.devices import parse_devices
from flows.engine.records.results import EpochEvent, PhaseResult, TrainSpec
from tasks.slots import LEASE_ENV, SLOT_ENV
from tasks.step import TrainingStep


def epoch_line(label: str, event: EpochEvent) -> str:
    """One progress line per epoch."""
    r = event.record

    def show(v: float | None) -> str:
        return "–" if v is None else f"{v:.4f}"

    extra = f" {event.images_per_s:.1f} img/s" if event.images_per_s else ""
    vram = f" NVML {event.nvml_used_gb:.2f} GB" if event.nvml_used_gb is not None else ""
    return (
        f"{label}: epoch {r.epoch}/{event.epochs_planned} mAP50-95 {show(r.map50_95)} "
        f"mAP50 {show(r.map50)} P {show(r.precision)} R {show(r.recall)}{extra}{vram}"
    )


PROGRESS_STEP = 5.0


class EpochProgress:
    """Every epoch as a log line and a move of the UI's progress bar (in steps of 5 %: a 300-epoch phase
    need not make 300 API calls)."""

    def __init__(self, spec: TrainSpec, log: Callable[[str], None]) -> None:
        self.label = spec.label
        self.log = log
        self.shown = 0.0
        self.progress_id = create_progress_artifact(
            progress=0.0, description=f"{spec.plan}: epochs of {spec.label}"
        )

    def __call__(self, event: EpochEvent) -> None:
        self.log(epoch_line(self.label, event))
        percent = 100.0 * event.record.epoch / max(event.epochs_planned, 1)
        if percent - self.shown >= PROGRESS_STEP or percent >= 100.0:
            update_progress_artifact(self.progress_id, progress=percent)
            self.shown = percent


DEFAULT_LEASE_S = 300.0
"""Prefect's own lease of a concurrency slot; a search's workers use a shorter one (``TrialWorkers``)."""


def gpu_slots(spec: TrainSpec) -> list[str]:
    """Global concurrency limits a training takes: one slot per GPU it uses (``gpu-0``, ``gpu-1``…).

    A server-side limit of 1 per GPU (``prefect gcl create gpu-0 --limit 1``) makes flows queue for
    a card instead of fighting over it. CPU runs take no slot, except on a search's worker, which
    names its accelerator (``FOD_SLOT``: the GPU it sees as device 0, or a CPU worker's ``cpu-N``).
    """
    if slot := os.environ.get(SLOT_ENV):
        return [slot]
    return [f"gpu-{index}" for index in parse_devices(spec.args.get("device")).gpus]


@task(name="train", task_run_name="train-{spec.node}", retries=0)
def train_task(spec: TrainSpec, cfg: RunConfig, run_dir: Path) -> PhaseResult:
    """Train one spec of the run in ``run_dir`` through its training step; log every epoch.

    An error stops the walk (``TrainingError`` propagates: the task and the flow run fail) unless the
    node says ``on_error: continue``, which turns it into a ``failed`` result. A training process
    killed by a signal is retried once, from its last.pt.
    """
    logger = get_run_logger()
    step = TrainingStep.for_run(cfg, run_dir, log=logger.info, warn=logger.warning, error=logger.error)
    hold = functools.partial(gpu_slots_held, cfg=cfg, log=logger.info)
    return step.run(spec, EpochProgress(spec, logger.info), hold)


@contextlib.contextmanager
def gpu_slots_held(spec: TrainSpec, cfg: RunConfig, log: Callable[[str], None]) -> Iterator[list[str]]:
    """Hold the GPU slots a real training needs (none for CPU and for replays, except on a search's
    worker, whose slot every training there holds); yields the slots held."""
    slots = gpu_slots(spec) if cfg.replay is None or os.environ.get(SLOT_ENV) else []
    if not slots:
        yield []
        return
    from prefect.concurrency.sync import concurrency

    log(f"{spec.label}: waiting for {', '.join(slots)}")
    lease = float(os.environ.get(LEASE_ENV, DEFAULT_LEASE_S))
    with concurrency(slots, occupy=1, lease_duration=lease):
        log(f"{spec.label}: holding {', '.join(slots)}")
        yield slots
