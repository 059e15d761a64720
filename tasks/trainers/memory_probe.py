"""The real ``MemoryProbe``: peak VRAM of a few real training steps at one batch size, on CUDA.

``CudaMemoryProbe.for_spec(spec, settings, device=...)`` is the batch planner's hardware boundary: each
``measure(batch)`` runs in a fresh spawned process that builds what the phase builds (its model, arguments,
dataset and image size, through Ultralytics' own ``DetectionTrainer._setup_train``), trains ``iterations``
steps on the training images with the most boxes, then one validation-shaped forward pass, and reports
torch's peak reserved memory and NVML's device-wide peak (``tasks/trainers/vram.py``). Without CUDA,
``unavailable()`` says why and nothing is spawned; ``measure_once`` also runs on the CPU (figures None).
Why a fresh process per batch, and what it costs: docs/VRAM_PLANNER.md.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import queue
import shutil
import statistics
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flows.engine.plan.devices import parse_devices
from flows.engine.plan.ultra_defaults import ultralytics_default
from flows.engine.records.batch_plan import ProbeMeasurement
from tasks.trainers.offline import offline_environment
from tasks.trainers.vram import cuda_missing

LOG = logging.getLogger(__name__)

GIB = float(2**30)
STRIDE = 32
"""Ultralytics' grid size for training: ``max(model stride, 32)`` (32 for both FOD models)."""
NVML_INTERVAL_S = 0.05
POLL_S = 0.5
TERM_GRACE_S = 5.0
DEAD_DRAIN_S = 2.0
MEMORY_ERRORS = (
    "out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_INTERNAL_ERROR",
    "unable to find an engine",
)
"""Errors Ultralytics' training loop treats as out of memory (and halves the batch for)."""
DROPPED_ARGS = (
    "resume",
    "batch",
    "project",
    "name",
    "exist_ok",
    "data",
    "model",
    "multi_scale",
    "pretrained",
)
"""Phase arguments the probe replaces or must not pass (it trains nothing, resumes nothing)."""


class ProbeRequest(BaseModel):
    """One measurement, as it crosses into the probe process."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: str
    data: str
    args: dict[str, Any] = Field(default_factory=dict)
    """The phase's merged Ultralytics arguments (``batch`` is replaced by the candidate)."""
    batch: int = Field(ge=1)
    nbs: int | None = Field(default=None, ge=1)
    device: str
    iterations: int = Field(default=3, ge=1, le=1000)
    val_pass: bool = True
    memory_cap_gb: float | None = Field(default=None, gt=0)
    """Cap this process's CUDA allocator (``set_per_process_memory_fraction``): a smaller card."""
    work_dir: str


# ---------------------------------------------------------------- pure helpers


def largest_train_imgsz(imgsz: int, multi_scale: float, stride: int = STRIDE) -> int:
    """The largest image size training can draw: Ultralytics' multi-scale upper end, on the stride grid.

    ``DetectionTrainer.preprocess_batch`` draws ``randrange(low, int(imgsz * (1 + ms) + stride))``
    rounded down to the stride, so the largest is one below that bound, rounded down.
    """
    if not multi_scale or multi_scale <= 0:
        return int(imgsz)
    upper = int(imgsz * (1.0 + multi_scale) + stride)
    return (upper - 1) // stride * stride


def probe_overrides(request: ProbeRequest, project: Path) -> dict[str, Any]:
    """The DetectionTrainer overrides of one measurement: the phase's arguments at the candidate batch.

    Kept: everything that changes memory (imgsz, amp, compile, channels_last, freeze, optimizer,
    epochs: ``optimizer=auto`` picks by iteration count, augmentation: mosaic sets the boxes per image).
    Changed: workers 0 and no cache (the probe loads a few batches itself), no plots, and a folder of
    its own. ``multi_scale`` becomes its largest image size.
    """
    args = {k: v for k, v in request.args.items() if k not in DROPPED_ARGS}
    imgsz = int(request.args.get("imgsz", ultralytics_default("imgsz")))  # type: ignore[call-overload]
    multi_scale = float(request.args.get("multi_scale") or 0.0)  # type: ignore[arg-type]
    args.update(
        model=request.model,
        data=request.data,
        batch=request.batch,
        imgsz=largest_train_imgsz(imgsz, multi_scale),
        multi_scale=0.0,
        device=request.device,
        workers=0,
        cache=False,
        plots=False,
        val=False,
        project=str(project),
        name=f"batch-{request.batch}",
        exist_ok=True,
    )
    if request.nbs is not None:
        args["nbs"] = request.nbs
    return args


def is_memory_error(exc: BaseException) -> bool:
    """True for an out-of-memory error, recognised as Ultralytics recognises one."""
    text = str(exc)
    return type(exc).__name__ == "OutOfMemoryError" or any(
        marker.lower() in text.lower() for marker in MEMORY_ERRORS
    )


def densest_first(box_counts: list[int], batch: int, batches: int) -> list[list[int]]:
    """Dataset indices for ``batches`` batches of ``batch`` images, the images with most boxes first.

    The loss's assigner allocates per box and per anchor, so the densest images make the peak; a
    long run meets them sooner or later. The list wraps around a dataset smaller than needed.
    """
    if not box_counts:
        raise ValueError("the training set has no images")
    order = sorted(range(len(box_counts)), key=lambda i: (-box_counts[i], i))
    flat = [order[i % len(order)] for i in range(batch * batches)]
    return [flat[k * batch : (k + 1) * batch] for k in range(batches)]


def measurement_from(
    kind: str | None, payload: Any, batch: int, *, waited_s: float, exitcode: int | None
) -> ProbeMeasurement:
    """The parent's reading of what the probe process sent (or did not send)."""
    if kind == "result":
        return ProbeMeasurement.model_validate(payload)
    if kind == "error":
        lines = [line for line in str(payload).strip().splitlines() if line.strip()]
        return ProbeMeasurement(batch=batch, status="error", message=lines[-1] if lines else "probe raised")
    how = f"exit code {exitcode}" if exitcode is not None else f"no answer within {waited_s:.0f} s"
    if exitcode is not None and exitcode < 0:
        how = f"killed by signal {-exitcode}"
    return ProbeMeasurement(
        batch=batch, status="error", message=f"probe process ended without a result ({how})"
    )


# ---------------------------------------------------------------- parent side


class CudaMemoryProbe:
    """Measures a phase's training memory at candidate batches, one spawned process each.

    ``model``/``data`` are the resolved model YAML (or .pt) and dataset YAML; ``args`` the phase's
    merged Ultralytics arguments; ``device`` the device the phase will train on when ``args`` has
    none (None: GPU 0). ``effective_batch`` becomes ``nbs`` as in the phase.
    """

    def __init__(
        self,
        model: str | Path,
        data: str | Path,
        args: Mapping[str, object] | None = None,
        *,
        device: str | None = None,
        effective_batch: int | None = None,
        iterations: int = 3,
        timeout_s: float = 600.0,
        val_pass: bool = True,
        memory_cap_gb: float | None = None,
        work_dir: str | Path | None = None,
    ) -> None:
        self.model = str(model)
        self.data = str(data)
        self.args = dict(args or {})
        explicit = self.args.get("device")
        self.device = str(explicit) if explicit not in (None, "") else (device or "0")
        self.effective_batch = effective_batch
        self.iterations = iterations
        self.timeout_s = timeout_s
        self.val_pass = val_pass
        self.memory_cap_gb = memory_cap_gb
        self.work_dir = Path(work_dir) if work_dir is not None else None

    @classmethod
    def for_spec(cls, spec: Any, settings: Any, *, device: str | None = None, **kw: Any) -> CudaMemoryProbe:
        """A probe for a ``TrainSpec`` (model, data, args, effective_batch) and its ``BatchPlanSettings``."""
        return cls(
            spec.model,
            spec.data,
            spec.args,
            device=device,
            effective_batch=spec.effective_batch,
            iterations=settings.iterations,
            timeout_s=settings.timeout_s,
            **kw,
        )

    def unavailable(self) -> str | None:
        """Why this probe cannot measure here, or None; imports torch, spawns nothing."""
        devices = parse_devices(self.device)
        if devices.kind in ("cpu", "mps"):
            return f"the phase trains on device {self.device!r}, not a CUDA GPU: there is no VRAM to plan"
        if devices.several:
            return f"device {self.device!r} is several GPUs; the planner plans single-GPU training only"
        index = devices.index
        if index is None:
            return f"device {self.device!r} is not a CUDA device index"
        import torch

        if not torch.cuda.is_available():
            return cuda_missing()
        if index >= torch.cuda.device_count():
            return f"CUDA device {index} does not exist ({torch.cuda.device_count()} device(s) visible)"
        return None

    def request(self, batch: int, work_dir: Path) -> ProbeRequest:
        """The request of one measurement."""
        return ProbeRequest(
            model=self.model,
            data=self.data,
            args=self.args,
            batch=batch,
            nbs=self.effective_batch,
            device=self.device,
            iterations=self.iterations,
            val_pass=self.val_pass,
            memory_cap_gb=self.memory_cap_gb,
            work_dir=str(work_dir),
        )

    def measure(self, batch: int) -> ProbeMeasurement:
        """Measure ``batch`` in a fresh process; never raises for what happens in that process."""
        with self.folder() as work:
            return measure_once(self.request(batch, work), timeout_s=self.timeout_s)

    @contextlib.contextmanager
    def folder(self) -> Iterator[Path]:
        """The trainer's folder for one measurement: under ``work_dir`` (kept) or a temporary one."""
        if self.work_dir is not None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            yield self.work_dir
            return
        work = Path(tempfile.mkdtemp(prefix="fod-vram-probe-"))
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)


def measure_once(request: ProbeRequest, *, timeout_s: float = 600.0) -> ProbeMeasurement:
    """Run one measurement in a spawned process and wait for it (killed after ``timeout_s``)."""
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    process = context.Process(
        target=run_probe, args=(request.model_dump_json(), messages), name=f"vram-probe-b{request.batch}"
    )
    started = time.monotonic()
    with offline_environment():
        process.start()
    kind, payload = None, None
    try:
        kind, payload = wait_for(process, messages, timeout_s)
    finally:
        end(process)
        messages.cancel_join_thread()
        messages.close()
    return measurement_from(
        kind, payload, request.batch, waited_s=time.monotonic() - started, exitcode=process.exitcode
    )


def wait_for(process: Any, messages: Any, timeout_s: float) -> tuple[str | None, Any]:
    """The probe's one message, or (None, None) when it died or ran past ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    dead_since: float | None = None
    while time.monotonic() < deadline:
        try:
            return messages.get(timeout=POLL_S)
        except queue.Empty:
            if process.is_alive():
                continue
            dead_since = dead_since or time.monotonic()
            if time.monotonic() - dead_since > DEAD_DRAIN_S:
                return None, None
    return None, None


def end(process: Any) -> None:
    """Join the probe process; SIGTERM, then SIGKILL, if it lingers."""
    process.join(TERM_GRACE_S)
    if process.is_alive():
        process.terminate()
        process.join(TERM_GRACE_S)
    if process.is_alive():
        LOG.warning("memory probe %s ignored SIGTERM; killing it", process.pid)
        process.kill()
        process.join(TERM_GRACE_S)


# ---------------------------------------------------------------- child side


def run_probe(request_json: str, messages: Any) -> None:
    """Probe process entry point: one ``("result", dict)`` or ``("error", traceback)``; never raises."""
    os.environ["YOLO_OFFLINE"] = "1"  # before Ultralytics is imported: nothing may be downloaded
    watch_parent()
    try:
        request = ProbeRequest.model_validate_json(request_json)
        messages.put(("result", measure_here(request).model_dump(mode="json")))
    except BaseException:
        messages.put(("error", traceback.format_exc()))
    finally:
        with contextlib.suppress(Exception):
            messages.close()
            messages.join_thread()


def watch_parent() -> None:
    """Exit when the parent dies, so an orphaned probe never holds the GPU."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        while parent.is_alive():
            time.sleep(1.0)
        os._exit(70)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def measure_here(request: ProbeRequest) -> ProbeMeasurement:
    """Set up the phase's training at the candidate batch in THIS process, step it, and read the peaks."""
    import torch

    from tasks.trainers.vram import PeakSampler, VramProbe

    quiet_ultralytics()
    index = parse_devices(request.device).index
    cuda = index is not None and torch.cuda.is_available()
    sampler = (
        PeakSampler(VramProbe(index), interval_s=NVML_INTERVAL_S) if cuda and index is not None else None
    )
    before = sampler.sample() if sampler is not None else None  # before this process allocates anything
    if sampler is not None:
        sampler.start()
    notes: list[str] = []
    status: Literal["ok", "oom"] = "ok"
    speed, started = None, time.monotonic()
    try:
        if cuda and request.memory_cap_gb is not None:
            notes.append(cap_memory(request.memory_cap_gb, index or 0))
        speed = train_steps(request, sampler)
    except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
        if not is_memory_error(exc):
            raise
        status = "oom"
        notes.append(first_line(exc))
    finally:
        nvml_peak = sampler.stop() if sampler is not None else None
    if before is not None and not before.available:
        notes.append(f"NVML: {before.reason}")
    return ProbeMeasurement(
        batch=request.batch,
        status=status,
        torch_peak_gb=torch.cuda.max_memory_reserved(index) / GIB if cuda else None,
        nvml_peak_gb=nvml_peak,
        nvml_before_gb=before.used_gb if before is not None and before.available else None,
        images_per_s=finite_or_none(speed),
        seconds=time.monotonic() - started,
        gpu_name=gpu_name(before, index) if cuda else None,
        total_gb=device_total_gb(index) if cuda else None,
        message="; ".join(notes),
    )


def quiet_ultralytics() -> None:
    """Ultralytics' setup chatter (arguments, dataset scan) would flood the phase's log five times over."""
    from ultralytics.utils import LOGGER

    LOGGER.setLevel(logging.WARNING)


def cap_memory(cap_gb: float, index: int) -> str:
    """Limit this process's CUDA allocator to ``cap_gb`` (a smaller card); say what was done."""
    import torch

    total = torch.cuda.get_device_properties(index).total_memory / GIB
    if cap_gb >= total:
        return f"memory cap {cap_gb:g} GB ≥ the card's {total:.1f} GB: not capped"
    torch.cuda.set_per_process_memory_fraction(cap_gb / total, index)
    return f"allocator capped at {cap_gb:g} of {total:.1f} GB"


def train_steps(request: ProbeRequest, sampler: Any) -> float | None:
    """Ultralytics' own setup, then ``iterations`` training steps and a validation pass; images/s."""
    import torch
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils.torch_utils import autocast

    trainer = DetectionTrainer(overrides=probe_overrides(request, Path(request.work_dir)))
    trainer._setup_train()  # model, AMP check, optimizer, EMA, scaler, loaders: what a phase builds
    batches = dense_batches(trainer, request.batch, min(request.iterations, 4))
    dtype = torch.bfloat16 if trainer.args.amp == "bf16" else trainer.amp
    trainer._model_train()
    cuda = trainer.device.type == "cuda"
    seconds = []
    for i in range(request.iterations):
        tick = time.perf_counter()
        with autocast(dtype, device=trainer.device.type):
            batch = trainer.preprocess_batch(dict(batches[i % len(batches)]))
            loss, _ = trainer.model(batch)
        trainer.scaler.scale(loss.sum()).backward()
        if i % 2 == 1 or i == request.iterations - 1:  # gradients accumulated once, then a step
            trainer.optimizer_step()
        if cuda:
            torch.cuda.synchronize(trainer.device)
        seconds.append(time.perf_counter() - tick)
        if sampler is not None:
            sampler.sample()
    if request.val_pass:
        validation_forward(trainer, 2 * request.batch)
        if sampler is not None:
            sampler.sample()
    timed = statistics.median(
        seconds[1:] or seconds
    )  # the first step pays cuDNN's and the allocator's warm-up
    return request.batch / timed if timed > 0 else None


def dense_batches(trainer: Any, batch: int, count: int) -> list[dict]:
    """``count`` collated training batches of the densest images, with the phase's augmentation."""
    dataset = trainer.train_loader.dataset
    counts = [len(label.get("cls", ())) for label in dataset.labels]
    return [dataset.collate_fn([dataset[i] for i in idx]) for idx in densest_first(counts, batch, count)]


def validation_forward(trainer: Any, batch: int) -> None:
    """One forward pass as Ultralytics' validator does it during training: EMA model, 2× batch, half."""
    import torch

    model = trainer.ema.ema if trainer.ema is not None else trainer.model
    half = trainer.amp and trainer.device.type != "cpu"
    model = (model.half() if half else model.float()).eval()
    size = int(trainer.args.imgsz)
    images = torch.zeros(batch, 3, size, size, device=trainer.device)
    with torch.inference_mode():
        model(images.half() if half else images)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)


def gpu_name(snapshot: Any, index: int | None) -> str | None:
    """The GPU's name from NVML, else from torch."""
    if snapshot is not None and snapshot.available and snapshot.name:
        return str(snapshot.name)
    import torch

    return torch.cuda.get_device_name(index)


def device_total_gb(index: int | None) -> float:
    """The card's memory as torch sees it."""
    import torch

    return torch.cuda.get_device_properties(index).total_memory / GIB


def first_line(exc: BaseException) -> str:
    """The first line of an error, short."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:300]


def finite_or_none(value: float | None) -> float | None:
    """A figure that pydantic (``allow_inf_nan=False``) will accept."""
    return value if value is not None and math.isfinite(value) else None
