"""One training step: everything that happens to one ``TrainSpec`` between "train this" and its record.

``TrainingStep(trainer, journal)`` (a run's: ``TrainingStep.for_run(cfg, run_dir)``), called with a spec,
returns the journalled result or trains it now: resumes it from its own ``last.pt``, plans the batch,
applies the stoppers (trial pruner, monitors, early decision), retries once after a killed training
process, turns an error into a ``failed`` outcome under ``on_error: continue``, and records the result.
The Prefect task (``tasks/train.py``), a search's Dask workers, the benchmarks and the tests all train
through it. Prefect-free: what Prefect adds (task run, logger, progress, GPU slots) is passed in.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from flows.engine.decisions.stoppers import Stoppers, ignore
from flows.engine.errors import ChildKilled, TrainingError
from flows.engine.faults import kill_point
from flows.engine.fsutil import atomic_write_text
from flows.engine.plan.devices import parse_devices
from flows.engine.records.journal import Journal
from flows.engine.records.results import EarlyDecision, EpochEvent, GateResult, PhaseResult, TrainSpec
from tasks.slots import SLOT_ENV

if TYPE_CHECKING:  # pragma: no cover
    from flows.engine.config import RunConfig
    from flows.engine.decisions.early import MetricRule
    from flows.engine.records.batch_plan import BatchPlan

RESULT_FILE = "phase_result.json"
"""A finished training's result beside its weights: a copy of its journal entry, for people and tools."""
EVENTS_FILE = "epochs.jsonl"
"""Every epoch event of a training, one JSON line each, in its folder: a resumed (or retried) training
starts its early decision from the epochs it trained before, so it decides as an uninterrupted one."""
BATCH_PLAN_FILE = "batch_plan.json"
"""The batch planner's record in the training's folder: a resumed or retried training reuses it."""


class Trainer(Protocol):
    """A trainer runs one TrainSpec and reports every epoch."""

    def train(self, spec: TrainSpec, on_epoch: Callable[[EpochEvent], None]) -> PhaseResult:
        """Train (or replay) and return the typed result."""
        ...


def observe_nothing(_: EpochEvent) -> None:
    """The default epoch observer."""


@contextlib.contextmanager
def no_slots(_: TrainSpec) -> Iterator[list[str]]:
    """Hold nothing while training (no Prefect server to ask for GPU slots)."""
    yield []


BatchPlanner = Callable[[TrainSpec, Callable[[str], None]], "BatchPlan | None"]
SlotHolder = Callable[[TrainSpec], contextlib.AbstractContextManager[list[str]]]


class TrainingStep:
    """Trains one spec at a time through ``trainer`` and records each result in ``journal``.

    ``journal`` None records nothing (a benchmark's in-memory walk); ``checkpoint_problem`` says why a
    ``last.pt`` cannot be resumed from (None: it can); ``batch_planner`` measures the batch of a spec with
    ``batch_plan`` (None: the spec's own batch); ``rules`` replace the gate policy's early metric rules
    (the benchmark's held-out checks); ``history`` gives a continued full run its first epochs (default:
    the trial's it continues); ``log``, ``warn`` and ``error`` receive what people should read.
    """

    def __init__(
        self,
        trainer: Trainer,
        journal: Journal | None = None,
        *,
        checkpoint_problem: Callable[[Path], str | None] = lambda _: None,
        batch_planner: BatchPlanner | None = None,
        rules: Mapping[str, MetricRule] | None = None,
        history: Callable[[TrainSpec], list[EpochEvent]] | None = None,
        log: Callable[[str], None] = ignore,
        warn: Callable[[str], None] = ignore,
        error: Callable[[str], None] = ignore,
    ) -> None:
        self.trainer = trainer
        self.journal = journal
        self.checkpoint_problem = checkpoint_problem
        self.batch_planner = batch_planner
        self.rules = rules
        self.history = history or continued_events
        self.log = log
        self.warn = warn
        self.error = error
        self.early_decisions: list[EarlyDecision] = []
        """Every early decision that stopped a training of this step, in order (benchmarks count them)."""

    @classmethod
    def for_run(cls, cfg: RunConfig, run_dir: Path, **hooks: Any) -> TrainingStep:
        """The step of a run: the configured trainer (replay or Ultralytics), the journal of the run in
        ``run_dir``, checkpoints checked before a resume, and the batch planned for real trainings."""
        real = cfg.replay is None
        return cls(
            make_trainer(cfg, log=hooks.get("log")),
            Journal(run_dir),
            checkpoint_problem=checkpoint_check(cfg),
            batch_planner=planned_batch if real else None,
            **hooks,
        )

    def finished(self, spec: TrainSpec) -> PhaseResult | None:
        """The recorded result of a training this run already finished, or None."""
        if self.journal is None:
            return None
        entry = self.journal.finished().get(spec.key)
        if entry is None or entry.result is None:
            return None
        self.log(f"{spec.key}: already finished in this run; not trained again")
        write_result_copy(spec, entry.result)  # a kill between the record and its copy left none
        return entry.result

    def __call__(
        self, spec: TrainSpec, observe: Callable[[EpochEvent], None] = observe_nothing
    ) -> PhaseResult:
        """The recorded result, or the training run and recorded now."""
        found = self.finished(spec)
        return found if found is not None else self.run(spec, observe)

    def run(
        self,
        spec: TrainSpec,
        observe: Callable[[EpochEvent], None] = observe_nothing,
        hold: SlotHolder = no_slots,
    ) -> PhaseResult:
        """Train ``spec`` (resumed from its own whole ``last.pt`` if it has one) and record the result.

        ``observe`` sees every epoch before the stoppers judge it (log lines, progress); ``hold`` holds
        the GPU slots while training. An error is recorded and raised, unless the node says
        ``on_error: continue``: then it is a ``failed`` result.
        """
        started = time.time()
        spec = on_worker_gpu(from_last_checkpoint(spec, self.checkpoint_problem, self.log))
        self.log(f"{spec.label}: {spec.epochs} epochs of {spec.model.name}, args {spec.args}")
        events = EventLog(Path(spec.run_dir) / EVENTS_FILE, keep=spec.resume_checkpoint is not None)
        events.start_from(lambda: self.history(spec))
        stoppers = Stoppers(spec, events.read(), warn=self.warn, inform=self.log, rules=self.rules)

        def on_epoch(event: EpochEvent) -> None:
            events.append(event)
            observe(event)
            stoppers(event)

        with hold(spec) as held:
            try:
                result = self.train_planned(spec, on_epoch)
            except TrainingError as exc:
                result = self.failed(spec, exc)
            else:
                if (decision := stoppers.early_decision) is not None:
                    self.early_decisions.append(decision)
                    result = result.model_copy(update={"early_decision": decision})
        where = {"started_at": started, "finished_at": time.time(), "slot": ", ".join(held) or None}
        result = result.model_copy(update=where)
        self.record(spec, result)
        self.log(
            f"{spec.label}: {result.status}, mAP50-95 {result.metrics.map50_95}, "
            f"epochs {result.epochs_done}/{result.epochs_planned}"
        )
        return result

    def train_planned(self, spec: TrainSpec, on_epoch: Callable[[EpochEvent], None]) -> PhaseResult:
        """Plan the batch (where asked), then train, retrying once after a killed training process."""
        plan = self.batch_planner(spec, self.log) if self.batch_planner is not None else None
        planned = (
            spec if plan is None else spec.model_copy(update={"args": {**spec.args, **plan.train_args()}})
        )
        try:
            result = self.trainer.train(planned, on_epoch)
        except ChildKilled as exc:
            retry = from_last_checkpoint(
                planned.model_copy(update={"resume_checkpoint": None}), self.checkpoint_problem, self.log
            )
            start = (
                f"from {retry.resume_checkpoint}"
                if retry.resume_checkpoint
                else "from the start (no usable last.pt)"
            )
            self.warn(f"{spec.label}: {exc.message}; retrying once, {start}")
            result = self.trainer.train(retry, on_epoch)
        return result if plan is None else result.model_copy(update={"batch_plan": plan})

    def failed(self, spec: TrainSpec, exc: TrainingError) -> PhaseResult:
        """An error: recorded and raised (the run stops), or with ``on_error: continue`` a failed result."""
        if spec.on_error != "continue":
            self.error(f"{spec.label}: {exc.message}; the run stops here (fix it, then run again)")
            if self.journal is not None:
                self.journal.record_error(exc.run, str(exc))
            raise exc
        self.error(f"{spec.label}: {exc.message}; on_error: continue, so it counts as failed")
        return PhaseResult(
            **spec.ref().model_dump(),
            status="failed",
            reason=exc.message,
            epochs_planned=spec.epochs,
            batch_requested=spec.args.get("batch") if isinstance(spec.args.get("batch"), int) else None,
        )

    def record(self, spec: TrainSpec, result: PhaseResult) -> None:
        """Journal the finished training (the record), then copy it beside its weights.

        The kill point sits after the record: a kill there must not train it again."""
        if self.journal is not None:
            self.journal.record_train(spec, result)
        kill_point(f"journal:{spec.key}")
        write_result_copy(spec, result)


def write_result_copy(spec: TrainSpec, result: PhaseResult) -> None:
    """``phase_result.json`` beside the training's files, once (never overwritten)."""
    path = Path(spec.run_dir) / RESULT_FILE
    if not path.exists():
        atomic_write_text(path, result.model_dump_json(indent=2))


def record_gate_once(
    journal: Journal | None, result: GateResult, publish: Callable[[GateResult], None] = lambda _: None
) -> None:
    """Publish and record a gate, unless this run already recorded it (a resumed run's gate is neither)."""
    if journal is not None and f"gate:{result.node}" in journal.finished():
        return
    publish(result)
    kill_point(f"journal:gate:{result.node}")
    if journal is not None:
        journal.record_gate(result)


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


def on_worker_gpu(spec: TrainSpec) -> TrainSpec:
    """On a search's GPU worker the training's device is ``0``: the worker sees its one card (its
    ``CUDA_VISIBLE_DEVICES``) as device 0, whatever index the plan gave the run."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    on_gpu_worker = bool(os.environ.get(SLOT_ENV)) and visible.isdigit()
    devices = parse_devices(spec.args.get("device"))
    if not on_gpu_worker or devices.kind != "cuda" or devices.gpus == (0,):
        return spec
    return spec.model_copy(update={"args": {**spec.args, "device": "0"}})


def from_last_checkpoint(
    spec: TrainSpec, checkpoint_problem: Callable[[Path], str | None], log: Callable[[str], None]
) -> TrainSpec:
    """The spec resumed from its own last.pt when that is a whole checkpoint, else as it is.

    For an interrupted training, a killed training process's retry and a trial re-queued from a lost
    worker alike. A torn last.pt (Ultralytics writes it in one non-atomic write) is set aside, never
    deleted, and the training starts over.
    """
    if spec.resume_checkpoint is not None:
        return spec
    last = spec.run_dir / "weights" / "last.pt"
    if not last.is_file():
        return spec
    if problem := checkpoint_problem(last):
        aside = set_aside(last)
        log(f"{spec.key}: cannot resume ({problem}); kept it as {aside.name} and training from the start")
        return spec
    log(f"{spec.key}: resuming the interrupted training from {last}")
    return spec.model_copy(update={"resume_checkpoint": last})


def set_aside(path: Path) -> Path:
    """Rename ``path`` to the first free ``<stem>.damaged-N<suffix>`` beside it (nothing is deleted)."""
    n = 1
    while (target := path.with_name(f"{path.stem}.damaged-{n}{path.suffix}")).exists():
        n += 1
    os.replace(path, target)
    return target


def planned_batch(spec: TrainSpec, log: Callable[[str], None]) -> BatchPlan | None:
    """Plan the batch on the device the training uses (specs with ``batch_plan`` only).

    Measured once per training: the record is kept beside the run's files, so a resumed or retried
    training trains with the batch it started with. A budget the smallest batch does not fit is an
    error: the phase must not start.
    """
    if spec.batch_plan is None:
        return None
    from flows.engine.decisions.batch_planner import render_batch_plan
    from flows.engine.records.batch_plan import BatchPlan

    saved = Path(spec.run_dir) / BATCH_PLAN_FILE
    if saved.is_file():
        plan = BatchPlan.model_validate_json(saved.read_text(encoding="utf-8"))
    else:
        plan = measure_batch(spec)
        atomic_write_text(saved, plan.model_dump_json(indent=2), overwrite=True)
    for line in render_batch_plan(plan):
        log(f"{spec.label}: {line}")
    if plan.failed:
        raise TrainingError(spec.key, plan.reason or "the batch planner found no batch under the budget")
    return plan


def measure_batch(spec: TrainSpec) -> BatchPlan:
    """The batch planner run now on the spec's device (the spec has ``batch_plan``)."""
    from flows.engine.decisions.batch_planner import plan_batch
    from tasks.trainers.memory_probe import CudaMemoryProbe

    assert spec.batch_plan is not None
    probe = CudaMemoryProbe.for_spec(spec, spec.batch_plan, device=str(spec.args.get("device", "0")))
    fixed = spec.args.get("batch")
    return plan_batch(
        spec.batch_plan,
        probe,
        fixed_batch=int(fixed) if isinstance(fixed, int) else 16,
        effective_batch=spec.effective_batch,
        where=f"nodes.{spec.node}.batch_plan",
    )


def continued_events(spec: TrainSpec) -> list[EpochEvent]:
    """A full run that continues its search's best trial: that trial's epochs, as its own first ones.

    Its early decision then judges the whole curve from epoch 1, as it would an uninterrupted run (a
    metric bound needs every epoch from the first). Empty for any other training.
    """
    if spec.continue_checkpoint is None:
        return []
    trial_events = EventLog(Path(spec.continue_checkpoint).parent.parent / EVENTS_FILE, keep=True).read()
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
