"""Device-wide GPU memory through NVML, behind one small class.

Ultralytics' ``GPU_mem`` column is ``torch.cuda.memory_reserved()`` of the training process only
(ERRATA.md); a VRAM gate may instead need what the whole device uses, which only the driver
(NVML) knows. This module reads that figure and never raises: on a machine without a GPU, a
driver or the ``nvidia-ml-py`` package it reports ``available=False`` with the reason, so the
same code runs on CPU-only test machines and on the training box.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any

LOG = logging.getLogger(__name__)

GIB = float(2**30)


@dataclass(frozen=True)
class GpuSnapshot:
    """One reading of a GPU's memory, or why there is none."""

    available: bool
    reason: str | None = None
    name: str | None = None
    index: int | None = None
    used_gb: float | None = None
    total_gb: float | None = None


def _import_pynvml() -> ModuleType:
    """Import the real NVML bindings only when a probe is first used (nothing at import time)."""
    import pynvml

    return pynvml


def _as_text(value: object) -> str:
    """Old NVML bindings return device names as bytes."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class VramProbe:
    """Reads used/total memory of one GPU via NVML.

    ``nvml`` is a module-like backend (``nvmlInit``, ``nvmlShutdown``, ``nvmlDeviceGetHandleByIndex``,
    ``nvmlDeviceGetName``, ``nvmlDeviceGetMemoryInfo``, ``NVMLError``); the default is the real
    ``pynvml``, imported lazily. Tests inject a small fake.
    """

    def __init__(self, index: int = 0, nvml: object | None = None) -> None:
        self.index = index
        self._nvml: Any = nvml
        self._handle: Any = None
        self._name: str | None = None
        self._failure: str | None = None
        self._initialised = False
        self._logged: set[str] = set()
        self._lock = threading.Lock()

    def snapshot(self) -> GpuSnapshot:
        """Return the current reading; never raises."""
        with self._lock:
            if not self._initialised and self._failure is None:
                self._failure = self._open()
            if self._failure is not None:
                return self._unavailable(self._failure)
            try:
                info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
            except self._errors() as exc:
                return self._unavailable(f"NVML memory query failed: {exc}")
            return GpuSnapshot(
                available=True,
                name=self._name,
                index=self.index,
                used_gb=float(info.used) / GIB,
                total_gb=float(info.total) / GIB,
            )

    def close(self) -> None:
        """Shut NVML down if this probe started it; safe to call twice."""
        with self._lock:
            if not self._initialised:
                return
            self._initialised = False
            try:
                self._nvml.nvmlShutdown()
            except self._errors() as exc:
                LOG.debug("NVML shutdown failed: %s", exc)

    def __enter__(self) -> VramProbe:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _open(self) -> str | None:
        """Initialise NVML and find the device; return why not, or None on success."""
        try:
            if self._nvml is None:
                self._nvml = _import_pynvml()
        except (ImportError, OSError) as exc:
            return f"pynvml unavailable: {exc}"
        try:
            self._nvml.nvmlInit()
        except self._errors() as exc:
            return f"NVML init failed: {exc}"
        self._initialised = True
        try:
            self._handle = self._nvml.nvmlDeviceGetHandleByIndex(self.index)
            self._name = _as_text(self._nvml.nvmlDeviceGetName(self._handle))
        except self._errors() as exc:
            return f"NVML device {self.index} unavailable: {exc}"
        return None

    def _errors(self) -> tuple[type[BaseException], ...]:
        """Exceptions that mean 'no reading', never a crash."""
        nvml_error = getattr(self._nvml, "NVMLError", None)
        extra = (nvml_error,) if isinstance(nvml_error, type) and issubclass(nvml_error, Exception) else ()
        return (*extra, ImportError, OSError)

    def _unavailable(self, reason: str) -> GpuSnapshot:
        """Log each distinct reason once: a sampler polls twice a second."""
        if reason not in self._logged:
            self._logged.add(reason)
            LOG.info("GPU memory not measurable (device %d): %s", self.index, reason)
        return GpuSnapshot(available=False, reason=reason, index=self.index)


class PeakSampler:
    """Polls a ``VramProbe`` on a daemon thread and keeps the peak device memory used.

    A peak read once per epoch would miss the validation spike; a background poll at
    ``interval_s`` catches it without touching the training loop.
    """

    def __init__(self, probe: VramProbe, interval_s: float = 0.5) -> None:
        self.probe = probe
        self.interval_s = interval_s
        self._peak: float | None = None
        self._last: GpuSnapshot | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def peak_gb(self) -> float | None:
        """Highest used memory seen so far, None when the GPU is not measurable."""
        with self._lock:
            return self._peak

    @property
    def last(self) -> GpuSnapshot | None:
        """The most recent reading."""
        with self._lock:
            return self._last

    def sample(self) -> GpuSnapshot:
        """Take one reading now and fold it into the peak."""
        snap = self.probe.snapshot()
        with self._lock:
            self._last = snap
            if snap.available and snap.used_gb is not None:
                self._peak = snap.used_gb if self._peak is None else max(self._peak, snap.used_gb)
        return snap

    def start(self) -> PeakSampler:
        """Start polling (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="vram-peak-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> float | None:
        """Stop polling, take a last reading and return the peak."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 4 * self.interval_s))
            self._thread = None
        self.sample()
        return self.peak_gb

    def __enter__(self) -> PeakSampler:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        """Poll until stopped; give up at once when there is no GPU to read."""
        while not self._stop.is_set():
            if not self.sample().available:
                return
            self._stop.wait(self.interval_s)


def cuda_missing() -> str | None:
    """Why torch cannot use a CUDA GPU here (no device, a CPU build), or None when it can.

    One wording for every caller that needs a GPU (the memory probe, the GPU benchmarks). Imports torch.
    """
    import torch

    if torch.cuda.is_available():
        return None
    build = torch.version.cuda or "none (CPU build)"
    return f"no CUDA device: torch.cuda.is_available() is False (torch {torch.__version__}, CUDA {build})"


def gpu_tool_refusal(tool: str, doc: str) -> str | None:
    """Why the GPU benchmark ``tool`` measures nothing on this machine (its usage on a GPU machine and
    where it is documented), or None when a CUDA device is there."""
    missing = cuda_missing()
    if missing is None:
        return None
    return (
        f"{tool} needs a CUDA GPU: {missing}. Nothing was measured. "
        f"Run it on a GPU machine: python benchmarks/{tool} --device 0 (see {doc})."
    )
