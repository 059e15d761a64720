"""The project's own starting weights (flows/demo_weights.py, fod_models/weights/): the committed
file is the recorded one, the record's recipe is the script's, the weights transfer into both demo
models as their architectures say they must, their recorded figures are true, and the script's code
path still runs end to end."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from flows import demo_weights as dw

CHECKPOINT = dw.WEIGHTS_DIR / dw.CHECKPOINT_NAME
RECORD = dw.WEIGHTS_DIR / dw.RECORD_NAME
DETECT_LITE = "model.26."
"""yolo11-p2-lite.yaml's Detect layer (index 26): the only layer whose names differ from yolo11-p2.yaml,
where index 26 is the first layer of the P5 branch the lite model drops."""


@pytest.fixture(scope="module")
def record() -> dw.Record:
    """The committed record, validated by its strict model."""
    return dw.read_record(RECORD)


def state_dict_keys(model: str, nc: int) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a freshly built model (what ``DetectionModel.load`` fills)."""
    from fod_models import build_model

    return {k: tuple(v.shape) for k, v in build_model(model, nc=nc).state_dict().items()}


def test_committed_checkpoint_is_the_recorded_one(record):
    """Bytes on disk = the sha256 and size the record was written with."""
    assert CHECKPOINT.is_file(), f"{CHECKPOINT} is missing: run python -m flows.demo_weights"
    assert dw.sha256_of(CHECKPOINT) == record.sha256
    assert CHECKPOINT.stat().st_size == record.bytes
    assert record.checkpoint == CHECKPOINT.name
    assert 1e6 < record.bytes < 10e6, "an fp16 yolo11n-p2 without optimizer is a few MB"


def test_record_recipe_is_what_the_script_runs(record):
    """The script exposes its recipe; the committed record was built with exactly that recipe."""
    assert record.recipe == dw.recipe()
    raw = json.loads(RECORD.read_text(encoding="utf-8"))
    assert dw.Record.model_validate(raw) == record  # no key the model does not know


def test_recipe_keeps_the_demo_validation_images_out_of_training():
    """The demo's dataset is generate_demo_dataset's defaults (what --demo calls); the weights' own
    data uses another seed, and each image is drawn from (seed, split, index), so the demo's val
    images can never be among the training images."""
    recipe = dw.recipe()
    assert recipe.demo_data == dw.GeneratorArgs(n_train=48, n_val=16, image_size=320, seed=0)
    assert recipe.data.seed != recipe.demo_data.seed
    assert recipe.data.n_train > 10 * recipe.demo_data.n_train, "a LARGER run of the generator"
    assert recipe.data.image_size == recipe.demo_data.image_size
    assert recipe.train["imgsz"] == 160, "the demo profile's imgsz"
    for key, value in {"workers": 0, "device": "cpu", "deterministic": True}.items():
        assert recipe.train[key] == value
    assert isinstance(recipe.train["seed"], int)


def test_weights_transfer_fully_into_yolo11n_p2(record):
    """Same architecture, same 4 classes: every tensor of the model comes from the checkpoint."""
    total = len(state_dict_keys(dw.MODEL, nc=4))
    measured = dw.transfer_counts(CHECKPOINT, dw.MODEL)
    assert (measured.transferred, measured.total) == (total, total)
    assert record.transfers[dw.MODEL] == measured


def test_weights_transfer_all_but_the_head_into_the_lite_model(record):
    """yolo11-p2-lite.yaml is yolo11-p2.yaml up to layer 25; only its Detect layer (index 26 there)
    has names the P2 checkpoint lacks, so exactly the non-Detect tensors transfer."""
    keys = state_dict_keys(dw.LITE_MODEL, nc=4)
    expected = sum(1 for k in keys if not k.startswith(DETECT_LITE))
    measured = dw.transfer_counts(CHECKPOINT, dw.LITE_MODEL)
    assert (measured.transferred, measured.total) == (expected, len(keys))
    assert 0 < expected < len(keys)
    assert record.transfers[dw.LITE_MODEL] == measured


def test_one_class_fine_tune_gets_everything_but_the_class_logits():
    """For a 1-class dataset (golfball) only the 1x1 class-logit convs (weight and bias at each of the
    4 detection levels) change shape, so all other tensors transfer."""
    total = len(state_dict_keys(dw.MODEL, nc=1))
    measured = dw.transfer_counts(CHECKPOINT, dw.MODEL, nc=1)
    assert (measured.transferred, measured.total) == (total - 2 * 4, total)


@pytest.mark.integration
def test_recorded_demo_figures_are_true(record, tmp_path):
    """Validating the committed file on the demo's val images reproduces the recorded figures.

    Val images depend only on (seed, 'val', index), so one training image is enough to generate them.
    """
    demo = dw.recipe().demo_data.model_copy(update={"n_train": 1})
    data = dw.generate(tmp_path / "demo", demo)
    figures = dw.validate(CHECKPOINT, data, dw.recipe().val)
    recorded = record.figures["demo_val"]
    assert figures.instances == recorded.instances
    for name in ("precision", "recall", "map50", "map50_95"):
        assert getattr(figures, name) == pytest.approx(getattr(recorded, name), abs=record.figure_tolerance)
    assert recorded.map50_95 >= 0.3, "the demo needs weights that really detect"


def tiny_recipe() -> dw.Recipe:
    """The script's recipe shrunk to seconds: 8 images, one epoch."""
    recipe = dw.recipe()
    return recipe.model_copy(
        update={
            "data": recipe.data.model_copy(update={"n_train": 8, "n_val": 4}),
            "demo_data": recipe.demo_data.model_copy(update={"n_train": 1, "n_val": 4}),
            "train": {**recipe.train, "epochs": 1, "close_mosaic": 0},
        }
    )


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[dw.Record, Path]:
    """One real run of the script's build with the tiny recipe."""
    root = tmp_path_factory.mktemp("tiny")
    return dw.build(tiny_recipe(), root / "out", root / "work"), root


@pytest.mark.integration
def test_build_smoke_writes_a_loadable_checkpoint_and_its_record(tiny_build):
    """The whole code path (generate, train, deterministic checkpoint, validate, count) still runs."""
    record, root = tiny_build
    out = root / "out"
    assert dw.read_record(out / dw.RECORD_NAME) == record
    assert dw.sha256_of(out / dw.CHECKPOINT_NAME) == record.sha256
    assert record.recipe == tiny_recipe() and record.epochs_done == 1
    assert set(record.figures) == {"own_val", "demo_val"}
    assert record.transfers[dw.MODEL].transferred == record.transfers[dw.MODEL].total
    assert dw.compare(record, record) == []
    from ultralytics.nn.tasks import load_checkpoint

    model, ckpt = load_checkpoint(str(out / dw.CHECKPOINT_NAME))
    assert ckpt["date"] == dw.CHECKPOINT_DATE and ckpt["optimizer"] is None and "git" not in ckpt
    assert model.names == dict(enumerate(dw.recipe().classes))
    assert str(root) not in repr(ckpt["train_args"]), "no build-folder path in the checkpoint"


@pytest.mark.integration
def test_build_refuses_to_overwrite(tiny_build):
    """A committed checkpoint is never replaced by accident."""
    record, root = tiny_build
    with pytest.raises(FileExistsError):
        dw.build(tiny_recipe(), root / "out", root / "work2")
    assert dw.sha256_of(root / "out" / dw.CHECKPOINT_NAME) == record.sha256


@pytest.mark.integration
def test_checkpoint_bytes_do_not_depend_on_when_or_where(tiny_build):
    """The same best.pt gives the same bytes again: no date, path or git field leaks in."""
    record, root = tiny_build
    again = dw.checkpoint_bytes(root / "work" / "train" / "weights" / "best.pt", tiny_recipe())
    assert hashlib.sha256(again).hexdigest() == record.sha256


def test_compare_flags_figures_outside_the_tolerance(record):
    """A rebuild within the tolerance reproduces; one figure further off, or other bytes, does not."""
    close = record.model_copy(deep=True)
    close.figures["demo_val"].map50_95 += record.figure_tolerance / 2
    assert dw.compare(record, close) == []
    far = record.model_copy(deep=True)
    far.figures["own_val"].recall += 2 * record.figure_tolerance
    far.sha256 = "0" * 64
    problems = dw.compare(record, far)
    assert len(problems) == 2
    assert any("own_val recall" in p for p in problems) and any("sha256" in p for p in problems)


@pytest.mark.integration
def test_same_tiny_recipe_gives_identical_bytes_twice(tiny_build, tmp_path):
    """Training itself is deterministic on CPU (workers=0, deterministic=True, fixed seed)."""
    record, _ = tiny_build
    again = dw.build(tiny_recipe(), tmp_path / "out", tmp_path / "work")
    assert again.sha256 == record.sha256
    assert again.figures == record.figures
