"""A profile of the dataset's labels, made before any GPU time is spent, and the plan-sanity warnings it
supports: large boxes for a model without its stride-32 (P5) head, train/val leakage, classes without
validation instances.

``profile_dataset(splits, names, imgsz, phases)`` (split → image paths, the class names, the training
``imgsz``, per phase ``(name, imgsz, max_stride)``) reads label files and image headers only and returns
a ``DataProfile`` (``records/profile.py``); ``warning_problems`` turns its warnings into problem lines,
``render_text`` and ``render_markdown`` show it. How box sizes are measured: docs/DATA.md.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations, pairwise
from pathlib import Path
from typing import NamedTuple

import numpy as np

from flows.engine.data.labels import image_size, label_path, no_boxes, read_label_files
from flows.engine.fsutil import atomic_write_bytes
from flows.engine.plan.leakage import LeakageSettings
from flows.engine.plan.problems import Problem
from flows.engine.records.profile import (
    DataProfile,
    Leak,
    NearDuplicates,
    NearPair,
    PhaseCheck,
    ProfileWarning,
    SplitProfile,
)

SMALL_BOX_PX = 8.0
"""Boxes with a longest side under this (at imgsz) are reported as too small: the plan's debris is
8-64 px, and under 8 px even the stride-4 P2 head has at most 2x2 grid points inside a box."""

LARGE_BOX_PX = 64.0
"""Boxes with a longest side over this (at imgsz) are what the stride-32 (P5) head is for; the plan
drops that head on the claim that FOD is under 64 px."""

MAX_LARGE_SHARE_WITHOUT_P5 = 0.02
"""Largest share of boxes over ``LARGE_BOX_PX`` a phase without the stride-32 head may see before it
is warned about. Phase 2's gate allows about one point of mAP50-95 below Phase 1's target (0.905
vs 0.915); if more than 2 % of the boxes are ones the lighter model is not built for, missing them
alone can cost more than that margin, and the gate would compare architectures on the wrong data."""

P5_STRIDE = 32
"""A model whose largest detection stride is below this has no P5 head."""

HISTOGRAM_EDGES_PX: tuple[float, ...] = (4, 8, 16, 32, 64, 128, 256)
"""Bin edges of the longest-side histogram (px at imgsz): powers of two, the detection strides'
scale. Bins are half-open, [lo, hi): a box of exactly 16 px is in 16-32."""

MAX_EXAMPLES = 5
"""Leaked image pairs named in the profile (the count is always complete)."""

QUICK_HASH_BYTES = 8192
"""Bytes read from each end of a file to rule out most same-size pairs before hashing them whole."""

VAL_SPLIT = "val"
"""The split whose metrics the gates read: leakage into it and classes missing from it matter."""

MAX_TEXT_CLASSES = 8
"""Classes listed in the --dry-run text; the Markdown report lists all."""


class PhaseShape(NamedTuple):
    """What the profile needs to know of a training phase (a plain tuple works as well)."""

    name: str
    imgsz: int
    max_stride: int


# ----------------------------------------------------------------------------------------- reading


@dataclass
class _Tally:
    """The counts of one split (or of several together)."""

    images: int
    empty: int
    missing: int
    unreadable: int
    invalid: int
    duplicates: int
    instances: np.ndarray
    with_class: np.ndarray
    sides: np.ndarray
    """Each measured box's longest side in pixels of its stored (EXIF-rotated) image."""
    longest: np.ndarray
    """The longest side of that box's image, in pixels."""

    def px(self, imgsz: int) -> np.ndarray:
        """Each measured box's longest side after the resize to ``imgsz`` (Ultralytics' letterbox)."""
        return self.sides * imgsz / self.longest


def tally_split(images: Sequence[Path], nc: int) -> _Tally:
    """Read a split's labels and image headers and count everything the profile shows."""
    labels = read_label_files([label_path(image) for image in images], nc)
    sizes = np.full((len(images), 2), np.nan)  # (W, H) of every image with label rows (NaN: unreadable)
    for i, found in enumerate(labels):
        if found.rows and (size := image_size(images[i])) is not None:
            sizes[i] = size
    boxes = np.concatenate([no_boxes(), *(found.boxes for found in labels)])
    image = np.repeat(np.arange(len(labels)), [len(found.boxes) for found in labels])
    cls = boxes[:, 0].astype(np.intp)
    with_boxes = np.unique(image)
    width, height = sizes[image, 0], sizes[image, 1]
    measured = np.isfinite(width)
    longest = np.maximum(width, height)[measured]
    sides = np.maximum(boxes[measured, 3] * width[measured], boxes[measured, 4] * height[measured])
    refused = [found for found in labels if found.problem is not None]
    return _Tally(
        images=len(images),
        empty=len(images) - len(with_boxes),
        missing=sum(found.missing for found in labels),
        unreadable=int(np.count_nonzero(np.isnan(sizes[with_boxes, 0]))),
        invalid=sum(found.rows or 1 for found in refused),  # an unreadable label file counts once
        duplicates=sum(found.duplicates for found in labels),
        instances=np.bincount(cls, minlength=nc),
        with_class=np.bincount(np.unique(image * nc + cls) % nc, minlength=nc),
        sides=sides,
        longest=longest,
    )


def merge_tallies(tallies: Sequence[_Tally], nc: int) -> _Tally:
    """All splits as one tally."""
    return _Tally(
        images=sum(t.images for t in tallies),
        empty=sum(t.empty for t in tallies),
        missing=sum(t.missing for t in tallies),
        unreadable=sum(t.unreadable for t in tallies),
        invalid=sum(t.invalid for t in tallies),
        duplicates=sum(t.duplicates for t in tallies),
        instances=sum((t.instances for t in tallies), np.zeros(nc, dtype=np.int64)),
        with_class=sum((t.with_class for t in tallies), np.zeros(nc, dtype=np.int64)),
        sides=np.concatenate([t.sides for t in tallies]) if tallies else np.zeros(0),
        longest=np.concatenate([t.longest for t in tallies]) if tallies else np.zeros(0),
    )


def summarise(
    tally: _Tally, imgsz: int, edges: Sequence[float], small_px: float, large_px: float
) -> SplitProfile:
    """A split's profile from its tally, box sizes in pixels at ``imgsz``."""
    px = tally.px(imgsz)
    bins = np.bincount(np.searchsorted(np.asarray(edges), px, side="right"), minlength=len(edges) + 1)
    has_boxes = px.size > 0
    return SplitProfile(
        images=tally.images,
        empty_images=tally.empty,
        missing_labels=tally.missing,
        instances=int(tally.instances.sum()),
        class_instances=tuple(int(n) for n in tally.instances),
        class_images=tuple(int(n) for n in tally.with_class),
        measured_boxes=int(px.size),
        histogram=tuple(int(n) for n in bins),
        small_boxes=int(np.count_nonzero(px < small_px)),
        large_boxes=int(np.count_nonzero(px > large_px)),
        min_px=float(px.min()) if has_boxes else None,
        median_px=float(np.median(px)) if has_boxes else None,
        max_px=float(px.max()) if has_boxes else None,
        unreadable_images=tally.unreadable,
        invalid_rows=tally.invalid,
        duplicate_rows=tally.duplicates,
    )


# ----------------------------------------------------------------------------------------- leakage


def file_identity(path: Path) -> tuple[int, int, int] | None:
    """(size, device, inode) of a file, or None when it cannot be looked up."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_size, st.st_dev, st.st_ino


def quick_digest(path: Path, size: int) -> bytes | None:
    """A hash of a file's first and last ``QUICK_HASH_BYTES``: different means different content."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(QUICK_HASH_BYTES)
            if size > 2 * QUICK_HASH_BYTES:
                handle.seek(-QUICK_HASH_BYTES, os.SEEK_END)
            tail = handle.read(QUICK_HASH_BYTES)
    except OSError:
        return None
    return hashlib.blake2b(head + tail, digest_size=16).digest()


def full_digest(path: Path) -> bytes | None:
    """SHA-256 of the whole file, or None when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").digest()
    except OSError:
        return None


def content_keys(splits: Mapping[str, Sequence[Path]]) -> tuple[dict[Path, bytes], int]:
    """A content hash for every file that could have a twin in another split; and how many were hashed.

    Files are grouped by size first; only sizes found in two splits are read, their ends first, and
    only files whose ends match a file of another split are hashed whole. Hard links (one inode)
    are hashed once. A dataset whose splits share no file size reads nothing.
    """
    by_size: dict[int, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    inode: dict[Path, tuple[int, int]] = {}
    for split, images in splits.items():
        for image in images:
            if (ident := file_identity(image)) is not None:
                by_size[ident[0]][split].append(image)
                inode[image] = ident[1:]
    by_quick: dict[tuple[int, bytes], dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for size, group in by_size.items():
        if len(group) < 2:
            continue
        for split, paths in group.items():
            for path in paths:
                if (quick := quick_digest(path, size)) is not None:
                    by_quick[(size, quick)][split].append(path)
    keys: dict[Path, bytes] = {}
    by_inode: dict[tuple[int, int], bytes | None] = {}
    for group in (g for g in by_quick.values() if len(g) > 1):
        for paths in group.values():
            for path in paths:
                if inode[path] not in by_inode:
                    by_inode[inode[path]] = full_digest(path)
                if (digest := by_inode[inode[path]]) is not None:
                    keys[path] = digest
    return keys, len(by_inode)


def find_leaks(
    splits: Mapping[str, Sequence[Path]], max_examples: int = MAX_EXAMPLES
) -> tuple[tuple[Leak, ...], int]:
    """For each pair of splits (in the mapping's order), the images of the second found in the first."""
    keys, hashed = content_keys(splits)
    leaks = []
    for first, second in combinations(splits, 2):
        seen_in_first: dict[bytes, Path] = {}
        for path in splits[first]:
            if path in keys:
                seen_in_first.setdefault(keys[path], path)
        twins = [(seen_in_first[keys[p]], p) for p in splits[second] if keys.get(p) in seen_in_first]
        if twins:
            examples = tuple((str(a), str(b)) for a, b in twins[:max_examples])
            leaks.append(Leak(first=first, second=second, images=len(twins), examples=examples))
    return tuple(leaks), hashed


# ----------------------------------------------------------------------------------------- plan sanity


def check_phases(
    phases: Iterable[PhaseShape | tuple[str, int, int]],
    tally: _Tally,
    *,
    small_px: float,
    large_px: float,
    max_large_share: float,
    p5_stride: int,
) -> tuple[PhaseCheck, ...]:
    """Each phase's box sizes at its own imgsz, flagged when it lacks the P5 head and too many are large."""
    checks = []
    for name, imgsz, stride in phases:
        px = tally.px(imgsz)
        large = int(np.count_nonzero(px > large_px))
        drops = stride < p5_stride
        share = large / px.size if px.size else 0.0
        checks.append(
            PhaseCheck(
                name=name,
                imgsz=imgsz,
                max_stride=stride,
                drops_p5=drops,
                measured_boxes=int(px.size),
                small_boxes=int(np.count_nonzero(px < small_px)),
                large_boxes=large,
                warned=drops and share > max_large_share,
            )
        )
    return tuple(checks)


def pct(share: float) -> str:
    """A share as a percentage with one decimal."""
    return f"{share * 100:.1f} %"


def phase_warning(check: PhaseCheck, large_px: float, max_share: float, p5_stride: int) -> ProfileWarning:
    """The warning for a phase without the P5 head that sees too many large boxes."""
    message = (
        f"{check.name} drops the stride-{p5_stride} head (largest stride {check.max_stride}), but "
        f"{check.large_boxes} of {check.measured_boxes} boxes ({pct(check.share_large)}) have a longest "
        f"side over {large_px:g} px at its imgsz {check.imgsz} (more than {pct(max_share)}): the claim "
        f"that the objects are under {large_px:g} px does not hold for this data; keep the "
        f"stride-{p5_stride} head (a yolo11*-p2 model) or check the labels"
    )
    return ProfileWarning(kind="large_boxes_without_p5", where=f"nodes.{check.name}", message=message)


def leak_warning(leak: Leak) -> ProfileWarning:
    """The warning for images found in two splits."""
    a, b = leak.examples[0]
    message = (
        f"{leak.images} {leak.second} image(s) are byte-identical to {leak.first} images "
        f"(e.g. {b} = {a}): metrics on {leak.second}, and every gate that reads them, are optimistic; "
        f"remove the duplicates from one split"
    )
    return ProfileWarning(kind="leakage", where=leak.second, message=message)


def near_duplicate_warnings(near: NearDuplicates | None, train: str = "train") -> list[ProfileWarning]:
    """A warning per split (other than train) with images near-duplicated in another split, and one for
    undecodable images: a pair across splits always has a side outside train, so each pair is named."""
    if near is None:
        return []
    found = []
    for split, count in near.cross.items():
        if not count or split == train:
            continue
        pair = next(p for p in near.pairs if p.cross and split in (p.first_split, p.second_split))
        mine, other = (pair.first, pair.second) if pair.first_split == split else (pair.second, pair.first)
        gated = (
            f"; the gates' {VAL_SPLIT} figures count them, the @clean figures leave out the "
            f"{near.val_in_train} with one in {train}"
            if split == VAL_SPLIT and near.val_in_train
            else ""
        )
        message = (
            f"{count} {split} image(s) have a near-duplicate in another split ({near.rule.label}; e.g. "
            f"{Path(mine).name} ~ {Path(other).name}, distance {pair.distance}){gated}; "
            f"remove or move the copies so that one picture sits in one split"
        )
        found.append(ProfileWarning(kind="near_duplicates", where=split, message=message))
    if near.unreadable:
        shown = ", ".join(Path(p).name for p in near.unreadable[:MAX_EXAMPLES])
        extra = len(near.unreadable) - MAX_EXAMPLES
        more = f" and {extra} more" if extra > 0 else ""
        message = (
            f"{len(near.unreadable)} image(s) could not be decoded ({shown}{more}): truncated or not "
            f"images; they were not checked for near-duplicates, and training will skip or fail on them"
        )
        found.append(ProfileWarning(kind="unreadable_images", where="images", message=message))
    return found


def missing_class_warning(classes: Sequence[str], split: str) -> ProfileWarning:
    """The warning for classes with no instance in the validation split."""
    listed = ", ".join(repr(c) for c in classes)
    noun = "class" if len(classes) == 1 else "classes"
    message = (
        f"{noun} {listed} {'has' if len(classes) == 1 else 'have'} no instances in {split}: "
        f"{'its' if len(classes) == 1 else 'their'} AP cannot be measured and mAP averages the other "
        f"classes only; add {split} images that show {'it' if len(classes) == 1 else 'them'}"
    )
    return ProfileWarning(kind="class_without_val", where=split, message=message)


def collect_warnings(
    classes: Sequence[str],
    splits: Mapping[str, SplitProfile],
    leaks: Sequence[Leak],
    phases: Sequence[PhaseCheck],
    near: NearDuplicates | None = None,
    *,
    large_px: float,
    max_large_share: float,
    p5_stride: int,
) -> tuple[ProfileWarning, ...]:
    """Every plan-sanity warning: large boxes without P5, leakage, classes absent from val."""
    found = [phase_warning(c, large_px, max_large_share, p5_stride) for c in phases if c.warned]
    found += [leak_warning(leak) for leak in leaks]
    found += near_duplicate_warnings(near)
    if VAL_SPLIT in splits:
        counts = splits[VAL_SPLIT].class_instances
        absent = [name for name, n in zip(classes, counts, strict=True) if n == 0]
        if absent:
            found.append(missing_class_warning(absent, VAL_SPLIT))
    return tuple(found)


def class_names(names: Sequence[str] | Mapping[int, str]) -> tuple[str, ...]:
    """Class names by id, from a list or an ``{id: name}`` mapping (as in a dataset YAML)."""
    if isinstance(names, Mapping):
        return tuple(str(names[i]) for i in sorted(names))
    return tuple(str(n) for n in names)


def profile_dataset(
    splits: Mapping[str, Sequence[Path | str]],
    names: Sequence[str] | Mapping[int, str],
    imgsz: int,
    phases: Iterable[PhaseShape | tuple[str, int, int]] = (),
    *,
    small_px: float = SMALL_BOX_PX,
    large_px: float = LARGE_BOX_PX,
    max_large_share: float = MAX_LARGE_SHARE_WITHOUT_P5,
    p5_stride: int = P5_STRIDE,
    edges_px: Sequence[float] = HISTOGRAM_EDGES_PX,
    max_examples: int = MAX_EXAMPLES,
    leakage: LeakageSettings | None = None,
) -> DataProfile:
    """Profile the labels of every split, check each phase against them, and collect the warnings.

    ``splits`` maps a split name (``train``, ``val``, …) to its image paths; label files are found by
    Ultralytics' rule (``label_path``). ``imgsz`` is the size the histogram is drawn at; each phase is
    checked at its own imgsz. With ``leakage``, every image is also hashed (cached) and compared for
    near-duplicates. Never raises for a missing or corrupt file: it is counted, and ``check_dataset``
    is what reports it.
    """
    classes = class_names(names)
    paths = {split: [Path(p) for p in images] for split, images in splits.items()}
    tallies = {split: tally_split(images, len(classes)) for split, images in paths.items()}
    total = merge_tallies(list(tallies.values()), len(classes))
    edges = tuple(float(e) for e in edges_px)
    per_split = {s: summarise(t, imgsz, edges, small_px, large_px) for s, t in tallies.items()}
    leaks, hashed = find_leaks(paths, max_examples)
    near = None
    if leakage is not None and leakage.enabled:
        from flows.engine.data.near_duplicates import find_near_duplicates

        near = find_near_duplicates(paths, leakage)
    thresholds = {"large_px": large_px, "max_large_share": max_large_share, "p5_stride": p5_stride}
    checks = check_phases(phases, total, small_px=small_px, **thresholds)
    return DataProfile(
        imgsz=imgsz,
        classes=classes,
        edges_px=edges,
        small_px=small_px,
        large_px=large_px,
        max_large_share=max_large_share,
        splits=per_split,
        overall=summarise(total, imgsz, edges, small_px, large_px),
        leaks=leaks,
        hashed_files=hashed,
        near_duplicates=near,
        phases=checks,
        warnings=collect_warnings(classes, per_split, leaks, checks, near, **thresholds),
    )


def warning_problems(profile: DataProfile, *, plan: str, data: str) -> list[Problem]:
    """The warnings as ``Problem`` warnings: a phase's under the plan file, the others under the dataset."""
    return [
        Problem(plan if w.kind == "large_boxes_without_p5" else data, w.where, w.message, severity="warning")
        for w in profile.warnings
    ]


# ----------------------------------------------------------------------------------------- rendering


def bin_labels(edges: Sequence[float]) -> list[str]:
    """'<4', '4–8', …, '≥256' for the histogram's bins."""
    inner = [f"{lo:g}–{hi:g}" for lo, hi in pairwise(edges)]
    return [f"<{edges[0]:g}", *inner, f"≥{edges[-1]:g}"]


def fmt_px(value: float | None) -> str:
    """A pixel size, or a dash when there is none."""
    return "–" if value is None else f"{value:.1f}"


def split_line(name: str, split: SplitProfile, profile: DataProfile) -> str:
    """One split in one line: images, empty, boxes, shares under and over the thresholds."""
    small, large = f"<{profile.small_px:g} px", f">{profile.large_px:g} px"
    line = (
        f"  {name:<6} {split.images:6d} images ({split.empty_images} empty), {split.instances:7d} boxes; "
        f"{small} {pct(split.share_small)}, {large} {pct(split.share_large)}"
    )
    skipped = [
        (split.unreadable_images, "images unreadable"),
        (split.invalid_rows, "label rows rejected"),
        (split.duplicate_rows, "duplicate rows"),
    ]
    extras = [f"{n} {what}" for n, what in skipped if n]
    return line + (f" ({', '.join(extras)})" if extras else "")


def class_line(profile: DataProfile) -> str:
    """Boxes per class and split, the first few classes only."""
    order = list(profile.splits)
    shown = []
    for cls, name in enumerate(profile.classes[:MAX_TEXT_CLASSES]):
        shown.append(f"{name} {'/'.join(str(profile.splits[s].class_instances[cls]) for s in order)}")
    more = len(profile.classes) - MAX_TEXT_CLASSES
    tail = f", … {more} more (see the report)" if more > 0 else ""
    return f"  boxes per class ({'/'.join(order)}): {', '.join(shown)}{tail}"


def leak_line(profile: DataProfile) -> str:
    """Leakage in one line."""
    if not profile.leaks:
        return "  leakage: no image is byte-identical across splits"
    parts = [f"{leak.images} {leak.second} images also in {leak.first}" for leak in profile.leaks]
    return f"  leakage: {'; '.join(parts)}"


MAX_TEXT_PAIRS = 10
"""Near-duplicate pairs listed by ``--dry-run`` (the report lists more, the counts are complete)."""

MAX_REPORT_PAIRS = 50
"""Near-duplicate pairs listed in the report."""


def near_duplicate_lines(profile: DataProfile) -> list[str]:
    """Near-duplicates for ``--dry-run``: counts per split, the first pairs, the undecodable images."""
    near = profile.near_duplicates
    if near is None:
        return ["  near-duplicates: not checked (leakage.enabled is false)"]
    head = f"  near-duplicates ({near.rule.label}; {near.images} images, {near.seconds:.1f} s):"
    if not near.cross_pairs and not near.within_pairs:
        lines = [f"{head} none"]
    else:
        counts = ", ".join(
            f"{split} {near.cross.get(split, 0)} of {profile.splits[split].images}"
            for split in profile.splits
        )
        lines = [f"{head} images with one in another split: {counts}"]
        if near.val_in_train:
            lines.append(f"    {near.val_in_train} {VAL_SPLIT} images have one in train (left out of @clean)")
        within = ", ".join(f"{s} {n}" for s, n in near.within.items() if n)
        if within:
            lines.append(f"    within a split (not leakage): {within}")
        lines += [f"    {pair_text(p)}" for p in near.pairs[:MAX_TEXT_PAIRS]]
        if len(near.pairs) > MAX_TEXT_PAIRS:
            lines.append(
                f"    … {near.cross_pairs + near.within_pairs - MAX_TEXT_PAIRS} more pairs (see the report)"
            )
    if near.unreadable:
        shown = ", ".join(near.unreadable[:MAX_EXAMPLES])
        lines.append(f"    unreadable ({len(near.unreadable)}, not compared): {shown}")
    return lines


def pair_text(pair: NearPair) -> str:
    """``val/a.jpg ~ train/b.jpg  distance 3 (flipped)``."""
    flip = " (flipped)" if pair.flipped else ""
    return (
        f"{pair.first_split}/{Path(pair.first).name} ~ {pair.second_split}/{Path(pair.second).name}  "
        f"distance {pair.distance}{flip}"
    )


def histogram_lines(split: SplitProfile, edges: Sequence[float], width: int = 30) -> list[str]:
    """A text bar chart of the longest-side histogram."""
    peak = max(split.histogram, default=0) or 1
    out = []
    for label, count in zip(bin_labels(edges), split.histogram, strict=True):
        share = count / split.measured_boxes if split.measured_boxes else 0.0
        bar = "█" * math.ceil(width * count / peak) if count else ""
        out.append(f"    {label:>8} px {count:7d} {pct(share):>7}  {bar}")
    return out


def render_text(profile: DataProfile) -> str:
    """The profile for ``--dry-run``: a line per split, classes, leakage, one histogram, the phases."""
    lines = [f"data profile (box longest side in px at imgsz {profile.imgsz}):"]
    lines += [split_line(name, split, profile) for name, split in profile.splits.items()]
    lines += [class_line(profile), leak_line(profile), *near_duplicate_lines(profile)]
    lines.append(f"  longest side, all splits ({profile.overall.measured_boxes} boxes):")
    lines += histogram_lines(profile.overall, profile.edges_px)
    for check in profile.phases:
        head = "no stride-32 head" if check.drops_p5 else "stride-32 head"
        lines.append(
            f"  {check.name}: imgsz {check.imgsz}, {head}: >{profile.large_px:g} px {pct(check.share_large)}"
            f"{'  ← over the ' + pct(profile.max_large_share) + ' allowed' if check.warned else ''}"
        )
    return "\n".join(lines)


def md_cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def split_table(profile: DataProfile) -> list[str]:
    """Markdown table: one row per split and one for all."""
    s, large = f"{profile.small_px:g}", f"{profile.large_px:g}"
    rows = [
        f"| split | images | empty (no label file) | boxes | < {s} px | > {large} px "
        "| smallest | median | largest |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, split in [*profile.splits.items(), ("all", profile.overall)]:
        rows.append(
            f"| {md_cell(name)} | {split.images} | {split.empty_images} ({split.missing_labels}) | "
            f"{split.instances} | {split.small_boxes} ({pct(split.share_small)}) | "
            f"{split.large_boxes} ({pct(split.share_large)}) | {fmt_px(split.min_px)} | "
            f"{fmt_px(split.median_px)} | {fmt_px(split.max_px)} |"
        )
    return rows


def class_table(profile: DataProfile) -> list[str]:
    """Markdown table: images and boxes per class and split."""
    order = list(profile.splits)
    head = " | ".join(f"{md_cell(s)} images | {md_cell(s)} boxes" for s in order)
    rows = [f"| id | class | {head} |", "|---:|---|" + "---:|---:|" * len(order)]
    for cls, name in enumerate(profile.classes):
        cells = " | ".join(
            f"{profile.splits[s].class_images[cls]} | {profile.splits[s].class_instances[cls]}" for s in order
        )
        rows.append(f"| {cls} | {md_cell(name)} | {cells} |")
    return rows


def histogram_table(profile: DataProfile) -> list[str]:
    """Markdown table: the longest-side histogram per split and for all."""
    columns = [*profile.splits.items(), ("all", profile.overall)]
    rows = [
        f"| longest side (px) | {' | '.join(md_cell(n) for n, _ in columns)} | share (all) |",
        "|---|" + "---:|" * (len(columns) + 1),
    ]
    total = profile.overall.measured_boxes
    for i, label in enumerate(bin_labels(profile.edges_px)):
        counts = " | ".join(str(split.histogram[i]) for _, split in columns)
        share = profile.overall.histogram[i] / total if total else 0.0
        rows.append(f"| {label} | {counts} | {pct(share)} |")
    return rows


def phase_table(profile: DataProfile) -> list[str]:
    """Markdown table: each phase's imgsz, head and box shares."""
    rows = [
        f"| phase | imgsz | largest stride | < {profile.small_px:g} px | > {profile.large_px:g} px | |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for c in profile.phases:
        verdict = (
            f"**over {pct(profile.max_large_share)} without the P5 head**"
            if c.warned
            else ("no P5 head" if c.drops_p5 else "")
        )
        rows.append(
            f"| {md_cell(c.name)} | {c.imgsz} | {c.max_stride} | {c.small_boxes} ({pct(c.share_small)}) | "
            f"{c.large_boxes} ({pct(c.share_large)}) | {verdict} |"
        )
    return rows


def leak_section(profile: DataProfile) -> list[str]:
    """Markdown: leakage found, with examples, or a line saying there is none."""
    if not profile.leaks:
        return ["No image is byte-identical across splits.", ""]
    lines = []
    for leak in profile.leaks:
        first, second = md_cell(leak.first), md_cell(leak.second)
        lines.append(f"- {leak.images} {second} images are identical to {first} images, e.g.:")
        lines += [f"  - `{b}` = `{a}`" for a, b in leak.examples]
    return [*lines, ""]


def near_duplicate_section(profile: DataProfile, contact_png: str | None = None) -> list[str]:
    """Markdown: near-duplicate counts per split, the nearest pairs, the contact sheet, unreadable images."""
    near = profile.near_duplicates
    if near is None:
        return ["Not checked (`leakage.enabled: false`).", ""]
    lines = [
        f"Rule: {near.rule.label} (docs/LEAKAGE.md); {near.images} images, {near.hashed} hashed now, "
        f"the others from the cache; {near.seconds:.1f} s.",
        "",
        "| split | images | with a near-duplicate in another split | within the split |",
        "|---|---:|---:|---:|",
    ]
    for split, counts in profile.splits.items():
        lines.append(
            f"| {md_cell(split)} | {counts.images} | {near.cross.get(split, 0)} | "
            f"{near.within.get(split, 0)} |"
        )
    lines.append("")
    if near.val_in_train:
        lines += [
            f"{near.val_in_train} {VAL_SPLIT} images have a near-duplicate in train: the @clean figures "
            "leave them out.",
            "",
        ]
    if near.pairs:
        shown = near.pairs[:MAX_REPORT_PAIRS]
        total = near.cross_pairs + near.within_pairs
        lines += [
            f"Nearest pairs ({len(shown)} of {total}; across splits first):",
            "",
            "| split | image | split | image | distance |",
            "|---|---|---|---|---:|",
        ]
        for p in shown:
            flip = " (flipped)" if p.flipped else ""
            lines.append(
                f"| {md_cell(p.first_split)} | `{md_cell(p.first)}` | {md_cell(p.second_split)} | "
                f"`{md_cell(p.second)}` | {p.distance}{flip} |"
            )
        lines.append("")
    if contact_png:
        lines += [f"![near-duplicate pairs]({contact_png})", ""]
    if near.unreadable:
        lines += [
            f"Unreadable images ({len(near.unreadable)}; could not be decoded, not compared):",
            "",
            *(f"- `{md_cell(p)}`" for p in near.unreadable[:MAX_REPORT_PAIRS]),
            "",
        ]
    return lines


def render_markdown(
    profile: DataProfile,
    histogram_png: str | None = None,
    *,
    with_warnings: bool = True,
    contact_png: str | None = None,
) -> str:
    """The profile as a report section (Markdown tables); ``histogram_png``, ``contact_png``: relative
    image links.

    ``with_warnings=False`` leaves out the warnings, for a report that lists them with the others.
    """
    lines = [
        "## Dataset profile",
        "",
        f"Box sizes are each box's longest side in pixels after Ultralytics resizes the image's longest "
        f"side to imgsz {profile.imgsz}. Counted from the label files and image headers before training.",
        "",
        *split_table(profile),
        "",
        "### Classes",
        "",
        *class_table(profile),
        "",
        f"### Box longest side at imgsz {profile.imgsz}",
        "",
        f"Bins hold their lower edge: a box of exactly {profile.large_px:g} px is in the "
        f"{profile.large_px:g}– bin but not counted as over {profile.large_px:g} px.",
        "",
        *histogram_table(profile),
        "",
    ]
    if histogram_png:
        lines += [f"![box longest side]({histogram_png})", ""]
    if profile.phases:
        lines += ["### Phases and the stride-32 head", "", *phase_table(profile), ""]
    lines += ["### Leakage between splits", "", *leak_section(profile)]
    lines += ["### Near-duplicates by content", "", *near_duplicate_section(profile, contact_png)]
    if with_warnings and profile.warnings:
        lines += ["### Data warnings", "", *(f"- {md_cell(w.message)}" for w in profile.warnings), ""]
    return "\n".join(lines)


def plot_histogram(profile: DataProfile, out: Path) -> Path | None:
    """Draw the longest-side histogram per split into a PNG; None when no box was measured.

    Uses matplotlib's object API with the Agg canvas: nothing global (no pyplot, no backend switch).
    """
    if not profile.overall.measured_boxes:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = bin_labels(profile.edges_px)
    positions = np.arange(len(labels))
    width = 0.8 / max(len(profile.splits), 1)
    for i, (name, split) in enumerate(profile.splits.items()):
        ax.bar(positions + (i - (len(profile.splits) - 1) / 2) * width, split.histogram, width, label=name)
    ax.set_xticks(positions, labels)
    ax.set_xlabel(f"box longest side (px at imgsz {profile.imgsz})")
    ax.set_ylabel("boxes")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write_bytes(out, buffer.getvalue())
