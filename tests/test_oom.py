"""Out of memory: recorded with its batch; Ultralytics' batch halving recorded, the effective batch kept.

No GPU here, so the out-of-memory error is faked at the hardware boundary: with ``FOD_FAKE_OOM_ABOVE=N``
the trainer subclass raises ``torch.OutOfMemoryError`` when a training batch larger than N is moved to the
device, as CUDA would. Everything after that is real Ultralytics 8.4: it catches the error in its training
loop, halves the batch (at most 3 times, first epoch only), rebuilds the data loaders and recomputes the
accumulation from ``nbs``; or gives up and raises.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.engine.decisions.gates import evaluate_gate
from flows.engine.faults import FAKE_OOM_ENV, fake_oom_above
from flows.engine.outputs.report import incident_lines
from flows.engine.plan.schema import GateNode
from flows.engine.records.results import EpochEvent, OomEvent, PhaseResult, TrainSpec

ROOT = Path(__file__).resolve().parents[1]
P2_MODEL = ROOT / "fod_models" / "yolo11n-p2.yaml"


def spec_for(run_dir: Path, data: Path) -> TrainSpec:
    """Batch 8 accumulated to an effective 16 (nbs 16), one epoch on CPU."""
    return TrainSpec(
        plan="oom",
        node="phase1",
        model=P2_MODEL,
        data=data,
        args=dict(imgsz=64, epochs=1, batch=8, workers=0, device="cpu", plots=False, warmup_epochs=0),
        effective_batch=16,
        run_dir=run_dir,
    )


def train_with_fake_oom(limit: int, run_dir: Path, data: Path, monkeypatch) -> tuple[PhaseResult, list[str]]:
    from tasks.trainers.ultra import UltralyticsTrainer

    monkeypatch.setenv(FAKE_OOM_ENV, str(limit))  # the spawned training process inherits it
    logs: list[str] = []
    events: list[EpochEvent] = []
    result = UltralyticsTrainer(log=logs.append).train(spec_for(run_dir, data), events.append)
    return result, logs


def test_fake_oom_switch(monkeypatch):
    monkeypatch.delenv(FAKE_OOM_ENV, raising=False)
    assert fake_oom_above() is None
    monkeypatch.setenv(FAKE_OOM_ENV, "4")
    assert fake_oom_above() == 4
    monkeypatch.setenv(FAKE_OOM_ENV, "lots")
    assert fake_oom_above() is None


@pytest.mark.integration
def test_oom_halves_the_batch_and_keeps_the_effective_batch(demo_data, tmp_path, monkeypatch):
    """Batch 8 runs out of memory; Ultralytics retries at 4 with accumulation 4: still 16 per step."""
    result, logs = train_with_fake_oom(4, tmp_path / "phase1", demo_data, monkeypatch)
    assert result.status == "completed", result.reason
    assert (result.batch_requested, result.batch_used) == (8, 4)
    assert (result.accumulate, result.effective_batch, result.nbs) == (4, 16, 16)
    [event] = result.oom_events
    assert (event.epoch, event.batch, event.retry_batch, event.accumulate) == (1, 8, 4, 4)
    assert "halved it to 4" in event.message
    assert any("out of memory with batch=8. Reducing to batch=4" in line for line in logs)
    assert result.epochs_done == 1 and result.weights is not None
    assert any(
        "out of memory at batch 8 in epoch 1 → batch 4 × 4" in line for line in incident_lines([result])
    )


@pytest.mark.integration
def test_oom_that_halving_cannot_resolve_fails_the_phase_with_that_reason(demo_data, tmp_path, monkeypatch):
    """Every batch runs out of memory: 8 → 4 → 2 → 1, then Ultralytics gives up: an outcome (not an error),
    explained, and the gate fails on it."""
    result, _ = train_with_fake_oom(0, tmp_path / "phase1", demo_data, monkeypatch)
    assert result.status == "out_of_memory" and not result.diverged
    reason = result.reason or ""
    assert reason.startswith("out of memory at batch 1 in epoch 1 after 3 automatic halving(s)"), reason
    assert "(8 → 4 → 2 → 1)" in reason and "lower batch or imgsz" in reason
    assert [(e.batch, e.retry_batch) for e in result.oom_events] == [(8, 4), (4, 2), (2, 1), (1, None)]
    assert result.metrics.map50_95 is None and result.epochs_done == 0

    gate = GateNode.model_validate(
        {
            "kind": "gate",
            "subject": "phase1",
            "conditions": [{"check": "no_divergence"}, {"check": "completed"}],
            "on_pass": "deploy",
            "on_fail": "phase2",
        }
    )
    outcome = evaluate_gate("gate1", gate, result, {})
    assert outcome.outcome == "fail" and outcome.next == "phase2"
    row = next(r for r in outcome.rows if r.condition == "all epochs completed")
    assert row.observed == "0/1" and "out of memory at batch 1" in row.note
    assert any("phase1: out_of_memory: out of memory at batch 1" in line for line in incident_lines([result]))


def test_oom_events_round_trip_through_the_journal_format():
    """The journal stores PhaseResults as JSON: OOM events and NaN counts survive a resume."""
    result = PhaseResult(
        node="phase1",
        status="out_of_memory",
        reason="out of memory at batch 2",
        nan_epochs=1,
        oom_events=(OomEvent(epoch=1, batch=4, retry_batch=2, accumulate=8), OomEvent(epoch=1, batch=2)),
    )
    again = PhaseResult.model_validate_json(result.model_dump_json())
    assert again == result and again.oom_events[1].retry_batch is None
