"""What the Ultralytics training child sends its parent, as typed models (the process boundary).

After its ``EpochEvent``s the child ends with exactly one of ``ChildResult`` (an outcome: completed,
stopped, diverged, out of memory) or ``ChildError`` (anything else that raised: data that cannot be
loaded, a missing file, a bug; the parent raises it as a ``TrainingError`` that stops the walk). Both are
sent as ``model_dump(mode="json")`` dicts and validated on arrival, so a field added on one side and
forgotten on the other is an error, not a silently missing ``.get``. Pure: no torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flows.engine.base import Frozen
from flows.engine.records.evaluation import Evaluation
from flows.engine.records.export import ExportReport
from flows.engine.records.results import OomEvent, ValMetrics


class ChildResult(Frozen):
    """The child's last word when training reached an outcome."""

    status: Literal["completed", "diverged", "out_of_memory"]
    reason: str | None = None
    save_dir: str
    """Ultralytics' run folder (``spec.run_dir`` exactly: the child sets project/name from it)."""
    metrics: ValMetrics = ValMetrics()
    """Final validation of best.pt; empty when there was none (diverged, out of memory)."""
    inference_ms: float | None = None
    nan_recoveries: int = 0
    nan_epochs: int = 0
    oom_events: tuple[OomEvent, ...] = ()
    batch_used: int
    accumulate: int | None = None
    effective_batch: int | None = None
    nbs: int
    images_per_s: tuple[float, ...] = ()
    """Training images/s of every epoch (the result takes the median after the first)."""
    torch_peak_reserved_gb: float | None = None
    nvml_peak_used_gb: float | None = None
    gpu_name: str | None = None
    args: dict[str, object] = Field(default_factory=dict)
    """The keyword arguments given to ``YOLO.train``."""
    evaluation: Evaluation | None = None
    """best.pt evaluated again by object size and class (None: not asked for, or it failed)."""
    export: ExportReport | None = None
    """best.pt exported, checked and timed for a latency gate (None: not asked for, or it failed)."""


class ChildError(Frozen):
    """An exception in the child: its type, the message a person needs, and the traceback for the log."""

    type: str
    message: str
    traceback: str = ""
