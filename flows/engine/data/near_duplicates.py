"""Near-duplicate images across and within splits, by perceptual hash (``imagehash``), before training.

A byte hash finds only identical files; exports, scraped sets and video frames hold the same picture
re-encoded, resized, cropped or flipped under another name. Each image is hashed (and, with
``mirror``, its mirror image too) and pairs within the plan's Hamming radius are near-duplicates. The
rule's measured recall and false-match rate: docs/LEAKAGE.md. Hashes are cached per image by file
fingerprint, so the dry run, the flow and the evaluation decode each image once.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from flows.engine.fsutil import atomic_write_text
from flows.engine.plan.leakage import HashKind, LeakageSettings
from flows.engine.records.profile import NearDuplicates, NearPair

CACHE_VERSION = 1
CACHE_ENV = "FOD_HASH_CACHE_DIR"
"""Folder of the hash cache files; default ``$XDG_CACHE_HOME/fod-optimizer/image-hashes``."""

THUMB_PX = 64
"""Images are decoded (JPEG: at a reduced scale) and shrunk to this square before hashing: the hashes
read at most 64x64 pixels, and decoding a 640 px JPEG in full costs several times more."""

MAX_PAIRS = 200
"""Pairs kept in the profile, nearest first (the counts are always complete)."""

BLOCK_CELLS = 4_000_000
"""Cells of the distance matrix computed at once (rows x columns): about 32 MB per 64-bit temporary,
whatever the dataset's size."""


def block_rows(columns: int) -> int:
    """Rows per block for a matrix of ``columns`` columns."""
    return max(1, BLOCK_CELLS // max(columns, 1))


# ----------------------------------------------------------------------------------------- hashing


def _hash_function(kind: HashKind):
    """The imagehash function of a kind (imported here: nothing at import time)."""
    import imagehash

    return {
        "phash": imagehash.phash,
        "dhash": imagehash.dhash,
        "ahash": imagehash.average_hash,
        "whash": imagehash.whash,
    }[kind]


def thumbnail(path: Path):
    """The image in grey, ``THUMB_PX`` square; raises for a file Pillow cannot decode in full."""
    from PIL import Image

    with Image.open(path) as im:
        im.draft("L", (THUMB_PX * 2, THUMB_PX * 2))  # JPEG: decode at 1/2..1/8 scale
        return im.convert("L").resize((THUMB_PX, THUMB_PX), Image.Resampling.BOX)


def bits_hex(bits: np.ndarray) -> str:
    """A boolean hash as hex (the cache's form)."""
    return np.packbits(bits.flatten()).tobytes().hex()


def image_hash(path: Path, kind: HashKind = "phash", size: int = 8) -> tuple[str, str] | None:
    """(hash, hash of the mirrored image) as hex, or None when the file cannot be read as an image."""
    from PIL import ImageOps

    try:
        small = thumbnail(path)
    except Exception:  # Pillow raises OSError, SyntaxError, ValueError … for broken files
        return None
    function = _hash_function(kind)
    return bits_hex(function(small, hash_size=size).hash), bits_hex(
        function(ImageOps.mirror(small), hash_size=size).hash
    )


def hex_words(values: Sequence[str], size: int) -> np.ndarray:
    """Hex hashes as rows of big-endian uint64 words (zero-padded), for vectorised Hamming distances."""
    n_bytes = (size * size + 7) // 8
    width = -(-n_bytes // 8) * 8
    raw = b"".join(bytes.fromhex(v).ljust(width, b"\0") for v in values)
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(len(values), width // 8)


# ----------------------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Where the hash cache files go (``FOD_HASH_CACHE_DIR``, else the user's cache folder)."""
    if folder := os.environ.get(CACHE_ENV):
        return Path(folder)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fod-optimizer" / "image-hashes"


def cache_file_of(folder: Path, root: Path | None = None) -> Path:
    """The cache file of one image folder: each folder has its own, so any subset of splits (the dry
    run's all, the evaluation's train and val) reads the same entries."""
    key = hashlib.sha256(str(folder.absolute()).encode()).hexdigest()[:20]
    return (root or cache_dir()) / f"{key}.json"


def fingerprint(path: Path) -> tuple[int, int] | None:
    """(size, mtime in ns): a changed file gets hashed again."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_size, st.st_mtime_ns


@dataclass
class HashCache:
    """One folder's hashes by file name, valid while the file's fingerprint is unchanged; one JSON file."""

    file: Path
    rule_key: str
    entries: dict[str, list]
    changed: bool = False

    @classmethod
    def load(cls, file: Path, rule: LeakageSettings) -> HashCache:
        """The cache for this hash kind and size; empty when missing, unreadable or of another rule."""
        key = f"{rule.hash}-{rule.size}-{THUMB_PX}"
        try:
            doc = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls(file, key, {})
        ok = isinstance(doc, dict) and doc.get("version") == CACHE_VERSION and doc.get("hash") == key
        entries = doc.get("entries") if ok else None
        return cls(file, key, entries if isinstance(entries, dict) else {})

    def get(self, name: str, stamp: tuple[int, int]) -> tuple[str, str] | Literal[False] | None:
        """The cached hashes (None: cached as unreadable), or False when not cached for this fingerprint."""
        entry = self.entries.get(name)
        if not isinstance(entry, list) or len(entry) != 4 or tuple(entry[:2]) != stamp:
            return False
        return None if entry[2] is None else (entry[2], entry[3])

    def put(self, name: str, stamp: tuple[int, int], hashes: tuple[str, str] | None) -> None:
        """Remember one image's hashes (or that it is unreadable)."""
        self.entries[name] = [*stamp, *(hashes or (None, None))]
        self.changed = True

    def save(self) -> None:
        """Write the cache atomically; a cache that cannot be written only costs hashing again."""
        if not self.changed:
            return
        doc = {"version": CACHE_VERSION, "hash": self.rule_key, "entries": self.entries}
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.file, json.dumps(doc, separators=(",", ":")), overwrite=True)
        except OSError:
            pass


class Hashed(NamedTuple):
    """Every readable image's (hash, mirrored hash), the unreadable images, how many were decoded."""

    hashes: dict[Path, tuple[str, str]]
    unreadable: list[Path]
    computed: int


PARALLEL_FROM = 400
"""Images to decode at or above which the hashing is spread over the machine's cores (below it, the
workers' start-up, about a second, costs more than it saves)."""


def compute_hashes(paths: Sequence[Path], kind: HashKind, size: int) -> list[tuple[str, str] | None]:
    """``image_hash`` of each path, in order: on every core for many images (decoding dominates: a
    1920 px JPEG takes about 5 ms even at 1/8 scale), in this process for a few."""
    workers = min(os.cpu_count() or 1, 8)
    if len(paths) < PARALLEL_FROM or workers < 2:
        return [image_hash(p, kind, size) for p in paths]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    from flows.engine.interrupts import ignore_sigint

    context = multiprocessing.get_context("spawn")  # the caller may hold threads: no fork
    # Ctrl-C is the command's to handle (flows/signals.py), not each worker's
    with ProcessPoolExecutor(workers, mp_context=context, initializer=ignore_sigint) as pool:
        return list(pool.map(partial(image_hash, kind=kind, size=size), paths, chunksize=64))


def hash_images(paths: Iterable[Path], rule: LeakageSettings, cache_root: Path | None = None) -> Hashed:
    """Hash each image once: from its folder's cache when its fingerprint is unchanged, else decoded.

    ``cache_root``: where the cache files go (default ``cache_dir()``).
    """
    caches: dict[Path, HashCache] = {}
    found: dict[Path, tuple[str, str]] = {}
    unreadable: list[Path] = []
    todo: list[tuple[Path, HashCache, tuple[int, int]]] = []
    for path in dict.fromkeys(Path(p) for p in paths):
        stamp = fingerprint(path)
        if stamp is None:
            unreadable.append(path)
            continue
        folder = path.absolute().parent
        if folder not in caches:
            caches[folder] = HashCache.load(cache_file_of(folder, cache_root), rule)
        hashes = caches[folder].get(path.name, stamp)
        if hashes is False:
            todo.append((path, caches[folder], stamp))
        elif hashes is None:
            unreadable.append(path)
        else:
            found[path] = hashes
    computed = compute_hashes([path for path, _, _ in todo], rule.hash, rule.size)
    for (path, cache, stamp), hashes in zip(todo, computed, strict=True):
        cache.put(path.name, stamp, hashes)
        if hashes is None:
            unreadable.append(path)
        else:
            found[path] = hashes
    for cache in caches.values():
        cache.save()
    return Hashed(found, unreadable, len(todo))


# ----------------------------------------------------------------------------------------- matching


def popcount_rows(words: np.ndarray) -> np.ndarray:
    """Set bits per row over the last axis (uint64 words)."""
    return np.bitwise_count(words).sum(axis=-1, dtype=np.int32)


def block_distances(
    plain: np.ndarray, mirrored: np.ndarray, columns: np.ndarray, *, mirror: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Hamming distances of some rows' hashes to every column hash, and where the mirrored one was nearer.

    A pair's distance is the smaller of plain-to-plain and mirrored-to-plain: a flipped copy's hash is
    (near) its original's mirrored hash.
    """
    dist = popcount_rows(plain[:, None, :] ^ columns[None, :, :])
    if not mirror:
        return dist, np.zeros(dist.shape, dtype=bool)
    dist_m = popcount_rows(mirrored[:, None, :] ^ columns[None, :, :])
    return np.minimum(dist, dist_m), dist_m < dist


def close_pairs(
    plain: np.ndarray, mirrored: np.ndarray, radius: int, *, mirror: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every pair i < j within ``radius``: (i, j, distance, flipped), over all rows of ``plain``.

    The full distance matrix in blocks of rows: for 10,000 64-bit hashes, 10⁸ XOR-and-popcounts,
    about a second in numpy, no index structure needed.
    """
    found: list[tuple[np.ndarray, ...]] = []
    step = block_rows(len(plain))
    for start in range(0, len(plain), step):
        rows = slice(start, start + step)
        dist, flipped = block_distances(plain[rows], mirrored[rows], plain, mirror=mirror)
        i, j = np.nonzero(dist <= radius)
        keep = j > i + start
        i, j = i[keep], j[keep]
        found.append((i + start, j, dist[i, j], flipped[i, j]))
    if not found:
        empty = np.zeros(0, dtype=np.intp)
        return empty, empty, empty, np.zeros(0, dtype=bool)
    i, j, d, f = (np.concatenate(parts) for parts in zip(*found, strict=True))
    return i, j, d, f


def hash_rows(
    paths: Sequence[Path], hashes: Mapping[Path, tuple[str, str]], size: int
) -> tuple[np.ndarray, ...]:
    """The plain and mirrored hashes of ``paths`` as uint64 word rows."""
    return (
        hex_words([hashes[p][0] for p in paths], size),
        hex_words([hashes[p][1] for p in paths], size),
    )


def find_near_duplicates(
    splits: Mapping[str, Sequence[Path | str]],
    rule: LeakageSettings,
    *,
    cache_root: Path | None = None,
    max_pairs: int = MAX_PAIRS,
    train: str = "train",
    val: str = "val",
) -> NearDuplicates:
    """Hash every image of every split (cached) and count the pairs within the rule's radius.

    An image listed in two splits is compared as two images (the byte check reports it as well).
    """
    started = time.perf_counter()
    listed = [(split, Path(p)) for split, images in splits.items() for p in images]
    hashed = hash_images((p for _, p in listed), rule, cache_root)
    entries = [(split, p) for split, p in listed if p in hashed.hashes]
    plain, mirrored = hash_rows([p for _, p in entries], hashed.hashes, rule.size)
    i, j, dist, flipped = close_pairs(plain, mirrored, rule.radius, mirror=rule.mirror)
    split_of = np.array([s for s, _ in entries], dtype=object)
    same = split_of[i] == split_of[j] if len(i) else np.zeros(0, dtype=bool)
    cross: dict[str, set[int]] = {s: set() for s in splits}
    within: dict[str, set[int]] = {s: set() for s in splits}
    val_in_train: set[int] = set()
    for a, b, is_same in zip(i.tolist(), j.tolist(), same.tolist(), strict=True):
        target = within if is_same else cross
        target[entries[a][0]].add(a)
        target[entries[b][0]].add(b)
        for x, y in ((a, b), (b, a)):
            if entries[x][0] == val and entries[y][0] == train:
                val_in_train.add(x)
    order = np.lexsort((j, i, dist, same))  # cross-split first, then nearest
    pairs = tuple(
        NearPair(
            first_split=entries[i[k]][0],
            first=str(entries[i[k]][1]),
            second_split=entries[j[k]][0],
            second=str(entries[j[k]][1]),
            distance=int(dist[k]),
            flipped=bool(flipped[k]),
        )
        for k in order[:max_pairs]
    )
    return NearDuplicates(
        rule=rule,
        images=len(listed),
        hashed=hashed.computed,
        seconds=round(time.perf_counter() - started, 3),
        unreadable=tuple(str(p) for p in hashed.unreadable),
        cross={s: len(v) for s, v in cross.items()},
        within={s: len(v) for s, v in within.items()},
        val_in_train=len(val_in_train),
        cross_pairs=int(np.count_nonzero(~same)),
        within_pairs=int(np.count_nonzero(same)),
        pairs=pairs,
    )


def leaked_images(
    queries: Sequence[Path | str],
    references: Sequence[Path | str],
    rule: LeakageSettings,
    *,
    cache_root: Path | None = None,
) -> set[Path]:
    """The query images (val) with a near-duplicate among the references (train): ``val_in_train``'s
    images. Reads the profile's cache, so after the dry run nothing is decoded again; an unreadable
    query is not counted as leaked (nothing says it is)."""
    query_paths = [Path(p) for p in queries]
    ref_paths = [Path(p) for p in references]
    hashes = hash_images([*query_paths, *ref_paths], rule, cache_root).hashes
    q = [p for p in dict.fromkeys(query_paths) if p in hashes]
    r = [p for p in dict.fromkeys(ref_paths) if p in hashes]
    if not q or not r:
        return set()
    q_plain, q_mirrored = hash_rows(q, hashes, rule.size)
    r_plain, _ = hash_rows(r, hashes, rule.size)
    leaked: set[Path] = set()
    step = block_rows(len(r))
    for start in range(0, len(q), step):
        rows = slice(start, start + step)
        dist, _ = block_distances(q_plain[rows], q_mirrored[rows], r_plain, mirror=rule.mirror)
        leaked.update(q[start + k] for k in np.nonzero(dist.min(axis=1) <= rule.radius)[0].tolist())
    return leaked
