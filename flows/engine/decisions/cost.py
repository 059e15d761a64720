"""What every branch of a plan costs before it starts: epochs and GPU-hours, best and worst case, and the
most that early gate decisions and pruning can save (what ``--dry-run`` prints).

``branch_costs(plan, force, speeds)`` prices every branch, ``describe_costs`` says it. Hours need seconds
per epoch for each node, from an earlier finished run of the same plan (its records' clocks) or from a
probe of a few iterations on the real data and device (``tasks/trainers/speed_probe.py``); without
either, only epochs. "At most saved" is a bound, not a forecast (docs/EARLY_DECISIONS.md).
Pure: no Prefect, torch or GPU.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from flows.engine.base import Frozen
from flows.engine.plan.resolve import planned_epochs
from flows.engine.plan.schema import (
    GateNode,
    MetricCheck,
    Plan,
    SearchNode,
    SpeedupCheck,
    TrainNode,
    VramCheck,
)
from flows.engine.plan.tree import paths


class NodeSpeed(Frozen):
    """Seconds one epoch of a node takes (training and validation), and where the figure comes from."""

    node: str
    seconds_per_epoch: float
    source: str


class BranchCost(Frozen):
    """One path from the start to a terminal."""

    path: tuple[str, ...]
    epochs: int
    """Epochs of the naive walk (every phase and trial to its planned end)."""
    min_epochs: int
    """The fewest epochs with early decisions and pruning at their earliest (a bound)."""
    hours: float | None = None
    min_hours: float | None = None


def seconds_per_epoch(history: Sequence[Any]) -> float | None:
    """Median wall seconds per epoch after the first, from the cumulative ``time_s`` of a run's records."""
    times = [r.time_s for r in history if getattr(r, "time_s", None) is not None]
    durations = [b - a for a, b in zip([0.0, *times], times, strict=False) if b > a]
    if not durations:
        return None
    return statistics.median(durations[1:] or durations)


def speeds_from_runs(runs: Sequence[Any], source: str) -> dict[str, NodeSpeed]:
    """Seconds per epoch by node from an earlier run's results (a search: its trials and full run)."""
    found: dict[str, list[float]] = {}
    for run in runs:
        if (value := seconds_per_epoch(run.history)) is not None:
            found.setdefault(run.node, []).append(value)
    return {
        node: NodeSpeed(node=node, seconds_per_epoch=statistics.median(values), source=source)
        for node, values in found.items()
    }


def judged_by(plan: Plan, node: str) -> tuple[str, GateNode] | None:
    """The gate on ``node`` that its ``next`` leads to, if any."""
    target = plan.nodes[node]
    gate = plan.nodes.get(target.next) if isinstance(target, TrainNode | SearchNode) else None
    return (target.next, gate) if isinstance(gate, GateNode) and gate.subject == node else None


def earliest_stop(gate: GateNode, epochs: int) -> int:
    """The first epoch the gate's early-decision policy could stop its subject at (``epochs``: never)."""
    from flows.engine.decisions.early import decidable_from, rule_for

    policy = gate.early.policy
    if policy == "off":
        return epochs
    candidates = [epochs]
    for cond in gate.conditions:
        if isinstance(cond, VramCheck):
            candidates.append(1)
        elif isinstance(cond, SpeedupCheck):
            candidates.append(gate.early.speed_after_epochs + 1)
        elif isinstance(cond, MetricCheck) and (rule := rule_for(policy, cond.metric)) is not None:
            candidates.append(decidable_from(epochs, rule))
    return min(*candidates, epochs)


def fails_gate_on(plan: Plan, path: Sequence[str], node: str) -> GateNode | None:
    """The judging gate of ``node`` when ``path`` leaves it by its fail edge, else None."""
    judging = judged_by(plan, node)
    if judging is None or judging[0] not in path:
        return None
    name, gate = judging
    after = path.index(name) + 1
    return gate if after < len(path) and path[after] == gate.on_fail else None


def cheapest_epochs(plan: Plan, path: Sequence[str], node: str, force: dict[str, Any]) -> int:
    """The fewest epochs ``node`` can train on this path (its trials and full run, for a search)."""
    target = plan.nodes[node]
    lost = fails_gate_on(plan, path, node)
    if isinstance(target, SearchNode):
        from flows.engine.plan.resolve import trial_args
        from flows.engine.plan.search_rules import fewest_epochs, trial_count

        trials = trial_count(target.design)
        full = int(trial_args(plan, node, {}, force, full=True)["epochs"])
        full_min = full - target.trial_epochs if target.full_run == "continue" else full
        if lost is not None:
            full_min = min(full_min, earliest_stop(lost, full))
        return fewest_epochs(target.pruner, target.trial_epochs, trials) + full_min
    epochs = planned_epochs(plan, node, force)[0]
    return earliest_stop(lost, epochs) if lost is not None else epochs


def hours_of(epochs: Mapping[str, int], speeds: Mapping[str, NodeSpeed]) -> float | None:
    """GPU-hours of these epochs per node, or None when a node's speed is unknown."""
    if not all(node in speeds for node in epochs):
        return None
    return sum(count * speeds[node].seconds_per_epoch for node, count in epochs.items()) / 3600


def branch_costs(plan: Plan, force: dict[str, Any], speeds: Mapping[str, NodeSpeed]) -> list[BranchCost]:
    """Epochs and hours of every branch, naive and at the most that early decisions and pruning save."""
    costs = []
    for path in paths(plan):
        trainers = [n for n in path if isinstance(plan.nodes[n], TrainNode | SearchNode)]
        naive = {n: planned_epochs(plan, n, force)[1] for n in trainers}
        cheapest = {n: cheapest_epochs(plan, path, n, force) for n in trainers}
        costs.append(
            BranchCost(
                path=tuple(path),
                epochs=sum(naive.values()),
                min_epochs=sum(cheapest.values()),
                hours=hours_of(naive, speeds),
                min_hours=hours_of(cheapest, speeds),
            )
        )
    return costs


def describe_costs(costs: Sequence[BranchCost], speeds: Mapping[str, NodeSpeed]) -> list[str]:
    """What ``--dry-run`` prints: per branch the naive epochs and hours and the least they can come to."""
    hours_known = all(c.hours is not None for c in costs)
    unit = "GPU-hours" if hours_known else "epochs"
    lines = [f"cost per branch ({unit}: naive walk → at most saved by early decisions and pruning):"]
    for c in costs:
        if hours_known:
            text = f"{duration(c.hours):>9} → {duration(c.min_hours)} ({c.epochs} → {c.min_epochs} epochs)"
        else:
            text = f"{c.epochs:6d} → {c.min_epochs} epochs"
        lines.append(f"  {text}  {' → '.join(c.path)}")
    naive = [c.hours if hours_known else c.epochs for c in costs]
    least = [c.min_hours if hours_known else c.min_epochs for c in costs]
    fmt = duration if hours_known else (lambda v: f"{v} epochs")
    lines.append(
        f"  best case {fmt(min(naive))}, worst case {fmt(max(naive))}; with early decisions and pruning at "
        f"their earliest, at least {fmt(min(least))} and at most {fmt(max(least))}"
    )
    if speeds:
        sources = sorted({s.source for s in speeds.values()})
        per = ", ".join(f"{n} {s.seconds_per_epoch:.0f} s" for n, s in speeds.items())
        lines.append(f"  seconds per epoch ({'; '.join(sources)}): {per}")
    else:
        lines.append(
            "  no throughput measured yet: GPU-hours need an earlier run of this plan in --runs-dir "
            "or --probe-speed"
        )
    return lines


def duration(hours: float | None) -> str:
    """GPU time for a person: hours from one hour on, minutes below."""
    if hours is None:
        return "n/a"
    return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.1f} min"
