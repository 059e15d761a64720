"""VramProbe and PeakSampler against a small fake NVML, and the real pynvml on a GPU-less machine."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import pytest

from tasks.trainers.vram import GIB, GpuSnapshot, PeakSampler, VramProbe


class FakeNVMLError(Exception):
    """Stands in for pynvml.NVMLError."""


class FakeNVML:
    """The five NVML calls the probe uses; memory use follows a scripted sequence."""

    NVMLError = FakeNVMLError

    def __init__(self, used_gb: list[float], total_gb: float = 24.0, name: object = "Fake GPU") -> None:
        self.used_gb = list(used_gb)
        self.total_gb = total_gb
        self.name = name
        self.inits = 0
        self.shutdowns = 0
        self.handles: list[int] = []

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index > 0:
            raise FakeNVMLError("Invalid Argument")
        self.handles.append(index)
        return index

    def nvmlDeviceGetName(self, handle: int) -> object:
        return self.name

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        used = self.used_gb.pop(0) if len(self.used_gb) > 1 else self.used_gb[0]
        return SimpleNamespace(used=int(used * GIB), total=int(self.total_gb * GIB))


class NoDriverNVML(FakeNVML):
    """A machine without the NVIDIA driver: init fails."""

    def __init__(self) -> None:
        super().__init__([0.0])

    def nvmlInit(self) -> None:
        self.inits += 1
        raise FakeNVMLError("Driver Not Loaded")


def test_snapshot_reads_name_and_memory() -> None:
    fake = FakeNVML([3.5], total_gb=80.0, name=b"NVIDIA H100")
    with VramProbe(0, nvml=fake) as probe:
        snap = probe.snapshot()
    assert snap == GpuSnapshot(
        available=True, reason=None, name="NVIDIA H100", index=0, used_gb=3.5, total_gb=80.0
    )
    assert fake.inits == 1
    assert fake.shutdowns == 1


def test_init_is_done_once_for_many_snapshots() -> None:
    fake = FakeNVML([1.0, 2.0, 3.0])
    probe = VramProbe(nvml=fake)
    used = [probe.snapshot().used_gb for _ in range(3)]
    probe.close()
    probe.close()
    assert used == [1.0, 2.0, 3.0]
    assert (fake.inits, fake.shutdowns) == (1, 1)


def test_failing_init_returns_unavailable_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    fake = NoDriverNVML()
    probe = VramProbe(nvml=fake)
    with caplog.at_level(logging.INFO, logger="tasks.trainers.vram"):
        snaps = [probe.snapshot() for _ in range(5)]
    probe.close()
    assert all(not s.available for s in snaps)
    assert "Driver Not Loaded" in (snaps[0].reason or "")
    assert snaps[0].used_gb is None
    assert fake.inits == 1, "a failed init is not retried on every poll"
    assert fake.shutdowns == 0, "never shut down what did not start"
    assert len([r for r in caplog.records if "Driver Not Loaded" in r.getMessage()]) == 1


def test_missing_device_index_is_unavailable() -> None:
    probe = VramProbe(index=3, nvml=FakeNVML([1.0]))
    snap = probe.snapshot()
    assert not snap.available
    assert snap.index == 3
    assert "device 3" in (snap.reason or "")


def test_real_pynvml_without_gpu_is_clean() -> None:
    """On this GPU-less machine the real bindings must report unavailability, not raise."""
    pytest.importorskip("pynvml")
    with VramProbe() as probe:
        snap = probe.snapshot()
    if snap.available:
        pytest.skip(f"a GPU is present here ({snap.name}); this test is for GPU-less machines")
    assert snap.reason
    assert snap.used_gb is None


def test_sampler_keeps_the_peak() -> None:
    fake = FakeNVML([1.0, 5.0, 2.0, 2.5])
    with PeakSampler(VramProbe(nvml=fake), interval_s=0.01) as sampler:
        deadline = time.monotonic() + 5
        while fake.used_gb != [2.5] and time.monotonic() < deadline:
            time.sleep(0.01)
    assert sampler.peak_gb == 5.0
    assert sampler.last is not None
    assert sampler.last.used_gb == 2.5


def test_sampler_without_gpu_stops_polling_and_has_no_peak() -> None:
    fake = NoDriverNVML()
    sampler = PeakSampler(VramProbe(nvml=fake), interval_s=0.01).start()
    time.sleep(0.1)
    assert sampler.stop() is None
    assert sampler.last is not None
    assert not sampler.last.available
    assert fake.inits == 1
