"""One reading of a dataset YAML, the same from any working directory (issue 8 §1).

Five layouts of the same images — ``path: .``, ``path: ../elsewhere``, no ``path``, an absolute
``path``, ``.txt`` image lists (plus a Roboflow-style ``../train/images``) — each resolved from two
working directories: the same folders, the same image counts and the same fingerprint every time;
Ultralytics' own ``check_det_dataset`` reads the run folder's copy as the author meant it; and a real
tiny training started in an unrelated folder scans exactly those images.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import SHIPPED_PLAN

from flows.engine.config import OptimizeRequest, prepare
from flows.engine.data.dataset import DATASET_COPY, LISTS_FOLDER, inspect_dataset, write_dataset_copy


def copy_images(source: Path, target: Path) -> None:
    """The demo dataset's images and labels under ``target`` (images/…, labels/…)."""
    for part in ("images", "labels"):
        shutil.copytree(source / part, target / part)


def write_yaml(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**doc, "names": {0: "bolt", 1: "stone", 2: "wire", 3: "washer"}}))
    return path


def path_dot(src: Path, base: Path) -> tuple[Path, Path]:
    copy_images(src, base / "ds")
    return write_yaml(
        base / "ds" / "data.yaml", {"path": ".", "train": "images/train", "val": "images/val"}
    ), (base / "ds")


def path_up(src: Path, base: Path) -> tuple[Path, Path]:
    copy_images(src, base / "elsewhere")
    doc = {"path": "../elsewhere", "train": "images/train", "val": "images/val"}
    return write_yaml(base / "configs" / "data.yaml", doc), base / "elsewhere"


def no_path(src: Path, base: Path) -> tuple[Path, Path]:
    copy_images(src, base / "ds")
    return write_yaml(base / "ds" / "data.yaml", {"train": "images/train", "val": "images/val"}), base / "ds"


def absolute(src: Path, base: Path) -> tuple[Path, Path]:
    copy_images(src, base / "ds")
    doc = {"path": str(base / "ds"), "train": "images/train", "val": "images/val"}
    return write_yaml(base / "cfg" / "data.yaml", doc), base / "ds"


def txt_lists(src: Path, base: Path) -> tuple[Path, Path]:
    """Lists whose lines are relative to the list's folder (Ultralytics alone reads them from the cwd)."""
    root = base / "ds"
    copy_images(src, root)
    for split in ("train", "val"):
        lines = sorted(p.relative_to(root).as_posix() for p in (root / "images" / split).iterdir())
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return write_yaml(root / "data.yaml", {"path": ".", "train": "train.txt", "val": "val.txt"}), root


def roboflow(src: Path, base: Path) -> tuple[Path, Path]:
    """A Roboflow export: ``../train/images`` that only exists as ``train/images`` (Ultralytics' fallback)."""
    root = base / "ds"
    for split in ("train", "val"):
        shutil.copytree(src / "images" / split, root / split / "images")
        shutil.copytree(src / "labels" / split, root / split / "labels")
    return write_yaml(root / "data.yaml", {"train": "../train/images", "val": "../val/images"}), root


LAYOUTS: dict[str, Callable[[Path, Path], tuple[Path, Path]]] = {
    "path: .": path_dot,
    "path: ../elsewhere": path_up,
    "no path": no_path,
    "absolute path": absolute,
    ".txt lists": txt_lists,
    "roboflow ../": roboflow,
}


def expected_images(root: Path, layout: str) -> dict[str, list[Path]]:
    """The images the author means, listed independently of the code under test."""
    if layout == "roboflow ../":
        return {s: sorted((root / s / "images").iterdir()) for s in ("train", "val")}
    return {s: sorted((root / "images" / s).iterdir()) for s in ("train", "val")}


@pytest.fixture
def layout(request, demo_data: Path, tmp_path: Path) -> tuple[str, Path, Path]:
    name = request.param
    data, root = LAYOUTS[name](demo_data.parent, tmp_path / "layout")
    return name, data, root


@pytest.mark.parametrize("layout", list(LAYOUTS), indirect=True)
def test_every_layout_reads_the_same_from_any_folder(layout, tmp_path, monkeypatch):
    """The author's images, whatever the current directory; Ultralytics' reading differs and is said."""
    name, data, root = layout
    expected = expected_images(root, name)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    readings = []
    for cwd in (stranger, data.parent):
        monkeypatch.chdir(cwd)
        dataset, problems = inspect_dataset(data)
        assert dataset is not None, [p.line() for p in problems]
        readings.append(dataset)
        for split, images in expected.items():
            assert dataset.splits[split].images == len(images)
            assert dataset.splits[split].labelled == len(images), "every demo image has labels"
    first, second = readings
    assert first.fingerprint == second.fingerprint and first.splits.keys() == second.splits.keys()
    assert [s.resolved for s in first.splits.values()] == [s.resolved for s in second.splits.values()]
    relative = name in ("path: .", ".txt lists", "path: ../elsewhere")
    assert bool(first.notes) == relative, "a note only where Ultralytics alone would read other folders"
    if relative:
        assert str(stranger) in first.notes[0] and "(missing)" in first.notes[0]


def test_layouts_of_the_same_images_share_a_fingerprint(demo_data, tmp_path):
    """The fingerprint is of the resolved file list (relative to the root), not of the YAML's text."""
    prints = set()
    for i, make in enumerate(LAYOUTS.values()):
        if make is roboflow:
            continue  # other folder names: other paths relative to the root
        data, _ = make(demo_data.parent, tmp_path / f"l{i}")
        dataset, problems = inspect_dataset(data)
        assert dataset is not None, problems
        prints.add(dataset.fingerprint)
    assert len(prints) == 1, prints


@pytest.mark.parametrize("layout", list(LAYOUTS), indirect=True)
def test_ultralytics_reads_the_copy_as_the_author_meant(layout, tmp_path, monkeypatch):
    """Ultralytics' own dataset check on the run folder's copy, started elsewhere, finds the author's images."""
    from ultralytics.data.utils import check_det_dataset

    name, data, root = layout
    dataset, _ = inspect_dataset(data)
    assert dataset is not None
    run_dir = tmp_path / "run"
    copy = write_dataset_copy(dataset, run_dir)
    assert copy == run_dir / DATASET_COPY
    assert write_dataset_copy(dataset, run_dir) == copy, "a resumed run writes the same copy again"
    monkeypatch.chdir(tmp_path)
    checked = check_det_dataset(str(copy))
    for split, images in expected_images(root, name).items():
        entry = Path(checked[split])
        if entry.suffix == ".txt":
            assert entry.parent == run_dir / LISTS_FOLDER
            listed = [Path(line) for line in entry.read_text().splitlines()]
        else:
            listed = sorted(entry.iterdir())
        assert listed == [p.resolve() for p in images]


TRAIN_SCAN = re.compile(r"train: (?:\x1b\[0m)?Scanning (\S+?)(?:\.cache)?\.\.\. (\d+) images")


@pytest.mark.parametrize("layout", ["path: .", ".txt lists", "path: ../elsewhere"], indirect=True)
@pytest.mark.integration
def test_a_real_training_started_elsewhere_trains_on_the_authors_images(layout, tmp_path, monkeypatch):
    """Validated and trained from a folder that holds none of the data: Ultralytics scans the right labels."""
    from flows.engine.decisions.walk import train_spec
    from tasks.trainers.ultra import UltralyticsTrainer

    name, data, root = layout
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    monkeypatch.chdir(stranger)
    overrides = {"imgsz": 64, "epochs": 1}
    cfg = prepare(OptimizeRequest(plan=SHIPPED_PLAN, data=data, profile="smoke", overrides=overrides))
    run_dir = tmp_path / "run"
    write_dataset_copy(cfg.dataset, run_dir)
    spec = train_spec(cfg, run_dir, "phase1")
    assert spec.data == run_dir / DATASET_COPY
    result = UltralyticsTrainer().train(spec, lambda event: None)
    assert result.status == "completed", result.reason
    log = (spec.run_dir / "train.log").read_text(encoding="utf-8")
    scanned = TRAIN_SCAN.search(log)
    assert scanned is not None, log[-2000:]
    train_images = expected_images(root, name)["train"]
    assert int(scanned.group(2)) == len(train_images)
    if name != ".txt lists":
        assert Path(scanned.group(1)) == (root / "labels" / "train").resolve()
