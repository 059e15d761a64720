"""What exporting a trained model found: each format's file and hash, its parity with best.pt, its latency.

Written by the export step (``tasks/trainers/export.py``) as ``export.json`` beside the exported files;
read by the gates (a latency condition), the deploy (parity must hold), the model card and the report.
Pure: pydantic only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from flows.engine.base import Frozen
from flows.engine.plan.export_settings import ExportSettings

LatencyStat = Literal["median", "p95"]
LatencyPart = Literal["total", "model"]
"""``total``: pre-processing + the model + post-processing (NMS) of one call; ``model``: the model alone."""
EXPORT_FILE = "export.json"


class Spread(Frozen):
    """Median and 95th percentile of a time over the timed calls, in ms per image."""

    median: float
    p95: float

    def get(self, stat: LatencyStat) -> float:
        """The statistic a condition names."""
        return self.median if stat == "median" else self.p95


class Latency(Frozen):
    """One model timed on one device: ms per image of each stage, over ``runs`` calls after ``warmup``."""

    format: str
    device: str
    imgsz: int
    batch: int
    warmup: int
    runs: int
    preprocess: Spread
    model: Spread
    postprocess: Spread
    total: Spread

    def figure(self, stat: LatencyStat, part: LatencyPart) -> float:
        """The figure a latency condition reads."""
        return (self.total if part == "total" else self.model).get(stat)

    @property
    def label(self) -> str:
        """``onnx on cpu, 160 px, batch 1``."""
        return f"{self.format} on {self.device}, {self.imgsz} px, batch {self.batch}"


class Figures(Frozen):
    """mAP50-95 and mAP50 of one validation (the parity check's)."""

    map50_95: float
    map50: float


class Parity(Frozen):
    """The exported model's validation against best.pt's, on the same images, size and batch."""

    reference: Figures
    exported: Figures
    tolerance: float

    @property
    def difference(self) -> float:
        """Exported minus best.pt, mAP50-95."""
        return self.exported.map50_95 - self.reference.map50_95

    @property
    def passed(self) -> bool:
        """Within the tolerance (either way: an export that scores better is broken too)."""
        return abs(self.difference) <= self.tolerance + 1e-12

    def text(self) -> str:
        """One line with both figures."""
        verdict = "within" if self.passed else "beyond"
        return (
            f"mAP50-95 {self.exported.map50_95:.4f} exported vs {self.reference.map50_95:.4f} best.pt "
            f"({self.difference:+.4f}, {verdict} ±{self.tolerance:g}); mAP50 "
            f"{self.exported.map50:.4f} vs {self.reference.map50:.4f}"
        )


class ExportedModel(Frozen):
    """One format: its file, its hash, what exporting it took, its parity and its latency.

    ``skipped`` says why a format was not exported on this machine (no TensorRT, no OpenVINO); the
    other fields are then empty.
    """

    format: str
    file: Path | None = None
    sha256: str | None = None
    bytes: int | None = None
    export_s: float | None = None
    parity: Parity | None = None
    latency: Latency | None = None
    skipped: str | None = None


class ExportReport(Frozen):
    """Every format of one export of a best.pt, and best.pt itself timed the same way (``reference``)."""

    settings: ExportSettings
    weights: Path
    weights_sha256: str
    imgsz: int
    reference: Latency
    """best.pt through PyTorch, on the same device, image, size and batch."""
    models: tuple[ExportedModel, ...]

    def model(self, fmt: str) -> ExportedModel | None:
        """The record of one format, or None when it was not asked for."""
        return next((m for m in self.models if m.format == fmt), None)

    def latency(self, fmt: str) -> Latency | None:
        """The latency of a format (``pytorch``: best.pt's), or None when it was not measured."""
        if fmt == "pytorch":
            return self.reference
        found = self.model(fmt)
        return found.latency if found is not None else None

    def parity_failures(self) -> list[str]:
        """One line per format whose exported model does not score what best.pt scores."""
        return [
            f"{m.format}: {m.parity.text()}"
            for m in self.models
            if m.parity is not None and not m.parity.passed
        ]

    def matches(self, settings: ExportSettings, weights_sha256: str, imgsz: int) -> bool:
        """True when this report is of these weights, exported this way (a resumed step reuses it)."""
        return (
            (self.weights_sha256, self.imgsz) == (weights_sha256, imgsz)
            and set(settings.formats) <= {m.format for m in self.models}
            and self.settings.with_formats(()) == settings.with_formats(())
        )
