"""One reading of a YOLO label file and of an image's size: for the checks, the profile and the evaluation.

The rules are Ultralytics' own, as its ``verify_image_label`` reads a detection dataset for training:

- the label file is the image path with its last ``images`` folder as ``labels`` and the suffix ``.txt``
  (``img2label_paths``); no file, or one without rows, is an image without objects;
- the text is UTF-8 with or without a byte-order mark; blank lines are skipped;
- a file with a row of more than 6 fields is a polygon file: every row is ``class x1 y1 x2 y2 …`` and
  stands for its bounding box (``segments2boxes``); a box row (5 fields) among polygons is refused;
  otherwise every row is ``class cx cy w h``;
- each row, as a box, has an integer class in [0, nc), coordinates at most 1.01, none below -0.01 and
  a width and height ≥ 0 (Ultralytics' 1 % tolerance);
- one refused row refuses the file: Ultralytics then drops the image from training ("ignoring corrupt
  image/label"); rows that repeat another (same class and numbers) count once.

Where Ultralytics would read a polygon of one point (3 fields) as an empty box, it is refused here.
The image's size is its header's, swapped for the EXIF orientations 5-8 (``exif_size``).

Ultralytics' helpers are not called: importing ``ultralytics.data.utils`` imports torch and cv2 (1.5 s,
more than the whole data profile may take), and ``verify_image_label`` rewrites a truncated JPEG in
place. ``tests/test_labels.py`` checks this reading against ``img2label_paths``, ``verify_image_label``
and ``exif_size``.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BOX_FIELDS = 5
"""``class cx cy w h``."""
POLYGON_FIELDS = 7
"""The fewest fields of a polygon row: a class and three points."""
MAX_BOX_FIELDS = 6
"""A file with a longer row is a polygon file (Ultralytics' test)."""
COORD_MAX = 1.01
COORD_MIN = -0.01
"""Ultralytics' tolerance around normalised coordinates."""
EXIF_ORIENTATION = 274
TRANSPOSED = {5, 6, 7, 8}
"""EXIF orientations that swap width and height."""

Row = tuple[int, list[str]]
"""A label row: its line number in the file (from 1) and its fields."""
Problem = tuple[int | None, str]
"""Why Ultralytics would refuse a label file: the line (None: the whole file) and what is wrong."""


@dataclass(frozen=True)
class LabelFile:
    """A label file as Ultralytics trains on it."""

    boxes: np.ndarray
    """(N, 5) class, cx, cy, w, h (normalised), sorted, each repeat once; none when refused."""
    rows: int = 0
    """Rows the file has (blank lines not counted)."""
    duplicates: int = 0
    """Rows dropped because they repeat an earlier one."""
    problem: Problem | None = None
    """The first reason Ultralytics refuses the file; None when it is read."""
    missing: bool = False
    """No label file: an image without objects."""


def no_boxes() -> np.ndarray:
    """An empty (0, 5) table."""
    return np.zeros((0, BOX_FIELDS))


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last 'images' folder in the path becomes 'labels', suffix .txt."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def label_rows(label_file: Path) -> list[Row] | None:
    """The file's rows with their line numbers; None when there is no file. Raises ``OSError`` or
    ``UnicodeDecodeError`` for a file that cannot be read."""
    try:
        if not label_file.is_file():
            return None
    except (OSError, ValueError):  # a path the OS cannot even look up
        return None
    text = label_file.read_text(encoding="utf-8-sig")
    return [(n, fields) for n, line in enumerate(text.splitlines(), start=1) if (fields := line.split())]


def read_labels(label_file: Path, nc: int | None) -> LabelFile:
    """Read one label file (``nc``: the class count; None: any class id)."""
    return read_label_files([label_file], nc)[0]


def read_label_files(label_files: Sequence[Path], nc: int | None) -> list[LabelFile]:
    """Read label files, each as Ultralytics reads it (``nc``: the class count; None: any class id).

    The files of 5-field rows are parsed and checked together (per-file numpy calls would cost more
    than the parsing itself); a file among them with a refused row, and every other file, is read by
    ``labels_of``, which names its first refused row.
    """
    found: list[LabelFile | None] = []
    plain: list[tuple[int, list[Row]]] = []
    for i, label_file in enumerate(label_files):
        try:
            rows = label_rows(label_file)
        except (OSError, UnicodeDecodeError) as exc:
            found.append(LabelFile(no_boxes(), problem=(None, f"unreadable label file ({exc})")))
            continue
        if rows is None:
            found.append(LabelFile(no_boxes(), missing=True))
        elif rows and all(len(fields) == BOX_FIELDS for _, fields in rows):
            plain.append((i, rows))
            found.append(None)
        else:
            found.append(labels_of(rows, nc))
    read = dict(plain_labels(plain, nc))
    return [read[i] if labels is None else labels for i, labels in enumerate(found)]


def plain_labels(plain: Sequence[tuple[int, list[Row]]], nc: int | None) -> list[tuple[int, LabelFile]]:
    """(index, labels) of files whose rows all have 5 fields, all parsed and checked at once."""
    counts = [len(rows) for _, rows in plain]
    values = parse_fields([value for _, rows in plain for _, fields in rows for value in fields], counts)
    owner = np.repeat(np.arange(len(plain)), counts)
    refused = np.zeros(len(plain), dtype=bool)
    refused[owner[box_faults(values, nc)]] = True  # a field that is not a number made its file's rows NaN
    keep = ~refused[owner]
    table, repeats = distinct_rows(np.column_stack([owner[keep], values[keep]]))
    starts = np.searchsorted(table[:, 0], np.arange(len(plain) + 1))
    duplicates = np.bincount(repeats.astype(np.intp), minlength=len(plain))
    found = []
    for k, (i, rows) in enumerate(plain):
        boxes = table[starts[k] : starts[k + 1], 1:]
        read = LabelFile(boxes, rows=len(rows), duplicates=int(duplicates[k]))
        found.append((i, labels_of(rows, nc) if refused[k] else read))
    return found


def parse_fields(fields: list[str], counts: Sequence[int]) -> np.ndarray:
    """(N, 5) numbers of files of 5-field rows (``counts``: rows per file); a file with a field numpy
    cannot parse gets NaN rows."""
    try:
        return np.array(fields, dtype=np.float64).reshape(-1, BOX_FIELDS)
    except ValueError:
        pass
    values = np.full((len(fields) // BOX_FIELDS, BOX_FIELDS), np.nan)
    start = 0
    for n in counts:
        with contextlib.suppress(ValueError):  # a file left NaN is refused, and read by labels_of
            chunk = fields[BOX_FIELDS * start : BOX_FIELDS * (start + n)]
            values[start : start + n] = np.array(chunk, dtype=np.float64).reshape(-1, BOX_FIELDS)
        start += n
    return values


def distinct_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows sorted (first column first), each once, and the first column of every repeat dropped."""
    ordered = table[np.lexsort(table.T[::-1])]
    repeat = np.zeros(len(ordered), dtype=bool)
    repeat[1:] = np.all(ordered[1:] == ordered[:-1], axis=1)
    return ordered[~repeat], ordered[repeat, 0]


def labels_of(rows: Sequence[Row], nc: int | None) -> LabelFile:
    """The boxes of a label file's rows, or why Ultralytics refuses them (the first refused row)."""
    polygons = any(len(fields) > MAX_BOX_FIELDS for _, fields in rows)
    values: list[tuple[float, ...]] = []
    unparsed: Problem | None = None
    for line, fields in rows:
        message = fields_problem(fields, polygons)
        if message is None:
            try:
                values.append(tuple(map(float, fields)))
                continue
            except ValueError:
                message = "non-numeric value"
        unparsed = (line, message)
        break
    boxes = [as_box(v) for v in values] if polygons else values  # the rows before ``unparsed``
    table = np.array(boxes, dtype=np.float64).reshape(-1, BOX_FIELDS)
    if (faults := np.flatnonzero(box_faults(table, nc))).size:
        line, fields = rows[faults[0]]
        unparsed = (line, box_problem(fields, table[faults[0]], nc))
    if unparsed is not None:
        return LabelFile(no_boxes(), rows=len(rows), problem=unparsed)
    first = {key: i for i, key in reversed(list(enumerate(values)))}  # each distinct row's first index
    if len(first) < len(values):
        table = table[list(first.values())]
    if len(table) > 1:
        table = table[np.lexsort(table.T[::-1])]
    return LabelFile(table, rows=len(rows), duplicates=len(values) - len(first))


def fields_problem(fields: Sequence[str], polygons: bool) -> str | None:
    """What is wrong with a row's number of fields (in a polygon file or a box file), or None."""
    n = len(fields)
    if polygons and n == BOX_FIELDS:
        return "5 columns (a box) in a file of polygon rows; Ultralytics refuses a file that mixes them"
    if (n < POLYGON_FIELDS or n % 2 == 0) if polygons else n != BOX_FIELDS:
        return f"{n} columns; a box label has 5 (class cx cy w h)"
    return None


def as_box(values: Sequence[float]) -> tuple[float, ...]:
    """A row as (class, cx, cy, w, h): a polygon as its bounding box."""
    if len(values) == BOX_FIELDS:
        return tuple(values)
    points = np.asarray(values[1:]).reshape(-1, 2)
    low, high = points.min(axis=0), points.max(axis=0)  # NaN stays NaN, as in Ultralytics' numpy
    return (values[0], *((low + high) / 2).tolist(), *(high - low).tolist())


def class_faults(cls: np.ndarray, nc: int | None) -> np.ndarray:
    """Per row: the class id is not an integer in [0, nc)."""
    return ~((cls % 1 == 0) & (cls >= 0) & (cls < (math.inf if nc is None else nc)))


def coord_faults(boxes: np.ndarray) -> np.ndarray:
    """Per row: cx, cy, w, h outside Ultralytics' tolerance, or a negative width or height (NaN: outside)."""
    inside = ((boxes <= COORD_MAX) & (boxes >= COORD_MIN)).all(axis=1)
    return ~(inside & (boxes[:, 2:] >= 0).all(axis=1))


def box_faults(table: np.ndarray, nc: int | None) -> np.ndarray:
    """Per row of an (N, 5) table: does Ultralytics refuse it (the tests of ``verify_image_label``)?"""
    return class_faults(table[:, 0], nc) | coord_faults(table[:, 1:])


def box_problem(fields: Sequence[str], box: np.ndarray, nc: int | None) -> str:
    """What is wrong with a refused row (its ``fields``, read as ``box``): the class is tested first."""
    if class_faults(box[:1], nc)[0]:
        top = f"[0, {nc - 1}] (nc = {nc})" if nc is not None else "≥ 0"
        return f"class id {fields[0]} is not an integer in {top}"
    return "coordinates must be normalised to [0, 1]"


def image_size(image: Path) -> tuple[int, int] | None:
    """(W, H) as Ultralytics sees the image (EXIF rotation applied), from the header; None if unreadable.

    Ultralytics reads it after ``verify()``, so a PNG whose EXIF chunk follows the pixels is not turned
    (asking Pillow for it would decode the image); a PNG keeps its EXIF in ``info`` only when the chunk
    precedes them.
    """
    from PIL import Image

    try:
        with unpatched_open(Image)(image) as im:
            width, height = im.size
            if im.format == "PNG" and "exif" not in im.info:
                return width, height
            exif = im.tag_v2 if im.format == "TIFF" else im.getexif()
            return (height, width) if exif.get(EXIF_ORIENTATION) in TRANSPOSED else (width, height)
    except Exception:  # PIL raises many kinds for a corrupt or missing file
        return None


def unpatched_open(image_module: Any) -> Callable[..., Any]:
    """PIL's own ``Image.open``, even after Ultralytics has patched it.

    Ultralytics replaces ``Image.open`` with a wrapper that, on a file PIL cannot identify,
    tries to install and import ``pi-heif`` (HEIC support): a text file named ``.jpg`` would then
    fail with "No module named 'pi_heif'" (or attempt a download) instead of "not an image".
    """
    patches = sys.modules.get("ultralytics.utils.patches")
    return getattr(patches, "_image_open", image_module.open)
