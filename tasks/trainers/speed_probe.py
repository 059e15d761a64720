"""A throughput probe for ``--dry-run --probe-speed``: a few real training iterations of each phase.

For each node that trains, one real Ultralytics training in a temporary folder with the phase's model,
arguments, data and device, cut to one epoch over just enough training images for ``iterations``
batches (Ultralytics' ``fraction``). Its training images/s gives the training part of a full epoch, and
the probe's own validation pass (Ultralytics validates the whole validation set after its last epoch)
gives the validation part: seconds per full epoch = train images / images/s + validation seconds.
Nodes with the same model and arguments are probed once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from flows.engine.decisions.cost import NodeSpeed
from flows.engine.plan.ultra_defaults import ultralytics_default
from flows.engine.records.results import PhaseResult, TrainSpec

PROBE_ITERATIONS = 6
"""Training batches per probe: past the first (slow) ones, few enough to take seconds on a GPU."""


def probe_args(spec: TrainSpec, train_images: int, iterations: int) -> dict[str, Any]:
    """The phase's arguments cut to one epoch over ``iterations`` batches, nothing drawn or kept."""
    default = ultralytics_default("batch")
    batch = spec.args.get("batch", default)
    batch = batch if isinstance(batch, int) and batch > 0 else default
    fraction = min(1.0, iterations * batch / max(train_images, 1))
    return {**spec.args, "epochs": 1, "fraction": fraction, "plots": False, "warmup_epochs": 0}


def seconds_per_full_epoch(result: PhaseResult, probe_images: int, train_images: int) -> float | None:
    """Training time of a full epoch at the probe's images/s, plus the probe's validation time."""
    if not result.images_per_s or not result.history or result.history[-1].time_s is None:
        return None
    train_s = probe_images / result.images_per_s
    validation_s = max(result.history[-1].time_s - train_s, 0.0)
    return train_images / result.images_per_s + validation_s


def probe_speeds(
    specs: dict[str, TrainSpec], train_images: int, log: Callable[[str], None] = print
) -> dict[str, NodeSpeed]:
    """Seconds per epoch of each node's training, measured on its device with its data.

    The specs' run folders are a scratch run (with the dataset's resolved copy, which they read); each
    probe trains in a folder beside them.
    """
    from tasks.trainers.ultra import UltralyticsTrainer

    measured: dict[str, float | None] = {}
    speeds: dict[str, NodeSpeed] = {}
    for node, spec in specs.items():
        key = repr((str(spec.model), sorted(spec.args.items())))
        if key not in measured:
            args = probe_args(spec, train_images, PROBE_ITERATIONS)
            run_dir = Path(spec.run_dir).parent / f"probe-{len(measured)}"
            probe = spec.model_copy(update={"args": args, "run_dir": run_dir, "early": None})
            device = args.get("device")
            log(f"speed probe: {node}: {PROBE_ITERATIONS} batches of {spec.model.name}, device {device}")
            result = UltralyticsTrainer(log=lambda _: None).train(probe, lambda _: None)
            measured[key] = seconds_per_full_epoch(
                result, round(args["fraction"] * train_images), train_images
            )
        if (value := measured[key]) is not None:
            speeds[node] = NodeSpeed(node=node, seconds_per_epoch=value, source="speed probe")
    return speeds
