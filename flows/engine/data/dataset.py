"""One reading of a dataset YAML, the same for validation, every training and every resumed run.

``resolve_dataset(data_yaml)`` reads the YAML as its author meant it (``path`` relative to the YAML's own
folder, where Ultralytics reads it against the current directory; ``train``/``val``/``test`` as folders,
``.txt`` image lists or lists of either) into a ``ResolvedDataset``, with its images and problems;
``write_dataset_copy`` writes it into the run folder with absolute paths, the copy every training of the
run reads; the data fingerprint comes from the resolved file list. The rules: docs/DATA.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flows.engine.base import Frozen
from flows.engine.data.checks import (
    IMAGE_SUFFIXES,
    check_images,
    check_labels,
    is_dir,
    is_file,
    load_data_yaml,
    names_problems,
)
from flows.engine.data.labels import label_path
from flows.engine.fsutil import write_text_once
from flows.engine.plan.problems import Problem, errors_of

SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "val")
DATASET_COPY = "dataset.yaml"
"""The resolved dataset YAML in the run folder, which every training of the run reads."""
LISTS_FOLDER = "dataset-lists"
"""Resolved image lists (absolute paths), for splits given as ``.txt`` lists."""
RESOLVED_KEYS = ("path", *SPLITS)


class SplitSource(Frozen):
    """One split as written and as resolved, with what it holds."""

    written: tuple[str, ...]
    """The entries as the YAML writes them."""
    resolved: tuple[Path, ...]
    """Absolute folders or ``.txt`` lists, as the author meant them."""
    images: int
    labelled: int
    """Images that have a label file (the others count as background)."""
    ultralytics: tuple[Path, ...] | None = None
    """What Ultralytics alone would read from the current directory, when that differs."""


class ResolvedDataset(Frozen):
    """A dataset YAML read once, as its author meant it."""

    source: Path
    """The user's YAML (absolute)."""
    root: Path
    names: dict[int, str]
    splits: dict[str, SplitSource]
    extra: dict[str, Any]
    """Every other key of the YAML, as written (``download``, ``kpt_shape``...)."""
    fingerprint: str
    notes: tuple[str, ...] = ()
    """Where Ultralytics' own reading would have used other folders, and which reading is used."""

    @property
    def nc(self) -> int:
        """Number of classes."""
        return len(self.names)


def names_of(doc: dict[str, Any]) -> dict[int, str]:
    """Class names as ``{id: name}`` (a list, a mapping, or only ``nc``)."""
    names = doc.get("names")
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    if isinstance(names, list):
        return dict(enumerate(map(str, names)))
    return {i: f"class{i}" for i in range(int(doc.get("nc") or 0))}


def author_root(yaml_path: Path, doc: dict[str, Any]) -> Path:
    """``path`` relative to the YAML's folder (absent or empty: the YAML's folder), absolute."""
    folder = yaml_path.resolve().parent
    value = doc.get("path")
    if value in (None, ""):
        return folder
    root = Path(str(value)).expanduser()
    return (root if root.is_absolute() else folder / root).resolve()


def ultralytics_root(yaml_path: Path, doc: dict[str, Any], cwd: Path) -> Path:
    """Where Ultralytics 8.4 (``check_det_dataset``) puts the root: a relative ``path`` against ``cwd``."""
    value = doc.get("path")
    if value in (None, ""):
        return yaml_path.resolve().parent
    root = Path(str(value)).expanduser()
    return (root if root.is_absolute() else cwd / root).resolve()


def resolve_entry(root: Path, entry: str) -> Path:
    """One split entry against the root, with Ultralytics' ``../`` fallback for Roboflow exports."""
    path = Path(entry).expanduser()
    resolved = (path if path.is_absolute() else root / path).resolve()
    if not resolved.exists() and entry.startswith("../"):
        resolved = (root / entry[3:]).resolve()
    return resolved


def split_entries(value: Any) -> tuple[list[str], str | None]:
    """A split's entries as strings, or why it cannot be read."""
    items = value if isinstance(value, list) else [value]
    entries: list[str] = []
    for item in items:
        if not isinstance(item, str | int | float) or isinstance(item, bool) or str(item).strip() == "":
            return [], f"must be a folder, a .txt list of images, or a list of those; got {item!r}"
        entries.append(str(item))
    return entries, None


def list_images(resolved: Path) -> list[Path]:
    """The images of one resolved entry: a folder (recursively) or a .txt list (relative to its folder)."""
    if is_dir(resolved):
        return sorted(f for f in resolved.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    lines = [ln.strip() for ln in resolved.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return [(Path(ln) if Path(ln).is_absolute() else resolved.parent / ln).resolve() for ln in lines]


def entry_problem(resolved: Path, written: str) -> str | None:
    """Why a resolved entry cannot be used, or None."""
    if is_dir(resolved):
        return None
    if is_file(resolved) and resolved.suffix == ".txt":
        return None
    if is_file(resolved):
        return f"{resolved} is a file but not a .txt list of images (written {written!r})"
    return f"{resolved} does not exist (written {written!r}, read relative to the dataset root)"


def split_images(source: SplitSource) -> Iterator[Path]:
    """Every image of a resolved split, in a stable order."""
    for resolved in source.resolved:
        yield from list_images(resolved)


def resolve_split(
    name: str, value: Any, root: Path, u_root: Path, src: str
) -> tuple[SplitSource | None, list[Path], list[Problem]]:
    """Resolve one split; return it with its images (for checks and the fingerprint) or its problems."""
    entries, problem = split_entries(value)
    if problem:
        return None, [], [Problem(src, name, problem)]
    resolved = [resolve_entry(root, entry) for entry in entries]
    problems = [
        Problem(src, name, message)
        for path, entry in zip(resolved, entries, strict=True)
        if (message := entry_problem(path, entry))
    ]
    if problems:
        return None, [], problems
    try:
        images = [image for path in resolved for image in list_images(path)]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [], [Problem(src, name, f"cannot be read ({exc})")]
    if not images:
        return None, [], [Problem(src, name, f"no images found in {', '.join(map(str, resolved))}")]
    theirs = tuple(resolve_entry(u_root, entry) for entry in entries)
    source = SplitSource(
        written=tuple(entries),
        resolved=tuple(resolved),
        images=len(images),
        labelled=sum(1 for image in images if is_file(label_path(image))),
        ultralytics=None if theirs == tuple(resolved) else theirs,
    )
    return source, images, []


def reading_note(src: str, doc: dict[str, Any], root: Path, splits: dict[str, SplitSource], cwd: Path) -> str:
    """One line: Ultralytics alone would have read other folders; which were used."""
    differing = {name: s for name, s in splits.items() if s.ultralytics is not None}
    theirs = "; ".join(
        f"{name} → {', '.join(str(p) + ('' if p.exists() else ' (missing)') for p in s.ultralytics or ())}"
        for name, s in differing.items()
    )
    return (
        f"{src}: path: {doc.get('path')!r} is read relative to the YAML's folder (root {root}); "
        f"Ultralytics alone, started in {cwd}, would read {theirs}. Every training uses the YAML's "
        "reading, through a resolved copy in the run folder"
    )


@dataclass
class Resolution:
    """What resolving a dataset YAML found: the dataset (None on any problem), each split's images that
    could be listed, the class count (0 when the names are broken) and every problem."""

    dataset: ResolvedDataset | None = None
    images: dict[str, list[Path]] = field(default_factory=dict)
    nc: int = 0
    problems: list[Problem] = field(default_factory=list)


def inspect_dataset(path: Path, cwd: Path | None = None) -> tuple[ResolvedDataset | None, list[Problem]]:
    """Read a dataset YAML once, as its author meant it, and check its images and labels.

    Returns the dataset, or None and every problem found (a missing folder, an unreadable image, a
    label with a class id ≥ nc...), all at once: splits that resolve are checked even when another
    does not. ``cwd`` is where Ultralytics alone would resolve a relative ``path`` (default: the
    current directory), for the note that says the readings differ.
    """
    found = resolve_dataset(path, cwd)
    problems = list(found.problems)
    for name, images in found.images.items():
        problems += check_images(images, str(path), name)
        if found.nc:
            problems += check_labels(images, found.nc, str(path), name)
    return (None if errors_of(problems) else found.dataset), problems


def resolve_dataset(path: Path, cwd: Path | None = None) -> Resolution:
    """Resolve a dataset YAML as its author meant it.

    The config carries only counts; images are listed again where they are needed
    (``dataset_images``: the copy, the data profile).
    """
    path = Path(path)
    src = str(path)
    doc, problems = load_data_yaml(path)
    if doc is None:
        return Resolution(problems=problems)
    problems += names_problems(doc, src)
    nc = 0 if problems else len(names_of(doc))
    cwd = Path(cwd or Path.cwd()).resolve()
    root, u_root = author_root(path, doc), ultralytics_root(path, doc, cwd)
    splits: dict[str, SplitSource] = {}
    listed: dict[str, list[Path]] = {}
    for name in SPLITS:
        if name not in doc or doc[name] in (None, ""):
            if name in REQUIRED_SPLITS:
                problems.append(Problem(src, name, f"missing {name}: entry"))
            continue
        source, images, split_problems = resolve_split(name, doc[name], root, u_root, src)
        problems += split_problems
        if source is not None:
            splits[name], listed[name] = source, images
    if problems:
        return Resolution(images=listed, nc=nc, problems=problems)
    names = names_of(doc)
    differs = any(s.ultralytics is not None for s in splits.values())
    dataset = ResolvedDataset(
        source=path.resolve(),
        root=root,
        names=names,
        splits=splits,
        extra={k: v for k, v in doc.items() if k not in (*RESOLVED_KEYS, "names", "nc")},
        fingerprint=fingerprint(names, listed, root),
        notes=(reading_note(src, doc, root, splits, cwd),) if differs else (),
    )
    return Resolution(dataset=dataset, images=listed, nc=nc)


def dataset_images(dataset: ResolvedDataset) -> dict[str, list[Path]]:
    """Every image of every split (listed from disk again: the config carries only counts)."""
    return {name: list(split_images(source)) for name, source in dataset.splits.items()}


def fingerprint(names: dict[int, str], images: dict[str, list[Path]], root: Path) -> str:
    """A short hash of the class names and the resolved file list: each image's name and size, its labels.

    Paths count relative to the root, so the same dataset copied elsewhere keeps its fingerprint;
    any changed label, image or split changes it. No pixel is read.
    """
    digest = hashlib.sha256(repr(sorted(names.items())).encode())
    for split, files in images.items():
        for image in files:
            shown = image.relative_to(root) if image.is_relative_to(root) else image
            size = image.stat().st_size if image.is_file() else -1
            digest.update(f"{split}/{shown.as_posix()}:{size}\n".encode())
            label = label_path(image)
            if label.is_file():
                digest.update(label.read_bytes())
    return digest.hexdigest()[:16]


def resolved_document(dataset: ResolvedDataset, lists: dict[str, list[str]]) -> dict[str, Any]:
    """The YAML document every training reads: absolute root and splits, other keys as written."""
    doc: dict[str, Any] = {"path": str(dataset.root)}
    for name, source in dataset.splits.items():
        entries = lists.get(name) or [str(p) for p in source.resolved]
        doc[name] = entries[0] if len(entries) == 1 else entries
    doc["names"] = dict(dataset.names)
    doc["nc"] = dataset.nc
    return {**doc, **dataset.extra}


def write_dataset_copy(dataset: ResolvedDataset, run_dir: Path) -> Path:
    """Write the resolved dataset YAML (and absolute image lists for .txt splits) into the run folder.

    Written once per run; a resumed run writes the very same content again (a changed dataset has
    another fingerprint, so it never resumes this run). Returns the YAML's path.
    """
    lists: dict[str, list[str]] = {}
    for name, source in dataset.splits.items():
        if not any(p.suffix == ".txt" for p in source.resolved):
            continue
        entries = []
        for i, resolved in enumerate(source.resolved):
            if resolved.suffix != ".txt":
                entries.append(str(resolved))
                continue
            target = Path(run_dir) / LISTS_FOLDER / f"{name}-{i}.txt"
            write_text_once(target, "".join(f"{image}\n" for image in list_images(resolved)))
            entries.append(str(target.resolve()))
        lists[name] = entries
    text = (
        f"# {dataset.source} resolved as its author meant it (fingerprint {dataset.fingerprint});\n"
        "# every training of this run reads this file.\n"
        + yaml.safe_dump(resolved_document(dataset, lists), sort_keys=False, allow_unicode=True)
    )
    return write_text_once(Path(run_dir) / DATASET_COPY, text)


def describe_dataset(dataset: ResolvedDataset) -> list[str]:
    """What ``--dry-run`` prints: the root, each split's resolved folders with image and label counts."""
    lines = [f"dataset {dataset.source} ({dataset.nc} classes, fingerprint {dataset.fingerprint})"]
    lines.append(f"  root {dataset.root}")
    for name, source in dataset.splits.items():
        where = ", ".join(str(p) for p in source.resolved)
        lines.append(f"  {name}: {source.images} images, {source.labelled} with labels: {where}")
    return lines
