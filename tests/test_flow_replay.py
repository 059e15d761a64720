"""The whole flow on a real Prefect server, with the replay trainer: every terminal of the shipped plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPLAYS, SHIPPED_PLAN

from flows.engine.config import OptimizeRequest
from flows.engine.records.results import Decision

pytestmark = pytest.mark.usefixtures("prefect_server")

EXPECTED = {
    "deploy_phase1": ("deploy_phase1", ["phase1", "gate1", "deploy_phase1"]),
    "deploy_phase2": ("deploy_phase2", ["phase1", "gate1", "phase2", "gate2", "deploy_phase2"]),
    "deploy_phase3": (
        "deploy_phase3",
        ["phase1", "gate1", "phase2", "gate2", "phase3", "gate3", "deploy_phase3"],
    ),
    "keep_baseline": (
        "keep_baseline",
        ["phase1", "gate1", "phase2", "gate2", "phase3", "gate3", "keep_baseline"],
    ),
}


def run_replay(spec: str, data: Path, runs: Path) -> Decision:
    """One flow run replaying the named SPEC."""
    from flows.fod_flow import optimize

    return optimize(
        OptimizeRequest(plan=SHIPPED_PLAN, data=data, runs_dir=runs, replay=REPLAYS / f"{spec}.yaml")
    )


@pytest.mark.parametrize("spec", sorted(EXPECTED))
def test_replay_reaches_terminal(spec, demo_data, tmp_path):
    """Each replay walks the gates to its terminal and writes decision.json, REPORT.md and curves.png."""
    terminal, path = EXPECTED[spec]
    decision = run_replay(spec, demo_data, tmp_path / "runs")
    assert decision.terminal == terminal
    assert list(decision.path) == path
    run_dir = tmp_path / "runs" / decision.run_id
    saved = json.loads((run_dir / "decision.json").read_text(encoding="utf-8"))
    assert saved["terminal"] == terminal and saved["path"] == path
    assert len(saved["gates"]) == sum(1 for n in path if n.startswith("gate"))
    report = (run_dir / "REPORT.md").read_text(encoding="utf-8")
    assert "```mermaid" in report and f"class {','.join(path)} taken" in report
    assert (run_dir / "curves.png").stat().st_size > 10_000
    if terminal.startswith("deploy"):
        card = tmp_path / "runs" / "models" / "fod-yolo11m-p2" / "v1" / "MODEL_CARD.md"
        assert card.is_file() and "Dataset fingerprint" in card.read_text(encoding="utf-8")
        assert decision.deployed_model == card.parent / "best.pt"
    else:
        kept = (run_dir / "BASELINE_KEPT.md").read_text(encoding="utf-8")
        assert "gate3: map50_95 observed" in kept
    if "phase3" in path:
        assert len(decision.trials) == 9
        assert "## Search trials" in report


def test_second_deploy_is_a_new_version(demo_data, tmp_path):
    """Deployed models are never overwritten: a second run gets v2, v1 is untouched."""
    runs = tmp_path / "runs"
    first = run_replay("deploy_phase1", demo_data, runs)
    v1 = Path(str(first.deployed_model))
    before = v1.read_bytes()
    second = run_replay("deploy_phase1", demo_data, runs)
    assert second.deployed_model == v1.parent.parent / "v2" / "best.pt"
    assert v1.read_bytes() == before
    assert first.run_id != second.run_id
