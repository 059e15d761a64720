"""Checks across the whole plan, before any GPU time is spent.

The schema checks each node alone; this module checks the tree (one start, no cycles,
every target exists, every node reachable, every path ends in a terminal), the
references between nodes, and plan sanity (a deploy gate below the baseline it would
replace). Argument and file checks are in ``ultra_args.py`` and ``data.py``.
"""

from __future__ import annotations

from collections.abc import Iterable

from flows.engine.plan.problems import Problem
from flows.engine.plan.schema import (
    TERMINAL_KINDS,
    DeployNode,
    GateNode,
    MetricCheck,
    Plan,
    SearchNode,
    SpeedupCheck,
    TrainNode,
)
from flows.engine.plan.tree import always_before, edges_of, find_cycle, reachable


def check_targets(plan: Plan, source: str) -> list[Problem]:
    """Every edge, base, subject and deployed phase names a node of the right kind."""
    problems: list[Problem] = []
    names = sorted(plan.nodes)
    if plan.start not in plan.nodes:
        problems.append(
            Problem(source, "start", f"start node {plan.start!r} is not defined (nodes: {names})")
        )
    for edge in edges_of(plan):
        if edge.target not in plan.nodes:
            key = {"": "next", "pass": "on_pass", "fail": "on_fail"}[edge.label]
            problems.append(
                Problem(
                    source, f"nodes.{edge.source}.{key}", f"goes to {edge.target!r}, which is not defined"
                )
            )
    for name, node in plan.nodes.items():
        problems += check_references(plan, source, name, node)
    return problems


def expect_kind(
    plan: Plan, source: str, where: str, target: str | None, kinds: Iterable[str]
) -> list[Problem]:
    """One problem when ``target`` is not a node of one of ``kinds``."""
    kinds = tuple(kinds)
    if target is None:
        return []
    node = plan.nodes.get(target)
    if node is None:
        return [Problem(source, where, f"names {target!r}, which is not defined")]
    if node.kind not in kinds:
        return [
            Problem(
                source, where, f"names {target!r}, a {node.kind} node; it must be a {' or '.join(kinds)} node"
            )
        ]
    return []


def check_references(plan: Plan, source: str, name: str, node: object) -> list[Problem]:
    """References from one node to others."""
    where = f"nodes.{name}"
    if isinstance(node, TrainNode):
        return expect_kind(plan, source, f"{where}.base", node.base, ["train"])
    if isinstance(node, SearchNode):
        return expect_kind(plan, source, f"{where}.base", node.base, ["train"])
    if isinstance(node, DeployNode):
        return expect_kind(plan, source, f"{where}.phase", node.phase, ["train", "search"])
    if isinstance(node, GateNode):
        problems = expect_kind(plan, source, f"{where}.subject", node.subject, ["train", "search"])
        for i, cond in enumerate(node.conditions):
            if isinstance(cond, SpeedupCheck):
                problems += expect_kind(
                    plan, source, f"{where}.conditions[{i}].vs", cond.vs, ["train", "search"]
                )
        return problems
    return []


def check_shape(plan: Plan, source: str) -> list[Problem]:
    """No cycles, no unreachable nodes, no base cycles."""
    problems: list[Problem] = []
    cycle = find_cycle(plan)
    if cycle:
        problems.append(
            Problem(source, "nodes", f"cycle: {' → '.join(cycle)}; a plan must be a tree that ends")
        )
    if plan.start in plan.nodes:
        for name in sorted(set(plan.nodes) - reachable(plan)):
            problems.append(
                Problem(source, f"nodes.{name}", "unreachable from start; remove it or route a gate to it")
            )
    for name, node in plan.nodes.items():
        if isinstance(node, TrainNode) and base_loops(plan, name):
            problems.append(Problem(source, f"nodes.{name}.base", "base chain loops back to this node"))
    return problems


def base_loops(plan: Plan, name: str) -> bool:
    """True when following ``base`` from ``name`` comes back to it."""
    seen = {name}
    node = plan.nodes.get(name)
    while isinstance(node, TrainNode) and node.base is not None:
        if node.base in seen:
            return True
        seen.add(node.base)
        node = plan.nodes.get(node.base)
    return False


def check_order(plan: Plan, source: str) -> list[Problem]:
    """A gate's subject (and speed reference) and a deployed phase always ran before they are read."""
    problems: list[Problem] = []
    for name, node in plan.nodes.items():
        refs: list[tuple[str, str]] = []
        if isinstance(node, GateNode):
            refs.append((f"nodes.{name}.subject", node.subject))
            refs += [
                (f"nodes.{name}.conditions[{i}].vs", c.vs)
                for i, c in enumerate(node.conditions)
                if isinstance(c, SpeedupCheck)
            ]
        elif isinstance(node, DeployNode):
            refs.append((f"nodes.{name}.phase", node.phase))
        for where, ref in refs:
            if ref in plan.nodes and not always_before(plan, ref, name):
                problems.append(
                    Problem(
                        source,
                        where,
                        f"{ref!r} does not run on every path before {name!r}; its result would be missing",
                    )
                )
    return problems


def check_sanity(plan: Plan, source: str) -> list[Problem]:
    """Warnings for plans that are valid but probably not what the user means."""
    problems: list[Problem] = []
    baseline = plan.baseline.map50_95
    for name, node in plan.nodes.items():
        if not isinstance(node, GateNode) or plan.nodes.get(node.on_pass) is None:
            continue
        if plan.nodes[node.on_pass].kind != "deploy":
            continue
        for i, cond in enumerate(node.conditions):
            if isinstance(cond, MetricCheck) and cond.metric == "map50_95" and cond.min < baseline:
                problems.append(
                    Problem(
                        source,
                        f"nodes.{name}.conditions[{i}].min",
                        f"deploys at mAP50-95 ≥ {cond.min:.4f}, below the baseline {plan.baseline.name} "
                        f"({baseline:.4f}) it would replace",
                        severity="warning",
                    )
                )
    return problems


def check_designs(plan: Plan, source: str) -> list[Problem]:
    """Each search's design must be able to choose its trials (a grid within max_trials, a fitting array),
    and its study settings must fit together (prefix trials to continue, pruner rungs before trial_epochs)."""
    from flows.engine.plan.resolve import trial_args
    from flows.engine.plan.sampling import SamplingError, sample_trials
    from flows.engine.plan.search_rules import search_problems, trial_count
    from flows.engine.plan.search_settings import SAMPLER_METHODS

    problems = []
    for name, node in plan.nodes.items():
        if not isinstance(node, SearchNode):
            continue
        d = node.design
        points: list = []
        if d.method not in SAMPLER_METHODS:
            try:
                points = sample_trials(node.space, d.method, d.max_trials, seed=d.seed, n_trials=d.n_trials)
            except SamplingError as exc:
                problems.append(Problem(source, f"nodes.{name}.design", str(exc)))
                continue
        full_epochs = int(trial_args(plan, name, {}, full=True)["epochs"])
        found = search_problems(node, full_epochs=full_epochs, n_trials=trial_count(d, len(points) or None))
        problems += [
            Problem(source, f"nodes.{name}.{p.where}", p.message, severity=p.severity) for p in found
        ]
    return problems


def check_terminals(plan: Plan, source: str) -> list[Problem]:
    """At least one terminal exists (with no cycles and valid targets, every path then ends in one)."""
    if any(node.kind in TERMINAL_KINDS for node in plan.nodes.values()):
        return []
    return [Problem(source, "nodes", "no terminal node: add a deploy or keep_baseline node")]


def check_plan(plan: Plan, source: str) -> list[Problem]:
    """Every structural problem and sanity warning of a schema-valid plan."""
    problems = check_targets(plan, source) + check_terminals(plan, source)
    problems += check_shape(plan, source) + check_designs(plan, source)
    if not problems:
        problems += check_order(plan, source)
    return problems + check_sanity(plan, source)
