"""Resolve what each training run gets: model, weights and Ultralytics arguments.

Arguments are layered in one fixed order, so that a value's origin is never a guess:
plan defaults → the ``base`` chain (root first) → the node's own args → a search
trial's point and epochs → the profile's ``force``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flows.engine.plan.schema import Plan, SearchNode, TrainNode
from flows.engine.plan.ultra_defaults import ultralytics_default


def base_chain(plan: Plan, name: str) -> list[TrainNode]:
    """The train nodes ``name`` inherits from, root first, ending with ``name`` itself (if a train node)."""
    chain: list[TrainNode] = []
    seen: set[str] = set()
    current: str | None = name
    while current is not None and current not in seen:
        seen.add(current)
        node = plan.nodes.get(current)
        if isinstance(node, TrainNode):
            chain.append(node)
            current = node.base
        elif isinstance(node, SearchNode):
            current = node.base
        else:
            break
    return list(reversed(chain))


def inherited(plan: Plan, name: str, field: str) -> Any:
    """The nearest non-None value of ``field`` along the base chain."""
    for node in reversed(base_chain(plan, name)):
        value = getattr(node, field)
        if value is not None:
            return value
    return None


def node_args(plan: Plan, name: str, force: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ultralytics arguments of a train node (or of a search's base) after every layer."""
    args: dict[str, Any] = dict(plan.defaults)
    for node in base_chain(plan, name):
        args.update(node.args)
    args.update(force or {})
    return args


def trial_args(
    plan: Plan, name: str, point: dict[str, Any], force: dict[str, Any] | None = None, *, full: bool = False
) -> dict[str, Any]:
    """Arguments of one search trial (``full=False``) or of the full run of the best point."""
    search = plan.nodes[name]
    assert isinstance(search, SearchNode)
    args = node_args(plan, search.base)
    args.update(point)
    if full or search.trial_schedule == "prefix":  # a prefix trial follows the full run's schedule
        args["epochs"] = search.full_epochs or args.get("epochs", ultralytics_default("epochs"))
    else:
        args["epochs"] = search.trial_epochs
    args.update(force or {})
    return args


def planned_epochs(plan: Plan, name: str, force: dict[str, Any] | None = None) -> tuple[int, int]:
    """(best, worst) epochs a node trains: a search runs its trials and one full run."""
    node = plan.nodes[name]
    if isinstance(node, TrainNode):
        epochs = int(node_args(plan, name, force).get("epochs", ultralytics_default("epochs")))
        return epochs, epochs
    if isinstance(node, SearchNode):
        from flows.engine.plan.search_rules import planned_search_epochs, trial_count

        full = int(trial_args(plan, name, {}, force, full=True)["epochs"])
        return planned_search_epochs(node, full_epochs=full, n_trials=trial_count(node.design))
    return 0, 0


def resolve_path(value: str | None, plan_dir: Path) -> Path | None:
    """A path from the plan, relative to the plan file's folder unless absolute."""
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else (plan_dir / path)
