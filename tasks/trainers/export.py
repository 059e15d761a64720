"""Export a trained best.pt, validate each export against it, and time both: the export step.

``export_and_check(weights, data, settings, imgsz=..., out_dir=...)`` copies best.pt into ``out_dir``,
exports it there in each format (Ultralytics' ``export``), validates best.pt and each export on the same
images, size and batch (Ultralytics' ``val``: the parity check), times best.pt and each export on one
validation image (warm-up, then ``latency.runs`` calls: Ultralytics' own per-stage timings), and writes
``export.json``. A report already there for the same weights and settings is returned as it is, unless
an export in it failed parity (a re-run after that error exports again). Used by
the training child (a gate's latency condition), the deploy and the benchmark. On its own:
``python -m tasks.trainers.export best.pt data.yaml --imgsz 640``. Nothing heavy is imported at module
level. Why parity compares with best.pt validated the same way, not with the gate's figure:
docs/EXPORT.md.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flows.engine.faults import damage_requested
from flows.engine.fsutil import atomic_copy, atomic_write_text
from flows.engine.plan.export_settings import FILE_SUFFIX, ExportSettings
from flows.engine.records.export import (
    EXPORT_FILE,
    ExportedModel,
    ExportReport,
    Figures,
    Latency,
    Parity,
    Spread,
)

WEIGHTS_NAME = "best.pt"


def sha256_of(path: Path) -> str:
    """The file's sha256; for a folder (OpenVINO), of its files' names and contents in order."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def size_of(path: Path) -> int:
    """Bytes of a file or of a folder's files."""
    return (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else path.stat().st_size
    )


def unavailable(fmt: str, device: str) -> str | None:
    """Why ``fmt`` cannot be exported on this machine (None: it can)."""
    if fmt == "engine":
        import torch

        if importlib.util.find_spec("tensorrt") is None:
            return "TensorRT is not installed on this machine (pip install tensorrt)"
        if not torch.cuda.is_available() or device.lower() == "cpu":
            return "TensorRT needs a CUDA GPU, and this machine (or export.device) has none"
    if fmt == "openvino" and importlib.util.find_spec("openvino") is None:
        return "OpenVINO is not installed on this machine (pip install openvino)"
    return None


def quiet_ultralytics() -> Callable[[], None]:
    """Ultralytics' INFO lines off for the step (they go to the run's log otherwise); returns the undo."""
    import logging

    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    return lambda: LOGGER.setLevel(level)


def validate(model_file: Path, data: Path, settings: ExportSettings, imgsz: int, save_dir: Path) -> Figures:
    """mAP50-95 and mAP50 of one model (best.pt or an export) on ``data``'s val split, letterboxed
    square (``rect`` off: an exported model with a fixed input shape cannot take rectangular batches)."""
    from ultralytics import YOLO

    metrics = YOLO(str(model_file), task="detect").val(
        data=str(data),
        imgsz=imgsz,
        batch=settings.batch,
        device=settings.device,
        rect=False,
        plots=False,
        save_json=False,
        verbose=False,
        workers=0,
        project=str(save_dir.parent),
        name=save_dir.name,
        exist_ok=True,
    )
    return Figures(map50_95=float(metrics.box.map), map50=float(metrics.box.map50))


def first_val_image(data: Path) -> Any:
    """The first validation image (BGR array, as a camera frame would arrive), for the timing."""
    import cv2

    from flows.engine.data.dataset import resolve_dataset

    images = resolve_dataset(data).images.get("val", [])
    if not images:
        raise FileNotFoundError(f"{data}: the val split has no images to time the model on")
    frame = cv2.imread(str(images[0]))
    if frame is None:
        raise OSError(f"{images[0]}: cannot read the image to time the model on")
    return frame


def spread(values: list[float]) -> Spread:
    """Median and 95th percentile (linear interpolation, as numpy's default)."""
    import numpy as np

    return Spread(median=float(statistics.median(values)), p95=float(np.percentile(values, 95)))


def timed_device(fmt: str, device: str) -> str:
    """The device the calls really run on: ONNX Runtime without its CUDA provider runs on the CPU."""
    if fmt != "onnx" or device.lower() == "cpu":
        return device
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return device
    return "cpu (onnxruntime has no CUDA provider: install onnxruntime-gpu)"


def time_model(model_file: Path, fmt: str, frame: Any, settings: ExportSettings, imgsz: int) -> Latency:
    """Warm-up calls, then ``runs`` timed calls of one batch; Ultralytics' own per-image timings of each
    stage (pre-processing, the model, post-processing with NMS)."""
    from ultralytics import YOLO

    model = YOLO(str(model_file), task="detect")
    frames = [frame] * settings.batch
    options = {"imgsz": imgsz, "device": settings.device, "verbose": False, "batch": settings.batch}
    if settings.half and fmt == "pytorch":
        options["quantize"] = 16
    for _ in range(settings.latency.warmup):
        model.predict(frames, **options)
    stages: dict[str, list[float]] = {"preprocess": [], "inference": [], "postprocess": []}
    for _ in range(settings.latency.runs):
        speed = model.predict(frames, **options)[0].speed
        for stage, values in stages.items():
            values.append(float(speed[stage]))
    totals = [sum(parts) for parts in zip(*stages.values(), strict=True)]
    return Latency(
        format=fmt,
        device=timed_device(fmt, settings.device),
        imgsz=imgsz,
        batch=settings.batch,
        warmup=settings.latency.warmup,
        runs=settings.latency.runs,
        preprocess=spread(stages["preprocess"]),
        model=spread(stages["inference"]),
        postprocess=spread(stages["postprocess"]),
        total=spread(totals),
    )


def export_format(weights: Path, fmt: str, settings: ExportSettings, imgsz: int) -> tuple[Path, float]:
    """Export ``weights`` (in its own folder) to one format; the file and the seconds it took."""
    from ultralytics import YOLO

    started = time.perf_counter()
    produced = YOLO(str(weights)).export(**settings.export_args(fmt, imgsz), verbose=False)
    file = Path(produced) if produced else weights.with_name(weights.stem + FILE_SUFFIX[fmt])
    if not file.exists():
        raise FileNotFoundError(f"Ultralytics' {fmt} export of {weights} left no {file.name}")
    return file, time.perf_counter() - started


class ExportContext:
    """What every format of one export step shares: the data, the settings, the reference figures."""

    def __init__(self, data: Path, settings: ExportSettings, imgsz: int, out_dir: Path) -> None:
        self.data = data
        self.settings = settings
        self.imgsz = imgsz
        self.out_dir = out_dir
        self.frame = first_val_image(data)
        self.reference: Figures | None = None

    def reference_figures(self, weights: Path) -> Figures:
        """best.pt validated as the exports are (once)."""
        if self.reference is None:
            self.reference = validate(weights, self.data, self.settings, self.imgsz, self.out_dir / "val-pt")
        return self.reference

    def check(self, fmt: str, file: Path, weights: Path, export_s: float | None = None) -> ExportedModel:
        """Parity and latency of one exported file (also of one made elsewhere, e.g. a damaged copy)."""
        exported = validate(file, self.data, self.settings, self.imgsz, self.out_dir / f"val-{fmt}")
        parity = Parity(
            reference=self.reference_figures(weights),
            exported=exported,
            tolerance=self.settings.parity_tolerance,
        )
        return ExportedModel(
            format=fmt,
            file=file,
            sha256=sha256_of(file),
            bytes=size_of(file),
            export_s=export_s,
            parity=parity,
            latency=time_model(file, fmt, self.frame, self.settings, self.imgsz),
        )


def read_report(out_dir: Path) -> ExportReport | None:
    """The export step's record in ``out_dir``, or None (absent or unreadable: it is made again)."""
    path = out_dir / EXPORT_FILE
    try:
        return ExportReport.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def export_and_check(
    weights: Path,
    data: Path,
    settings: ExportSettings,
    *,
    imgsz: int,
    out_dir: Path,
    log: Callable[[str], None] = print,
) -> ExportReport:
    """Export, validate and time ``weights`` in each of ``settings.formats``; the report (also on disk).

    A parity failure is recorded, not raised: the deploy refuses it (``require_parity``), a gate shows
    it beside the latency. An export that raises is an error (the caller decides what it stops).
    """
    imgsz = settings.imgsz or imgsz
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_sha = sha256_of(weights)
    saved = read_report(out_dir)
    if saved is not None and saved.matches(settings, weights_sha, imgsz) and not saved.parity_failures():
        log(f"export: {out_dir / EXPORT_FILE} already holds these weights' exports; not exported again")
        return saved
    local = out_dir / WEIGHTS_NAME
    if local.exists() and sha256_of(local) != weights_sha:
        local.unlink()  # a copy of other weights (an earlier export step of a retrained phase)
    if not local.exists():
        atomic_copy(weights, local)
    restore = quiet_ultralytics()
    try:
        context = ExportContext(data, settings, imgsz, out_dir)
        models = []
        for fmt in settings.formats:
            if reason := unavailable(fmt, settings.device):
                log(f"export: {fmt} skipped: {reason}")
                models.append(ExportedModel(format=fmt, skipped=reason))
                continue
            file, seconds = export_format(local, fmt, settings, imgsz)
            if damage_requested(fmt):
                damage_onnx(file, file)
            model = context.check(fmt, file, local, seconds)
            log(f"export: {fmt} in {seconds:.1f} s; {model.parity.text() if model.parity else ''}")
            models.append(model)
        reference = time_model(local, "pytorch", context.frame, settings, imgsz)
    finally:
        restore()
    report = ExportReport(
        settings=settings,
        weights=local,
        weights_sha256=weights_sha,
        imgsz=imgsz,
        reference=reference,
        models=tuple(models),
    )
    atomic_write_text(out_dir / EXPORT_FILE, report.model_dump_json(indent=2), overwrite=True)
    return report


def damage_onnx(source: Path, target: Path) -> Path:
    """An ONNX model whose largest weights are scaled by 0.6: it loads and runs, and is wrong (the parity
    tests' damaged export, and ``FOD_DAMAGE_EXPORT``)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    for init in sorted(model.graph.initializer, key=lambda t: -int(np.prod(t.dims)))[:8]:
        values = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array((values * 0.6).astype(values.dtype), init.name))
    onnx.save(model, str(target))
    return target


def export_dir(weights: Path) -> Path:
    """Where a training's export step writes: ``export/`` beside its ``weights/`` folder."""
    return Path(weights).parent.parent / "export"


def require_parity(node: str, report: ExportReport) -> None:
    """Stop a deploy whose export does not score what best.pt scores (a broken export must not reach
    the field): ``DeployError`` with both figures of every failing format."""
    from flows.engine.errors import DeployError

    if failures := report.parity_failures():
        raise DeployError(
            node,
            "the exported model does not match best.pt: "
            + "; ".join(failures)
            + " (see docs/EXPORT.md: parity)",
        )


def main(argv: list[str] | None = None) -> int:
    """Export, check and time one best.pt from the command line; print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--formats", default="onnx", help="comma-separated: onnx,engine,openvino,torchscript")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="folder for the exports (default: beside)")
    args = parser.parse_args(argv)
    settings = ExportSettings(formats=tuple(args.formats.split(",")), device=args.device)
    out = args.out or args.weights.parent / "export"
    report = export_and_check(args.weights, args.data, settings, imgsz=args.imgsz, out_dir=out)
    print(report.model_dump_json(indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
