"""A small synthetic dataset of foreign-object debris (FOD) on airport runways, generated on the spot.

``generate_demo_dataset(root, n_train=..., n_val=..., image_size=..., seed=...)`` writes the images, YOLO
labels and ``data.yaml`` the demo trains on (nothing to download, nothing checked in) and returns the
YAML's path. Each debris class has its own colour and shape, so even a tiny model learns within a few
epochs; every image has its own generator from ``(seed, split, index)``, so a seed gives the same bytes;
boxes are measured from each object's alpha mask. Drawn with numpy and Pillow only.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from flows.engine.data.labels import image_size, label_path, read_labels
from flows.engine.fsutil import atomic_write_text

CLASS_NAMES: tuple[str, ...] = ("bolt", "stone", "wire", "washer")
"""Debris classes, indexed by YOLO class id."""

MIN_OBJECT_PX = 8
MAX_OBJECT_PX = 64
"""Longest side of every box, in pixels of the full-size image."""

_SUPERSAMPLE = 4
"""Objects are drawn this many times larger, then shrunk: smooth edges without a font or a renderer."""

_ALPHA_VISIBLE = 128
"""Mask level (0-255) from which a pixel counts as part of the object for its box: half covered."""

_OBJECT_COUNTS = (1, 2, 3, 4, 5, 6)
_OBJECT_COUNT_WEIGHTS = (0.06, 0.10, 0.16, 0.20, 0.24, 0.24)
"""Objects per image, weighted towards many: more positives per step, so a tiny model learns in few epochs."""

_JPEG_QUALITY = 92
_SPLITS = ("train", "val")
_SPLIT_SALT = {"train": 0, "val": 1}
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Box:
    """One labelled object in pixel coordinates (x0, y0 inclusive; x1, y1 exclusive)."""

    cls: int
    x0: int
    y0: int
    x1: int
    y1: int

    def to_yolo_line(self, width: int, height: int) -> str:
        """Format as a YOLO label line: ``class cx cy w h`` normalised, 6 decimals."""
        cx = (self.x0 + self.x1) / 2 / width
        cy = (self.y0 + self.y1) / 2 / height
        w = (self.x1 - self.x0) / width
        h = (self.y1 - self.y0) / height
        return f"{self.cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"


# --------------------------------------------------------------------------- backgrounds


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid, bicubically enlarged."""
    grid = rng.uniform(0, 255, size=(cells, cells)).astype(np.uint8)
    big = Image.fromarray(grid, mode="L").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=np.float32) / 127.5 - 1.0


def _draw_surface(rng: np.random.Generator, size: int) -> np.ndarray:
    """Asphalt or concrete: a base grey, blotches, fine grain and a lighting gradient (float RGB)."""
    concrete = rng.random() < 0.35
    base = rng.uniform(150, 185) if concrete else rng.uniform(70, 110)
    tint = np.array([1.0, 1.0, 1.02]) if concrete else np.array([1.0, 0.99, 0.97])
    blotches = 14 * _smooth_noise(rng, size, 6) + 7 * _smooth_noise(rng, size, 24)
    grain = rng.standard_normal(size=(size, size), dtype=np.float32) * (9 if concrete else 12)
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    strength = rng.uniform(0.08, 0.25)
    light = 1.0 + strength * (ramp[None, :] * math.cos(angle) + ramp[:, None] * math.sin(angle))
    grey = (base + blotches + grain) * light
    return grey[..., None] * tint[None, None, :].astype(np.float32)


def _draw_markings(rng: np.random.Generator, image: Image.Image) -> None:
    """Painted runway markings: a few parallel worn white or yellow stripes or lane lines."""
    size = image.width
    draw = ImageDraw.Draw(image, "RGBA")
    colour = (235, 235, 228) if rng.random() < 0.6 else (225, 190, 40)
    angle = rng.uniform(0, math.pi)
    dx, dy = math.cos(angle), math.sin(angle)
    nx, ny = -dy, dx
    for _ in range(int(rng.integers(0, 3))):
        offset = rng.uniform(-0.45, 0.45) * size
        width = int(rng.integers(3, 22))
        cx, cy = size / 2 + nx * offset, size / 2 + ny * offset
        start = (cx - dx * size, cy - dy * size)
        end = (cx + dx * size, cy + dy * size)
        alpha = int(rng.integers(120, 210))  # worn paint lets the asphalt through
        draw.line([start, end], fill=(*colour, alpha), width=width)


def _random_walk(
    rng: np.random.Generator, size: int, steps: int, step_px: float
) -> list[tuple[float, float]]:
    """A wandering polyline, as for a crack or a tar seam."""
    x, y = rng.uniform(0, size, 2)
    heading = rng.uniform(0, 2 * math.pi)
    points = [(float(x), float(y))]
    for _ in range(steps):
        heading += rng.normal(0, 0.35)
        x += step_px * math.cos(heading)
        y += step_px * math.sin(heading)
        points.append((float(x), float(y)))
    return points


def _draw_seams(rng: np.random.Generator, image: Image.Image) -> None:
    """Dark tar seams (long, straight-ish, wide) and thin cracks, drawn under the debris."""
    size = image.width
    draw = ImageDraw.Draw(image, "RGBA")
    for _ in range(int(rng.integers(0, 3))):
        y = rng.uniform(0, size)
        slope = rng.uniform(-0.15, 0.15)
        draw.line([(0, y), (size, y + slope * size)], fill=(25, 25, 25, 150), width=int(rng.integers(3, 7)))
    for _ in range(int(rng.integers(1, 5))):
        points = _random_walk(rng, size, int(rng.integers(8, 30)), rng.uniform(4, 10))
        draw.line(points, fill=(30, 28, 26, int(rng.integers(90, 170))), width=1)


def draw_background(rng: np.random.Generator, size: int) -> Image.Image:
    """A runway-like surface with markings, seams and cracks."""
    surface = np.clip(_draw_surface(rng, size), 0, 255).astype(np.uint8)
    image = Image.fromarray(surface, mode="RGB")
    _draw_markings(rng, image)
    _draw_seams(rng, image)
    return image


# --------------------------------------------------------------------------- debris sprites


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], spread: int) -> tuple[int, int, int]:
    """A colour varied a little (mostly brightness): instances differ, the class stays recognisable."""
    shift = int(rng.integers(-spread, spread + 1))
    hue = rng.integers(-spread // 3, spread // 3 + 1, size=3)
    return tuple(min(255, max(0, c + shift + int(h))) for c, h in zip(colour, hue, strict=True))  # type: ignore[return-value]


def _polygon(cx: float, cy: float, radii: np.ndarray, rotation: float) -> list[tuple[float, float]]:
    """Vertices at evenly spaced angles with the given radii."""
    n = len(radii)
    return [
        (cx + r * math.cos(rotation + 2 * math.pi * k / n), cy + r * math.sin(rotation + 2 * math.pi * k / n))
        for k, r in enumerate(radii)
    ]


def _sprite_bolt(rng: np.random.Generator, canvas: int, draw: ImageDraw.ImageDraw) -> None:
    """A hex bolt head seen from above: steel-blue hexagon, darker rim, bright highlight."""
    c, r = canvas / 2, canvas * 0.46
    rotation = rng.uniform(0, math.pi / 3)
    steel = _jitter(rng, (150, 165, 190), 12)
    draw.polygon(_polygon(c, c, np.full(6, r), rotation), fill=(*steel, 255), outline=(60, 66, 80, 255))
    draw.ellipse([c - r * 0.45] * 2 + [c + r * 0.45] * 2, fill=(95, 105, 125, 255))
    hx, hy = c - r * 0.35, c - r * 0.35
    draw.ellipse([hx - r * 0.18, hy - r * 0.18, hx + r * 0.18, hy + r * 0.18], fill=(250, 250, 255, 255))


def _sprite_stone(rng: np.random.Generator, canvas: int, draw: ImageDraw.ImageDraw) -> None:
    """An irregular grey-brown pebble: a lumpy polygon with a lighter, sunlit top."""
    c = canvas / 2
    n = int(rng.integers(7, 12))
    radii = canvas * 0.46 * rng.uniform(0.6, 1.0, n)
    radii[int(rng.integers(n))] = canvas * 0.46  # one lobe reaches the canvas edge: size is what was drawn
    stretch = rng.uniform(0.55, 1.0)
    rotation = rng.uniform(0, 2 * math.pi)
    points = [(c + (x - c), c + (y - c) * stretch) for x, y in _polygon(c, c, radii, rotation)]
    mix = rng.uniform(0, 1)  # from greyish gravel to brown pebble, never as orange as copper
    brown = tuple(int(g + (b - g) * mix) for g, b in zip((140, 132, 118), (120, 92, 66), strict=True))
    brown = _jitter(rng, brown, 14)
    draw.polygon(points, fill=(*brown, 255))
    top = [(c + (x - c) * 0.55 - canvas * 0.06, c + (y - c) * 0.55 - canvas * 0.06) for x, y in points]
    draw.polygon(top, fill=(*(min(255, v + 32) for v in brown), 255))


def _sprite_wire(rng: np.random.Generator, canvas: int, draw: ImageDraw.ImageDraw) -> None:
    """A bent piece of copper wire: a thin quadratic curve from edge to edge."""
    margin = canvas * 0.04
    p0 = np.array([margin, rng.uniform(margin, canvas - margin)])
    p2 = np.array([canvas - margin, rng.uniform(margin, canvas - margin)])
    p1 = rng.uniform(margin, canvas - margin, 2)
    t = np.linspace(0, 1, 24)[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    if rng.random() < 0.5:
        curve = curve[:, ::-1]  # run top-to-bottom as often as left-to-right
    copper = _jitter(rng, (200, 105, 45), 15)
    width = max(_SUPERSAMPLE * 2, int(canvas * 0.06))
    draw.line([tuple(p) for p in curve], fill=(*copper, 255), width=width, joint="curve")


def _sprite_washer(rng: np.random.Generator, canvas: int, draw: ImageDraw.ImageDraw) -> None:
    """A brass washer or nut: a golden ring with a see-through hole."""
    c, r = canvas / 2, canvas * 0.46
    squash = rng.uniform(0.7, 1.0)  # seen at a slant
    brass = _jitter(rng, (215, 180, 70), 12)
    draw.ellipse(
        [c - r, c - r * squash, c + r, c + r * squash], fill=(*brass, 255), outline=(140, 110, 30, 255)
    )
    hole = r * rng.uniform(0.38, 0.5)
    draw.ellipse([c - hole, c - hole * squash, c + hole, c + hole * squash], fill=(0, 0, 0, 0))


_SPRITES = (_sprite_bolt, _sprite_stone, _sprite_wire, _sprite_washer)


def _add_grain(rng: np.random.Generator, sprite: Image.Image) -> Image.Image:
    """Slight per-pixel noise, so objects are not flat cartoon colours on a grainy surface."""
    pixels = np.asarray(sprite).astype(np.int16)
    pixels[..., :3] += rng.integers(-6, 7, size=(*pixels.shape[:2], 1), dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGBA")


def _render_sprite(rng: np.random.Generator, cls: int, longest_px: int) -> Image.Image:
    """Draw one object (RGBA) cropped to its visible pixels, longest side about ``longest_px``."""
    canvas = longest_px * _SUPERSAMPLE
    sprite = Image.new("RGBA", (canvas, canvas), (0, 0, 0, 0))
    _SPRITES[cls](rng, canvas, ImageDraw.Draw(sprite))
    sprite = sprite.rotate(rng.uniform(0, 360), resample=Image.Resampling.BILINEAR, expand=True)
    small = sprite.resize(
        (max(1, sprite.width // _SUPERSAMPLE), max(1, sprite.height // _SUPERSAMPLE)), Image.Resampling.BOX
    )
    small = _add_grain(rng, small)
    alpha = np.asarray(small.getchannel("A"))
    rows, cols = np.nonzero(alpha >= _ALPHA_VISIBLE)
    if rows.size == 0:
        return small.crop((0, 0, 0, 0))
    return small.crop((int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1))


def _sample_longest_side(rng: np.random.Generator, image_size: int) -> int:
    """Object size, log-uniform: small debris is the common and the hard case."""
    high = min(MAX_OBJECT_PX, max(MIN_OBJECT_PX, image_size // 4))
    return round(math.exp(rng.uniform(math.log(MIN_OBJECT_PX + 2), math.log(high))))


def _make_sprite(rng: np.random.Generator, cls: int, image_size: int) -> Image.Image:
    """A sprite whose measured longest side lies in [MIN_OBJECT_PX, MAX_OBJECT_PX] (rotation changes it)."""
    for _ in range(20):
        sprite = _render_sprite(rng, cls, _sample_longest_side(rng, image_size))
        if MIN_OBJECT_PX <= max(sprite.size) <= MAX_OBJECT_PX:
            return sprite
    raise RuntimeError(f"could not draw a {CLASS_NAMES[cls]} between {MIN_OBJECT_PX} and {MAX_OBJECT_PX} px")


# --------------------------------------------------------------------------- composing images


def _overlaps(box: Box, others: list[Box], gap: int) -> bool:
    """Whether ``box``, grown by ``gap`` px, touches any of ``others``."""
    return any(
        box.x0 - gap < o.x1 and o.x0 < box.x1 + gap and box.y0 - gap < o.y1 and o.y0 < box.y1 + gap
        for o in others
    )


def _find_free_spot(
    rng: np.random.Generator, sprite: Image.Image, cls: int, size: int, boxes: list[Box]
) -> Box | None:
    """Find a free spot for a sprite, or None after a few tries (the image just gets fewer objects)."""
    w, h = sprite.size
    for _ in range(30):
        x0 = int(rng.integers(1, size - w))
        y0 = int(rng.integers(1, size - h))
        box = Box(cls, x0, y0, x0 + w, y0 + h)
        if not _overlaps(box, boxes, gap=3):
            return box
    return None


def _paste_with_shadow(image: Image.Image, sprite: Image.Image, box: Box) -> None:
    """Paste a sprite with a faint soft shadow; the shadow is not part of the object's box."""
    shadow_alpha = sprite.getchannel("A").point(lambda a: a * 45 // 255).filter(ImageFilter.BoxBlur(1))
    shadow = Image.new("RGB", sprite.size, (10, 10, 10))
    image.paste(shadow, (box.x0 + 1, box.y0 + 1), shadow_alpha)
    image.paste(sprite, (box.x0, box.y0), sprite)


def draw_sample(rng: np.random.Generator, image_size: int) -> tuple[Image.Image, list[Box]]:
    """One runway image with 1-6 non-overlapping debris objects and their tight boxes."""
    image = draw_background(rng, image_size)
    boxes: list[Box] = []
    for _ in range(int(rng.choice(_OBJECT_COUNTS, p=_OBJECT_COUNT_WEIGHTS))):
        cls = int(rng.integers(len(CLASS_NAMES)))
        sprite = _make_sprite(rng, cls, image_size)
        box = _find_free_spot(rng, sprite, cls, image_size, boxes)
        if box is None:
            continue
        _paste_with_shadow(image, sprite, box)
        boxes.append(box)
    return image, boxes


def _encode_jpeg(image: Image.Image) -> bytes:
    """JPEG bytes with fixed settings (no timestamps or metadata), so a seed reproduces its bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=_JPEG_QUALITY, subsampling=0, optimize=False)
    return buffer.getvalue()


def _write_split(stage: Path, split: str, count: int, image_size: int, seed: int) -> None:
    """Write ``count`` images and labels of one split under a staging folder."""
    image_dir = stage / "images" / split
    label_dir = stage / "labels" / split
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    for index in range(count):
        rng = np.random.default_rng([seed, _SPLIT_SALT[split], index])
        image, boxes = draw_sample(rng, image_size)
        stem = f"fod_{split}_{index:04d}"
        (image_dir / f"{stem}.jpg").write_bytes(_encode_jpeg(image))
        lines = [b.to_yolo_line(image_size, image_size) for b in boxes]
        (label_dir / f"{stem}.txt").write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def _data_yaml_text(root: Path) -> str:
    """The Ultralytics data YAML: absolute root, relative splits, class names."""
    import yaml

    data = {
        "path": str(root.resolve()),
        "train": "images/train",
        "val": "images/val",
        "nc": len(CLASS_NAMES),
        "names": list(CLASS_NAMES),
    }
    return "# Synthetic runway FOD demo dataset (flows.demo_data)\n" + yaml.safe_dump(data, sort_keys=False)


def _refuse_existing(root: Path) -> None:
    """Never overwrite: a finished dataset (data.yaml) or leftover image/label folders are refused."""
    for name in ("data.yaml", "images", "labels"):
        if (root / name).exists():
            raise FileExistsError(f"{root / name} already exists; the demo dataset is never overwritten")


def generate_demo_dataset(
    root: Path, *, n_train: int = 48, n_val: int = 16, image_size: int = 320, seed: int = 0
) -> Path:
    """Write a synthetic runway-debris dataset under ``root`` and return its ``data.yaml``.

    Images and labels are written into a hidden staging folder and moved into place, and
    ``data.yaml`` is written last (atomically): a dataset with a data.yaml is complete.
    """
    if n_train < 1 or n_val < 1:
        raise ValueError(f"need at least one image per split, got n_train={n_train}, n_val={n_val}")
    if image_size < 4 * MIN_OBJECT_PX:
        raise ValueError(f"image_size {image_size} is too small for {MIN_OBJECT_PX}-px objects")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _refuse_existing(root)
    stage = Path(tempfile.mkdtemp(prefix=".demo-data-", dir=root))
    try:
        for split, count in zip(_SPLITS, (n_train, n_val), strict=True):
            _write_split(stage, split, count, image_size, seed)
        _refuse_existing(root)
        for name in ("images", "labels"):
            os.rename(stage / name, root / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return atomic_write_text(root / "data.yaml", _data_yaml_text(root))


# --------------------------------------------------------------------------- describing a dataset


def _split_dirs(data: dict[str, Any], base: Path, split: str) -> list[Path]:
    """Image folders of one split (a folder or a list of folders, relative to ``path``)."""
    entry = data.get(split)
    if not entry:
        return []
    entries = entry if isinstance(entry, list) else [entry]
    return [(base / str(e)).resolve() for e in entries]


def _list_images(folder: Path) -> list[Path]:
    """Image files under a folder (recursively), or the images listed in a .txt file."""
    if folder.is_file() and folder.suffix == ".txt":
        lines = folder.read_text(encoding="utf-8").split()
        return [(folder.parent / line).resolve() for line in lines]
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)


def _read_boxes(image: Path) -> list[tuple[int, float, float]]:
    """(class, width px, height px) of every box of an image, read as Ultralytics reads it (the engine's
    one reading, ``data.labels``); an image without labels has none."""
    boxes = read_labels(label_path(image), nc=None).boxes
    size = image_size(image) if len(boxes) else None
    if size is None:
        return []
    width, height = size
    return [(int(cls), w * width, h * height) for cls, _, _, w, h in boxes.tolist()]


def describe_dataset(data_yaml: Path) -> dict[str, Any]:
    """Summarise a YOLO detection dataset for a report.

    Returns ``{"images": {split: n}, "instances": {name: n}, "instances_per_split":
    {split: {name: n}}, "box_px": {"min_side", "max_side", "min_longest", "max_longest"}}``;
    box sizes are in pixels of the stored images (None when there are no boxes).
    """
    import yaml

    data_yaml = Path(data_yaml)
    data = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    base = Path(data.get("path") or data_yaml.parent)
    if not base.is_absolute():
        base = (data_yaml.parent / base).resolve()
    raw_names = data.get("names") or [f"class_{i}" for i in range(int(data["nc"]))]
    names = dict(raw_names) if isinstance(raw_names, dict) else dict(enumerate(raw_names))
    images: dict[str, int] = {}
    per_split: dict[str, dict[str, int]] = {}
    sides: list[float] = []
    longest: list[float] = []
    for split in ("train", "val", "test"):
        files = [f for folder in _split_dirs(data, base, split) for f in _list_images(folder)]
        if not files and not data.get(split):
            continue
        counts = dict.fromkeys(names.values(), 0)
        for image in files:
            for cls, w, h in _read_boxes(image):
                name = names.get(cls, f"class_{cls}")
                counts[name] = counts.get(name, 0) + 1
                sides.extend((w, h))
                longest.append(max(w, h))
        images[split] = len(files)
        per_split[split] = counts
    totals = dict.fromkeys(names.values(), 0)
    for counts in per_split.values():
        for name, n in counts.items():
            totals[name] = totals.get(name, 0) + n
    return {
        "yaml": str(data_yaml),
        "images": images,
        "instances": totals,
        "instances_per_split": per_split,
        "box_px": {
            "min_side": round(min(sides), 1) if sides else None,
            "max_side": round(max(sides), 1) if sides else None,
            "min_longest": round(min(longest), 1) if longest else None,
            "max_longest": round(max(longest), 1) if longest else None,
        },
    }
