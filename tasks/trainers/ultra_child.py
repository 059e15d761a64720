"""The child process side of ``UltralyticsTrainer``: one Ultralytics training run.

Spawned, never forked (CUDA cannot be), it talks to its parent through one queue of ``(kind, payload)``
messages (``tasks/trainers/messages.py``): ``epoch`` after each epoch, after which it waits for the
parent's ``continue`` or ``stop`` on the control queue, so a stop decided on epoch N takes effect before
epoch N+1; ``log`` for Ultralytics' warnings a person must see; one ``result`` or ``error`` at the end.
Everything it prints (Ultralytics' whole log, its traceback) goes to ``<run folder>/train.log``. Nothing
heavy is imported at module level: the parent imports this module only to name the target.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flows.engine.plan.devices import Devices, parse_devices

ULTRALYTICS_CLIP_NORM = 10.0
"""The gradient norm Ultralytics 8.4 hard-codes in ``BaseTrainer.optimizer_step``."""

BOX_METRICS = {
    "precision": "metrics/precision(B)",
    "recall": "metrics/recall(B)",
    "map50": "metrics/mAP50(B)",
    "map50_95": "metrics/mAP50-95(B)",
}
"""Ultralytics' detection metric keys; never ``fitness`` (0.1*mAP50 + 0.9*mAP50-95)."""

REPLY_POLL_S = 1.0
PARENT_POLL_S = 1.0
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOG_FILE = "train.log"
"""The training's full output, in its run folder."""
MAX_MESSAGE_CHARS = 600


def run_training(spec_json: str, device: str | None, messages: Any, control: Any) -> None:
    """Process entry point: train ``spec`` and report through ``messages``; never raises."""
    from flows.engine.interrupts import ignore_sigint

    ignore_sigint()  # the command ends this child on Ctrl-C (flows/signals.py)
    os.environ["YOLO_OFFLINE"] = "1"  # before Ultralytics is imported: nothing may be downloaded
    _watch_parent()
    channel = Channel(messages, control)
    try:
        from flows.engine.records.results import TrainSpec

        spec = TrainSpec.model_validate_json(spec_json)
        redirect_output(Path(spec.run_dir) / LOG_FILE)
        channel.send("result", train_ultralytics(spec, device, channel).model_dump(mode="json"))
    except BaseException as exc:
        traceback.print_exc()  # into train.log
        channel.send("error", error_of(exc).model_dump(mode="json"))
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        channel.flush()


def redirect_output(log: Path) -> None:
    """Send this process's stdout and stderr (Ultralytics' log, tqdm's bars, tracebacks) to ``log``.

    At the file-descriptor level, so that output of C extensions and dataloader workers lands there
    too. Appends: a resumed or retried training keeps the earlier attempts' output above its own.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives as long as the process
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os.dup2(handle.fileno(), 1)
    os.dup2(handle.fileno(), 2)
    sys.stdout = sys.stderr = handle


def error_of(exc: BaseException) -> Any:
    """The message a person needs from an exception: the innermost cause's own first line.

    Ultralytics wraps a dataset problem twice — ``RuntimeError("Dataset 'x' error ❌ Dataset 'x' images
    not found, missing path '...'")`` raised from the ``FileNotFoundError`` whose message continues
    "Note dataset download directory is ..." — so the cause says what is wrong, its first line says
    it once, and the download note (no download ever happens here) is left for the log.
    """
    from tasks.trainers.messages import ChildError

    root = exc
    while root.__cause__ is not None and str(root.__cause__).strip():
        root = root.__cause__
    text = ANSI.sub("", str(root)).strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    message = first or type(root).__name__
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "…"
    return ChildError(type=type(root).__name__, message=message, traceback=traceback.format_exc())


class Channel:
    """The child's end of the message queue and of the control queue."""

    def __init__(self, messages: Any, control: Any) -> None:
        self.messages = messages
        self.control = control

    def send(self, kind: str, payload: object) -> None:
        """Put one message; a closed queue (parent gone) is not the child's problem."""
        with contextlib.suppress(Exception):
            self.messages.put((kind, payload))

    def send_epoch(self, event: dict) -> str | None:
        """Send an epoch event and wait for the parent's verdict; return a stop reason or None."""
        self.send("epoch", event)
        while True:
            try:
                reply = self.control.get(timeout=REPLY_POLL_S)
            except queue.Empty:
                continue  # the parent-death watchdog ends this process if nobody will ever answer
            if reply and reply[0] == "stop":
                return str(reply[1]) if len(reply) > 1 else "stopped"
            return None

    def flush(self) -> None:
        """Let the queue's feeder thread write everything before the process exits."""
        with contextlib.suppress(Exception):
            self.messages.close()
            self.messages.join_thread()


def _watch_parent() -> None:
    """Exit when the parent dies (even by SIGKILL), so an orphaned run never holds the GPU."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        while parent.is_alive():
            time.sleep(PARENT_POLL_S)
        os._exit(70)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


FORWARD_ENV = "FOD_FORWARD_ULTRALYTICS"
"""``info``: forward Ultralytics' info lines to the parent's log too (the overhead benchmark times them);
by default only its warnings reach the terminal and the flow run's log, everything stays in train.log."""


class QueueLogHandler(logging.Handler):
    """Forwards Ultralytics' warnings (or, with ``FOD_FORWARD_ULTRALYTICS=info``, every line) to the parent,
    one message per non-empty line, colours stripped."""

    def __init__(self, channel: Channel) -> None:
        level = logging.INFO if os.environ.get(FORWARD_ENV, "").lower() == "info" else logging.WARNING
        super().__init__(level)
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = ANSI.sub("", self.format(record))
        except Exception:
            return
        for line in text.splitlines():
            if line.strip():
                self.channel.send("log", line.rstrip())


def forward_ultralytics_warnings(channel: Channel) -> None:
    """Ultralytics' own handler keeps writing everything to train.log; warnings also reach the parent."""
    from ultralytics.utils import LOGGER

    handler = QueueLogHandler(channel)
    handler.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.addHandler(handler)


class Session:
    """State of one run shared by the trainer subclass and its callbacks."""

    def __init__(self, spec: Any, channel: Channel, sampler: Any, cuda: bool) -> None:
        self.spec = spec
        self.channel = channel
        self.sampler = sampler
        self.cuda = cuda
        self.epoch_started: float | None = None
        self.train_seconds: float | None = None
        self.stop_reason: str | None = None
        self.images_per_s: list[float] = []

    def on_train_epoch_start(self, trainer: Any) -> None:
        """Start the clock of the training part of an epoch (restarted after an OOM retry)."""
        self.epoch_started = time.time()

    def on_train_epoch_end(self, trainer: Any) -> None:
        """Stop the clock before validation, so images/s measures training only."""
        if self.epoch_started is not None:
            self.train_seconds = time.time() - self.epoch_started

    def on_fit_epoch_end(self, trainer: Any) -> None:
        """Report the epoch and apply the parent's verdict; skipped for the final validation."""
        if getattr(trainer, "in_final_eval", False):
            return  # final_eval() fires this callback again with epoch+1: not a training epoch
        from flows.engine.faults import child_kill_point

        event = self.epoch_event(trainer)
        reason = self.channel.send_epoch(event)
        child_kill_point(self.spec.key, event["record"]["epoch"], self.spec.run_dir)  # tests only
        if reason is not None:
            self.stop_reason = reason
            trainer.stop = True  # BaseTrainer breaks right after this callback, then validates best.pt

    def epoch_event(self, trainer: Any) -> dict:
        """Build the EpochEvent of the epoch that just ended, as a dict."""
        from flows.engine.records.results import EpochEvent

        speed = self.images_per_second(trainer)
        if speed is not None:
            self.images_per_s.append(speed)
        snap = self.sampler.sample() if self.sampler is not None else None
        return EpochEvent(
            **self.spec.ref().model_dump(),
            epochs_planned=int(trainer.epochs),
            record=epoch_record(trainer),
            images_per_s=speed,
            torch_reserved_gb=self.torch_reserved_gb(),
            nvml_used_gb=snap.used_gb if snap is not None and snap.available else None,
            nan_recoveries=int(getattr(trainer, "nan_recoveries", 0)),
        ).model_dump(mode="json")

    def images_per_second(self, trainer: Any) -> float | None:
        """Training images of one epoch over the epoch's training time (validation excluded)."""
        loader = getattr(trainer, "train_loader", None)
        if loader is None or not self.train_seconds:
            return None
        return len(loader.dataset) / self.train_seconds

    def torch_reserved_gb(self) -> float | None:
        """What Ultralytics' ``GPU_mem`` shows: memory reserved by this process's CUDA allocator."""
        if not self.cuda:
            return None
        import torch

        return torch.cuda.memory_reserved() / 2**30


def epoch_record(trainer: Any) -> Any:
    """The row Ultralytics appends to results.csv for this epoch, as an EpochRecord."""
    from flows.engine.records.results import EpochRecord

    metrics = trainer.metrics or {}
    losses = trainer.label_loss_items(trainer.tloss, prefix="train") if trainer.tloss else {}
    losses.update({k: v for k, v in metrics.items() if k.startswith("val/")})
    return EpochRecord(
        epoch=int(trainer.epoch) + 1,
        **box_metrics(metrics),
        losses={k: finite(v) for k, v in losses.items()},
        lr={k: finite(v) for k, v in (getattr(trainer, "lr", None) or {}).items()},
        time_s=time.time() - trainer.train_time_start,
    )


def box_metrics(metrics: dict) -> dict[str, float | None]:
    """Precision, recall, mAP50 and mAP50-95 of boxes from an Ultralytics metrics dict."""
    return {field: finite(metrics.get(key)) for field, key in BOX_METRICS.items()}


def finite(value: object) -> float | None:
    """A float, or None for missing and non-finite values."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def clip_norm_of(spec: Any) -> float | None:
    """The max gradient norm of a run: the phase's, Ultralytics' 10.0 when unset, None when ``off``."""
    value = spec.grad_clip_norm
    if value == "off":
        return None
    return float(value) if value is not None else ULTRALYTICS_CLIP_NORM


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a device out-of-memory error, the way Ultralytics recognises one."""
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def make_trainer_class(session: Session) -> type:
    """A DetectionTrainer that clips at ``grad_clip_norm`` and records what Ultralytics hides.

    Overrides only what it must: ``optimizer_step`` (the clip value, or no clipping),
    ``_build_train_pipeline`` (the nominal accumulation, which warm-up ramps from 1, and the batch
    halvings after an out-of-memory error), ``_handle_nan_recovery`` (count every NaN epoch and
    recovery: Ultralytics resets its own counter after each good epoch), ``preprocess_batch`` (the
    test-only fake out-of-memory error of ``FOD_FAKE_OOM_ABOVE``) and ``final_eval``.
    """
    import numpy as np
    import torch
    from ultralytics.models.yolo.detect import DetectionTrainer

    from flows.engine.faults import FAKE_OOM_ENV, fake_oom_above

    clip_norm = clip_norm_of(session.spec)
    fake_oom_limit = fake_oom_above()

    class FodDetectionTrainer(DetectionTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.grad_clip_norm = clip_norm
            self.clip_norm_used: float | str | None = None
            self.nominal_accumulate: int | None = None
            self.nan_recoveries = 0
            self.nan_epochs = 0
            self.oom_events: list[dict[str, Any]] = []
            self.pipeline_batch: int | None = None
            self.diverged_reason: str | None = None
            self.in_final_eval = False
            self.final_validated = False
            for event in ("on_train_epoch_start", "on_train_epoch_end", "on_fit_epoch_end"):
                self.add_callback(event, getattr(session, event))

        def optimizer_step(self) -> None:
            """Ultralytics' step with this phase's clip norm instead of the hard-coded 10.0 (or none)."""
            self.scaler.unscale_(self.optimizer)
            if self.grad_clip_norm is not None:
                foreach = {"foreach": False} if self.device.type == "npu" else {}
                torch.nn.utils.clip_grad_norm_(
                    self.model.parameters(), max_norm=self.grad_clip_norm, **foreach
                )
            self.clip_norm_used = "off" if self.grad_clip_norm is None else self.grad_clip_norm
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad()
            if self.ema:
                self.ema.update(self.model)

        def preprocess_batch(self, batch: dict) -> dict:
            """Move the batch to the device; under ``FOD_FAKE_OOM_ABOVE`` a larger batch runs out of memory.

            This is the hardware boundary: where CUDA would raise ``torch.OutOfMemoryError``.
            Ultralytics catches it in its training loop exactly as it catches a real one.
            """
            size = len(batch["img"])
            if fake_oom_limit is not None and size > fake_oom_limit:
                raise torch.OutOfMemoryError(
                    f"CUDA out of memory. Tried to allocate a batch of {size} images "
                    f"(faked by {FAKE_OOM_ENV}={fake_oom_limit})"
                )
            return super().preprocess_batch(batch)

        def _build_train_pipeline(self) -> None:
            before = self.pipeline_batch
            super()._build_train_pipeline()
            self.nominal_accumulate = int(self.accumulate)
            self.pipeline_batch = int(self.batch_size)
            if before is not None and self.batch_size < before:  # rebuilt after an out-of-memory error
                self.oom_events.append(
                    {
                        "epoch": int(getattr(self, "epoch", 0)) + 1,
                        "batch": before,
                        "retry_batch": int(self.batch_size),
                        "accumulate": int(self.accumulate),
                        "message": f"out of memory at batch {before}; Ultralytics halved it to "
                        f"{self.batch_size} with {self.accumulate} accumulation steps",
                    }
                )

        def _handle_nan_recovery(self, epoch: int) -> bool:
            loss_bad = self.loss is not None and not bool(torch.isfinite(self.loss).all())
            fitness_bad = self.fitness is not None and not np.isfinite(self.fitness)
            self.nan_epochs += int(loss_bad or fitness_bad)
            try:
                recovered = super()._handle_nan_recovery(epoch)
            except RuntimeError as exc:
                self.diverged_reason = str(exc)
                raise
            self.nan_recoveries += int(bool(recovered))
            return recovered

        def final_eval(self) -> None:
            keep_continue_checkpoint(session.spec, Path(self.last))
            self.final_validated = self.best.exists()
            self.in_final_eval = True
            try:
                super().final_eval()
            finally:
                self.in_final_eval = False

    return FodDetectionTrainer


def keep_continue_checkpoint(spec: Any, last: Path) -> None:
    """A prefix trial keeps its last.pt as ``weights/continue.pt`` before Ultralytics strips it.

    Ultralytics' final evaluation strips last.pt (no optimizer, epoch -1: nothing left to resume); the
    search's full run continues the best trial from this copy instead (``full_run: continue``).
    """
    hook = getattr(spec, "trial_hook", None)
    if hook is None or not hook.prefix or not last.is_file():
        return
    from flows.engine.decisions.study import CONTINUE_CHECKPOINT
    from flows.engine.fsutil import atomic_copy

    target = Path(spec.run_dir) / CONTINUE_CHECKPOINT
    if target.exists():
        target.unlink()  # a resumed trial's newer checkpoint replaces an older copy
    atomic_copy(last, target)


def out_of_memory_reason(trainer: Any, exc: BaseException) -> str:
    """Why the run failed: the batch at which memory ran out and the halvings tried before."""
    batch = int(trainer.batch_size)
    epoch = int(getattr(trainer, "epoch", 0)) + 1
    halvings = [e["batch"] for e in trainer.oom_events]
    tried = " → ".join(str(b) for b in [*halvings, batch])
    if halvings:
        after = f" after {len(halvings)} automatic halving(s) of the batch ({tried})"
    elif epoch > 1:
        after = " (Ultralytics halves the batch only in the first epoch)"
    else:
        after = ""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"out of memory at batch {batch} in epoch {epoch}{after}; lower batch or imgsz "
        f"(keep effective_batch): {first[:300]}"
    )


def train_args(spec: Any, device: str | None) -> dict[str, Any]:
    """The keyword arguments given to ``YOLO.train``; they land in ``spec.run_dir`` exactly."""
    run_dir = Path(spec.run_dir).resolve()  # a relative project would go under Ultralytics' runs_dir
    args: dict[str, Any] = dict(spec.args)
    if device is not None and args.get("device") in (None, ""):
        args["device"] = device
    if parse_devices(args.get("device")).several:
        raise ValueError(
            f"device={args['device']!r}: multi-GPU (DDP) training re-imports the trainer class in new "
            "processes and cannot use this run's trainer subclass; train on one GPU"
        )
    args.update(data=str(spec.data), project=str(run_dir.parent), name=run_dir.name, exist_ok=True)
    if spec.effective_batch:
        args["nbs"] = int(spec.effective_batch)
    return args


def train_ultralytics(spec: Any, device: str | None, channel: Channel) -> Any:
    """Build the model, train it and return its outcome: completed, diverged or out of memory.

    Anything else that raises (a dataset that cannot be loaded, a missing file) propagates: it is an
    error, not an outcome, and ``run_training`` reports it as one.
    """
    from ultralytics import YOLO

    from tasks.trainers.vram import PeakSampler, VramProbe

    forward_ultralytics_warnings(channel)
    args = train_args(spec, device)
    devices = parse_devices(args.get("device"))
    sampler = PeakSampler(VramProbe(devices.index)).start() if devices.index is not None else None
    session = Session(spec, channel, sampler, on_cuda(devices))
    status, reason = "completed", None
    model = None
    try:
        if spec.resume_checkpoint:
            # Ultralytics reloads the run's own arguments from last.pt (ERRATA: only imgsz, batch, device…
            # may change on resume), so the interrupted phase continues exactly as it started.
            # save_dir: a search's full run resumes a copy of its best trial's checkpoint in its own folder.
            model = YOLO(str(spec.resume_checkpoint))
            device_arg = {"device": args["device"]} if args.get("device") is not None else {}
            run_dir = str(Path(spec.run_dir).resolve())
            model.train(trainer=make_trainer_class(session), resume=True, save_dir=run_dir, **device_arg)
        else:
            model = YOLO(str(spec.model))
            if spec.pretrained:
                # The trainer builds the model for the dataset's classes, then transfers every layer whose
                # name and shape match (model.load before train would load into an 80-class model and
                # drop the class logits of weights trained for the same classes).
                args["pretrained"] = str(spec.pretrained)
            model.train(trainer=make_trainer_class(session), **args)
    except RuntimeError as exc:
        trainer = model.trainer if model is not None else None
        if trainer is not None and getattr(trainer, "diverged_reason", None):
            status, reason = "diverged", str(trainer.diverged_reason)
        elif trainer is not None and hasattr(trainer, "oom_events") and is_out_of_memory(exc):
            status, reason = "out_of_memory", out_of_memory_reason(trainer, exc)
            trainer.oom_events.append(
                {
                    "epoch": int(getattr(trainer, "epoch", 0)) + 1,
                    "batch": int(trainer.batch_size),
                    "retry_batch": None,
                    "accumulate": trainer.nominal_accumulate,
                    "message": reason,
                }
            )
        else:
            raise
    finally:
        peak = sampler.stop() if sampler is not None else None
    trainer = model.trainer  # type: ignore[union-attr]
    evaluation = evaluate_best(trainer, spec, args) if status == "completed" else None
    export = export_best(trainer, spec) if status == "completed" else None
    return child_result(trainer, session, args, status, reason, peak, evaluation, export)


def evaluate_best(trainer: Any, spec: Any, args: dict[str, Any]) -> dict[str, Any] | None:
    """best.pt evaluated again by object size and class, with bootstrap intervals (``spec.evaluation``).

    Runs after the final validation, on the same data, image size and validation batch, so its overall
    figures are the final validation's.
    """
    if spec.evaluation is None or not getattr(trainer, "final_validated", False):
        return None
    from tasks.trainers.evaluate import evaluate

    loader = getattr(trainer, "test_loader", None)
    return after_training(
        "the evaluation by object size",
        lambda: evaluate(
            Path(trainer.best),
            Path(spec.data),
            imgsz=int(trainer.args.imgsz),
            device=args.get("device"),
            settings=spec.evaluation,
            batch=int(loader.batch_size) if loader is not None else None,
            workers=int(trainer.args.workers),
            save_dir=Path(trainer.save_dir) / "evaluation",
            leakage=spec.leakage,
        ),
    )


def export_best(trainer: Any, spec: Any) -> dict[str, Any] | None:
    """best.pt exported, checked and timed for the gate's latency condition (``spec.export``), in the
    training's ``export/`` folder (where the deploy looks for it)."""
    if spec.export is None or not getattr(trainer, "final_validated", False):
        return None
    from tasks.trainers.export import export_and_check, export_dir

    best = Path(trainer.best)
    return after_training(
        "the export for the latency gate",
        lambda: export_and_check(
            best,
            Path(spec.data),
            spec.export,
            imgsz=int(trainer.args.imgsz),
            out_dir=export_dir(best),
            log=print,
        ),
    )


def after_training(what: str, produce: Callable[[], Any]) -> dict[str, Any] | None:
    """A record made from best.pt after training, as JSON. A failure here costs that record (the gate
    reads its figures as unknown), not the training: it is logged in train.log."""
    from ultralytics.utils import LOGGER

    try:
        record = produce()
    except Exception as exc:
        traceback.print_exc()
        LOGGER.warning(f"{what} failed ({type(exc).__name__}: {exc}); see train.log")
        return None
    return record.model_dump(mode="json")


def on_cuda(devices: Devices) -> bool:
    """True when training will run on CUDA."""
    import torch

    return torch.cuda.is_available() and devices.kind not in ("cpu", "mps")


def child_result(
    trainer: Any,
    session: Session,
    args: dict,
    status: str,
    reason: str | None,
    nvml_peak: float | None,
    evaluation: dict[str, Any] | None = None,
    export: dict[str, Any] | None = None,
) -> Any:
    """Everything the parent turns into a PhaseResult, as the typed ``ChildResult``."""
    from flows.engine.records.results import ValMetrics
    from tasks.trainers.messages import ChildResult

    final = box_metrics(trainer.metrics or {}) if trainer.final_validated and status == "completed" else {}
    speed = getattr(trainer.validator, "speed", None) or {}
    batch_used = int(trainer.batch_size)
    accumulate = trainer.nominal_accumulate
    recorded_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in args.items()}
    if session.spec.grad_clip_norm is not None:
        recorded_args["grad_clip_norm"] = trainer.clip_norm_used
    return ChildResult(
        status=status,
        reason=reason,
        save_dir=str(trainer.save_dir),
        metrics=ValMetrics(**final),
        inference_ms=finite(speed.get("inference")) if final else None,
        nan_recoveries=int(trainer.nan_recoveries),
        nan_epochs=int(trainer.nan_epochs),
        oom_events=tuple(trainer.oom_events),
        batch_used=batch_used,
        accumulate=accumulate,
        effective_batch=batch_used * accumulate if accumulate else None,
        nbs=int(trainer.args.nbs),
        images_per_s=tuple(session.images_per_s),
        torch_peak_reserved_gb=_torch_peak_gb() if session.cuda else None,
        nvml_peak_used_gb=nvml_peak,
        gpu_name=_gpu_name(session),
        args=recorded_args,
        evaluation=evaluation,
        export=export,
    )


def _torch_peak_gb() -> float:
    """Peak memory reserved by this process's CUDA allocator over the whole run."""
    import torch

    return torch.cuda.max_memory_reserved() / 2**30


def _gpu_name(session: Session) -> str | None:
    """The GPU's name from NVML, else from torch; None on CPU."""
    last = session.sampler.last if session.sampler is not None else None
    if last is not None and last.available:
        return last.name
    if session.cuda:
        import torch

        return torch.cuda.get_device_name()
    return None
