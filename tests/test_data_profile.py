"""The dataset profile: counts on the real shared datasets equal a count done here, directly; leakage,
plan-sanity warnings, the label-reading rules, the renderings."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest
from PIL import Image

from flows.engine.data import profile as prof
from flows.engine.data.labels import label_path, read_labels
from flows.engine.data.profile import PhaseShape, profile_dataset
from flows.engine.fsutil import AlreadyExistsError
from tests.conftest import ROOT, SHARED, needs_shared

DATASETS = SHARED / "datasets"
EDGES = (4, 8, 16, 32, 64, 128, 256)


def list_images(root: Path, split: str) -> list[Path]:
    """The images of a split folder, as the test sees them."""
    return sorted(p for p in (root / "images" / split).iterdir() if p.suffix.lower() in {".jpg", ".png"})


def shared_splits(name: str) -> dict[str, list[Path]]:
    """train/val image lists of a shared dataset."""
    root = DATASETS / name
    return {split: list_images(root, split) for split in ("train", "val")}


def direct_count(root: Path, split: str, nc: int, imgsz: int) -> dict:
    """Everything the profile reports for one split, counted plainly from the files."""
    images = list_images(root, split)
    out = {
        "images": len(images),
        "empty": 0,
        "instances": [0] * nc,
        "class_images": [0] * nc,
        "px": [],
    }
    for image in images:
        label = root / "labels" / split / f"{image.stem}.txt"
        rows = [line.split() for line in label.read_text().splitlines() if line.strip()]
        if not rows:
            out["empty"] += 1
            continue
        with Image.open(image) as im:
            assert im.getexif().get(274) is None  # no EXIF rotation: the plain size is the right one
            width, height = im.size
        classes = set()
        for row in rows:
            cls, w, h = int(row[0]), float(row[3]), float(row[4])
            out["instances"][cls] += 1
            classes.add(cls)
            out["px"].append(max(w * width, h * height) * imgsz / max(width, height))
        for cls in classes:
            out["class_images"][cls] += 1
    bounds = [0.0, *EDGES, float("inf")]
    out["histogram"] = [sum(lo <= px < hi for px in out["px"]) for lo, hi in pairwise(bounds)]
    out["small"] = sum(px < 8 for px in out["px"])
    out["large"] = sum(px > 64 for px in out["px"])
    return out


def source_table(name: str) -> dict[str, list[int]]:
    """SOURCE.md's 'Contents' rows: split → [images, instances, <16, 16–32, 32–64, >64]."""
    text = (DATASETS / name / "SOURCE.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (train|val) +\| ([\d |]+)\|$", text, flags=re.M)
    return {split: [int(v) for v in cells.split("|")] for split, cells in rows}


# ----------------------------------------------------------------------------------------- real data


@needs_shared
@pytest.mark.parametrize("name", ["golfball_small", "lunar_crater_small"])
@pytest.mark.parametrize("imgsz", [640, 320])
def test_counts_equal_a_direct_count(name: str, imgsz: int) -> None:
    profile = profile_dataset(shared_splits(name), {0: "object"}, imgsz)
    for split in ("train", "val"):
        expected = direct_count(DATASETS / name, split, 1, imgsz)
        got = profile.splits[split]
        assert got.images == expected["images"]
        assert got.empty_images == expected["empty"]
        assert got.instances == sum(expected["instances"])
        assert list(got.class_instances) == expected["instances"]
        assert list(got.class_images) == expected["class_images"]
        assert list(got.histogram) == expected["histogram"]
        assert got.measured_boxes == len(expected["px"])
        assert got.small_boxes == expected["small"]
        assert got.large_boxes == expected["large"]
        assert got.min_px == pytest.approx(min(expected["px"]))
        assert got.max_px == pytest.approx(max(expected["px"]))
        assert (got.invalid_rows, got.duplicate_rows, got.unreadable_images) == (0, 0, 0)
    total = profile.overall
    assert total.images == sum(profile.splits[s].images for s in ("train", "val"))
    assert list(total.histogram) == [
        a + b for a, b in zip(*(profile.splits[s].histogram for s in ("train", "val")), strict=True)
    ]


@needs_shared
@pytest.mark.parametrize("name", ["golfball_small", "lunar_crater_small"])
def test_counts_agree_with_source_md(name: str) -> None:
    """SOURCE.md counted the boxes at the stored size (longest side 640) with bins [lo, hi)."""
    profile = profile_dataset(shared_splits(name), ["object"], 640)
    table = source_table(name)
    assert set(table) == {"train", "val"}
    for split, (images, instances, under16, to32, to64, over64) in table.items():
        got = profile.splits[split]
        hist = got.histogram
        assert (got.images, got.instances) == (images, instances)
        assert (sum(hist[:3]), hist[3], hist[4], sum(hist[5:])) == (under16, to32, to64, over64)
        assert got.empty_images == 0  # "Every image has at least one box" / "Every image has boxes"


@needs_shared
def test_shared_datasets_are_profiled_in_well_under_a_second() -> None:
    """CPU time, not wall time: the machine is shared, and contention must not fail the test."""
    splits = [shared_splits(n) for n in ("golfball_small", "lunar_crater_small")]
    phases = [PhaseShape("phase1", 640, 32), PhaseShape("phase2", 640, 16)]
    started = time.process_time()
    for s in splits:
        profile_dataset(s, ["object"], 640, phases)
    assert time.process_time() - started < 1.0


@needs_shared
def test_only_files_whose_size_occurs_in_two_splits_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[Path] = []
    real_quick, real_full = prof.quick_digest, prof.full_digest
    monkeypatch.setattr(prof, "quick_digest", lambda p, size: read.append(p) or real_quick(p, size))
    monkeypatch.setattr(prof, "full_digest", lambda p: read.append(p) or real_full(p))
    splits = shared_splits("lunar_crater_small") | {"test": shared_splits("golfball_small")["val"]}
    profile = profile_dataset(splits, ["object"], 640)
    sizes = {s: {p.stat().st_size for p in images} for s, images in splits.items()}
    shared_sizes = {z for a in sizes for b in sizes if a != b for z in sizes[a] & sizes[b]}
    assert all(p.stat().st_size in shared_sizes for p in read)
    assert profile.leaks == ()


# ----------------------------------------------------------------------------------------- leakage


@needs_shared
def test_leakage_is_found_by_content_not_by_name(tmp_path: Path) -> None:
    sources = list_images(DATASETS / "golfball_small", "train")
    by_size: dict[int, Path] = {}
    for p in sources:
        by_size.setdefault(p.stat().st_size, p)
    bases = list(by_size.values())[:8]  # distinct sizes: only the files made alike below may collide
    assert all(b.stat().st_size > 2 * prof.QUICK_HASH_BYTES for b in bases)
    train = []
    for i, base in enumerate(bases[:6]):
        train.append(tmp_path / "train" / f"t{i}.jpg")
        train[-1].parent.mkdir(exist_ok=True)
        shutil.copyfile(base, train[-1])
    val_dir = tmp_path / "val"
    val_dir.mkdir()
    copy, flipped, link, other = (val_dir / f"v{i}.jpg" for i in range(4))
    shutil.copyfile(train[0], copy)  # same bytes, other name: leakage
    data = bytearray(train[1].read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, same ends, other content: not leakage
    flipped.write_bytes(bytes(data))
    os.link(train[2], link)  # a hard link: the same file, leakage
    shutil.copyfile(bases[7], other)
    val = [copy, flipped, link, other]

    profile = profile_dataset({"train": train, "val": val}, ["ball"], 640)

    assert len(profile.leaks) == 1
    leak = profile.leaks[0]
    assert (leak.first, leak.second, leak.images) == ("train", "val", 2)
    assert set(leak.examples) == {(str(train[0]), str(copy)), (str(train[2]), str(link))}
    # read whole: t0 and its copy, t1 and the flipped file; the hard link is one file
    assert profile.hashed_files == 5
    [warning] = [w for w in profile.warnings if w.kind == "leakage"]
    assert warning.where == "val" and "2 val image(s)" in warning.message


# ----------------------------------------------------------------------------------------- plan sanity


@needs_shared
def test_a_phase_without_p5_is_warned_when_too_many_boxes_are_large() -> None:
    expected = sum(
        direct_count(DATASETS / "lunar_crater_small", s, 1, 640)["large"] for s in ("train", "val")
    )
    total = sum(len(direct_count(DATASETS / "lunar_crater_small", s, 1, 640)["px"]) for s in ("train", "val"))
    assert expected / total > prof.MAX_LARGE_SHARE_WITHOUT_P5  # lunar craters: a few percent are large
    phases = [("phase1", 640, 32), ("phase2", 640, 16)]
    profile = profile_dataset(shared_splits("lunar_crater_small"), ["crater"], 640, phases)
    assert [(c.name, c.drops_p5, c.large_boxes, c.warned) for c in profile.phases] == [
        ("phase1", False, expected, False),
        ("phase2", True, expected, True),
    ]
    [warning] = profile.warnings
    assert warning.kind == "large_boxes_without_p5" and warning.where == "nodes.phase2"
    assert f"{expected} of {total} boxes" in warning.message

    relaxed = profile_dataset(
        shared_splits("lunar_crater_small"), ["crater"], 640, phases, max_large_share=0.05
    )
    assert relaxed.warnings == ()


@needs_shared
def test_each_phase_is_checked_at_its_own_imgsz() -> None:
    """Golf balls are all under 48 px at 640, so none is large there; at 1280 every ball over 32 px is."""
    over32 = sum(
        sum(px > 32 for px in direct_count(DATASETS / "golfball_small", s, 1, 640)["px"])
        for s in ("train", "val")
    )
    assert over32 > 0
    phases = [("phase1", 1280, 32), ("lite640", 640, 16), ("lite1280", 1280, 16)]
    profile = profile_dataset(shared_splits("golfball_small"), ["golf_ball"], 640, phases)
    assert [(c.name, c.large_boxes, c.warned) for c in profile.phases] == [
        ("phase1", over32, False),  # it keeps the stride-32 head
        ("lite640", 0, False),
        ("lite1280", over32, True),
    ]
    assert [w.where for w in profile.warnings] == ["nodes.lite1280"]


@needs_shared
def test_classes_without_validation_instances_are_warned() -> None:
    profile = profile_dataset(shared_splits("golfball_small"), ["golf_ball", "tee", "marker"], 640)
    assert profile.splits["val"].class_instances == (61, 0, 0)
    [warning] = profile.warnings
    assert warning.kind == "class_without_val" and warning.where == "val"
    assert "'tee', 'marker'" in warning.message and "golf_ball" not in warning.message
    assert profile_dataset(shared_splits("golfball_small"), ["golf_ball"], 640).warnings == ()

    problems = prof.warning_problems(profile, plan="plan.yaml", data="data.yaml")
    assert [(p.source, p.where, p.severity) for p in problems] == [("data.yaml", "val", "warning")]
    assert problems[0].line().startswith("warning: data.yaml: val: classes 'tee', 'marker' have no instances")
    assert problems[0].line() == f"warning: data.yaml: val: {warning.message}"


# ----------------------------------------------------------------------------------------- label rules


def write_image(path: Path, size: tuple[int, int], orientation: int | None = None) -> Path:
    """A small real image; a JPEG may carry an EXIF orientation tag."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, (90, 90, 90))
    if orientation is None:
        im.save(path)
    else:
        exif = Image.Exif()
        exif[274] = orientation
        im.save(path, exif=exif.tobytes())
    return path


def write_label(image: Path, text: str) -> None:
    """The label file next to an images/ folder."""
    label = image.parent.parent.parent / "labels" / image.parent.name / f"{image.stem}.txt"
    label.parent.mkdir(parents=True, exist_ok=True)
    label.write_text(text, encoding="utf-8")


def test_label_rows_are_read_as_ultralytics_reads_them(tmp_path: Path) -> None:
    images = tmp_path / "images" / "train"
    rotated = write_image(images / "rotated.jpg", (200, 100), orientation=6)  # shown as 100 x 200
    write_label(rotated, "0 0.5 0.5 0.5 0.1\n")  # 0.5*100 = 50 px wide, 0.1*200 = 20 px high
    repeated = write_image(images / "repeated.png", (100, 100))
    write_label(repeated, "1 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.1 0.1\n\n")  # a repeat: dropped
    polygon = write_image(images / "polygon.png", (100, 100))
    write_label(polygon, "1 0.1 0.1 0.3 0.1 0.3 0.5\n")  # a polygon: its box is 0.2 x 0.4
    mixed = write_image(images / "mixed.png", (100, 100))
    write_label(
        mixed,
        "1 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.1 0.1\n\n"
        "1 0.1 0.1 0.3 0.1 0.3 0.5\n"  # a polygon among boxes: Ultralytics refuses the file
        "5 0.5 0.5 0.1 0.1\n0 a b c d\n",  # class out of range; not a number
    )
    bad_class = write_image(images / "bad_class.png", (100, 100))
    write_label(bad_class, "0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n")  # refused whole
    bad_number = write_image(images / "bad_number.png", (100, 100))
    write_label(bad_number, "0 0.5 0.5 0.1 abc\n0 0.5 0.5 0.3 0.3\n")
    no_label = write_image(images / "no_label.png", (100, 100))
    empty = write_image(images / "empty.png", (100, 100))
    write_label(empty, "\n")
    broken = images / "broken.jpg"
    broken.write_text("not an image")
    write_label(broken, "0 0.5 0.5 0.1 0.1\n")
    split = [rotated, repeated, polygon, mixed, bad_class, bad_number, no_label, empty, broken]

    profile = profile_dataset({"train": split}, ["a", "b"], 200)
    got = profile.splits["train"]
    assert got.images == 9
    assert (got.empty_images, got.missing_labels) == (5, 1)  # mixed, bad_class, bad_number, no_label, empty
    assert got.class_instances == (1 + 1, 1 + 1)  # rotated, broken; repeated, polygon
    assert got.class_images == (2, 2)
    assert (got.invalid_rows, got.duplicate_rows, got.unreadable_images) == (5 + 3 + 2, 1, 1)
    assert got.measured_boxes == 3  # every box but the broken image's
    # at imgsz 200: rotated 50 px; repeated 0.1*100*2 = 20 px; polygon 0.4*100*2 = 80 px
    assert got.max_px == pytest.approx(80)
    assert got.min_px == pytest.approx(20)
    assert got.histogram == (0, 0, 0, 1, 1, 1, 0, 0)  # [16,32): 20; [32,64): 50; [64,128): 80
    assert got.large_boxes == 1


def test_bulk_reading_equals_the_one_reading_of_each_file(tmp_path: Path) -> None:
    """Many random label files: the vectorised path must count what ``read_labels`` reads."""
    rng = random.Random(7)
    nc, imgsz = 3, 320
    pool = [
        "0 0.5 0.5 0.1 0.2",
        "1 0.25 0.75 0.05 0.3",
        "2 0.5 0.5 0.9 0.9",
        "3 0.5 0.5 0.1 0.1",  # class out of range
        "1 0.5 0.5 1.2 0.1",  # not normalised
        "1.5 0.5 0.5 0.1 0.1",  # not an integer class
        "0 nan 0.5 0.1 0.1",
        "0 0.5 0.5 0.1",  # 4 columns
        "2 0.1 0.1 0.4 0.1 0.4 0.3",  # polygon
    ]
    images, expected_instances, expected_px, expected_invalid, expected_dup = [], [0] * nc, [], 0, 0
    for i in range(60):
        size = (rng.choice([64, 100, 160]), rng.choice([64, 100, 160]))
        image = write_image(tmp_path / "images" / "train" / f"{i}.png", size)
        weights = [5, 5, 5, 0, 0, 0, 0, 0, 0] if i % 2 else [5, 5, 5, 1, 1, 1, 1, 1, 1]  # half are clean
        if i % 10 == 4:
            weights = [0] * 8 + [1]  # polygon files too
        rows = rng.choices(pool, weights=weights, k=rng.randint(0, 8))
        write_label(image, "\n".join(rows) + "\n")
        images.append(image)
        labels = read_labels(label_path(image), nc)
        if labels.problem is not None:
            expected_invalid += labels.rows
            continue
        expected_dup += labels.duplicates
        for cls, _, _, w, h in labels.boxes.tolist():
            expected_instances[int(cls)] += 1
            expected_px.append(max(w * size[0], h * size[1]) * imgsz / max(size))
    got = profile_dataset({"train": images}, ["a", "b", "c"], imgsz).splits["train"]
    assert list(got.class_instances) == expected_instances
    assert (got.invalid_rows, got.duplicate_rows) == (expected_invalid, expected_dup)
    assert expected_invalid and expected_dup and expected_instances[2], "the files cover every case"
    assert got.large_boxes == sum(px > 64 for px in expected_px)
    assert got.small_boxes == sum(px < 8 for px in expected_px)
    assert got.max_px == pytest.approx(max(expected_px))


# ----------------------------------------------------------------------------------------- rendering


@needs_shared
def test_text_and_markdown_show_the_counts(tmp_path: Path) -> None:
    phases = [("phase1", 640, 32), ("phase2", 640, 16)]
    profile = profile_dataset(shared_splits("golfball_small"), {0: "golf|ball"}, 640, phases)
    assert (
        prof.DataProfile.model_validate_json(profile.model_dump_json()) == profile
    )  # e.g. into decision.json
    text = prof.render_text(profile)
    lines = text.splitlines()
    assert len(lines) < 20
    assert re.search(r"train +120 images \(0 empty\), +154 boxes", text)
    assert re.search(r"val +36 images \(0 empty\), +61 boxes", text)
    histogram = [ln for ln in lines if re.match(r"^ +\S+ px +\d+ ", ln)]
    assert [int(ln.split()[2]) for ln in histogram] == list(profile.overall.histogram)
    assert "phase2: imgsz 640, no stride-32 head" in text

    md = prof.render_markdown(profile, histogram_png="data_profile.png")
    assert "| train | 120 | 0 (0) | 154 |" in md
    assert "| 0 | golf\\|ball | 120 | 154 | 36 | 61 |" in md  # a | in a name does not break the table
    assert "| 16–32 | 81 | 34 | 115 |" in md
    assert "![box longest side](data_profile.png)" in md
    assert "| phase2 | 640 | 16 |" in md
    assert profile.warnings == ()
    leaky = profile_dataset(
        {"train": shared_splits("golfball_small")["train"]}
        | {"val": shared_splits("golfball_small")["train"][:2]},
        ["golf_ball"],
        640,
    )
    assert "### Data warnings" in prof.render_markdown(leaky)
    assert "### Data warnings" not in prof.render_markdown(leaky, with_warnings=False)

    png = prof.plot_histogram(profile, tmp_path / "data_profile.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 200
    with pytest.raises(AlreadyExistsError):
        prof.plot_histogram(profile, png)


def test_nothing_to_draw_without_boxes(tmp_path: Path) -> None:
    image = write_image(tmp_path / "images" / "val" / "a.png", (64, 64))
    profile = profile_dataset({"val": [image]}, ["a"], 64)
    assert profile.overall.measured_boxes == 0 and profile.splits["val"].empty_images == 1
    assert prof.plot_histogram(profile, tmp_path / "h.png") is None
    assert not (tmp_path / "h.png").exists()
    assert "0 boxes" in prof.render_text(profile)
    [warning] = profile.warnings
    assert warning.kind == "class_without_val"


def test_importing_the_module_loads_nothing_heavy() -> None:
    code = (
        "import sys, flows.engine.data.profile; "
        "print(sorted(m for m in ('PIL', 'matplotlib', 'torch', 'prefect', 'ultralytics') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------------------- scale


@needs_shared
@pytest.mark.slow
def test_ten_thousand_images(tmp_path: Path) -> None:
    """10 000 hard links to 20 real images: every val image leaks, and each file is hashed once."""
    source = DATASETS / "golfball_small"
    bases = list_images(source, "train")[:20]
    counts = [len((source / "labels" / "train" / f"{b.stem}.txt").read_text().split()) // 5 for b in bases]
    splits: dict[str, list[Path]] = {"train": [], "val": []}
    for split, n in (("train", 8000), ("val", 2000)):
        for i in range(n):
            base = bases[i % len(bases)]
            image = tmp_path / "images" / split / f"{i:05d}.jpg"
            image.parent.mkdir(parents=True, exist_ok=True)
            os.link(base, image)
            write_label(image, (source / "labels" / "train" / f"{base.stem}.txt").read_text())
            splits[split].append(image)
    started = time.process_time()
    profile = profile_dataset(splits, ["golf_ball"], 640, [("phase2", 640, 16)])
    cpu_s = time.process_time() - started
    assert profile.splits["train"].instances == sum(counts) * 400
    assert profile.splits["val"].instances == sum(counts) * 100
    assert [(leak.first, leak.second, leak.images) for leak in profile.leaks] == [("train", "val", 2000)]
    assert profile.hashed_files == 20
    assert cpu_s < 15, f"{cpu_s:.1f} s of CPU for 10 000 images"
