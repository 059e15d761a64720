"""Prefect tasks that publish: gate tables, the terminal's action, the report and decision.json.

Artifacts carry stable keys (plan + node), so the Prefect UI can compare runs of a plan.
"""

from __future__ import annotations

import re
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.engine.config import RunConfig
from flows.engine.faults import kill_point
from flows.engine.fsutil import write_text_once
from flows.engine.registry import baseline_record, deploy
from flows.engine.report import plot_curves, render_report
from flows.engine.results import Decision, GateResult
from flows.engine.schema import SearchNode
from flows.engine.tree import tree_view
from flows.engine.walk import WalkState


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


@task(name="gate", task_run_name="gate-{result.node}")
def publish_gate(result: GateResult, plan: str) -> GateResult:
    """Log the gate's table and publish it as a table artifact."""
    logger = get_run_logger()
    for row in result.rows:
        logger.info(f"{result.node}: {row.condition}: {row.observed} vs {row.threshold} → {row.verdict}")
    logger.info(f"{result.node}: {result.outcome.upper()} → {result.next}")
    create_table_artifact(
        key=artifact_key("gate", plan, result.node),
        table=[row.model_dump() for row in result.rows],
        description=f"Gate {result.node} on {result.subject}: {result.outcome} → {result.next}",
    )
    return result


@task(name="terminal")
def finish_terminal(cfg: RunConfig, run_dir: Path, state: WalkState) -> tuple[Path | None, str | None]:
    """Deploy the winner into the registry, or record that the baseline stays."""
    plan = cfg.plan
    node = plan.nodes[state.terminal]
    logger = get_run_logger()
    if node.kind == "deploy":
        registry = cfg.request.runs_dir / plan.registry
        phase = state.results[node.phase]
        target = deploy(
            registry, run_dir.name, plan.plan, phase, state.gates, state.path, cfg.data_fingerprint
        )
        logger.info(f"deployed {node.phase} → {target}")
        return target, node.phase
    text = baseline_record(plan.baseline.name, plan.baseline.map50_95, state.gates)
    write_text_once(run_dir / "BASELINE_KEPT.md", text)
    logger.info(text)
    return None, None


def build_decision(
    cfg: RunConfig, run_dir: Path, state: WalkState, deployed: tuple[Path | None, str | None]
) -> Decision:
    """Everything decision.json holds."""
    kind = cfg.plan.nodes[state.terminal].kind
    return Decision(
        plan=cfg.plan.plan,
        run_id=run_dir.name,
        profile=cfg.request.profile,
        terminal=state.terminal,
        terminal_kind="deploy" if kind == "deploy" else "keep_baseline",
        path=tuple(state.path),
        gates=tuple(state.gates),
        phases=tuple(state.results.values()),
        trials=tuple(state.trials),
        warnings=(*cfg.warnings, *state.notes),
        deployed_model=deployed[0],
        deployed_from=deployed[1],
        baseline_name=cfg.plan.baseline.name,
        baseline_map50_95=cfg.plan.baseline.map50_95,
        data_fingerprint=cfg.data_fingerprint,
    )


def space_keys(cfg: RunConfig) -> list[str]:
    """Every searched argument, for the trials table."""
    keys: list[str] = []
    for node in cfg.plan.nodes.values():
        if isinstance(node, SearchNode):
            keys += [k for k in node.space if k not in keys]
    return keys


@task(name="report")
def write_report(cfg: RunConfig, run_dir: Path, decision: Decision) -> Path:
    """curves.png, REPORT.md, the markdown artifact, then decision.json (which marks the run finished).

    A run killed while writing its report rewrites the same content on resume (never different content).
    """
    png = run_dir / "curves.png"
    if not png.exists():
        png = plot_curves([*decision.phases, *decision.trials], png)
    text = render_report(decision, tree_view(cfg.plan), png.name if png else None, space_keys(cfg))
    report = write_text_once(run_dir / "REPORT.md", text)
    create_markdown_artifact(
        key=artifact_key("report", cfg.plan.plan),
        markdown=text,
        description=f"{cfg.plan.plan}: {decision.terminal}",
    )
    kill_point("report")
    write_text_once(run_dir / "decision.json", decision.model_dump_json(indent=2))
    return report
