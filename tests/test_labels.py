"""The one reading of a YOLO label file and of an image's size (``flows/engine/data/labels.py``) is the
one Ultralytics trains by: checked against ``img2label_paths``, ``verify_image_label`` and, through it,
``exif_size``, on many random label files."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.engine.data.labels import (
    LabelFile,
    image_size,
    label_path,
    labels_of,
    read_label_files,
    read_labels,
)
from tests.test_data_profile import write_image

NC = 3


def ultralytics_reading(image: Path, label: Path, nc: int = NC) -> tuple:
    """``verify_image_label`` of a detection dataset: (boxes, shape hw, missing, empty, corrupt, message)."""
    from ultralytics.data.utils import verify_image_label

    _, lb, shape, _, _, nm, _, ne, corrupt, msg = verify_image_label(
        (str(image), str(label), "", False, nc, 0, 0, False)
    )
    return lb, shape, nm, ne, corrupt, msg


def rows_of(text: str) -> list[tuple[int, list[str]]]:
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), start=1) if line.split()]


@pytest.mark.parametrize(
    "image",
    ["/data/fod/images/train/a.jpg", "/data/images/fod/images/val/b.PNG", "/data/fod/train/c.jpg",
     "/data/images.v2/images/d.jpeg", "/images/e.png"],
)  # fmt: skip
def test_the_label_file_is_ultralytics_own(image: str) -> None:
    from ultralytics.data.utils import img2label_paths

    assert str(label_path(Path(image))) == img2label_paths([image])[0]


GOOD = ["0 0.5 0.5 0.1 0.2", "1 0.25 0.75 0.05 0.3", "2 0.5 0.5 0.9 0.9", "1.0 0.3 0.3 0.2 0.2"]
EDGE = [
    "0 1.005 0.5 0.01 0.01",  # inside Ultralytics' 1 % tolerance
    "0 -0.005 0.5 0.01 0.01",
    "0 1.02 0.5 0.1 0.1",  # outside it
    "0 -0.02 0.5 0.1 0.1",
    "1 0.5 0.5 -0.05 0.1",  # a negative width
    "3 0.5 0.5 0.1 0.1",  # class out of range
    "-1 0.5 0.5 0.1 0.1",
    "1.5 0.5 0.5 0.1 0.1",  # not an integer class
    "0 nan 0.5 0.1 0.1",
    "0 inf 0.5 0.1 0.1",
    "0 0.5 0.5 0.1",  # 4 columns
    "0 0.5 0.5 0.1 0.1 0.9",  # 6 columns
    "0 a 0.5 0.1 0.1",  # not a number
]
POLYGONS = [
    "2 0.1 0.1 0.4 0.1 0.4 0.3",
    "0 0.1 0.1 0.3 0.1 0.3 0.2 0.1 0.2",
    "1 0.5 0.5 1.5 0.5 1.0 0.9",  # points past 1, but its box (cx 1.0, w 1.0) is inside the tolerance
    "1 0.2 0.2 0.4 0.2 0.4",  # an odd number of coordinates
    "2 0.1 0.1 0.4 0.1 0.4 nan",
]


def test_every_label_file_reads_as_ultralytics_reads_it(tmp_path: Path) -> None:
    """Same verdict (read, or refused: the image is dropped), same boxes, same repeats, same empties."""
    rng = random.Random(11)
    image = tmp_path / "images" / "a.png"
    image.parent.mkdir()
    Image.new("RGB", (100, 80), (90, 90, 90)).save(image)
    seen = {"refused": 0, "read": 0, "repeats": 0, "polygons": 0}
    files: list[tuple[Path, LabelFile]] = []
    for i in range(400):
        kind = i % 4
        pool = GOOD + (EDGE if kind == 1 else []) + (POLYGONS if kind >= 2 else [])
        rows = rng.choices(pool, k=rng.randint(0, 6))
        if kind == 3:
            rows = [r for r in rows if len(r.split()) > 6] or ["2 0.1 0.1 0.4 0.1 0.4 0.3"]
        if rows and rng.random() < 0.3:
            rows.append(rows[0])  # a repeat
        text = ("\ufeff" if rng.random() < 0.1 else "") + "\n".join(rows) + ("\n\n" if i % 3 else "")
        label = tmp_path / "labels" / f"{i}.txt"
        label.parent.mkdir(exist_ok=True)
        label.write_text(text, encoding="utf-8")
        ours = read_labels(label, NC)
        files.append((label, ours))
        direct = labels_of(rows_of(text.removeprefix("\ufeff")), NC)  # the row-by-row path
        assert (direct.rows, direct.duplicates, direct.problem) == (ours.rows, ours.duplicates, ours.problem)
        np.testing.assert_array_equal(direct.boxes, ours.boxes)
        lb, _, missing, empty, corrupt, msg = ultralytics_reading(image, label)
        assert (ours.problem is not None) == bool(corrupt), (text, ours.problem, msg)
        assert not missing and not ours.missing
        if corrupt:
            seen["refused"] += 1
            continue
        seen["read"] += 1
        seen["repeats"] += bool(ours.duplicates)
        seen["polygons"] += any(len(r.split()) > 6 for r in rows)
        assert bool(empty) == (ours.rows == 0)
        theirs = lb[np.lexsort(lb.T[::-1])] if len(lb) else lb.reshape(0, 5)
        np.testing.assert_allclose(ours.boxes, theirs, atol=1e-6)
        removed = f"{ours.duplicates} duplicate labels removed" if ours.duplicates else ""
        assert removed in msg and ("duplicate" in msg) == bool(ours.duplicates), (text, msg)
    assert min(seen.values()) > 10, seen
    together = read_label_files([label for label, _ in files], NC)  # all at once, as the checks read them
    for (_, alone), read in zip(files, together, strict=True):
        assert (read.rows, read.duplicates, read.problem) == (alone.rows, alone.duplicates, alone.problem)
        np.testing.assert_array_equal(read.boxes, alone.boxes)


def test_a_missing_label_file_is_an_image_without_objects(tmp_path: Path) -> None:
    image = tmp_path / "images" / "a.png"
    image.parent.mkdir()
    Image.new("RGB", (64, 64)).save(image)
    ours = read_labels(label_path(image), NC)
    assert ours.missing and ours.problem is None and ours.boxes.shape == (0, 5)
    assert ultralytics_reading(image, label_path(image))[2] == 1


def test_the_first_refused_row_is_named_with_its_line() -> None:
    """What ``check_labels`` reports: the first refused line in the file (blank lines counted)."""
    assert labels_of(rows_of("0 .5 .5 .1 .1\n\n0 .5 .5 .1\n"), NC).problem == (
        3,
        "4 columns; a box label has 5 (class cx cy w h)",
    )
    assert labels_of(rows_of("5 .5 .5 .1 .1\n0 a b c d\n"), NC).problem == (
        1,
        "class id 5 is not an integer in [0, 2] (nc = 3)",
    )
    assert labels_of(rows_of("0 a b c d\n5 .5 .5 .1 .1\n"), NC).problem == (1, "non-numeric value")
    assert labels_of(rows_of("0 .5 .5 .1 .1\n1 0.1 0.1 0.4 0.1 0.4 0.3\n"), NC).problem == (
        1,
        "5 columns (a box) in a file of polygon rows; Ultralytics refuses a file that mixes them",
    )
    assert labels_of(rows_of("0 .5 1.7 .1 .1\n"), NC).problem == (
        1,
        "coordinates must be normalised to [0, 1]",
    )
    assert labels_of(rows_of("7 .5 .5 .1 .1\n"), None).problem is None, "no class count: any class id"


def test_an_unreadable_label_file_is_refused(tmp_path: Path) -> None:
    label = tmp_path / "a.txt"
    label.write_bytes(b"0 0.5 0.5 0.1 0.1\n\xff\xfe\n")
    problem = read_labels(label, NC).problem
    assert problem is not None and problem[0] is None and problem[1].startswith("unreadable label file (")


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize("orientation", [None, 1, 3, 5, 6, 8])
def test_the_image_size_is_ultralytics_own(tmp_path: Path, suffix: str, orientation: int | None) -> None:
    """(W, H) after the EXIF rotation, as ``verify_image_label`` reads it (``exif_size`` after verify)."""
    image = write_image(tmp_path / f"a{suffix}", (64, 32), orientation)
    shape = ultralytics_reading(image, tmp_path / "none.txt")[1]
    assert image_size(image) == (shape[1], shape[0])
    assert image_size(image) == ((32, 64) if orientation in (5, 6, 8) else (64, 32))


def test_an_unreadable_image_has_no_size(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    assert image_size(broken) is None
    assert image_size(tmp_path / "missing.jpg") is None
