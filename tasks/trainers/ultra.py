"""The real trainer: Ultralytics training in a spawned child process, streamed back one epoch at a time.

``UltralyticsTrainer().train(spec, on_epoch)`` starts ``tasks.trainers.ultra_child`` and answers each
epoch before the next one starts: ``on_epoch`` raising ``StopTraining`` ends the run after that epoch
(status ``stopped``). An outcome (completed, diverged, out of memory) is a ``PhaseResult``; an exception
in the child raises ``TrainingError`` with its own message, a child killed by a signal ``ChildKilled``.
The child is ended (SIGTERM, then SIGKILL) whenever the parent stops waiting, so a cancelled or killed
flow gives the GPU back at once (a CUDA context dies only with its process). Full output:
``<run folder>/train.log``.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flows.engine.decisions.monitors import StopTraining
from flows.engine.errors import ChildKilled, TrainingError
from flows.engine.interrupts import children_ignore_sigint
from flows.engine.records.results import EpochEvent, EpochRecord, PhaseResult, TrainSpec
from flows.engine.records.results_csv import RecordError, median_after_first, read_results_csv
from tasks.trainers.messages import ChildError, ChildResult
from tasks.trainers.offline import offline_environment

LOG = logging.getLogger(__name__)

POLL_S = 0.5
"""How often the parent checks that the child is still alive while no message arrives."""
TERM_GRACE_S = 5.0
"""Seconds between SIGTERM and SIGKILL when the child has to be ended."""
DRAIN_S = 2.0
"""How long to keep reading messages a dead child left in the queue."""


class UltralyticsTrainer:
    """Trains a ``TrainSpec`` with Ultralytics in a spawned child process.

    ``device`` is the machine's device (``"0"``, ``"cpu"``...), used when ``spec.args`` has none.
    ``log`` receives the trainer's own lines and Ultralytics' warnings; by default they go to
    ``logging``. Everything else Ultralytics prints is in the run folder's ``train.log``.
    """

    def __init__(self, device: str | None = None, log: Callable[[str], None] | None = None) -> None:
        self.device = device
        self.log = log or LOG.info

    def train(self, spec: TrainSpec, on_epoch: Callable[[EpochEvent], None]) -> PhaseResult:
        """Run one training to the end and return its result; re-raises after killing the child."""
        from tasks.trainers.ultra_child import run_training

        spec = continue_best_trial(spec)
        context = multiprocessing.get_context("spawn")
        messages = context.Queue()
        control = context.Queue()
        process = context.Process(
            target=run_training,
            args=(spec.model_dump_json(), self.device, messages, control),
            name=spec.task_run_name,
        )  # not a daemon: Ultralytics' dataloader workers are processes of their own
        started = time.time()
        outcome = Outcome(records_already_trained(spec))
        with offline_environment(), children_ignore_sigint():
            process.start()  # Ctrl-C reaches the command, which ends this child (flows/signals.py)
        # The pid lets an operator (and the cancel test) see that the child ends with the flow run.
        self.log(f"training process {process.name} started, pid {process.pid}; full log: {log_path(spec)}")
        try:
            outcome = self._follow(process, messages, control, on_epoch, outcome)
        except BaseException:
            terminate(process)
            raise
        finally:
            control.cancel_join_thread()
            for channel in (messages, control):
                channel.close()
        process.join(TERM_GRACE_S)
        if process.is_alive():
            terminate(process)
        return build_result(spec, outcome, exitcode=process.exitcode, wall_s=time.time() - started)

    def _follow(
        self, process: Any, messages: Any, control: Any, on_epoch: Callable, outcome: Outcome
    ) -> Outcome:
        """Read the child's messages until it has exited; answer every epoch event."""
        dead_since: float | None = None
        while True:
            try:
                kind, payload = messages.get(timeout=POLL_S)
            except queue.Empty:
                if outcome.finished:
                    return outcome  # the result is the last message; train() reaps a lingering child
                if process.is_alive():
                    continue
                dead_since = dead_since or time.monotonic()
                if time.monotonic() - dead_since > DRAIN_S:
                    return outcome
                continue
            self._handle(kind, payload, outcome, control, on_epoch)
            if outcome.finished:
                return outcome  # the result (or error) is the child's last message

    def _handle(self, kind: str, payload: Any, outcome: Outcome, control: Any, on_epoch: Callable) -> None:
        """Dispatch one message of the child."""
        if kind == "log":
            self.log(str(payload))
        elif kind == "epoch":
            event = EpochEvent.model_validate(payload)
            outcome.add_epoch(event.record)
            control.put(self._verdict(event, outcome, on_epoch))
        elif kind == "result":
            outcome.result = ChildResult.model_validate(payload)
        elif kind == "error":
            outcome.error = ChildError.model_validate(payload)
        else:
            LOG.warning("ignoring unknown message %r from the training process", kind)

    @staticmethod
    def _verdict(event: EpochEvent, outcome: Outcome, on_epoch: Callable) -> tuple:
        """Call ``on_epoch`` and turn a StopTraining into the child's stop order."""
        if outcome.stop_reason is not None:
            return ("stop", outcome.stop_reason)
        try:
            on_epoch(event)
        except StopTraining as stop:
            outcome.stop_reason = stop.reason
            return ("stop", stop.reason)
        return ("continue",)


class Outcome:
    """What the parent learned from the child: epochs, the result or the error."""

    def __init__(self, earlier: tuple[EpochRecord, ...] = ()) -> None:
        self.records: dict[int, EpochRecord] = {record.epoch: record for record in earlier}
        self.result: ChildResult | None = None
        self.error: ChildError | None = None
        self.stop_reason: str | None = None

    @property
    def finished(self) -> bool:
        """True once the child sent its last word."""
        return self.result is not None or self.error is not None

    def add_epoch(self, record: EpochRecord) -> None:
        """Keep the last record of each epoch (a NaN recovery redoes an epoch)."""
        self.records[record.epoch] = record

    @property
    def history(self) -> tuple[EpochRecord, ...]:
        """Epoch records in order."""
        return tuple(self.records[e] for e in sorted(self.records))


def continue_best_trial(spec: TrainSpec) -> TrainSpec:
    """A search's full run that continues its best prefix trial: that trial's checkpoint and results.csv
    copied into the full run's folder, then resumed from there like an interrupted training.

    Done once: a full run interrupted later has its own last.pt, which the journal resumes from.
    """
    if spec.continue_checkpoint is None or spec.resume_checkpoint is not None:
        return spec
    source = Path(spec.continue_checkpoint)
    if not source.is_file():
        raise TrainingError(spec.key, f"cannot continue the best trial: {source} does not exist", None)
    from flows.engine.fsutil import atomic_copy

    last = Path(spec.run_dir) / "weights" / "last.pt"
    csv = source.parent.parent / "results.csv"
    if not last.exists():
        atomic_copy(source, last)
    if csv.is_file() and not (Path(spec.run_dir) / "results.csv").exists():
        atomic_copy(csv, Path(spec.run_dir) / "results.csv")
    return spec.model_copy(update={"resume_checkpoint": last})


def records_already_trained(spec: TrainSpec) -> tuple[EpochRecord, ...]:
    """Epochs an interrupted run finished before ``spec.resume_checkpoint``, from its results.csv.

    Ultralytics' resume trains (and reports) only the epochs after the checkpoint, so a resumed
    phase's history and ``epochs_done`` start from these rows. An epoch written to results.csv
    after the last checkpoint is trained again and its new record replaces the old one.
    """
    if spec.resume_checkpoint is None:
        return ()
    csv = Path(spec.run_dir) / "results.csv"
    try:
        return read_results_csv(csv) if csv.is_file() else ()
    except RecordError as exc:
        LOG.warning("ignoring the interrupted run's %s: %s", csv, exc)
        return ()


def terminate(process: Any, grace_s: float = TERM_GRACE_S) -> None:
    """End the child: SIGTERM, then SIGKILL if it is still alive after ``grace_s``."""
    if not process.is_alive():
        return
    process.terminate()
    process.join(grace_s)
    if process.is_alive():
        LOG.warning("training process %s ignored SIGTERM; killing it", process.pid)
        process.kill()
        process.join(grace_s)


def log_path(spec: TrainSpec) -> Path:
    """The training's full output (Ultralytics' log, progress bars, tracebacks)."""
    from tasks.trainers.ultra_child import LOG_FILE

    return Path(spec.run_dir) / LOG_FILE


def build_result(spec: TrainSpec, outcome: Outcome, *, exitcode: int | None, wall_s: float) -> PhaseResult:
    """Turn what the child reported into a PhaseResult, or raise the error that ended it."""
    result = outcome.result
    if result is None:
        raise failure_of(spec, outcome, exitcode)
    history = outcome.history
    status, reason = result.status, result.reason
    if outcome.stop_reason is not None and status == "completed":
        status, reason = "stopped", outcome.stop_reason
    return PhaseResult(
        **spec.ref().model_dump(),
        history=history,
        epochs_planned=spec.epochs,
        epochs_done=len(history),
        batch_requested=_int_or_none(spec.args.get("batch")),
        wall_s=wall_s,
        **_run_files(Path(result.save_dir)),
        status=status,
        reason=reason,
        metrics=result.metrics,
        nan_recoveries=result.nan_recoveries,
        nan_epochs=result.nan_epochs,
        oom_events=result.oom_events,
        diverged=status == "diverged",
        batch_used=result.batch_used,
        accumulate=result.accumulate,
        effective_batch=result.effective_batch,
        nbs=result.nbs,
        images_per_s=median_after_first(result.images_per_s),
        inference_ms=result.inference_ms,
        torch_peak_reserved_gb=result.torch_peak_reserved_gb,
        nvml_peak_used_gb=result.nvml_peak_used_gb,
        gpu_name=result.gpu_name,
        args=result.args,
        evaluation=result.evaluation,
        export=result.export,
    )


def failure_of(spec: TrainSpec, outcome: Outcome, exitcode: int | None) -> TrainingError:
    """The error a child without a result ended in: its exception's message, or how it died."""
    log = str(log_path(spec))
    if outcome.error is not None:
        return TrainingError(spec.key, f"{outcome.error.type}: {outcome.error.message}", log)
    if exitcode is not None and exitcode < 0:
        name = signal_name(-exitcode)
        hint = " (the kernel's out-of-memory killer sends SIGKILL)" if name == "SIGKILL" else ""
        return ChildKilled(spec.key, f"the training process was killed by {name}{hint}", log)
    return TrainingError(spec.key, f"the training process exited with code {exitcode} without a result", log)


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9, or ``signal N`` for a number Python does not name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _run_files(run_dir: Path) -> dict[str, Path | None]:
    """Weights (best.pt, else last.pt) and results.csv that exist in the run folder."""
    candidates = (run_dir / "weights" / name for name in ("best.pt", "last.pt"))
    weights = next((path for path in candidates if path.is_file()), None)
    csv = run_dir / "results.csv"
    return {"weights": weights, "results_csv": csv if csv.is_file() else None}


def _int_or_none(value: object) -> int | None:
    """The requested batch as an int; None for auto-batch fractions or when absent."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 1:
        return None
    return int(value)
