"""Check a dataset YAML and its files before training, and fingerprint it.

Ultralytics finds most of these problems too, but only after the run has started (and
on a GPU box, after a night's queueing). This reads the same layout (images/… ↔
labels/…) and reports every problem at once.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import yaml

from flows.engine.problems import Problem

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".dng", ".mpo"}
MAX_LABEL_PROBLEMS = 10


def load_data_yaml(path: Path) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Read the dataset YAML safely."""
    src = str(path)
    if not path.is_file():
        return None, [Problem(src, "", "dataset YAML not found")]
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return None, [Problem(src, "", f"cannot read dataset YAML: {str(exc).splitlines()[0]}")]
    if not isinstance(doc, dict):
        return None, [Problem(src, "", "a dataset YAML must be a mapping with train, val and names")]
    return doc, []


def class_count(doc: dict[str, Any]) -> int | None:
    """Number of classes from ``nc`` or ``names``."""
    if isinstance(doc.get("nc"), int):
        return int(doc["nc"])
    names = doc.get("names")
    return len(names) if isinstance(names, list | dict) else None


def dataset_root(path: Path, doc: dict[str, Any]) -> Path:
    """The folder ``train``/``val`` are relative to (Ultralytics' ``path`` key, else the YAML's folder)."""
    root = doc.get("path")
    if root is None:
        return path.parent
    root_path = Path(str(root)).expanduser()
    return root_path if root_path.is_absolute() else (path.parent / root_path)


def split_images(root: Path, entry: Any) -> tuple[list[Path], str | None]:
    """Image files of one split (a folder, a .txt list, or a list of those)."""
    entries = entry if isinstance(entry, list) else [entry]
    images: list[Path] = []
    for item in entries:
        p = Path(str(item))
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            images += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file() and p.suffix == ".txt":
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
            images += [Path(ln) if Path(ln).is_absolute() else p.parent / ln for ln in lines]
        else:
            return [], f"{p} does not exist"
    return images, None


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last 'images' folder in the path becomes 'labels', suffix .txt."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def label_line_problem(line: str, nc: int) -> str | None:
    """What is wrong with one label line (class cx cy w h, normalised), or None."""
    fields = line.split()
    if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
        return f"{len(fields)} columns; a box label has 5 (class cx cy w h)"
    try:
        values = [float(v) for v in fields]
    except ValueError:
        return "non-numeric value"
    cls = values[0]
    if not cls.is_integer() or not 0 <= cls < nc:
        return f"class id {fields[0]} is not an integer in [0, {nc - 1}] (nc = {nc})"
    coords = values[1:]
    if any(not math.isfinite(v) or v < 0 or v > 1.0001 for v in coords):
        return "coordinates must be normalised to [0, 1]"
    return None


def check_labels(images: list[Path], nc: int, src: str, split: str) -> list[Problem]:
    """Parse every label file of a split; report at most a few problems per split."""
    problems: list[Problem] = []
    for image in images:
        lbl = label_path(image)
        if not lbl.is_file():
            continue  # Ultralytics treats an image without labels as background
        try:
            lines = lbl.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(src, split, f"{lbl}: unreadable label file ({exc})"))
            continue
        for n, line in enumerate(lines, start=1):
            if line.strip() and (msg := label_line_problem(line, nc)):
                problems.append(Problem(src, split, f"{lbl}:{n}: {msg}"))
                break
        if len(problems) >= MAX_LABEL_PROBLEMS:
            problems.append(Problem(src, split, "more label problems not shown"))
            break
    return problems


def check_dataset(path: Path) -> list[Problem]:
    """Every problem with a dataset YAML, its folders and its labels."""
    path = Path(path)
    doc, problems = load_data_yaml(path)
    if doc is None:
        return problems
    src = str(path)
    nc = class_count(doc)
    if nc is None or nc < 1:
        problems.append(Problem(src, "names", "give the class names (names:) or their count (nc:)"))
        nc = 0
    root = dataset_root(path, doc)
    for split in ("train", "val"):
        if split not in doc:
            problems.append(Problem(src, split, f"missing {split}: entry"))
            continue
        images, missing = split_images(root, doc[split])
        if missing:
            problems.append(Problem(src, split, missing))
        elif not images:
            problems.append(Problem(src, split, "no images found"))
        elif nc:
            problems += check_labels(images, nc, src, split)
    return problems


def fingerprint_dataset(path: Path) -> str:
    """A short hash of the dataset YAML, its image names and sizes, and its label contents.

    Cheap enough for thousands of images (no pixel reads), and it changes whenever a
    label, an image or the split changes, which is what decides whether results compare.
    """
    path = Path(path)
    digest = hashlib.sha256(path.read_bytes())
    doc, _ = load_data_yaml(path)
    if doc:
        root = dataset_root(path, doc)
        for split in ("train", "val"):
            images, _ = split_images(root, doc.get(split, []))
            for image in images:
                digest.update(f"{split}/{image.name}:{image.stat().st_size}".encode())
                lbl = label_path(image)
                if lbl.is_file():
                    digest.update(lbl.read_bytes())
    return digest.hexdigest()[:16]
