"""Starting weights the project makes itself: yolo11n-p2 trained on a large seeded synthetic FOD set.

``python -m flows.demo_weights`` trains the demo's model once, on a larger run of ``flows.demo_data``
with another seed (the demo's validation images are never trained on), and writes
``fod_models/weights/demo-yolo11n-p2.pt`` (EMA weights, fp16, no optimizer) with its record
``demo-yolo11n-p2.json`` (recipe, versions, sha256, transfer counts, validation figures);
``--check`` rebuilds it in a temporary folder and compares with the committed record. Why, what it
costs and how its bytes are made reproducible: docs/MODELS.md. torch and Ultralytics are imported
inside functions.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import io
import logging
import os
import platform
import re
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from flows.demo_data import CLASS_NAMES, generate_demo_dataset
from flows.engine.fsutil import atomic_write_bytes, atomic_write_text
from tasks.trainers.offline import offline_environment

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "fod_models" / "weights"
CHECKPOINT_NAME = "demo-yolo11n-p2.pt"
RECORD_NAME = "demo-yolo11n-p2.json"

MODEL = "yolo11n-p2.yaml"
LITE_MODEL = "yolo11n-p2-lite.yaml"
"""The two demo models the weights are meant for (fod_models/yolo11-p2*.yaml at scale n)."""

CHECKPOINT_DATE = "1980-01-01T00:00:00+00:00"
"""Ultralytics writes the wall-clock time into every checkpoint; a fixed one keeps the bytes
reproducible (the same date torch's zip writer gives every member). The real build time is in the
record."""

FIGURE_TOLERANCE = 0.02
"""How far (absolute, per figure) a rebuild's P, R, mAP50 and mAP50-95 may differ from the record.
The same software on the same CPU type reproduces them exactly; another CPU or a thread count
that changes floating-point summation order drifts by a few thousandths."""

_TRANSFER_LINE = re.compile(r"Transferred (\d+)/(\d+) items")


class Strict(BaseModel):
    """Everything here is written to or read from the committed record: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class GeneratorArgs(Strict):
    """Keyword arguments of ``flows.demo_data.generate_demo_dataset``."""

    n_train: int = Field(ge=1)
    n_val: int = Field(ge=1)
    image_size: int = Field(ge=32)
    seed: int


class Recipe(Strict):
    """Everything that decides the checkpoint's bytes, apart from the software versions."""

    model: str
    classes: list[str]
    data: GeneratorArgs
    train: dict[str, Any]
    demo_data: GeneratorArgs
    val: dict[str, Any]


class Figures(Strict):
    """Ultralytics' box metrics of one validation (fractions)."""

    precision: float
    recall: float
    map50: float
    map50_95: float
    instances: int


class Transfer(Strict):
    """What Ultralytics' ``DetectionModel.load`` reports: tensors transferred of the target's total."""

    transferred: int
    total: int


class Record(Strict):
    """The committed description of a checkpoint: how it was made and what it scores."""

    checkpoint: str
    sha256: str
    bytes: int
    byte_identical: bool
    recipe: Recipe
    versions: dict[str, str]
    machine: dict[str, Any]
    train_wall_s: float
    train_cpu_s: float
    epochs_done: int
    best_epoch: int | None
    figure_tolerance: float
    figures: dict[str, Figures]
    transfers: dict[str, Transfer]


# --------------------------------------------------------------------------- the recipe


def demo_generator_args() -> GeneratorArgs:
    """The dataset ``python -m flows.optimize --demo`` generates: ``generate_demo_dataset``'s defaults."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(generate_demo_dataset).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    return GeneratorArgs(**defaults)


def recipe() -> Recipe:
    """The recipe the committed checkpoint was built with (tests compare the record with this).

    Why these values: imgsz 160 is the demo's; the images are drawn at the demo's 320 px, so objects
    shrink to 4-32 px at 160 exactly as in the demo. 800 images x 40 epochs (2,000 SGD steps of 16)
    take the model well past the point where the synthetic classes separate (a 300-image pilot sat at
    0.000 for 100 steps, then reached mAP50-95 0.47 after 380); seed 1 keeps the demo's seed-0 images
    out of training. Mosaic is switched off for the last 10 epochs, as Ultralytics recommends, so that
    the model ends on whole, unmosaicked images like the demo's.
    """
    demo = demo_generator_args()
    return Recipe(
        model=MODEL,
        classes=list(CLASS_NAMES),
        data=GeneratorArgs(n_train=800, n_val=100, image_size=demo.image_size, seed=1),
        train={
            "imgsz": 160,
            "epochs": 40,
            "batch": 16,
            "optimizer": "SGD",
            "lr0": 0.01,
            "lrf": 0.01,
            "momentum": 0.937,
            "weight_decay": 0.0005,
            "warmup_epochs": 3.0,
            "cos_lr": False,
            "close_mosaic": 10,
            "patience": 1000,
            "seed": 1,
            "deterministic": True,
            "workers": 0,
            "device": "cpu",
            "amp": False,
            "cache": False,
            "plots": False,
            "val": True,
        },
        demo_data=demo,
        val={"imgsz": 160, "batch": 16, "conf": 0.001, "iou": 0.7, "device": "cpu", "workers": 0},
    )


# --------------------------------------------------------------------------- building


def generate(root: Path, args: GeneratorArgs) -> Path:
    """Generate one dataset with the recipe's generator arguments; return its data.yaml."""
    return generate_demo_dataset(root, **args.model_dump())


def train_demo_model(recipe: Recipe, data_yaml: Path, work: Path) -> Path:
    """Train the recipe's model from scratch with Ultralytics; return the run folder."""
    from ultralytics import YOLO

    from fod_models import resolve_model

    with offline_environment():
        model = YOLO(str(resolve_model(recipe.model)))
        model.train(data=str(data_yaml), project=str(work), name="train", exist_ok=True, **recipe.train)
    return work / "train"


def sanitized_train_args(recipe: Recipe) -> dict[str, Any]:
    """The training arguments stored in the checkpoint: Ultralytics' defaults, the recipe, no paths.

    Ultralytics stores every argument, including the (temporary) data, project and save_dir paths;
    those say nothing about the weights and would change the bytes from one build folder to the next.
    """
    from ultralytics.cfg import DEFAULT_CFG_DICT

    args = {**DEFAULT_CFG_DICT, **recipe.train, "model": recipe.model, "data": "flows.demo_data"}
    args.update(project=None, name=None, save_dir=None)
    return args


def checkpoint_bytes(best_pt: Path, recipe: Recipe) -> bytes:
    """A deterministic, optimizer-free fp16 checkpoint built from Ultralytics' best.pt.

    Keeps what Ultralytics needs to load and fine-tune it (``model`` = the EMA, its class names,
    ``train_args``, ``train_metrics``) and drops what differs between identical builds: the date
    (fixed), the git info, the per-epoch wall-clock times and the machine's paths.
    """
    import torch
    from ultralytics import __version__
    from ultralytics.utils.patches import torch_load

    raw = torch_load(str(best_pt), map_location="cpu", weights_only=False)
    model = raw.get("ema") or raw["model"]
    model = model.float().half()
    for p in model.parameters():
        p.requires_grad = False
    args = sanitized_train_args(recipe)
    model.args = args
    if hasattr(model, "criterion"):
        model.criterion = None
    model.yaml = {**model.yaml, "yaml_file": recipe.model}  # not this checkout's absolute path
    for attr in ("pt_path",):
        if hasattr(model, attr):
            delattr(model, attr)
    ckpt = {
        "date": CHECKPOINT_DATE,
        "version": __version__,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "epoch": -1,
        "best_fitness": None,
        "model": model,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "scaler": None,
        "train_args": args,
        "train_metrics": {k: float(v) for k, v in (raw.get("train_metrics") or {}).items()},
    }
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    return buffer.getvalue()


def validate(checkpoint: Path, data_yaml: Path, val_args: dict[str, Any]) -> Figures:
    """Validate the checkpoint on a dataset's val split with Ultralytics' own validator."""
    from ultralytics import YOLO

    with offline_environment():
        metrics = YOLO(str(checkpoint)).val(data=str(data_yaml), plots=False, verbose=False, **val_args)
    box = metrics.box
    return Figures(
        precision=round(float(box.mp), 6),
        recall=round(float(box.mr), 6),
        map50=round(float(box.map50), 6),
        map50_95=round(float(box.map), 6),
        instances=int(sum(metrics.nt_per_class)),
    )


class _TransferLog(logging.Handler):
    """Catches Ultralytics' "Transferred N/M items from pretrained weights" line."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.found: tuple[int, int] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        match = _TRANSFER_LINE.search(record.getMessage())
        if match:
            self.found = (int(match[1]), int(match[2]))


def transfer_counts(checkpoint: Path, model: str, nc: int = len(CLASS_NAMES)) -> Transfer:
    """Load the checkpoint into a fresh ``model`` with ``nc`` classes, as a trainer does, and count.

    This is what ``DetectionTrainer.get_model`` does with pretrained weights: build the model for the
    dataset's class count, then ``DetectionModel.load`` the checkpoint's layers whose names and
    shapes match.
    """
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint
    from ultralytics.utils import LOGGER

    from fod_models import resolve_model

    weights, _ = load_checkpoint(str(checkpoint))
    target = DetectionModel(str(resolve_model(model)), nc=nc, verbose=False)
    handler = _TransferLog()
    LOGGER.addHandler(handler)
    try:
        target.load(weights, verbose=True)
    finally:
        LOGGER.removeHandler(handler)
    if handler.found is None:
        raise RuntimeError("Ultralytics did not report how many tensors it transferred")
    transferred, total = handler.found
    return Transfer(transferred=transferred, total=total)


def sha256_of(path: Path) -> str:
    """The file's sha256, hex."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def software_versions() -> dict[str, str]:
    """Versions that decide the bytes and figures."""
    import numpy
    import PIL
    import torch
    import ultralytics

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ultralytics": ultralytics.__version__,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
    }


def machine() -> dict[str, Any]:
    """Where it was built: CPU threads matter for floating-point summation order."""
    import torch

    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def epochs_of(run_dir: Path) -> tuple[int, int | None]:
    """(epochs done, the epoch best.pt comes from) from Ultralytics' results.csv of the run."""
    from flows.engine.records.results_csv import best_epoch, read_results_csv

    records = read_results_csv(run_dir / "results.csv")
    best = best_epoch(records)
    return len(records), best.epoch if best is not None else None


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def build(recipe: Recipe, out_dir: Path, work: Path) -> Record:
    """Generate the data, train, write the deterministic checkpoint and its record into ``out_dir``.

    Refuses to overwrite a checkpoint or record that is already there.
    """
    out_dir = Path(out_dir)
    for name in (CHECKPOINT_NAME, RECORD_NAME):
        if (out_dir / name).exists():
            raise FileExistsError(f"{out_dir / name} already exists; remove it to rebuild")
    data_yaml = generate(work / "data", recipe.data)
    demo_yaml = generate(work / "demo-data", recipe.demo_data)
    wall, cpu = time.time(), _cpu_seconds()
    run_dir = train_demo_model(recipe, data_yaml, work)
    wall, cpu = time.time() - wall, _cpu_seconds() - cpu
    epochs_done, best = epochs_of(run_dir)
    checkpoint = atomic_write_bytes(
        out_dir / CHECKPOINT_NAME, checkpoint_bytes(run_dir / "weights" / "best.pt", recipe)
    )
    record = Record(
        checkpoint=CHECKPOINT_NAME,
        sha256=sha256_of(checkpoint),
        bytes=checkpoint.stat().st_size,
        byte_identical=True,
        recipe=recipe,
        versions=software_versions(),
        machine=machine(),
        train_wall_s=round(wall, 1),
        train_cpu_s=round(cpu, 1),
        epochs_done=epochs_done,
        best_epoch=best,
        figure_tolerance=FIGURE_TOLERANCE,
        figures={
            "own_val": validate(checkpoint, data_yaml, recipe.val),
            "demo_val": validate(checkpoint, demo_yaml, recipe.val),
        },
        transfers={m: transfer_counts(checkpoint, m) for m in (MODEL, LITE_MODEL)},
    )
    atomic_write_text(out_dir / RECORD_NAME, record.model_dump_json(indent=2) + "\n")
    return record


def read_record(path: Path = WEIGHTS_DIR / RECORD_NAME) -> Record:
    """The committed record, validated."""
    return Record.model_validate_json(Path(path).read_text(encoding="utf-8"))


def compare(record: Record, rebuilt: Record) -> list[str]:
    """Differences between a committed record and a rebuild that matter: recipe, bytes, figures."""
    problems = []
    if rebuilt.recipe != record.recipe:
        problems.append("the recipe differs from the committed one")
    if rebuilt.sha256 != record.sha256:
        problems.append(f"sha256 {rebuilt.sha256} differs from the committed {record.sha256}")
    for split, figures in record.figures.items():
        again = rebuilt.figures.get(split)
        for name in ("precision", "recall", "map50", "map50_95"):
            a, b = getattr(figures, name), getattr(again, name) if again else None
            if b is None or abs(a - b) > record.figure_tolerance:
                problems.append(f"{split} {name}: {b} vs committed {a} (tolerance {record.figure_tolerance})")
    return problems


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """Build the weights into fod_models/weights, or (--check) rebuild them and compare."""
    parser = argparse.ArgumentParser(prog="python -m flows.demo_weights", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="where the .pt and .json go")
    parser.add_argument("--work", type=Path, help="folder for the generated data and the training run")
    parser.add_argument(
        "--check", action="store_true", help="rebuild in a temporary folder and compare with the record"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="demo-weights-") as tmp:
        work = args.work or Path(tmp)
        out = Path(tmp) / "out" if args.check else args.out
        record = build(recipe(), out, work)
        print(record.model_dump_json(indent=2))
        if not args.check:
            return 0
        problems = compare(read_record(args.out / RECORD_NAME), record)
    for line in problems:
        print(f"differs: {line}", file=sys.stderr)
    print("reproduced" if not problems else "NOT reproduced")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
