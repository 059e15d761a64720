"""Tests for fod_models: the YOLO11-P2 / P2-lite YAMLs and the helpers in fod_models.architecture.

Models are built from the YAMLs on CPU (no downloads). n and m are built in the default run; all five scales
and a one-epoch training run are marked slow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")

from fod_models import (
    MODEL_DIR,
    ModelSpecError,
    build_model,
    check_imgsz,
    declared_strides,
    describe_model,
    input_multiple,
    max_stride,
    model_scale,
    resolve_model,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
GOLFBALL = SHARED / "datasets" / "golfball_small" / "data.yaml"

FULL, LITE = "yolo11-p2.yaml", "yolo11-p2-lite.yaml"
FULL_STRIDES, LITE_STRIDES = (4, 8, 16, 32), (4, 8, 16)
ALL_SCALES = ("n", "s", "m", "l", "x")
FAST_SCALES = ("n", "m")


def scaled(unscaled: str, scale: str) -> str:
    """``yolo11-p2.yaml`` + ``m`` -> ``yolo11m-p2.yaml`` (the name Ultralytics reads the scale from)."""
    return unscaled.replace("yolo11", f"yolo11{scale}", 1)


@pytest.fixture(scope="module")
def built() -> dict[str, object]:
    """Models built once per module, keyed by scaled file name (building m takes a few seconds on 2 cores)."""
    return {}


def get_model(cache: dict[str, object], name: str):
    if name not in cache:
        cache[name] = build_model(name)
    return cache[name]


# ------------------------------------------------------------------------------------------- pure helpers


def test_package_import_does_not_import_torch():
    code = "import sys, fod_models; assert 'torch' not in sys.modules and 'ultralytics' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.mark.parametrize(
    ("spec", "expected_name"),
    [
        ("yolo11m-p2.yaml", "yolo11m-p2.yaml"),
        ("fod_models/yolo11m-p2-lite.yaml", "yolo11m-p2-lite.yaml"),
        ("yolo11x-p2-lite.yaml", "yolo11x-p2-lite.yaml"),
        ("yolo11-p2.yaml", "yolo11-p2.yaml"),
    ],
)
def test_resolve_model_maps_names_into_model_dir(spec, expected_name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # not the repo root: relative specs must still be found
    resolved = resolve_model(spec)
    assert resolved == MODEL_DIR / expected_name
    assert resolved.is_absolute()


def test_resolve_model_accepts_existing_yaml_and_checkpoint(tmp_path):
    own_yaml = tmp_path / "custom.yaml"
    shutil.copy(MODEL_DIR / FULL, own_yaml)
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"not read by resolve_model")
    assert resolve_model(own_yaml) == own_yaml
    assert resolve_model("best.pt", base_dir=tmp_path) == ckpt
    # a scaled name beside a user's own unscaled YAML resolves next to it
    shutil.copy(MODEL_DIR / LITE, tmp_path / "yolo11-fod.yaml")
    assert resolve_model(tmp_path / "yolo11s-fod.yaml") == tmp_path / "yolo11s-fod.yaml"


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("yolo11q-p2.yaml", "scale 'q' is not one of n, s, m, l, x"),
        ("yolo11m-p7.yaml", "'yolo11-p7.yaml', not found"),
        ("missing.pt", "checkpoint not found"),
        ("custom.yaml", "no scale letter"),
        ("yolo11m-p2.txt", "expected a .yaml model file"),
    ],
)
def test_resolve_model_rejects_bad_specs_naming_the_value(spec, fragment):
    with pytest.raises(ModelSpecError) as info:
        resolve_model(spec)
    assert repr(spec) in str(info.value)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_resolve_model_rejects_a_scale_the_yaml_does_not_define(tmp_path):
    (tmp_path / "yolo11-tiny.yaml").write_text("scales:\n  n: [0.5, 0.25, 1024]\nbackbone: []\nhead: []\n")
    with pytest.raises(ModelSpecError, match="scale 'm' is not defined"):
        resolve_model(tmp_path / "yolo11m-tiny.yaml")


def test_model_scale_reads_the_letter_like_ultralytics():
    from ultralytics.nn.tasks import guess_model_scale

    for name in ("yolo11m-p2.yaml", "fod_models/yolo11x-p2-lite.yaml", "yolo11-p2.yaml", "yolo11n.yaml"):
        assert (model_scale(name) or "") == guess_model_scale(name)
    assert model_scale("yolo11s-p2-lite.yaml") == "s"
    assert model_scale("yolo11-p2.yaml") is None


def test_declared_strides_from_yaml():
    assert declared_strides("yolo11m-p2.yaml") == FULL_STRIDES
    assert declared_strides("yolo11m-p2-lite.yaml") == LITE_STRIDES
    assert max_stride("yolo11n-p2.yaml") == 32
    assert max_stride("yolo11n-p2-lite.yaml") == 16
    # the lite model keeps the backbone's /32 stage, so inputs are still multiples of 32
    assert input_multiple("yolo11n-p2-lite.yaml") == 32


def test_declared_strides_of_ultralytics_own_yolo11():
    import ultralytics

    yolo11 = Path(ultralytics.__file__).parent / "cfg" / "models" / "11" / "yolo11.yaml"
    assert declared_strides(yolo11) == (8, 16, 32)


@pytest.mark.parametrize("imgsz", [100, 650, 0, -32, 48])
def test_check_imgsz_rejects_sizes_off_the_full_models_stride(imgsz):
    problem = check_imgsz(imgsz, "yolo11n-p2.yaml")
    assert problem is not None
    assert f"imgsz={imgsz}" in problem
    assert "32" in problem


def test_check_imgsz_names_the_two_nearest_valid_sizes():
    assert "96 and 128" in check_imgsz(100, "yolo11n-p2.yaml")
    assert "640 and 672" in check_imgsz(650, "yolo11n-p2.yaml")
    assert check_imgsz(640, "yolo11n-p2.yaml") is None


def test_check_imgsz_for_the_lite_model():
    assert check_imgsz(640, "yolo11n-p2-lite.yaml") is None
    assert check_imgsz(64, "yolo11n-p2-lite.yaml") is None
    assert "32 and 64" in check_imgsz(40, "yolo11n-p2-lite.yaml")
    # 48 is a multiple of the largest detection stride (16) but not of the backbone's 32: see the next test
    problem = check_imgsz(48, "yolo11n-p2-lite.yaml")
    assert problem is not None
    assert "detection stride is 16" in problem


def test_check_imgsz_for_training_applies_the_trainers_32_floor(tmp_path):
    """A network that only downsamples by 16 takes 48 for inference, but Ultralytics' trainer rounds to 32."""
    yaml_text = (
        "nc: 1\nbackbone:\n"
        "  - [-1, 1, Conv, [16, 3, 2]]\n  - [-1, 1, Conv, [32, 3, 2]]\n"
        "  - [-1, 1, Conv, [64, 3, 2]]\n  - [-1, 1, Conv, [64, 3, 2]]\n"
        "head:\n  - [[2, 3], 1, Detect, [nc]]\n"
    )
    shallow = tmp_path / "shallow.yaml"
    shallow.write_text(yaml_text)
    assert declared_strides(shallow) == (8, 16)
    assert check_imgsz(48, shallow) is None
    problem = check_imgsz(48, shallow, for_training=True)
    assert problem is not None
    assert "32 and 64" in problem


def test_lite_model_really_fails_at_a_multiple_of_16_that_is_not_of_32(built):
    """Why check_imgsz rejects 48 for the lite model: backbone P5 (2x2) upsampled to 4x4 != P4 (3x3)."""
    import torch

    model = get_model(built, "yolo11n-p2-lite.yaml").eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
        with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
            model(torch.zeros(1, 3, 48, 48))


# ------------------------------------------------------------------------------------------- built models


def _check_built(model, unscaled: str, scale: str) -> None:
    expected = FULL_STRIDES if unscaled == FULL else LITE_STRIDES
    assert tuple(int(s) for s in model.stride.tolist()) == expected
    assert model.yaml["scale"] == scale
    assert model.yaml["nc"] == 1 and model.model[-1].nc == 1
    assert declared_strides(scaled(unscaled, scale)) == expected


@pytest.mark.parametrize("scale", FAST_SCALES)
@pytest.mark.parametrize("unscaled", [FULL, LITE])
def test_builds_fast_scales_with_expected_strides(unscaled, scale, built):
    _check_built(get_model(built, scaled(unscaled, scale)), unscaled, scale)


@pytest.mark.slow
@pytest.mark.parametrize("scale", [s for s in ALL_SCALES if s not in FAST_SCALES])
@pytest.mark.parametrize("unscaled", [FULL, LITE])
def test_builds_every_scale_with_expected_strides(unscaled, scale):
    _check_built(build_model(scaled(unscaled, scale)), unscaled, scale)


def test_scales_grow_in_size(built):
    """n < m in parameters, for both files: the scale letter really is applied."""
    for unscaled in (FULL, LITE):
        n = get_model(built, scaled(unscaled, "n"))
        m = get_model(built, scaled(unscaled, "m"))
        assert sum(p.numel() for p in n.parameters()) < sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("scale", FAST_SCALES)
def test_lite_is_smaller_and_cheaper_than_full(scale):
    full = describe_model(scaled(FULL, scale), imgsz=640)
    lite = describe_model(scaled(LITE, scale), imgsz=640)
    assert full["gflops"] > 0  # thop is installed: a 0.0 would mean FLOPs were not measured
    assert lite["parameters"] < full["parameters"]
    assert lite["gflops"] < full["gflops"]
    assert (full["strides"], lite["strides"]) == (FULL_STRIDES, LITE_STRIDES)
    print(f"\n{scale}: full {full}\n{scale}: lite {lite}")


@pytest.mark.parametrize(("unscaled", "sizes"), [(FULL, [160, 80, 40, 20]), (LITE, [160, 80, 40])])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_forward_at_640_returns_one_map_per_level(unscaled, sizes, mode, built):
    import torch

    model = get_model(built, scaled(unscaled, "n"))
    model.train(mode == "train")
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 640, 640))
    model.eval()
    preds = out if mode == "train" else out[1]
    feats = preds["feats"]
    assert len(feats) == len(sizes)
    assert [tuple(f.shape[-2:]) for f in feats] == [(s, s) for s in sizes]
    assert all(f.shape[0] == 1 for f in feats)
    if mode == "eval":  # decoded output: 4 box + 1 class rows, one column per anchor of every level
        assert tuple(out[0].shape) == (1, 5, sum(s * s for s in sizes))


def test_ultralytics_accepts_the_scaled_relative_name_from_the_repo_root(monkeypatch):
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    monkeypatch.chdir(REPO)
    assert not (REPO / "fod_models" / "yolo11s-p2-lite.yaml").exists()
    model = DetectionModel("fod_models/yolo11s-p2-lite.yaml", nc=1, verbose=False)
    assert model.yaml["scale"] == "s"
    yolo = YOLO("fod_models/yolo11s-p2.yaml")
    assert yolo.model.yaml["scale"] == "s"
    assert tuple(int(s) for s in yolo.model.stride.tolist()) == FULL_STRIDES


def test_ultralytics_accepts_resolved_paths_from_anywhere(monkeypatch, tmp_path):
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)
    yolo = YOLO(resolve_model("yolo11n-p2-lite.yaml"))
    assert yolo.model.yaml["scale"] == "n"
    assert tuple(int(s) for s in yolo.model.stride.tolist()) == LITE_STRIDES


def test_strides_and_imgsz_checks_read_a_local_checkpoint(tmp_path, built):
    import torch

    ckpt = tmp_path / "lite.pt"
    torch.save({"model": get_model(built, "yolo11n-p2-lite.yaml")}, ckpt)
    assert resolve_model(ckpt) == ckpt
    assert declared_strides(ckpt) == LITE_STRIDES
    assert check_imgsz(640, ckpt) is None
    assert check_imgsz(48, ckpt) is not None


def test_resolve_model_looks_in_base_dir_then_the_repo(tmp_path):
    """A plan in configs/ may name fod_models/... relative to the repository root."""
    assert resolve_model("fod_models/yolo11m-p2.yaml", base_dir=tmp_path) == MODEL_DIR / "yolo11m-p2.yaml"


def test_pretrained_yolo11_weights_transfer_into_p2(tmp_path):
    """A yolo11n checkpoint loads into yolo11n-p2: at least the whole (identical) backbone transfers."""
    import torch
    import ultralytics
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.torch_utils import intersect_dicts

    source_yaml = Path(ultralytics.__file__).parent / "cfg" / "models" / "11" / "yolo11n.yaml"
    source = DetectionModel(str(source_yaml), verbose=False)  # yolo11n.yaml is mapped to yolo11.yaml, scale n
    ckpt = tmp_path / "yolo11n_scratch.pt"
    torch.save({"model": source}, ckpt)  # the layout Ultralytics' own checkpoints use

    target = YOLO(str(MODEL_DIR / "yolo11n-p2.yaml"))
    transferable = intersect_dicts(source.state_dict(), target.model.state_dict())  # what model.load() copies
    target.load(ckpt)
    src, dst = source.state_dict(), target.model.state_dict()
    # conv weights start random, so equality after load proves the copy really happened
    backbone_convs = [k for k in src if k.endswith("conv.weight") and int(k.split(".")[1]) <= 10]
    copied = [k for k in backbone_convs if torch.equal(src[k], dst[k])]
    print(f"\ntransferred {len(transferable)}/{len(dst)} tensors; backbone convs copied {len(copied)}")
    assert len(transferable) > 0
    assert len(transferable) >= 0.45 * len(dst)  # a large share: the backbone and the top-down neck
    assert copied == backbone_convs


# ------------------------------------------------------------------------------------------- real training


@pytest.mark.slow
@pytest.mark.skipif(not GOLFBALL.exists(), reason=f"shared dataset not found: {GOLFBALL}")
def test_lite_model_trains_one_epoch_on_golfball(tmp_path):
    from ultralytics import YOLO

    model = YOLO(str(resolve_model("yolo11n-p2-lite.yaml")))
    model.train(
        data=str(GOLFBALL),
        imgsz=64,
        epochs=1,
        batch=4,
        device="cpu",
        workers=0,
        plots=False,
        project=str(tmp_path),
        name="lite",
        exist_ok=True,
    )
    run_dir = Path(model.trainer.save_dir)
    assert (run_dir / "weights" / "last.pt").is_file()
    assert (run_dir / "results.csv").is_file()
    assert tuple(int(s) for s in model.trainer.model.stride.tolist()) == LITE_STRIDES
