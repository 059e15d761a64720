"""Near-duplicates by content: altered copies of real photos across splits are found and named, distinct
photos are not, undecodable images are listed, the hash cache is read by fingerprint, and the clean
figures leave out exactly the validation images the check found in train."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from flows.engine.data.contact_sheet import draw_contact_sheet
from flows.engine.data.near_duplicates import (
    close_pairs,
    find_near_duplicates,
    hash_images,
    hex_words,
    leaked_images,
)
from flows.engine.data.profile import profile_dataset, render_markdown, render_text
from flows.engine.metrics.bootstrap import MatchStats
from flows.engine.plan.leakage import LeakageSettings
from tests.conftest import SHARED, needs_shared

GOLF_TRAIN = SHARED / "datasets" / "golfball_small" / "images" / "train"
LUNAR_TRAIN = SHARED / "datasets" / "lunar_crater_small" / "images" / "train"
RULE = LeakageSettings()


def altered(source: Path, out: Path, how: str) -> Path:
    """A copy of a real photo under another name and other bytes: re-encoded, resized, cropped, brighter
    or flipped."""
    with Image.open(source) as im:
        picture = im.convert("RGB")
    w, h = picture.size
    changes = {
        "jpeg60": lambda p: p,
        "half": lambda p: p.resize((w // 2, h // 2)),
        "banner": lambda p: p.crop((0, 0, w, int(h * 0.97))),
        "bright": lambda p: ImageEnhance.Brightness(p).enhance(1.15),
        "flip": ImageOps.mirror,
        "png": lambda p: p.resize((int(w * 1.3), int(h * 1.3))),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    changes[how](picture).save(out, quality=60 if how == "jpeg60" else 90)
    return out


def copy_into(sources: list[Path], folder: Path) -> list[Path]:
    """Copies of real images in ``folder``, same names."""
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(p, folder / p.name)) for p in sources]


@pytest.fixture
def leaky_split(tmp_path: Path) -> dict[str, list[Path]]:
    """20 golfball photos in train; in val, 6 altered copies of 6 of them and 6 lunar photos."""
    if not GOLF_TRAIN.is_dir():
        pytest.skip(f"../shared datasets not found at {SHARED}")
    train = copy_into(sorted(GOLF_TRAIN.iterdir())[:20], tmp_path / "images" / "train")
    val_dir = tmp_path / "images" / "val"
    hows = ["jpeg60", "half", "banner", "bright", "flip", "png"]
    copies = [
        altered(train[3 * k], val_dir / f"frame_{k:03d}.{'png' if how == 'png' else 'jpg'}", how)
        for k, how in enumerate(hows)
    ]
    others = copy_into(sorted(LUNAR_TRAIN.iterdir())[:6], val_dir)
    return {"train": train, "val": [*copies, *others]}


@needs_shared
def test_altered_copies_across_splits_are_found_and_named(leaky_split, tmp_path: Path) -> None:
    found = find_near_duplicates(leaky_split, RULE, cache_root=tmp_path / "cache")
    assert found.cross == {"train": 6, "val": 6}
    assert found.val_in_train == 6
    copies = {p.name for p in leaky_split["val"][:6]}
    named = {Path(p.second).name for p in found.pairs if p.cross}
    assert named == copies
    flip = next(p for p in found.pairs if Path(p.second).name == "frame_004.jpg")
    assert flip.flipped and flip.distance <= RULE.radius
    assert found.unreadable == ()
    assert leaked_images(
        leaky_split["val"], leaky_split["train"], RULE, cache_root=tmp_path / "cache"
    ) == set(leaky_split["val"][:6])


@needs_shared
def test_the_profile_warns_and_the_dry_run_text_lists_the_pairs(leaky_split, tmp_path: Path) -> None:
    profile = profile_dataset(leaky_split, ["ball"], 640, leakage=RULE)
    assert profile.leaks == ()  # no file is byte-identical: only the content check sees them
    [warning] = [w for w in profile.warnings if w.kind == "near_duplicates" and w.where == "val"]
    assert "6 val image(s) have a near-duplicate" in warning.message
    text = render_text(profile)
    assert "val 6 of 12" in text and "6 val images have one in train" in text
    assert "val/frame_000.jpg" in text and "distance" in text
    sheet = draw_contact_sheet(profile.near_duplicates, tmp_path / "near.png")
    with Image.open(sheet) as im:
        assert im.height > 6 * 160  # one row per pair
    md = render_markdown(profile, contact_png="near.png")
    assert "![near-duplicate pairs](near.png)" in md and "frame_005.png" in md


@needs_shared
def test_distinct_real_photos_are_not_matched(tmp_path: Path) -> None:
    """The shipped rule on the two shared datasets' train splits: no two photos of one dataset are
    alike enough to match across the golf and lunar sets."""
    splits = {"train": sorted(GOLF_TRAIN.iterdir()), "val": sorted(LUNAR_TRAIN.iterdir())}
    found = find_near_duplicates(splits, RULE, cache_root=tmp_path)
    assert found.cross_pairs == 0


def test_unreadable_images_are_listed_not_raised(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    missing = tmp_path / "missing.jpg"
    splits = {"train": [good], "val": [truncated, text, missing]}
    found = find_near_duplicates(splits, RULE, cache_root=tmp_path / "cache")
    assert set(found.unreadable) == {str(truncated), str(text), str(missing)}
    profile = profile_dataset(splits, ["x"], 64, leakage=RULE)
    [warning] = [w for w in profile.warnings if w.kind == "unreadable_images"]
    assert "3 image(s) could not be decoded" in warning.message and "truncated.jpg" in warning.message


def test_hashes_are_cached_by_fingerprint(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = []
    for k in range(4):
        images.append(tmp_path / f"{k}.png")
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images[-1])
    cache = tmp_path / "cache"
    first = hash_images(images, RULE, cache)
    again = hash_images(images, RULE, cache)
    assert (first.computed, again.computed) == (4, 0) and again.hashes == first.hashes
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images[0])
    os.utime(images[0], ns=(1, 1))  # another fingerprint
    assert hash_images(images, RULE, cache).computed == 1
    other_rule = LeakageSettings(hash="dhash")
    assert hash_images(images, other_rule, cache).computed == 4  # another rule: its own hashes


def test_close_pairs_equals_the_brute_force_distances() -> None:
    rng = random.Random(3)
    for size in (8, 16):
        bits = size * size
        hashes = [f"{rng.getrandbits(bits):0{bits // 4}x}" for _ in range(700)]
        hashes += [f"{int(h, 16) ^ (1 << rng.randrange(bits)):0{bits // 4}x}" for h in hashes[:50]]
        mirrored = [f"{rng.getrandbits(bits):0{bits // 4}x}" for _ in hashes]
        plain_w, mirror_w = hex_words(hashes, size), hex_words(mirrored, size)
        radius = bits // 4
        i, j, d, f = close_pairs(plain_w, mirror_w, radius)
        got = {
            (a, b): (c, e) for a, b, c, e in zip(i.tolist(), j.tolist(), d.tolist(), f.tolist(), strict=True)
        }
        want = {}
        for a in range(len(hashes)):
            for b in range(a + 1, len(hashes)):
                plain = bin(int(hashes[a], 16) ^ int(hashes[b], 16)).count("1")
                flipped = bin(int(mirrored[a], 16) ^ int(hashes[b], 16)).count("1")
                if min(plain, flipped) <= radius:
                    want[(a, b)] = (min(plain, flipped), flipped < plain)
        assert got == want and len(want) >= 50


def test_a_subset_of_the_matches_gives_the_figures_of_those_images_alone() -> None:
    rng = np.random.default_rng(5)
    images = []
    for _ in range(40):
        n, m = int(rng.integers(0, 6)), int(rng.integers(0, 4))
        images.append(
            {
                "tp": rng.random((n, 10)) < 0.5,
                "conf": rng.random(n),
                "pred_cls": rng.integers(0, 3, n),
                "target_cls": rng.integers(0, 3, m),
            }
        )
    keep = np.array(sorted(rng.choice(40, 25, replace=False)))
    subset = MatchStats.from_images(images).subset(keep)
    direct = MatchStats.from_images([images[k] for k in keep])
    assert subset.n_images == 25
    assert subset.summary() == pytest.approx(direct.summary())
    assert np.array_equal(subset.target_image, direct.target_image)
