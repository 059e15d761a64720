"""Prefect task: run one training (phase, trial or a search's full run) and stream its epochs.

A thin shell: the trainer does the work (a child process for Ultralytics, or a replay);
this task turns each ``EpochEvent`` into a log line, a progress update and monitor
warnings, and saves the ``PhaseResult`` beside the run's weights.

Prefect caching: ``cached_train_task(spec)`` is ``train_task`` with a cache key built from the
resolved training (every argument, model, data, effective batch, clip norm, run folder), the
dataset's fingerprint, the trainer (and replay SPEC) and the code version, and with its result
persisted as JSON inside the training's own folder. Calling it again for a training that finished
returns the stored ``PhaseResult`` without training. The run journal stays the source of truth
(see docs/RELIABILITY.md): it is consulted first, and it also records gates and terminals.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from flows.engine.config import RunConfig
from flows.engine.decisions.batch_planner import BatchPlan
from flows.engine.decisions.stoppers import Stoppers
from flows.engine.errors import ChildKilled, TrainingError
from flows.engine.fsutil import atomic_write_text
from flows.engine.plan.devices import gpu_list
from flows.engine.records.journal import code_version, resume_point
from flows.engine.records.results import EarlyDecision, EpochEvent, PhaseResult, TrainSpec
from flows.trial_cluster import LEASE_ENV, SLOT_ENV
from tasks.trainers.vram import cuda_index


class Trainer(Protocol):
    """A trainer runs one TrainSpec and reports every epoch."""

    def train(self, spec: TrainSpec, on_epoch: Callable[[EpochEvent], None]) -> PhaseResult:
        """Train (or replay) and return the typed result."""
        ...


def make_trainer(cfg: RunConfig, log: Callable[[str], None] | None = None) -> Trainer:
    """The replay trainer when the request names a SPEC (loaded once, in validation), else Ultralytics."""
    if cfg.replay is not None:
        from tasks.trainers.replay import ReplayTrainer

        return ReplayTrainer(cfg.replay)
    from tasks.trainers.ultra import UltralyticsTrainer

    return UltralyticsTrainer(log=log)


def checkpoint_check(cfg: RunConfig) -> Callable[[Path], str | None]:
    """How a last.pt is judged before resuming from it: a real torch.save archive for Ultralytics.

    The replay trainer's last.pt is a text placeholder, so it is taken as it is.
    """
    if cfg.replay is None:
        from flows.engine.data.checks import weights_problem

        return weights_problem
    return lambda _: None


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
    """Receives every epoch: keeps it, logs it, moves the progress bar, then lets the spec's stoppers
    (trial pruner, monitors, early gate decision) say whether to stop."""

    def __init__(self, spec: TrainSpec):
        self.spec = spec
        self.label = spec.label
        self.events = EventLog(Path(spec.run_dir) / EVENTS_FILE, keep=spec.resume_from is not None)
        self.events.start_from(lambda: continued_events(spec))
        self.logger = get_run_logger()
        self.stoppers = Stoppers(spec, self.events.read(), warn=self.logger.warning, inform=self.logger.info)
        self.shown = 0.0
        self.progress_id = create_progress_artifact(
            progress=0.0, description=f"{self.spec.plan}: epochs of {self.label}"
        )

    def __call__(self, event: EpochEvent) -> None:
        self.events.append(event)
        self.logger.info(epoch_line(self.label, event))
        self.move_progress(100.0 * event.record.epoch / max(event.epochs_planned, 1))
        self.stoppers(event)

    @property
    def early_decision(self) -> EarlyDecision | None:
        """The early decision that stopped the training, if one did."""
        return self.stoppers.early_decision

    def move_progress(self, percent: float) -> None:
        """Update the UI's progress bar in steps of 5 % (a 300-epoch phase need not make 300 API calls)."""
        if percent - self.shown >= PROGRESS_STEP or percent >= 100.0:
            update_progress_artifact(self.progress_id, progress=percent)
            self.shown = percent


EVENTS_FILE = "epochs.jsonl"
"""Every epoch event of a training, one JSON line each, in its folder: a resumed (or retried) training
starts its early decision from the epochs it trained before, so it decides as an uninterrupted one."""


def continued_events(spec: TrainSpec) -> list[EpochEvent]:
    """A full run that continues its search's best trial: that trial's epochs, as its own first ones.

    Its early decision then judges the whole curve from epoch 1, as it would an uninterrupted run (a
    metric bound needs every epoch from the first). Empty for any other training.
    """
    if spec.continue_from is None:
        return []
    trial_events = EventLog(Path(spec.continue_from).parent.parent / EVENTS_FILE, keep=True).read()
    return [event.model_copy(update=spec.ref().model_dump()) for event in trial_events]


class EventLog:
    """The training's epoch events on disk (append-only; a torn last line is ignored)."""

    def __init__(self, path: Path, *, keep: bool) -> None:
        self.path = path
        if not keep and path.exists():
            path.unlink()  # a training that starts over starts a new history

    def start_from(self, events: Callable[[], list[EpochEvent]]) -> None:
        """Begin an empty history with ``events()`` (a continued full run's trial epochs), all at once: a
        crash while seeding leaves no history rather than part of one. A history that exists (a resumed
        continued run's) is kept, and ``events`` is then not read at all."""
        if self.path.exists():
            return
        if seeded := events():
            atomic_write_text(self.path, "".join(event.model_dump_json() + "\n" for event in seeded))

    def append(self, event: EpochEvent) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(event.model_dump_json() + "\n")

    def read(self) -> list[EpochEvent]:
        """The events so far, the last one of each epoch (a retrained epoch replaces its old record)."""
        if not self.path.is_file():
            return []
        events: dict[int, EpochEvent] = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                event = EpochEvent.model_validate_json(line)
            except ValueError:
                break
            events = {e: v for e, v in events.items() if e < event.record.epoch}
            events[event.record.epoch] = event
        return [events[e] for e in sorted(events)]


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
    device = spec.args.get("device")
    indices = gpu_list(device)
    if indices is None:
        index = cuda_index(device)
        indices = [] if index is None else [index]
    return [f"gpu-{index}" for index in indices]


def on_worker_gpu(spec: TrainSpec) -> TrainSpec:
    """On a search's GPU worker the training's device is ``0``: the worker sees its one card (its
    ``CUDA_VISIBLE_DEVICES``) as device 0, whatever index the plan gave the run."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    device = str(spec.args.get("device", "0")).lower()
    if not os.environ.get(SLOT_ENV) or not visible.strip().isdigit() or device in ("cpu", "mps", "0"):
        return spec
    return spec.model_copy(update={"args": {**spec.args, "device": "0"}})


def save_result(result: PhaseResult, spec: TrainSpec) -> None:
    """Keep the typed result beside the run's files (phase_result.json), never overwriting."""
    atomic_write_text(spec.run_dir / "phase_result.json", result.model_dump_json(indent=2))


@task(name="train", task_run_name="train-{spec.node}", retries=0)
def train_task(spec: TrainSpec, cfg: RunConfig) -> PhaseResult:
    """Train one spec with the configured trainer; log every epoch; return the typed result.

    An error stops the walk (``TrainingError`` propagates: the task and the flow run fail) unless the
    node says ``on_error: continue``, which turns it into a ``failed`` result. A training process
    killed by a signal is retried once, from its last.pt.
    """
    logger = get_run_logger()
    started = time.time()
    spec = resume_point(spec, checkpoint_check(cfg), logger.info)  # re-queued from a lost worker, too
    spec = on_worker_gpu(spec)
    reporter = EpochReporter(spec)
    logger.info(f"{reporter.label}: {spec.epochs} epochs of {spec.model.name}, args {spec.args}")
    trainer = make_trainer(cfg, log=logger.info)
    with gpu_slots_held(spec, cfg, logger.info) as held:
        try:
            plan = planned_batch(spec, cfg, logger.info)
            planned = apply_batch_plan(spec, plan)
            result = train_retrying(trainer, planned, reporter, checkpoint_check(cfg), logger.warning)
        except TrainingError as exc:
            if spec.on_error != "continue":
                logger.error(f"{reporter.label}: {exc.message}; the run stops here (fix it, then run again)")
                raise
            logger.error(f"{reporter.label}: {exc.message}; on_error: continue, so it counts as failed")
            result = failed_result(spec, exc)
        else:
            found = {"batch_plan": plan, "early_decision": reporter.early_decision}
            result = result.model_copy(update={k: v for k, v in found.items() if v is not None})
    where = {"started_at": started, "finished_at": time.time(), "slot": ", ".join(held) or None}
    result = result.model_copy(update=where)
    save_result(result, spec)
    logger.info(
        f"{reporter.label}: {result.status}, mAP50-95 {result.metrics.map50_95}, "
        f"epochs {result.epochs_done}/{result.epochs_planned}"
    )
    return result


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


BATCH_PLAN_FILE = "batch_plan.json"
"""The batch planner's record in the training's folder: a resumed or retried training reuses it."""


def planned_batch(spec: TrainSpec, cfg: RunConfig, log: Callable[[str], None]) -> BatchPlan | None:
    """Plan the batch on the device the training uses (real trainings with ``batch_plan`` only).

    Measured once per training: the record is kept beside the run's files, so a resumed or retried
    training trains with the batch it started with. A budget the smallest batch does not fit is an
    error: the phase must not start.
    """
    if spec.batch_plan is None or cfg.replay is not None:
        return None
    from flows.engine.decisions.batch_planner import BatchPlan, plan_batch, render_batch_plan

    saved = Path(spec.run_dir) / BATCH_PLAN_FILE
    if saved.is_file():
        plan = BatchPlan.model_validate_json(saved.read_text(encoding="utf-8"))
    else:
        from tasks.trainers.memory_probe import CudaMemoryProbe

        probe = CudaMemoryProbe.for_spec(spec, spec.batch_plan, device=str(spec.args.get("device", "0")))
        fixed = spec.args.get("batch")
        plan = plan_batch(
            spec.batch_plan,
            probe,
            fixed_batch=int(fixed) if isinstance(fixed, int) else 16,
            effective_batch=spec.effective_batch,
            where=f"nodes.{spec.node}.batch_plan",
        )
        atomic_write_text(saved, plan.model_dump_json(indent=2), overwrite=True)
    for line in render_batch_plan(plan):
        log(f"{spec.label}: {line}")
    if plan.failed:
        raise TrainingError(spec.key, plan.reason or "the batch planner found no batch under the budget")
    return plan


def apply_batch_plan(spec: TrainSpec, plan: BatchPlan | None) -> TrainSpec:
    """The spec with the planned batch (accumulation follows from effective_batch, through nbs)."""
    if plan is None:
        return spec
    return spec.model_copy(update={"args": {**spec.args, **plan.train_args()}})


def train_retrying(
    trainer: Trainer,
    spec: TrainSpec,
    on_epoch: Callable[[EpochEvent], None],
    checkpoint_problem: Callable[[Path], str | None],
    warn: Callable[[str], None],
) -> PhaseResult:
    """Train; if the training process is killed by a signal (the OOM killer), retry once from last.pt."""
    try:
        return trainer.train(spec, on_epoch)
    except ChildKilled as exc:
        retry = resumable(spec, checkpoint_problem)
        start = f"from {retry.resume_from}" if retry.resume_from else "from the start (no usable last.pt)"
        warn(f"{spec.label}: {exc.message}; retrying once, {start}")
        return trainer.train(retry, on_epoch)


def resumable(spec: TrainSpec, checkpoint_problem: Callable[[Path], str | None]) -> TrainSpec:
    """The spec resumed from its own last.pt when that is a usable checkpoint, else as it is."""
    last = Path(spec.run_dir) / "weights" / "last.pt"
    if last.is_file() and checkpoint_problem(last) is None:
        return spec.model_copy(update={"resume_from": last})
    return spec


def failed_result(spec: TrainSpec, exc: TrainingError) -> PhaseResult:
    """An error turned into an outcome (``on_error: continue``): failed, with the error as its reason."""
    return PhaseResult(
        **spec.ref().model_dump(),
        status="failed",
        reason=exc.message,
        epochs_planned=spec.epochs,
        batch_requested=spec.args.get("batch") if isinstance(spec.args.get("batch"), int) else None,
    )


RESULTS_FOLDER = ".prefect-results"
"""Where ``cached_train_task`` persists its result: inside the training's own folder of the run."""


def replay_fingerprint(cfg: RunConfig) -> str | None:
    """A hash of the loaded replay SPEC (a changed SPEC replays something else), or None."""
    if cfg.replay is None:
        return None
    return hashlib.sha256(cfg.replay.model_dump_json().encode()).hexdigest()[:16]


def train_cache_key_of(spec: TrainSpec, cfg: RunConfig, version: str | None = None) -> str:
    """The cache key of one training: equal exactly when the same training would run again.

    It covers the resolved settings (the whole ``TrainSpec``: model, pretrained weights, data path,
    every Ultralytics argument, effective batch, clip norm, and the run folder, so another run never
    shares a result), the dataset's content fingerprint, the trainer and replay SPEC, and the code
    version. ``resume_from`` is left out: a resumed training is the same training.
    """
    document = {
        "spec": spec.model_dump(mode="json", exclude={"resume_from"}),
        "run_dir": str(Path(spec.run_dir).resolve()),
        "data_fingerprint": cfg.data_fingerprint,
        "trainer": cfg.trainer,
        "replay": replay_fingerprint(cfg),
        "code_version": version or code_version(),
    }
    digest = hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()
    return f"train-{spec.node}-{digest[:32]}"


def train_cache_key(context: Any, parameters: dict[str, Any]) -> str | None:
    """Prefect ``cache_key_fn`` of ``train_task``."""
    spec, cfg = parameters.get("spec"), parameters.get("cfg")
    if not isinstance(spec, TrainSpec) or not isinstance(cfg, RunConfig):
        return None  # not cacheable: run it
    return train_cache_key_of(spec, cfg)


def cached_train_task(spec: TrainSpec) -> Any:
    """``train_task`` with Prefect result persistence and caching, its results stored in the run folder."""
    return train_task.with_options(
        cache_key_fn=train_cache_key,
        persist_result=True,
        result_storage=Path(spec.run_dir).resolve() / RESULTS_FOLDER,
        result_serializer="json",
        cache_result_in_memory=False,
    )
