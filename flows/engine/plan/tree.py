"""The plan as a graph: edges, reachability, cycles, paths and planned epochs.

Pure functions over a validated ``Plan``, and the tree as a picture needs it (``TreeView``); used by
validation, the dry run, the walk and the report's diagram.
"""

from __future__ import annotations

from collections.abc import Iterator

from flows.engine.base import Frozen
from flows.engine.plan.schema import (
    DeployNode,
    GateNode,
    KeepBaselineNode,
    Plan,
    SearchNode,
    TrainNode,
)


class TreeEdge(Frozen):
    """An edge of the plan's tree, for drawing it."""

    source: str
    target: str
    label: str = ""


class TreeView(Frozen):
    """The tree as a picture needs it: node kinds, labels and edges."""

    start: str
    kinds: dict[str, str]
    labels: dict[str, str]
    edges: tuple[TreeEdge, ...]


def edges_of(plan: Plan) -> list[TreeEdge]:
    """Every edge of the tree, labelled by the outcome that takes it."""
    edges: list[TreeEdge] = []
    for name, node in plan.nodes.items():
        if isinstance(node, TrainNode | SearchNode):
            edges.append(TreeEdge(source=name, target=node.next))
        elif isinstance(node, GateNode):
            edges.append(TreeEdge(source=name, target=node.on_pass, label="pass"))
            edges.append(TreeEdge(source=name, target=node.on_fail, label="fail"))
    return edges


def successors(plan: Plan, name: str) -> list[str]:
    """Names a node can lead to, in declaration order."""
    return [e.target for e in edges_of(plan) if e.source == name]


def reachable(plan: Plan) -> set[str]:
    """Nodes reachable from the start (following only edges that exist)."""
    seen: set[str] = set()
    stack = [plan.start] if plan.start in plan.nodes else []
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(t for t in successors(plan, name) if t in plan.nodes)
    return seen


def find_cycle(plan: Plan) -> list[str] | None:
    """Return one cycle as a list of node names, or None when the graph is acyclic."""
    state: dict[str, int] = {}
    trail: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        trail.append(name)
        for target in successors(plan, name):
            if target not in plan.nodes:
                continue
            if state.get(target) == 1:
                return [*trail[trail.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        trail.pop()
        state[name] = 2
        return None

    for name in plan.nodes:
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def paths(plan: Plan) -> Iterator[tuple[str, ...]]:
    """Every path from the start to a terminal (the plan must be acyclic and complete)."""

    def walk(name: str, trail: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        trail = (*trail, name)
        nexts = successors(plan, name)
        if not nexts:
            yield trail
        for target in dict.fromkeys(nexts):
            yield from walk(target, trail)

    yield from walk(plan.start, ())


def always_before(plan: Plan, earlier: str, later: str) -> bool:
    """True when every path from the start to ``later`` passes ``earlier`` first."""
    found = False
    for path in paths(plan):
        if later in path:
            found = True
            if earlier not in path[: path.index(later)]:
                return False
    return found


def tree_view(plan: Plan) -> TreeView:
    """The tree as drawing code needs it."""
    return TreeView(
        start=plan.start,
        kinds={name: node.kind for name, node in plan.nodes.items()},
        labels={name: describe_node(plan, name) for name in plan.nodes},
        edges=tuple(edges_of(plan)),
    )


def describe_node(plan: Plan, name: str) -> str:
    """A short human label for a node (used in diagrams and the dry run)."""
    node = plan.nodes[name]
    if isinstance(node, TrainNode):
        return f"train {name}"
    if isinstance(node, SearchNode):
        return f"search {name}: {node.design.method}, ≤{node.design.max_trials} trials"
    if isinstance(node, GateNode):
        return f"gate on {node.subject}"
    if isinstance(node, DeployNode):
        return f"deploy {node.phase}"
    if isinstance(node, KeepBaselineNode):
        return f"keep baseline {plan.baseline.name}"
    return name
