"""The rules and descriptions of a whole search node: what its settings (``search_settings.py``) say
together with its ``trial_epochs``, ``full_epochs`` and design, which those models do not hold.

``search_problems`` returns the cross-field problems of a node (``SettingProblem``, ``where`` relative
to the node); ``planned_search_epochs`` gives the dry run's best and worst case; ``describe_study`` and
``describe_sampler_design`` its lines.

Pure: no Optuna, Prefect or torch is imported.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from flows.engine.plan.schema import Design, SearchNode
from flows.engine.plan.search_settings import (
    LEVEL_SUFFIX,
    SAMPLER_METHODS,
    URL,
    FullRun,
    MedianSettings,
    PrunerSettings,
    SamplerSettings,
    SettingProblem,
    StudySettings,
    TrialSchedule,
    is_numeric,
)


# --------------------------------------------------------------------------- cross-field rules
class DesignSize(Protocol):
    """What decides how many trials a search trains: a plan's ``Design`` or a study's ``StudyConfig``."""

    method: str
    max_trials: int
    n_trials: int | None


def trial_count(design: DesignSize, points: int | None = None) -> int:
    """Trials the search trains: a fixed design's point count (``points``, when its points were drawn),
    else ``n_trials`` or ``max_trials``; the one count of the dry run, the validation and the study."""
    if design.method in SAMPLER_METHODS or points is None:
        return design.n_trials or design.max_trials
    return points


def search_problems(node: SearchNode, *, full_epochs: int, n_trials: int) -> list[SettingProblem]:
    """Every cross-field problem of a search node's study settings (``full_epochs`` resolved: the node's
    or its base's epochs; ``n_trials``: how many trials it trains, see :func:`trial_count`)."""
    problems = schedule_problems(node.trial_schedule, node.full_run, node.trial_epochs, full_epochs)
    problems += node.pruner.problems(node.trial_epochs, n_trials)
    problems += sampler_problems(node.design, node.study, n_trials)
    problems += storage_problems(node.study)
    problems += space_problems(node.space)
    return problems


def schedule_problems(
    schedule: TrialSchedule, full_run: FullRun, trial_epochs: int, full_epochs: int
) -> list[SettingProblem]:
    """``continue`` needs prefix trials; prefix trials need a full run longer than a trial."""
    problems = []
    if full_run == "continue" and schedule != "prefix":
        problems.append(
            SettingProblem(
                "full_run",
                "continue needs trial_schedule: prefix: a short trial's checkpoint ends its own "
                f"{trial_epochs}-epoch schedule (learning rate decayed, mosaic closed), so going on from it "
                "is not the full run; set trial_schedule: prefix or full_run: restart",
            )
        )
    if schedule == "prefix" and full_epochs <= trial_epochs:
        problems.append(
            SettingProblem(
                "trial_schedule",
                f"prefix trials stop at trial_epochs {trial_epochs} of the full run's {full_epochs} epochs: "
                "the full run must be longer than a trial",
            )
        )
    return problems


def sampler_problems(design: Design, study: StudySettings, n_trials: int) -> list[SettingProblem]:
    """Sampler settings only act on a sampler design; a sampler needs its optional dependencies."""
    method = design.method
    if method not in SAMPLER_METHODS:
        if study.sampler.model_fields_set:
            return [
                SettingProblem(
                    "study.sampler",
                    f"sampler settings act on design methods {', '.join(SAMPLER_METHODS)} only; "
                    f"design {method!r} enqueues its fixed points; remove study.sampler",
                )
            ]
        return []
    problems = [
        SettingProblem("design.method", f"{method} needs the {name} package (pip install {name})")
        for name in missing_packages(method)
    ]
    if method in ("tpe", "gp") and study.sampler.startup_trials >= n_trials:
        problems.append(
            SettingProblem(
                "study.sampler.startup_trials",
                f"{study.sampler.startup_trials} random startup trials of {n_trials}: the {method} model "
                "never proposes a point; lower startup_trials",
                severity="warning",
            )
        )
    return problems


def missing_packages(method: str) -> list[str]:
    """Optional packages a sampler needs that are not installed (QMC: scipy; GP: scipy and torch)."""
    needed = {"qmc": ["scipy"], "gp": ["scipy", "torch"]}.get(method, [])
    return [name for name in needed if importlib.util.find_spec(name) is None]


def storage_problems(study: StudySettings) -> list[SettingProblem]:
    """A password written into the plan travels into the journal, task specs and reports."""
    match = URL.match(study.storage or "")
    if match and re.match(r"^[^@/]*:[^@/]*@", match.group(2)):
        return [
            SettingProblem(
                "study.storage",
                "the URL holds a password; it would be copied into the run journal and reports: "
                "write storage: env:NAME and set NAME in the workers' environment",
                severity="warning",
            )
        ]
    return []


OPTUNA_CHOICE_TYPES = (type(None), bool, int, float, str)


def space_problems(space: Mapping[str, Sequence[Any]]) -> list[SettingProblem]:
    """Levels Optuna can store (numbers, strings, booleans, null) and parameter names that do not clash."""
    problems = []
    for name, levels in space.items():
        if not all(isinstance(level, OPTUNA_CHOICE_TYPES) for level in levels):
            problems.append(
                SettingProblem(
                    f"space.{name}",
                    "levels must be numbers, strings, booleans or null to be stored in the study",
                )
            )
        if is_numeric(levels) and f"{name}{LEVEL_SUFFIX}" in space:
            problems.append(
                SettingProblem(
                    f"space.{name}{LEVEL_SUFFIX}",
                    f"clashes with the study parameter of {name!r} (its level index); rename it",
                )
            )
    return problems


# --------------------------------------------------------------------------- dry run and report
def fewest_epochs(
    pruner: PrunerSettings,
    trial_epochs: int,
    n_trials: int,
) -> int:
    """Trial epochs when every trial the pruner may stop stops at its first chance (the best case).

    Successive halving and Hyperband always let the first trial finish (nothing to compare it with);
    the median pruner lets its startup trials finish.
    """
    rungs = pruner.rungs(trial_epochs)
    if not rungs or n_trials <= 1:
        return n_trials * trial_epochs
    if isinstance(pruner, MedianSettings):
        finished = min(max(pruner.n_startup_trials, 1), n_trials)
        return finished * trial_epochs + (n_trials - finished) * rungs[0]
    return trial_epochs + (n_trials - 1) * rungs[0]


def planned_search_epochs(node: SearchNode, *, full_epochs: int, n_trials: int) -> tuple[int, int]:
    """(best, worst) epochs of a search: trials (pruned at the first rung, or all to trial_epochs) plus the
    full run, less the winner's trial epochs when it continues from its checkpoint."""
    full = full_epochs - node.trial_epochs if node.full_run == "continue" else full_epochs
    worst = n_trials * node.trial_epochs + full
    return fewest_epochs(node.pruner, node.trial_epochs, n_trials) + full, worst


def describe_study(node: SearchNode, *, full_epochs: int) -> str:
    """One line for the dry run and the report: trial schedule, pruner and its rungs, full run, storage."""
    schedule = (
        f"prefix trials: the first {node.trial_epochs} epochs of the {full_epochs}-epoch schedule"
        if node.trial_schedule == "prefix"
        else f"short trials of {node.trial_epochs} epochs"
    )
    rungs = node.pruner.rungs(node.trial_epochs)
    if node.pruner.kind == "none":
        pruner = "no pruning"
    else:
        at = ", ".join(str(e) for e in rungs[:6]) + (", …" if len(rungs) > 6 else "")
        pruner = f"{node.pruner.kind.replace('_', ' ')} pruning (judged at epochs {at}; {node.pruner.value})"
    full = (
        f"the best continues to {full_epochs} epochs"
        if node.full_run == "continue"
        else f"the best restarts for {full_epochs} epochs"
    )
    storage = node.study.storage or "sqlite"
    store = storage if storage in ("sqlite", "journal") or storage.startswith("env:") else "a database URL"
    return f"{schedule}; {pruner}; {full}; study in {store}"


def describe_sampler_design(design: Design, sampler: SamplerSettings) -> str:
    """The design line of a sampler search (``sampling.describe_design`` covers the fixed designs)."""
    n = trial_count(design)
    names = {"tpe": "TPE", "qmc": f"quasi-Monte Carlo ({sampler.qmc_type})", "gp": "Gaussian-process"}
    text = f"Optuna {names.get(design.method, design.method)} sampler, {n} trials, seed {design.seed}"
    if design.method in ("tpe", "gp"):
        text += f"; the first {min(sampler.startup_trials, n)} at random"
    return text
