"""Prefect task: run one training (phase, trial or a search's full run) and stream its epochs.

A thin shell: the trainer does the work (a child process for Ultralytics, or a replay);
this task turns each ``EpochEvent`` into a log line, a progress update and monitor
warnings, and saves the ``PhaseResult`` beside the run's weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from flows.engine.config import RunConfig
from flows.engine.fsutil import atomic_write_text
from flows.engine.monitors import MonitorHit, StopTraining, check_monitors
from flows.engine.results import EpochEvent, PhaseResult, TrainSpec
from flows.engine.schema import Monitor, SearchNode, TrainNode


class Trainer(Protocol):
    """A trainer runs one TrainSpec and reports every epoch."""

    def train(self, spec: TrainSpec, on_epoch: Callable[[EpochEvent], None]) -> PhaseResult:
        """Train (or replay) and return the typed result."""
        ...


def make_trainer(cfg: RunConfig, log: Callable[[str], None] | None = None) -> Trainer:
    """The replay trainer when the request names a SPEC, else real Ultralytics training."""
    if cfg.trainer == "replay":
        from tasks.replay import ReplayTrainer

        assert cfg.request.replay is not None
        return ReplayTrainer(cfg.request.replay)
    from tasks.ultra_trainer import UltralyticsTrainer

    return UltralyticsTrainer(log=log)


def monitors_for(cfg: RunConfig, node: str) -> list[Monitor]:
    """Monitors declared on the node (a search's monitors apply to its trials and full run)."""
    target = cfg.plan.nodes[node]
    return list(target.monitors) if isinstance(target, TrainNode | SearchNode) else []


def run_label(spec: TrainSpec) -> str:
    """How a run is named in logs and the UI: node, trial or full run."""
    if spec.trial is not None:
        return f"{spec.node} trial {spec.trial}"
    node_is_search = spec.run_dir.name == "full"
    return f"{spec.node} full run" if node_is_search else spec.node


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


class EpochReporter:
    """Receives every epoch: logs it, moves the progress bar, raises monitor warnings once each."""

    def __init__(self, spec: TrainSpec, monitors: list[Monitor]):
        self.spec = spec
        self.monitors = monitors
        self.label = run_label(spec)
        self.logger = get_run_logger()
        self.warned: set[str] = set()
        self.shown = 0.0
        self.progress_id = create_progress_artifact(
            progress=0.0, description=f"{self.spec.plan}: epochs of {self.label}"
        )

    def __call__(self, event: EpochEvent) -> None:
        self.logger.info(epoch_line(self.label, event))
        self.move_progress(100.0 * event.record.epoch / max(event.epochs_planned, 1))
        for hit in check_monitors(self.monitors, event):
            self.raise_hit(hit)

    def move_progress(self, percent: float) -> None:
        """Update the UI's progress bar in steps of 5 % (a 300-epoch phase need not make 300 API calls)."""
        if percent - self.shown >= PROGRESS_STEP or percent >= 100.0:
            update_progress_artifact(self.progress_id, progress=percent)
            self.shown = percent

    def raise_hit(self, hit: MonitorHit) -> None:
        """Warn once per monitor; a 'stop' monitor ends the phase."""
        if hit.monitor.name not in self.warned:
            self.warned.add(hit.monitor.name)
            self.logger.warning(hit.message(self.label))
        if hit.monitor.action == "stop":
            raise StopTraining(hit.message(self.label))


def gpu_slots(spec: TrainSpec) -> list[str]:
    """Global concurrency limits a training takes: one slot per GPU it uses (``gpu-0``, ``gpu-1``…).

    A server-side limit of 1 per GPU (``prefect gcl create gpu-0 --limit 1``) makes flows queue for
    a card instead of fighting over it. CPU runs take no slot.
    """
    device = spec.args.get("device")
    text = "0" if device is None else str(device).lower().replace("cuda:", "")
    if text in ("cpu", "mps"):
        return []
    return [f"gpu-{part.strip()}" for part in text.split(",") if part.strip().isdigit()]


def save_result(result: PhaseResult, spec: TrainSpec) -> None:
    """Keep the typed result beside the run's files (phase_result.json), never overwriting."""
    atomic_write_text(spec.run_dir / "phase_result.json", result.model_dump_json(indent=2))


@task(name="train", task_run_name="train-{spec.node}", retries=0)
def train_task(spec: TrainSpec, cfg: RunConfig) -> PhaseResult:
    """Train one spec with the configured trainer; log every epoch; return the typed result."""
    logger = get_run_logger()
    reporter = EpochReporter(spec, monitors_for(cfg, spec.node))
    logger.info(f"{reporter.label}: {spec.epochs} epochs of {spec.model.name}, args {spec.args}")
    trainer = make_trainer(cfg, log=logger.info)
    slots = gpu_slots(spec) if cfg.trainer == "ultralytics" else []
    if slots:
        from prefect.concurrency.sync import concurrency

        logger.info(f"{reporter.label}: waiting for {', '.join(slots)}")
        with concurrency(slots, occupy=1):
            result = trainer.train(spec, reporter)
    else:
        result = trainer.train(spec, reporter)
    save_result(result, spec)
    logger.info(
        f"{reporter.label}: {result.status}, mAP50-95 {result.metrics.map50_95}, "
        f"epochs {result.epochs_done}/{result.epochs_planned}"
    )
    return result
