"""The GPUs a run is given: one GPU per training, a search's trials spread over all of them.

A training trains on one GPU (Ultralytics' multi-GPU DDP re-imports the trainer class in new processes,
which this engine's trainer subclass cannot survive). So ``device: 0,1,2,3`` given for the whole run
(the plan's ``defaults`` or ``--set device=0,1,2,3``) means: these are the run's cards. A phase and a
full run train on the first; a search without ``workers:`` runs its trials side by side, one per card
(as ``workers: {devices: [0, 1, 2, 3]}`` would). A single node that names several GPUs is refused
before anything trains.
"""

from __future__ import annotations

from typing import Any

from flows.engine.plan.problems import Problem
from flows.engine.plan.schema import Plan, SearchNode
from flows.engine.plan.search_settings import TrialWorkers


def gpu_list(device: Any) -> list[int] | None:
    """The indices of a device naming two or more GPUs (``"0,1"``, ``[0, 1]``, ``"cuda:0,1"``), or None."""
    if isinstance(device, list | tuple):
        parts = [str(p) for p in device]
    elif isinstance(device, str) and "," in device:
        parts = device.lower().removeprefix("cuda:").split(",")
    else:
        return None
    parts = [p.strip() for p in parts if p.strip()]
    if len(parts) < 2 or not all(p.isdigit() for p in parts):
        return None
    return [int(p) for p in parts]


def several_gpus(device: Any) -> bool:
    """Whether a device argument names more than one GPU in any spelling (the child refuses those)."""
    return gpu_list(device) is not None or (isinstance(device, str) and "," in device)


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
        if isinstance(getattr(node, "args", None), dict) and several_gpus(node.args.get("device"))
    ]


def spread_devices(plan: Plan, force: dict[str, Any]) -> tuple[Plan, dict[str, Any], list[str]]:
    """A run-wide device list → trainings on its first GPU, searches without workers over all of them.

    Returns the plan and the forced arguments to run with, and a note for each change (empty when the
    run's device names one GPU or none)."""
    forced = "device" in force
    gpus = gpu_list(force["device"] if forced else plan.defaults.get("device"))
    if gpus is None:
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
