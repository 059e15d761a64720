"""Divergence: a huge learning rate diverges without clipping and stays finite with ``grad_clip_norm``.

Real tiny Ultralytics trainings (the project's yolo11n-p2 at imgsz 64 on the generated demo data, CPU).
Ultralytics caps ``lr0`` at 1.0, so the "huge learning rate" is lr0 = 1.0 with the loss gains (box, cls,
dfl) multiplied by 1e16: with SGD (weight decay 0, no warm-up) every gradient, hence every step, is 1e16
times larger, which is a learning rate of 1e16 in effect.

- ``grad_clip_norm: off``: the first step throws the weights past float32; the loss is NaN; Ultralytics
  cannot recover in the first epoch, reloads last.pt three times in the second (the reloaded momentum
  buffer throws the weights out again each time), then gives up. The phase is ``diverged`` with
  Ultralytics' reason, and a ``no_divergence`` gate fails with it.
- ``grad_clip_norm: 1.0``: the same settings train both epochs with finite losses.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from flows.engine.decisions.gates import evaluate_gate
from flows.engine.plan.schema import GateNode, TrainNode, parse_clip_norm
from flows.engine.records.results import EpochEvent, PhaseResult, TrainSpec

ROOT = Path(__file__).resolve().parents[1]
P2_MODEL = ROOT / "fod_models" / "yolo11n-p2.yaml"
GAIN = 1e16
HUGE_LR = dict(
    imgsz=64,
    epochs=2,
    batch=8,
    workers=0,
    device="cpu",
    plots=False,
    seed=0,
    deterministic=True,
    optimizer="SGD",
    lr0=1.0,
    momentum=0.9,
    weight_decay=0.0,
    warmup_epochs=0,
    box=7.5 * GAIN,
    cls=0.5 * GAIN,
    dfl=1.5 * GAIN,
)


def huge_lr_spec(run_dir: Path, data: Path, clip: float | str) -> TrainSpec:
    return TrainSpec(
        plan="divergence",
        node="phase1",
        model=P2_MODEL,
        data=data,
        args=dict(HUGE_LR),
        effective_batch=8,  # accumulate 1: every batch is an optimizer step
        grad_clip_norm=clip,  # type: ignore[arg-type]
        run_dir=run_dir,
    )


def gate() -> GateNode:
    return GateNode.model_validate(
        {
            "kind": "gate",
            "subject": "phase1",
            "conditions": [{"check": "no_divergence"}, {"check": "completed"}],
            "on_pass": "deploy",
            "on_fail": "keep",
        }
    )


@pytest.mark.parametrize(
    ("written", "parsed"),
    [(None, None), ("off", "off"), ("OFF", "off"), (False, "off"), ("none", "off"), (1, 1.0), (0.5, 0.5)],
)
def test_grad_clip_norm_setting(written, parsed):
    """Unset: Ultralytics' 10.0; a number > 0: that norm; off (YAML off/false too): no clipping."""
    assert parse_clip_norm(written) == parsed
    node = TrainNode.model_validate({"kind": "train", "next": "x", "grad_clip_norm": written})
    assert node.grad_clip_norm == parsed


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, math.nan, True, "1.0", "loose", [1.0]])
def test_grad_clip_norm_refuses_anything_else(bad):
    with pytest.raises(ValueError, match="grad_clip_norm must be"):
        TrainNode.model_validate({"kind": "train", "next": "x", "grad_clip_norm": bad})


def test_child_clip_norm_semantics():
    from tasks.trainers.ultra_child import ULTRALYTICS_CLIP_NORM, clip_norm_of

    base = dict(plan="p", node="n", model=P2_MODEL, data=P2_MODEL, run_dir=Path("r"))
    assert clip_norm_of(TrainSpec(**base)) == ULTRALYTICS_CLIP_NORM == 10.0
    assert clip_norm_of(TrainSpec(**base, grad_clip_norm=2.5)) == 2.5
    assert clip_norm_of(TrainSpec(**base, grad_clip_norm="off")) is None


@pytest.fixture(scope="module")
def runs(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[PhaseResult, list]]:
    """The same huge-learning-rate phase, unclipped and clipped (about 25 s each on 2 CPU cores)."""
    from tasks.trainers.ultra import UltralyticsTrainer

    out = {}
    for name, clip in (("unclipped", "off"), ("clipped", 1.0)):
        events: list[EpochEvent] = []
        logs: list[str] = []
        spec = huge_lr_spec(tmp_path_factory.mktemp(name) / "phase1", demo_data, clip)
        result = UltralyticsTrainer(log=logs.append).train(spec, events.append)
        out[name] = (result, events, logs)
    return out


@pytest.mark.integration
def test_huge_learning_rate_diverges_without_clipping(runs):
    result, _, logs = runs["unclipped"]
    assert result.status == "diverged", (result.status, result.reason)
    assert result.diverged
    assert "NaN persisted" in (result.reason or "")
    assert result.nan_recoveries == 3, "Ultralytics reloads last.pt three times before giving up"
    assert result.nan_epochs >= 4, "the first epoch's NaN (not recoverable) and every reloaded retry"
    assert result.args["grad_clip_norm"] == "off"
    assert sum("recovering from last.pt" in line for line in logs) == 3
    assert result.metrics.map50_95 is None, "a diverged phase reports no final metrics"

    outcome = evaluate_gate("gate1", gate(), result, {})
    assert outcome.outcome == "fail" and outcome.next == "keep"
    row = next(r for r in outcome.rows if r.condition == "no divergence")
    assert row.verdict == "fail" and not row.passed
    assert "3 NaN recoveries" in row.observed and "NaN persisted" in row.note


@pytest.mark.integration
def test_same_learning_rate_stays_finite_with_clipping(runs):
    result, events, _ = runs["clipped"]
    assert result.status == "completed", result.reason
    assert not result.diverged and result.nan_recoveries == 0 and result.nan_epochs == 0
    assert result.args["grad_clip_norm"] == 1.0
    assert [e.record.epoch for e in events] == [1, 2]
    for record in result.history:
        train_losses = {k: v for k, v in record.losses.items() if k.startswith("train/")}
        assert train_losses and all(v is not None and math.isfinite(v) for v in train_losses.values()), (
            record.epoch,
            record.losses,
        )
    outcome = evaluate_gate("gate1", gate(), result, {})
    assert outcome.outcome == "pass", outcome.rows
