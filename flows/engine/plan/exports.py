"""Which trainings are exported and timed, and with which settings: the plan's export rules.

A deploy node's ``export`` says how the winner is exported; a gate's latency condition makes its subject
exported and timed right after its training (before the gate reads it), the way the deploy the gate
passes to would export it. Pure functions over a validated ``Plan``; the checks that need Ultralytics'
own argument checker import it lazily.
"""

from __future__ import annotations

from flows.engine.plan.export_settings import ExportSettings
from flows.engine.plan.problems import Problem
from flows.engine.plan.schema import DeployNode, GateNode, LatencyCheck, Plan


def latency_conditions(plan: Plan, node: str) -> list[tuple[str, GateNode, LatencyCheck]]:
    """(gate name, gate, condition) of every latency condition on ``node``'s result."""
    return [
        (name, gate, cond)
        for name, gate in plan.nodes.items()
        if isinstance(gate, GateNode) and gate.subject == node
        for cond in gate.conditions
        if isinstance(cond, LatencyCheck)
    ]


def timing_settings(plan: Plan, gate: GateNode) -> ExportSettings:
    """How a gate's latency conditions export and time: as the deploy node it passes to, else defaults."""
    target = plan.nodes.get(gate.on_pass)
    if isinstance(target, DeployNode) and target.export is not None:
        return target.export
    return ExportSettings()


def gate_export(plan: Plan, node: str) -> ExportSettings | None:
    """The export a training of ``node`` needs before its gates read it (None: none of them times it).

    The formats are the ones the latency conditions name (``pytorch`` needs no export: best.pt is timed
    in every case, as the reference)."""
    found = latency_conditions(plan, node)
    if not found:
        return None
    formats = tuple(dict.fromkeys(c.format for _, _, c in found if c.format != "pytorch"))
    return timing_settings(plan, found[0][1]).with_formats(formats)


def deploy_export(plan: Plan, deploy: str) -> ExportSettings | None:
    """The export of a deploy node (None: it copies best.pt only)."""
    node = plan.nodes.get(deploy)
    return node.export if isinstance(node, DeployNode) else None


def export_lines(plan: Plan) -> list[str]:
    """What the dry run says about exports: which trainings are exported and timed, and the deploys'."""
    lines: list[str] = []
    for name in plan.train_nodes():
        if (settings := gate_export(plan, name)) is not None:
            gates = sorted({gate for gate, _, _ in latency_conditions(plan, name)})
            lines.append(
                f"{name}: exported ({describe(settings)}) and timed after training, for {', '.join(gates)}"
            )
    for name, node in plan.nodes.items():
        if isinstance(node, DeployNode) and node.export is not None:
            how = describe(node.export)
            lines.append(f"{name}: {node.phase} exported, checked against best.pt and timed ({how})")
    return lines


def describe(settings: ExportSettings) -> str:
    """``onnx, imgsz of the phase, batch 1, on cpu, parity ±0.005``."""
    formats = ", ".join(settings.formats) or "no export, best.pt timed"
    size = f"imgsz {settings.imgsz}" if settings.imgsz else "imgsz of the phase"
    half = ", FP16" if settings.half else ""
    return (
        f"{formats}; {size}, batch {settings.batch}{half}, on {settings.device}, "
        f"parity ±{settings.parity_tolerance:g} mAP50-95, {settings.latency.runs} timed calls"
    )


def export_problems(plan: Plan, source: str) -> list[Problem]:
    """Export settings that cannot work, and latency conditions that time a format nobody exports."""
    problems: list[Problem] = []
    for name, node in plan.nodes.items():
        if isinstance(node, DeployNode) and node.export is not None:
            problems += settings_problems(node.export, source, f"nodes.{name}.export")
        if not isinstance(node, GateNode):
            continue
        settings = timing_settings(plan, node)
        deploys = isinstance(plan.nodes.get(node.on_pass), DeployNode)
        for i, cond in enumerate(node.conditions):
            if not isinstance(cond, LatencyCheck) or cond.format == "pytorch":
                continue
            where = f"nodes.{name}.conditions[{i}].format"
            if deploys and cond.format not in settings.formats:
                problems.append(
                    Problem(
                        source,
                        where,
                        f"times {cond.format}, which {node.on_pass} does not export "
                        f"(its formats: {list(settings.formats)}); add it there, or time pytorch",
                    )
                )
            elif cond.format == "engine" and settings.on_cpu:
                problems.append(Problem(source, where, "TensorRT (engine) needs a GPU: set export.device"))
    return problems


def settings_problems(settings: ExportSettings, source: str, where: str) -> list[Problem]:
    """Ultralytics' own type and range checks on the export arguments, and TensorRT without a GPU."""
    from flows.engine.plan.ultra_args import value_message

    problems = [
        Problem(source, f"{where}.{key}", message)
        for key, value in settings.checked_args().items()
        if (message := value_message(key, value))
    ]
    if "engine" in settings.formats and settings.on_cpu:
        problems.append(
            Problem(source, f"{where}.device", "TensorRT (engine) exports and runs on a GPU: set device: 0")
        )
    if settings.half and settings.on_cpu and "onnx" not in settings.formats and settings.formats:
        problems.append(
            Problem(
                source,
                f"{where}.half",
                "FP16 on the CPU is only exported for onnx; other formats stay FP32",
                severity="warning",
            )
        )
    return problems
