"""Per-epoch monitors: visible warnings (and optional stops) while a phase trains.

The plan's "VRAM stays ≤ 18 GB" and "mAP50 > 0.99 by epoch 50" are not gates: they are
read every epoch from the one ``EpochEvent`` stream, so that a problem shows up during
a 12-hour phase, not after it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flows.engine.plan.schema import Monitor
from flows.engine.records.results import EpochEvent


class StopTraining(Exception):
    """Raised from an ``on_epoch`` callback to stop the phase gracefully after this epoch.

    Every trainer honours it: the run ends with status ``stopped`` and this reason. It is the
    hook for early stopping of phases that cannot pass their gate.
    """

    def __init__(self, reason: str = "stopped by on_epoch") -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class MonitorHit:
    """A monitor whose bound was crossed at an epoch."""

    monitor: Monitor
    epoch: int
    observed: float

    def message(self, node: str) -> str:
        """The warning line shown in the terminal and the Prefect UI."""
        m = self.monitor
        bound = f"≥ {m.min:g}" if m.min is not None else f"≤ {m.max:g}"
        return (
            f"monitor {m.name!r} on {node}: {m.figure} = {self.observed:.4g} "
            f"at epoch {self.epoch}, expected {bound}"
        )


def figure_of(event: EpochEvent, figure: str) -> float | None:
    """Read one monitored figure from an epoch event."""
    if figure in ("nvml_used_gb", "torch_reserved_gb"):
        return getattr(event, figure)
    return getattr(event.record, figure)


def check_monitors(monitors: Iterable[Monitor], event: EpochEvent) -> list[MonitorHit]:
    """Monitors whose bound the epoch crosses (unknown figures never trigger)."""
    hits = []
    for monitor in monitors:
        if monitor.by_epoch is not None and event.record.epoch < monitor.by_epoch:
            continue
        value = figure_of(event, monitor.figure)
        if value is None:
            continue
        low = monitor.min is not None and value < monitor.min
        high = monitor.max is not None and value > monitor.max
        if low or high:
            hits.append(MonitorHit(monitor, event.record.epoch, value))
    return hits
