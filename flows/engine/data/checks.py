"""Check the files a run reads and writes before training: the dataset YAML, its images and labels,
pretrained weights and the runs folder; and fingerprint the dataset.

Every problem is reported at once, one ``Problem`` line each, before the run starts (Ultralytics finds
most of them only after it has started). Images are opened with PIL (header and ``verify()``, no pixel
decoding): every image of a split up to ``MAX_IMAGES_CHECKED``, an evenly spaced sample of that many
above it. Why: docs/DATA.md.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

from flows.engine.data.labels import label_path, read_label_files, unpatched_open
from flows.engine.plan.problems import PlanError, Problem

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".dng", ".mpo"}
MAX_LABEL_PROBLEMS = 10
MAX_IMAGE_PROBLEMS = 10
MAX_IMAGES_CHECKED = 2000
"""Images opened per split; above this an evenly spaced sample (about 1 s per 2000 JPEGs)."""
MIN_IMAGE_SIDE = 10
"""Ultralytics refuses images under 10 pixels a side."""
MIN_FREE_BYTES = 100 * 1024 * 1024
"""A run folder holds at least a few checkpoints (an m-scale best.pt is about 40 MB)."""


def is_file(path: Path) -> bool:
    """``Path.is_file`` that answers False for a path the OS cannot even look up (too long, NUL)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def is_dir(path: Path) -> bool:
    """``Path.is_dir`` that answers False for a path the OS cannot even look up."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def load_data_yaml(path: Path) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Read the dataset YAML safely (the plan's reader: no duplicate keys, bounded size)."""
    from flows.engine.plan.loader import read_yaml

    src = str(path)
    if is_dir(path):
        return None, [Problem(src, "", "is a folder; give the dataset YAML file (e.g. data.yaml)")]
    if not is_file(path):
        return None, [Problem(src, "", "dataset YAML not found")]
    try:
        doc = read_yaml(path, what="dataset YAML")
    except PlanError as exc:
        return None, list(exc.problems)
    if not isinstance(doc, dict):
        return None, [Problem(src, "", "a dataset YAML must be a mapping with train, val and names")]
    return doc, []


def names_message(names: Any, nc: Any) -> tuple[str, str] | None:
    """(key, what is wrong) with ``names`` and ``nc``, or None: the first rule that fails."""
    listed = isinstance(names, list | dict)
    bad_nc = nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or nc < 1)
    rules = [
        (names is None and nc is None, "names", "give the class names (names:) or their count (nc:)"),
        (names is not None and not listed, "names", "must be a list of class names or a mapping {0: name}"),
        (bad_nc, "nc", f"must be a whole number ≥ 1, got {nc!r}"),
        (listed and not names, "names", "is empty: name at least one class"),
        (
            isinstance(names, dict) and set(names) != set(range(len(names))),
            "names",
            "a names mapping needs the keys 0, 1, 2 … (one per class)",
        ),
        (
            listed and not bad_nc and nc is not None and nc != len(names),
            "nc",
            f"nc: {nc} but names lists {len(names) if listed else 0} classes",
        ),
    ]
    return next(((key, message) for failed, key, message in rules if failed), None)


def names_problems(doc: dict[str, Any], src: str) -> list[Problem]:
    """``names`` must be a list or a {id: name} mapping, and agree with ``nc`` when both are given."""
    found = names_message(doc.get("names"), doc.get("nc"))
    return [Problem(src, *found)] if found else []


def image_problem(image: Path) -> str | None:
    """What is wrong with one image file (missing, empty, not an image, too small, truncated), or None.

    Uses PIL's header read and ``verify()``: no pixels are decoded. A JPEG without its end
    marker is refused because Ultralytics would rewrite the user's file in place.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        if image.stat().st_size == 0:
            return "empty file (0 bytes)"
        with unpatched_open(Image)(image) as im:
            im.verify()
            width, height, fmt = im.width, im.height, (im.format or "").lower()
        if min(width, height) < MIN_IMAGE_SIDE:
            return f"{width}x{height} pixels; Ultralytics needs at least {MIN_IMAGE_SIDE} a side"
        return truncated_jpeg(image) if fmt in ("jpeg", "mpo") else None
    except FileNotFoundError:
        return "image file not found"
    except UnidentifiedImageError:
        return "not an image (PIL cannot identify it)"
    except Exception as exc:  # PIL raises many kinds for corrupt data
        return f"corrupt image ({type(exc).__name__}: {exc})"


def truncated_jpeg(image: Path) -> str | None:
    """Ultralytics' own test: a JPEG must end with the end-of-image marker FF D9."""
    with open(image, "rb") as handle:
        handle.seek(-2, os.SEEK_END)
        if handle.read() != b"\xff\xd9":
            return "truncated JPEG (no end-of-image marker); Ultralytics would rewrite it in place"
    return None


def images_to_check(images: list[Path]) -> list[Path]:
    """Every image up to ``MAX_IMAGES_CHECKED``; an evenly spaced sample of that many above it."""
    if len(images) <= MAX_IMAGES_CHECKED:
        return images
    step = len(images) / MAX_IMAGES_CHECKED
    return [images[int(i * step)] for i in range(MAX_IMAGES_CHECKED)]


def check_images(images: list[Path], src: str, split: str) -> list[Problem]:
    """Open the images of a split (see ``images_to_check``); report at most a few problems."""
    problems: list[Problem] = []
    for image in images_to_check(images):
        if message := image_problem(image):
            problems.append(Problem(src, split, f"{image}: {message}"))
            if len(problems) >= MAX_IMAGE_PROBLEMS:
                problems.append(Problem(src, split, "more image problems not shown"))
                break
    return problems


def check_labels(images: list[Path], nc: int, src: str, split: str) -> list[Problem]:
    """Read every label file of a split as Ultralytics will (``labels.read_label_files``); report the
    first refused row of each file, at most a few problems per split."""
    problems: list[Problem] = []
    files = [label_path(image) for image in images]
    for lbl, labels in zip(files, read_label_files(files, nc), strict=True):
        if labels.problem is not None:  # no file: an image without objects
            line, message = labels.problem
            problems.append(Problem(src, split, f"{lbl}{'' if line is None else f':{line}'}: {message}"))
        if len(problems) >= MAX_LABEL_PROBLEMS:
            problems.append(Problem(src, split, "more label problems not shown"))
            break
    return problems


def weights_problem(path: Path) -> str | None:
    """Why a pretrained weights file is not a PyTorch checkpoint, or None; never unpickles it.

    ``torch.save`` (and so every Ultralytics ``.pt``) writes a zip archive holding
    ``<name>/data.pkl``. Looking at the archive's table of contents is enough to refuse a
    text file, an HTML error page or a truncated download, without running a pickle from a
    file the user may have downloaded from anywhere.
    """
    try:
        if not path.is_file():
            return f"weights file {path} not found"
        if path.stat().st_size == 0:
            return f"weights file {path} is empty (0 bytes)"
        if not zipfile.is_zipfile(path):
            return f"{path} is not a PyTorch checkpoint (not a torch.save zip archive)"
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        return f"{path}: cannot be read as a checkpoint ({exc})"
    if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
        return f"{path} is a zip archive but not a PyTorch checkpoint (no data.pkl inside)"
    return None


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (what a ``mkdir -p`` would start from)."""
    current = path.absolute()
    while not os.path.lexists(current) and current.parent != current:
        current = current.parent
    return current


def check_runs_dir(runs_dir: Path, *, source: str = "--runs-dir") -> list[Problem]:
    """The runs folder (or the folder it will be created in) must be a writable folder with space.

    Checked without creating anything, so that a dry run and a refused run write nothing.
    Root ignores permission bits, but not a read-only file system, which ``os.access`` sees.
    """
    path = Path(runs_dir)
    try:
        existing = nearest_existing(path)
        if not existing.is_dir():
            what = "is a file" if existing.exists() else "cannot be followed (a broken link?)"
            message = f"{path}: {existing} {what}, not a folder; choose another --runs-dir"
            return [Problem(source, "", message)]
        if not os.access(existing, os.W_OK | os.X_OK):
            return [Problem(source, "", f"{path}: {existing} is not writable; choose another --runs-dir")]
        free = shutil.disk_usage(existing).free
    except OSError as exc:
        return [Problem(source, "", f"{path}: cannot be used ({exc.strerror or exc})")]
    if free < MIN_FREE_BYTES:
        return [
            Problem(
                source,
                "",
                f"{path}: only {free / 1e6:.1f} MB free on its file system; a run needs at least "
                f"{MIN_FREE_BYTES / 1e6:.0f} MB (free some space or choose another --runs-dir)",
            )
        ]
    return []
