"""Near-duplicate detection: which match rule, and how fast on 10,000 images.

Why this exists: issue 17 asks for a rule (hash kind, size, Hamming radius) chosen on measured pairs,
finding ≥ 95 % of altered copies of real photos while matching ≤ 0.1 % of distinct real photo pairs,
and for hashing and matching 10,000 images in ≤ 60 s on the 2-core machine. Two parts, printed as
Markdown for docs/LEAKAGE.md and written to one JSON file:

1. ``rule``: every real image of ``../shared/datasets`` and of the demo dataset, and altered copies of
   each (JPEG quality 60 / 75 / 95, resized 0.5 / 0.75 / 1.25 / 1.5x, cropped 2 % and 5 % off one side
   and 5 % around, brightness -20 % / +20 %, flipped), saved as files and hashed through the production
   ``image_hash``. Found: a copy within the radius of its original. False match: two distinct originals
   within it (over all pairs). Per hash kind and size, the radius sweep.
2. ``speed``: ``--images`` files (altered copies of the real photos, every one distinct in bytes), then
   ``find_near_duplicates`` over a train/val/test split of them with an empty cache, and again warm.

Run:  nice -n 10 .venv/bin/python benchmarks/leakage.py --out leakage.json [--images 10000]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.engine.data.near_duplicates import (  # noqa: E402
    close_pairs,
    find_near_duplicates,
    hex_words,
    image_hash,
)
from flows.engine.plan.leakage import LeakageSettings  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets"
SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
RULES = [("phash", 8), ("phash", 16), ("dhash", 8), ("dhash", 16), ("ahash", 8), ("whash", 8)]
FOUND_TARGET = 0.95
FALSE_TARGET = 0.001


def crop(fraction: float, *, side: bool) -> Callable[[Image.Image], Image.Image]:
    """Cut ``fraction`` of the height off the bottom (a banner) or of each dimension around."""

    def apply(im: Image.Image) -> Image.Image:
        w, h = im.size
        if side:
            return im.crop((0, 0, w, round(h * (1 - fraction))))
        dx, dy = round(w * fraction / 2), round(h * fraction / 2)
        return im.crop((dx, dy, w - dx, h - dy))

    return apply


def resize(factor: float) -> Callable[[Image.Image], Image.Image]:
    """Scale both sides."""
    return lambda im: im.resize((max(1, round(im.width * factor)), max(1, round(im.height * factor))))


def brightness(factor: float) -> Callable[[Image.Image], Image.Image]:
    """Multiply brightness."""
    return lambda im: ImageEnhance.Brightness(im).enhance(factor)


ALTERATIONS: dict[str, tuple[str, Callable[[Image.Image], Image.Image], int]] = {
    # name: (kind, change, JPEG quality of the saved copy)
    "jpeg q60": ("re-encoded", lambda im: im, 60),
    "jpeg q75": ("re-encoded", lambda im: im, 75),
    "jpeg q95": ("re-encoded", lambda im: im, 95),
    "resize 0.5x": ("resized", resize(0.5), 90),
    "resize 0.75x": ("resized", resize(0.75), 90),
    "resize 1.25x": ("resized", resize(1.25), 90),
    "resize 1.5x": ("resized", resize(1.5), 90),
    "crop 2 % side": ("cropped", crop(0.02, side=True), 90),
    "crop 5 % side": ("cropped", crop(0.05, side=True), 90),
    "crop 5 % around": ("cropped", crop(0.05, side=False), 90),
    "brightness -20 %": ("brightness", brightness(0.8), 90),
    "brightness +20 %": ("brightness", brightness(1.2), 90),
    "flip": ("flipped", ImageOps.mirror, 90),
}


def real_images(demo_images: int) -> list[Path]:
    """The shared datasets' images, and a generated demo dataset's (in a temporary folder)."""
    found = sorted(p for p in SHARED.rglob("*") if p.suffix.lower() in SUFFIXES)
    if demo_images:
        from flows.demo_data import generate_demo_dataset

        folder = Path(tempfile.mkdtemp(prefix="leak-demo-"))
        generate_demo_dataset(folder, n_train=demo_images, n_val=1)
        found += sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)
    return found


def save_copy(original: Path, name: str, out: Path, upscale: float = 1.0) -> Path:
    """One altered copy of ``original`` as a JPEG under ``out`` (``upscale``: both sides times that)."""
    _, change, quality = ALTERATIONS[name]
    with Image.open(original) as im:
        copy = change(ImageOps.exif_transpose(im).convert("RGB"))
    if upscale != 1.0:
        copy = resize(upscale)(copy)
    path = out / f"{original.stem}-{abs(hash(str(original))) % 10**8}-{name.replace(' ', '_')}.jpg"
    copy.save(path, quality=quality)
    return path


def hashes_of(paths: list[Path], kind: str, size: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Plain and mirrored hash rows of the readable ones, and their indices."""
    plain, mirrored, kept = [], [], []
    for k, path in enumerate(paths):
        if (h := image_hash(path, kind, size)) is not None:  # type: ignore[arg-type]
            plain.append(h[0])
            mirrored.append(h[1])
            kept.append(k)
    return hex_words(plain, size), hex_words(mirrored, size), kept


def distances(a: np.ndarray, b: np.ndarray, am: np.ndarray, mirror: bool) -> np.ndarray:
    """Row-wise distance of hash a[k] to b[k] (the smaller of plain and mirrored with ``mirror``)."""
    d = np.bitwise_count(a ^ b).sum(axis=1)
    return np.minimum(d, np.bitwise_count(am ^ b).sum(axis=1)) if mirror else d


def measure_rules(originals: list[Path], workdir: Path, radii: range) -> dict:
    """Found share per alteration and false-match share per rule and radius."""
    copies: dict[str, list[Path]] = {name: [] for name in ALTERATIONS}
    for original in originals:
        for name in ALTERATIONS:
            copies[name].append(save_copy(original, name, workdir))
    table = []
    for kind, size in RULES:
        plain, mirrored, kept = hashes_of(originals, kind, size)
        n = len(kept)
        pair_dist = pair_distances(plain, mirrored, radii.stop)
        for mirror in (True, False):
            pair_d = pair_dist if mirror else pair_distances(plain, mirrored, radii.stop, mirror=False)
            copy_d = {}
            for name, paths in copies.items():
                cp, _, ck = hashes_of([paths[k] for k in kept], kind, size)
                copy_d[name] = distances(plain[ck], cp, mirrored[ck], mirror)
            for radius in radii:
                found = {name: float(np.mean(d <= radius)) for name, d in copy_d.items()}
                all_copies = np.concatenate(list(copy_d.values()))
                false = int(np.count_nonzero(pair_d <= radius))
                table.append(
                    {
                        "hash": kind,
                        "size": size,
                        "mirror": mirror,
                        "radius": radius,
                        "found": float(np.mean(all_copies <= radius)),
                        "found_by_alteration": found,
                        "false_pairs": false,
                        "pairs": n * (n - 1) // 2,
                        "false_share": false / (n * (n - 1) // 2),
                    }
                )
    return {"originals": len(originals), "copies": sum(len(v) for v in copies.values()), "table": table}


def pair_distances(plain: np.ndarray, mirrored: np.ndarray, upto: int, *, mirror: bool = True) -> np.ndarray:
    """Distances of every distinct pair of originals that are at most ``upto`` (the rest do not matter)."""
    _, _, d, _ = close_pairs(plain, mirrored, upto, mirror=mirror)
    return d


def speed(
    originals: list[Path],
    workdir: Path,
    images: int,
    rule: LeakageSettings,
    upscale: float = 1.0,
    distinct: int = 0,
) -> dict:
    """Hash and match ``images`` files cold (empty cache) and warm; with ``distinct``, only that many
    are made and the rest are hard links to them (for large images, which take long to make)."""
    names = list(ALTERATIONS)
    paths = []
    started = time.perf_counter()
    sources = itertools.islice(itertools.cycle(itertools.product(originals, names)), distinct or images)
    made_files = []
    for k, (original, name) in enumerate(sources):
        path = save_copy(original, name, workdir, upscale)
        made_files.append(path.rename(path.with_name(f"{k:05d}-{path.name}")))
    for k in range(images):  # beyond ``distinct``: hard links under other names, decoded like any file
        source = made_files[k % len(made_files)]
        target = source if k < len(made_files) else source.with_name(f"{k:05d}-link-{source.name}")
        if target != source:
            os.link(source, target)
        paths.append(target)
    made = time.perf_counter() - started
    splits = {"train": paths[: int(0.8 * images)], "val": paths[int(0.8 * images) : int(0.9 * images)]}
    splits["test"] = paths[int(0.9 * images) :]
    cache = workdir / "cache"
    runs = {}
    for run in ("cold", "warm"):
        started = time.perf_counter()
        found = find_near_duplicates(splits, rule, cache_root=cache)
        runs[run] = {"seconds": time.perf_counter() - started, "hashed": found.hashed}
    sizes = [Image.open(p).size for p in paths[:50]]
    return {
        "images": images,
        "distinct": distinct or images,
        "made_seconds": made,
        "median_size": [int(np.median([s[0] for s in sizes])), int(np.median([s[1] for s in sizes]))],
        "cross_pairs": found.cross_pairs,
        "within_pairs": found.within_pairs,
        **runs,
    }


def same_rule(a: dict, b: dict) -> bool:
    """Same hash, size, mirror and radius."""
    return all(a[k] == b[k] for k in ("hash", "size", "mirror", "radius"))


def choose(table: list[dict]) -> list[dict]:
    """Per hash kind and size (mirrored), among the radii that meet both targets: the largest at which
    no two distinct originals match (the most copies found without a false match seen), else the
    smallest. False matches grow with the square of a dataset's size, recall does not."""
    chosen = []
    for kind, size in RULES:
        rows = [r for r in table if r["hash"] == kind and r["size"] == size and r["mirror"]]
        ok = [r for r in rows if r["found"] >= FOUND_TARGET and r["false_share"] <= FALSE_TARGET]
        if not ok:
            continue
        clean = [r for r in ok if r["false_pairs"] == 0]
        chosen.append(max(clean, key=lambda r: r["radius"]) if clean else min(ok, key=lambda r: r["radius"]))
    return chosen


def upper_bound(false: int, pairs: int) -> float:
    """One-sided 95 % Clopper-Pearson upper bound of a false-match share."""
    from scipy.stats import beta

    return 1.0 if false >= pairs else float(beta.ppf(0.95, false + 1, pairs - false))


def rows_md(rows: list[dict], *, bound: bool = False) -> list[str]:
    """Markdown rows of rule-table entries."""
    out = []
    for row in rows:
        worst = min(row["found_by_alteration"].items(), key=lambda kv: kv[1])
        meets = row["found"] >= FOUND_TARGET and row["false_share"] <= FALSE_TARGET
        upper = f", ≤ {upper_bound(row['false_pairs'], row['pairs']):.3%}" if bound else ""
        out.append(
            f"| {row['hash']} | {row['size'] ** 2} | {'yes' if row['mirror'] else 'no'} | {row['radius']} | "
            f"{row['found']:.1%} | {worst[0]} {worst[1]:.1%} | {row['false_pairs']} / {row['pairs']} "
            f"({row['false_share']:.3%}{upper}){' ✓' if meets else ''} |"
        )
    return out


TABLE_HEAD = [
    "| hash | bits | mirror | radius | copies found | weakest alteration | false matches |",
    "|---|---:|---|---:|---:|---|---:|",
]


def markdown(result: dict) -> str:
    """The rule table (radii that meet or nearly meet the targets) and the speed row."""
    lines = rule_markdown(result) if "choice" in result else []
    if "speed" in result:
        s = result["speed"]
        lines += [
            "",
            f"Speed: {s['images']} images ({s['median_size'][0]}x{s['median_size'][1]} median): cold "
            f"{s['cold']['seconds']:.1f} s ({s['cold']['hashed']} decoded), "
            f"warm {s['warm']['seconds']:.1f} s.",
        ]
    return "\n".join(lines)


def rule_markdown(result: dict) -> list[str]:
    """The choice half's table and the chosen rules on the held-out half."""
    choice, held = result["choice"], result["held_out"]
    return [
        f"Choice half: {choice['originals']} real images, {choice['copies']} altered copies.",
        "",
        *TABLE_HEAD,
        *rows_md([r for r in choice["table"] if r["mirror"] and r["radius"] % 2 == 0 and r["radius"] >= 4]),
        "",
        "Without the mirrored hash (flipped copies are then missed):",
        "",
        *TABLE_HEAD,
        *rows_md([r for r in choice["table"] if not r["mirror"] and r["radius"] in (8, 10, 12)]),
        "",
        f"Chosen on the choice half, judged on the held-out half ({held['originals']} images, "
        f"{held['copies']} copies; false matches with their one-sided 95 % upper bound):",
        "",
        *TABLE_HEAD,
        *rows_md(result["chosen_held_out"], bound=True),
    ]


def main(argv: list[str] | None = None) -> int:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("leakage.json"))
    parser.add_argument("--images", type=int, default=10_000, help="images of the speed part (0: skip)")
    parser.add_argument("--demo-images", type=int, default=120)
    parser.add_argument("--max-radius", type=int, default=16)
    parser.add_argument(
        "--upscale", type=float, default=1.0, help="speed part: images this many times larger"
    )
    parser.add_argument("--skip-rule", action="store_true", help="the speed part only")
    parser.add_argument("--distinct", type=int, default=0, help="speed part: make this many, link the rest")
    ns = parser.parse_args(argv)
    if not SHARED.is_dir():
        print(f"{SHARED} is missing: the rule is measured on the shared real datasets", file=sys.stderr)
        return 2
    originals = real_images(ns.demo_images)
    result: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False
        ).stdout.strip(),
    }
    radii = range(0, ns.max_radius + 1)
    order = np.random.default_rng(0).permutation(len(originals))
    halves = {
        "choice": [originals[k] for k in sorted(order[: len(order) // 2])],
        "held_out": [originals[k] for k in sorted(order[len(order) // 2 :])],
    }
    with tempfile.TemporaryDirectory(prefix="leak-rule-") as tmp:
        for half, images in halves.items() if not ns.skip_rule else ():
            folder = Path(tmp) / half
            folder.mkdir()
            result[half] = measure_rules(images, folder, radii)
    if not ns.skip_rule:
        result["chosen"] = choose(result["choice"]["table"])
        result["chosen_held_out"] = [
            row for row in result["held_out"]["table"] if any(same_rule(row, c) for c in result["chosen"])
        ]
    if ns.images:
        with tempfile.TemporaryDirectory(prefix="leak-speed-") as tmp:
            result["speed"] = speed(
                [p for p in originals if SHARED in p.parents],
                Path(tmp),
                ns.images,
                LeakageSettings(),
                ns.upscale,
                ns.distinct,
            )
    ns.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
