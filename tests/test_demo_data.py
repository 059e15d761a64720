"""Tests of the synthetic runway-debris demo dataset: real files, real Ultralytics checks."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from flows.demo_data import (
    CLASS_NAMES,
    MAX_OBJECT_PX,
    MIN_OBJECT_PX,
    describe_dataset,
    draw_background,
    draw_sample,
    generate_demo_dataset,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One default-size dataset, shared by the read-only tests of this module."""
    return generate_demo_dataset(tmp_path_factory.mktemp("fod") / "data")


def read_labels(label: Path) -> list[tuple[int, float, float, float, float]]:
    """Parse a YOLO label file strictly: five fields, 6-decimal normalised numbers."""
    rows = []
    for line in label.read_text(encoding="utf-8").splitlines():
        fields = line.split(" ")
        assert len(fields) == 5, line
        assert fields[0].isdigit(), line
        assert all(len(f.split(".")[1]) == 6 for f in fields[1:]), line
        rows.append((int(fields[0]), *(float(f) for f in fields[1:])))
    return rows


def split_files(data_yaml: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, label) pairs of one split, paired by stem."""
    root = data_yaml.parent
    images = sorted((root / "images" / split).iterdir())
    labels = sorted((root / "labels" / split).iterdir())
    assert [p.stem for p in images] == [p.stem for p in labels]
    return list(zip(images, labels, strict=True))


def test_data_yaml_points_ultralytics_at_the_splits(dataset: Path) -> None:
    data = yaml.safe_load(dataset.read_text(encoding="utf-8"))
    assert dataset == dataset.parent / "data.yaml"
    assert Path(data["path"]).is_absolute()
    assert Path(data["path"]) == dataset.parent.resolve()
    assert (data["train"], data["val"]) == ("images/train", "images/val")
    assert data["nc"] == len(data["names"]) == len(CLASS_NAMES) >= 3
    assert data["names"] == list(CLASS_NAMES)


def test_counts_match_the_request(tmp_path: Path) -> None:
    data_yaml = generate_demo_dataset(tmp_path / "d", n_train=5, n_val=3, image_size=160, seed=3)
    assert len(split_files(data_yaml, "train")) == 5
    assert len(split_files(data_yaml, "val")) == 3
    for image, _ in split_files(data_yaml, "train"):
        with Image.open(image) as img:
            assert (img.format, img.size, img.mode) == ("JPEG", (160, 160), "RGB")
    assert not [p for p in (tmp_path / "d").iterdir() if p.name.startswith(".")], "staging folder left behind"


def test_every_label_is_valid_and_inside_the_image(dataset: Path) -> None:
    nc = yaml.safe_load(dataset.read_text(encoding="utf-8"))["nc"]
    seen_classes = set()
    for split in ("train", "val"):
        pairs = split_files(dataset, split)
        assert len(pairs) == {"train": 48, "val": 16}[split]
        for image, label in pairs:
            with Image.open(image) as img:
                width, height = img.size
            rows = read_labels(label)
            assert 1 <= len(rows) <= 6, label
            for cls, cx, cy, w, h in rows:
                assert 0 <= cls < nc
                seen_classes.add(cls)
                assert cx - w / 2 >= 0 and cx + w / 2 <= 1, (label, cx, w)
                assert cy - h / 2 >= 0 and cy + h / 2 <= 1, (label, cy, h)
                longest = max(w * width, h * height)
                assert MIN_OBJECT_PX - 1e-3 <= longest <= MAX_OBJECT_PX + 1e-3, (label, longest)
    assert seen_classes == set(range(nc)), "every class must occur"


def test_boxes_do_not_overlap(dataset: Path) -> None:
    for split in ("train", "val"):
        for _, label in split_files(dataset, split):
            boxes = [
                (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2) for _, cx, cy, w, h in read_labels(label)
            ]
            for i, a in enumerate(boxes):
                for b in boxes[i + 1 :]:
                    disjoint = a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
                    assert disjoint, (label, a, b)


def test_boxes_are_tight_around_what_was_drawn() -> None:
    """Each box's four edges touch the drawn object, and nothing outside any box was drawn over."""
    for seed in range(40):
        rng = np.random.default_rng(seed)
        background = np.asarray(draw_background(copy.deepcopy(rng), 320), dtype=np.int16)
        image, boxes = draw_sample(rng, 320)
        changed = np.abs(np.asarray(image, dtype=np.int16) - background).max(axis=2) > 6
        outside = changed.copy()
        for box in boxes:
            inner = changed[box.y0 : box.y1, box.x0 : box.x1]
            assert inner[0].any() and inner[-1].any(), (seed, box)
            assert inner[:, 0].any() and inner[:, -1].any(), (seed, box)
            outside[box.y0 - 1 : box.y1 + 3, box.x0 - 1 : box.x1 + 3] = False  # soft shadow, down-right
        assert not outside.any(), seed


def test_same_seed_gives_the_same_bytes(tmp_path: Path) -> None:
    def snapshot(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "data.yaml"
        }

    first = snapshot(generate_demo_dataset(tmp_path / "a", n_train=6, n_val=2, seed=7).parent)
    second = snapshot(generate_demo_dataset(tmp_path / "b", n_train=6, n_val=2, seed=7).parent)
    other = snapshot(generate_demo_dataset(tmp_path / "c", n_train=6, n_val=2, seed=8).parent)
    assert len(first) == 16
    assert first == second
    assert first.keys() == other.keys()
    assert all(first[k] != other[k] for k in first if k.endswith(".jpg"))


def test_refuses_to_overwrite_an_existing_dataset(tmp_path: Path) -> None:
    data_yaml = generate_demo_dataset(tmp_path, n_train=2, n_val=1)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match=str(data_yaml)):
        generate_demo_dataset(tmp_path, n_train=2, n_val=1, seed=1)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_refuses_leftover_image_folders(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(FileExistsError, match="images"):
        generate_demo_dataset(tmp_path, n_train=2, n_val=1)
    assert not (tmp_path / "data.yaml").exists()


def test_default_dataset_is_fast(tmp_path: Path) -> None:
    start = time.process_time()  # CPU time: robust against other processes sharing the cores
    generate_demo_dataset(tmp_path / "d")
    assert time.process_time() - start < 3.0


def test_describe_dataset_counts_what_the_labels_say(dataset: Path) -> None:
    summary = describe_dataset(dataset)
    assert summary["images"] == {"train": 48, "val": 16}
    expected = dict.fromkeys(CLASS_NAMES, 0)
    longest = []
    for split in ("train", "val"):
        for _, label in split_files(dataset, split):
            for cls, _cx, _cy, w, h in read_labels(label):
                expected[CLASS_NAMES[cls]] += 1
                longest.append(max(w, h) * 320)
    assert summary["instances"] == expected
    per_split = summary["instances_per_split"]
    assert sum(per_split["train"].values()) + sum(per_split["val"].values()) == sum(expected.values())
    assert summary["box_px"]["min_longest"] == pytest.approx(min(longest), abs=0.1)
    assert summary["box_px"]["max_longest"] == pytest.approx(max(longest), abs=0.1)
    assert (
        MIN_OBJECT_PX <= summary["box_px"]["min_longest"] <= summary["box_px"]["max_longest"] <= MAX_OBJECT_PX
    )


def test_describe_dataset_reads_a_real_dataset() -> None:
    data_yaml = SHARED / "datasets" / "golfball_small" / "data.yaml"
    if not data_yaml.is_file():
        pytest.skip(f"real dataset not available at {data_yaml}")
    summary = describe_dataset(data_yaml)
    assert summary["images"]["train"] == 120
    assert summary["images"]["val"] == 36
    assert sum(summary["instances"].values()) > 0
    assert summary["box_px"]["max_longest"] > 0


def test_ultralytics_accepts_the_dataset(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(dataset))
    assert data["nc"] == len(CLASS_NAMES)
    assert list(data["names"].values()) == list(CLASS_NAMES)
    assert Path(data["train"]) == dataset.parent.resolve() / "images" / "train"


@pytest.mark.slow
def test_one_epoch_of_real_training_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    data_yaml = generate_demo_dataset(tmp_path / "data", n_train=16, n_val=8)
    model = YOLO("yolov8n.yaml")
    model.train(
        data=str(data_yaml),
        epochs=1,
        imgsz=64,
        batch=8,
        device="cpu",
        workers=0,
        plots=False,
        amp=False,
        project=str(tmp_path / "runs"),
        name="demo",
        exist_ok=False,
        verbose=False,
    )
    run = tmp_path / "runs" / "demo"
    assert (run / "results.csv").is_file()
    assert (run / "weights" / "last.pt").is_file()
