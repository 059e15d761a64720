"""A deploy node's ``export:`` section: which formats the winner is exported to, checked and timed in.

The same settings serve the deploy and a gate's latency condition (the gate times what the deploy it
passes to would export), so the figure a gate reads is the figure of the model that reaches the field.
``half`` is written as the plan says it and given to Ultralytics as ``quantize: 16`` (8.4 replaced its
``half``). Pure: pydantic only (docs/EXPORT.md).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from flows.engine.base import parse_fraction
from flows.engine.plan.buckets import Settings

ExportFormat = Literal["onnx", "engine", "openvino", "torchscript"]
"""Ultralytics' names: ``engine`` is TensorRT (a CUDA GPU and the ``tensorrt`` package), ``openvino`` needs
its package; both are skipped, with the reason, on a machine without them."""
TimedFormat = ExportFormat | Literal["pytorch"]
"""What a latency condition may time: an exported format, or best.pt itself through PyTorch."""
FILE_SUFFIX: dict[str, str] = {
    "onnx": ".onnx",
    "engine": ".engine",
    "torchscript": ".torchscript",
    "openvino": "_openvino_model",
}
"""What Ultralytics names the export of ``best.pt``: ``best`` + this (OpenVINO writes a folder)."""


class LatencySettings(Settings):
    """How the exported model is timed: warm-up calls, then timed single calls on one validation image."""

    warmup: int = Field(default=10, ge=0, le=10_000)
    runs: int = Field(default=100, ge=100, le=100_000, description="Timed calls (at least 100).")


class ExportSettings(Settings):
    """Ultralytics' ``export`` arguments for the deployed model, the parity tolerance and the timing."""

    formats: tuple[ExportFormat, ...] = Field(
        default=("onnx",), description="Formats to export; empty: best.pt is only timed (through PyTorch)."
    )
    imgsz: int | None = Field(
        default=None, ge=32, le=8192, description="Export image size; unset: the phase's training imgsz."
    )
    batch: int = Field(default=1, ge=1, le=1024, description="The exported model's batch (timed as such).")
    half: bool = Field(default=False, description="FP16 (Ultralytics' quantize: 16).")
    dynamic: bool = False
    simplify: bool = True
    opset: int | None = Field(default=None, ge=9, le=30)
    device: str = Field(
        default="cpu", description="Where the model is exported, validated and timed: the target's device."
    )
    parity_tolerance: float = Field(
        default=0.005,
        description="Largest mAP50-95 the exported model may lose (or gain) against best.pt (fraction).",
    )
    latency: LatencySettings = Field(default_factory=LatencySettings)

    @field_validator("formats")
    @classmethod
    def _distinct(cls, formats: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(formats)) != len(formats):
            raise ValueError(f"formats lists a format twice: {list(formats)}")
        return formats

    @field_validator("parity_tolerance", mode="before")
    @classmethod
    def _fraction(cls, value: Any) -> float:
        return parse_fraction(value, what="parity_tolerance", upper=0.5)

    @field_validator("device", mode="before")
    @classmethod
    def _device_text(cls, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(f"device must be cpu or a GPU index such as 0, got {value!r}")
        return str(value).strip()

    def export_args(self, fmt: str, imgsz: int) -> dict[str, Any]:
        """The keyword arguments of ``YOLO.export`` for one format (device and format included)."""
        return {"format": fmt, **self.ultralytics_args(imgsz), "device": self.device}

    def ultralytics_args(self, imgsz: int) -> dict[str, Any]:
        """The export arguments the plan states, as Ultralytics takes them (``half`` as ``quantize``)."""
        args: dict[str, Any] = {
            "imgsz": imgsz,
            "batch": self.batch,
            "dynamic": self.dynamic,
            "simplify": self.simplify,
        }
        if self.half:
            args["quantize"] = 16
        if self.opset is not None:
            args["opset"] = self.opset
        return args

    def checked_args(self) -> dict[str, Any]:
        """The arguments Ultralytics' own checker is given (types and ranges), as the plan states them."""
        return self.ultralytics_args(self.imgsz or 640)

    @property
    def on_cpu(self) -> bool:
        """True when the target device is the CPU."""
        return self.device.lower() == "cpu"

    def with_formats(self, formats: tuple[str, ...]) -> ExportSettings:
        """The same settings for these formats only."""
        return self.model_copy(update={"formats": formats})
