"""Check training arguments with Ultralytics' own checker, plus the traps in ERRATA.md.

Ultralytics is imported lazily (it imports torch): the plan schema and the tree stay
importable without it, and only argument checking pays the import.
"""

from __future__ import annotations

import logging
from typing import Any

from flows.engine.plan.problems import Problem
from flows.engine.plan.resolve import node_args, trial_args
from flows.engine.plan.schema import Plan, SearchNode, TrainNode
from flows.engine.plan.ultra_defaults import ultralytics_default, ultralytics_defaults

RESERVED = {
    "data": "give the dataset with --data (or the deployment's data parameter)",
    "model": "set the node's model: key",
    "project": "the engine puts every run in its own run folder",
    "name": "the engine names runs after the plan node",
    "exist_ok": "runs are never overwritten",
    "resume": "the engine resumes interrupted phases itself",
    "mode": "the engine always trains",
    "task": "set the plan's task: key",
    "pretrained": "set the node's pretrained: key to a local weights file",
}
NO_OP_FOR_DETECT = {
    "copy_paste": "copy-paste acts only on segmentation masks; with box labels it does nothing (#3289)",
    "copy_paste_mode": "copy-paste acts only on segmentation masks",
    "auto_augment": "auto_augment applies to classification only",
    "erasing": "random erasing applies to classification only",
    "dropout": "dropout applies to classification heads only",
    "mask_ratio": "mask_ratio applies to segmentation only",
    "overlap_mask": "overlap_mask applies to segmentation only",
}
LR_KEYS = ("lr0", "momentum")


def default_cfg() -> dict[str, Any]:
    """Ultralytics' default training configuration."""
    return dict(ultralytics_defaults())


def unknown_key_message(key: str, defaults: dict[str, Any]) -> str | None:
    """Ultralytics' own message for a key it does not know (with its suggestion), or None."""
    from ultralytics.cfg import check_dict_alignment
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(logging.ERROR)  # it logs the whole CLI help before raising
    try:
        check_dict_alignment(defaults, {key: None})
    except SyntaxError as exc:
        return str(exc).strip()
    finally:
        LOGGER.setLevel(level)
    return None


def value_message(key: str, value: Any) -> str | None:
    """Ultralytics' own type/range message for one argument, or None."""
    from ultralytics.cfg import check_cfg

    try:
        check_cfg({key: value})
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def check_arg(key: str, value: Any, defaults: dict[str, Any]) -> str | None:
    """Everything wrong with one argument, or None."""
    if key == "accumulate":
        return (
            "Ultralytics has no 'accumulate' argument (it derives accumulation from nbs); "
            "declare effective_batch: N on the node instead"
        )
    if key in RESERVED:
        return f"'{key}' is set by the engine: {RESERVED[key]}"
    if key in NO_OP_FOR_DETECT:
        return f"'{key}' has no effect on detection: {NO_OP_FOR_DETECT[key]}; remove it"
    if key not in defaults:
        return unknown_key_message(key, defaults) or f"'{key}' is not a valid YOLO argument"
    return value_message(key, value)


def check_args_block(
    source: str, where: str, args: dict[str, Any], defaults: dict[str, Any]
) -> list[Problem]:
    """One problem per bad key of a block of arguments as written in the file."""
    problems = []
    for key, value in args.items():
        message = check_arg(key, value, defaults)
        if message:
            problems.append(Problem(source, f"{where}.{key}", message))
    return problems


def check_resolved(
    source: str, where: str, args: dict[str, Any], effective_batch: int | None
) -> list[Problem]:
    """Rules on the merged arguments of one run: optimizer vs lr0, batch vs effective batch."""
    problems: list[Problem] = []
    optimizer = str(args.get("optimizer", "auto"))
    set_lr = [k for k in LR_KEYS if k in args]
    if optimizer.lower() == "auto" and set_lr:
        problems.append(
            Problem(
                source,
                f"{where}.optimizer",
                f"{', '.join(set_lr)} set but optimizer is 'auto', which ignores them (ultralytics #8400); "
                "name the optimizer, e.g. optimizer: SGD",
            )
        )
    if effective_batch is not None and "nbs" in args:
        problems.append(Problem(source, f"{where}.args.nbs", "set either effective_batch or nbs, not both"))
    batch = args.get("batch", ultralytics_default("batch"))
    if effective_batch is not None and isinstance(batch, int) and batch > 0:
        if effective_batch < batch:
            problems.append(
                Problem(source, f"{where}.effective_batch", f"{effective_batch} is below the batch {batch}")
            )
        elif effective_batch % batch:
            real = batch * max(round(effective_batch / batch), 1)
            problems.append(
                Problem(
                    source,
                    f"{where}.effective_batch",
                    f"{effective_batch} is not a multiple of batch {batch}; Ultralytics will use {real}",
                    severity="warning",
                )
            )
    return problems


def check_plan_args(plan: Plan, source: str, force: dict[str, Any] | None = None) -> list[Problem]:
    """Check every argument block in the plan and every run's merged arguments."""
    from flows.engine.plan.resolve import inherited

    defaults = default_cfg()
    problems = check_args_block(source, "defaults", plan.defaults, defaults)
    problems += check_args_block(source, "profile.force", force or {}, defaults)
    for name, node in plan.nodes.items():
        if isinstance(node, TrainNode):
            problems += check_args_block(source, f"nodes.{name}.args", node.args, defaults)
            problems += check_resolved(
                source,
                f"nodes.{name}",
                node_args(plan, name, force),
                inherited(plan, name, "effective_batch"),
            )
        elif isinstance(node, SearchNode):
            problems += check_search_space(source, name, node, defaults)
            point = {k: v[0] for k, v in node.space.items()}
            problems += check_resolved(
                source,
                f"nodes.{name}",
                trial_args(plan, name, point, force),
                inherited(plan, node.base, "effective_batch"),
            )
    return problems


def check_search_space(source: str, name: str, node: SearchNode, defaults: dict[str, Any]) -> list[Problem]:
    """Each searched argument must exist, do something, and each of its levels must be valid."""
    problems = []
    for key, levels in node.space.items():
        where = f"nodes.{name}.space.{key}"
        message = check_arg(key, levels[0], defaults)
        if message:
            problems.append(Problem(source, where, message))
            continue
        for i, level in enumerate(levels[1:], start=1):
            if message := value_message(key, level):
                problems.append(Problem(source, f"{where}[{i}]", message))
        if len(set(map(repr, levels))) != len(levels):
            problems.append(Problem(source, where, "duplicate levels"))
    return problems
