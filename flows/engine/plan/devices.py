"""The GPUs a run is given: one GPU per training, a search's trials spread over all of them.

A training trains on one GPU (Ultralytics' multi-GPU DDP re-imports the trainer class in new processes,
which this engine's trainer subclass cannot survive). So ``device: 0,1,2,3`` given for the whole run
(the plan's ``defaults`` or ``--set device=0,1,2,3``) means: these are the run's cards. A phase and a
full run train on the first; a search without ``workers:`` runs its trials side by side, one per card
(as ``workers: {devices: [0, 1, 2, 3]}`` would). A single node that names several GPUs is refused
before anything trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from flows.engine.plan.problems import Problem
from flows.engine.plan.schema import Plan, SearchNode
from flows.engine.plan.search_settings import TrialWorkers

DeviceKind = Literal["cuda", "cpu", "mps", "other"]
SPELLING_NOISE = ("cuda:", "none", "(", ")", "[", "]", "'", " ")
"""What Ultralytics' ``parse_device`` deletes from a device argument before reading it."""


@dataclass(frozen=True)
class Devices:
    """A ``device`` argument, read once as Ultralytics' ``parse_device`` reads it (without torch).

    ``kind`` ``cuda``: ``gpus`` are the CUDA indices (no device, ``None`` or ``""`` is GPU 0, the one
    Ultralytics picks when there is a GPU); ``cpu``; ``mps``; ``other``: an NPU or XPU, ``-1`` (an idle
    GPU, chosen by Ultralytics) or a spelling Ultralytics refuses. ``parts``: the canonical spelling's
    comma-separated parts (``"cuda:2, 3"`` → ``("2", "3")``, ``[0, 1]`` → ``("0", "1")``).
    """

    kind: DeviceKind
    gpus: tuple[int, ...] = ()
    parts: tuple[str, ...] = ()

    @property
    def several(self) -> bool:
        """Whether it names more than one device (one training trains on one)."""
        return len(self.parts) > 1

    @property
    def index(self) -> int | None:
        """The CUDA (and NVML) index of a single GPU; None for cpu, mps, other devices or several GPUs."""
        return self.gpus[0] if len(self.gpus) == 1 else None


def parse_devices(device: Any) -> Devices:
    """Read a device argument in any spelling Ultralytics accepts: None, an int, ``"0"``, ``"0,1"``,
    ``"cuda:2"``, ``"cuda"``, ``"cpu"``, ``"mps"``, a list or tuple of indices."""
    text = str(device).lower()
    for noise in SPELLING_NOISE:
        text = text.replace(noise, "")
    parts = tuple(str(int(p)) if is_index(p) else p for p in text.split(",") if p)
    if parts in ((), ("cuda",)):
        return Devices("cuda", (0,), ("0",))
    if parts in (("cpu",), ("mps",)):
        return Devices("cpu" if parts[0] == "cpu" else "mps", (), parts)
    if all(is_index(p) for p in parts):
        return Devices("cuda", tuple(int(p) for p in parts), parts)
    return Devices("other", (), parts)


def is_index(part: str) -> bool:
    """A device index: ASCII digits only."""
    return part.isascii() and part.isdigit()


def node_device_problems(plan: Plan, source: str) -> list[Problem]:
    """A node's own ``device`` naming several GPUs: refused (one training, one GPU)."""
    return [
        Problem(
            source,
            f"nodes.{name}.args.device",
            f"{node.args['device']!r} names several GPUs, but a training uses one (multi-GPU DDP training "
            "is not supported); name the run's GPUs in defaults.device or --set device=0,1 (a search then "
            "spreads its trials over them), or give the search workers: {devices: [0, 1]}",
        )
        for name, node in plan.nodes.items()
        if isinstance(getattr(node, "args", None), dict) and parse_devices(node.args.get("device")).several
    ]


def spread_devices(plan: Plan, force: dict[str, Any]) -> tuple[Plan, dict[str, Any], list[str]]:
    """A run-wide device list → trainings on its first GPU, searches without workers over all of them.

    Returns the plan and the forced arguments to run with, and a note for each change (empty when the
    run's device names one GPU or none)."""
    forced = "device" in force
    gpus = list(parse_devices(force["device"] if forced else plan.defaults.get("device")).gpus)
    if len(gpus) < 2:
        return plan, force, []
    first = str(gpus[0])
    if forced:
        force = {**force, "device": first}
    else:
        plan = plan.model_copy(update={"defaults": {**plan.defaults, "device": first}})
    named = ",".join(map(str, gpus))
    notes = [f"device {named}: phases and full runs train on GPU {first}, one GPU each (no multi-GPU DDP)"]
    nodes = dict(plan.nodes)
    for name, node in plan.nodes.items():
        if isinstance(node, SearchNode) and node.workers is None:
            nodes[name] = node.model_copy(update={"workers": TrialWorkers(devices=gpus)})
            notes.append(
                f"device {named}: {name} runs its trials side by side, one per GPU ({len(gpus)} at a time)"
            )
        elif isinstance(node, SearchNode):
            notes.append(f"device {named}: {name} keeps its own workers")
    return plan.model_copy(update={"nodes": nodes}), force, notes
