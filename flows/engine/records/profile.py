"""The dataset profile as a record: images, instances and box sizes per split and class, leakage between
splits (byte-identical files and near-duplicates by content), the per-phase P5 check and its warnings.

Made by ``flows/engine/data/profile.py`` before any GPU time is spent; ``RunConfig`` and the run's
``Decision`` carry it, ``--dry-run`` and the report render it. Pure: pydantic only.
"""

from __future__ import annotations

from typing import Literal

from flows.engine.base import Frozen
from flows.engine.plan.leakage import LeakageSettings

WarningKind = Literal[
    "large_boxes_without_p5", "leakage", "near_duplicates", "unreadable_images", "class_without_val"
]


class SplitProfile(Frozen):
    """Counts of one split (or of all splits together), box sizes at the profile's imgsz."""

    images: int
    empty_images: int
    """Images without a box: no label file, an empty one, or one Ultralytics refuses (``check_labels``)."""
    missing_labels: int
    """Of the empty images, those without any label file (Ultralytics: background)."""
    instances: int
    class_instances: tuple[int, ...]
    """Boxes per class id (aligned with ``DataProfile.classes``)."""
    class_images: tuple[int, ...]
    """Images holding at least one box of each class id."""
    measured_boxes: int
    """Boxes whose image size could be read: the histogram and the shares count these."""
    histogram: tuple[int, ...]
    """Boxes per bin of ``DataProfile.edges_px`` (one more bin than edges)."""
    small_boxes: int
    large_boxes: int
    min_px: float | None = None
    median_px: float | None = None
    max_px: float | None = None
    unreadable_images: int = 0
    """Images with boxes whose header could not be read (``check_dataset`` names them)."""
    invalid_rows: int = 0
    """Label rows skipped: the rows of files ``check_labels`` reports (one per unreadable label file)."""
    duplicate_rows: int = 0
    """Exact repeats of a row in the same file, dropped as Ultralytics drops them."""

    @property
    def share_small(self) -> float:
        """Share of measured boxes under the small threshold (0 when there are none)."""
        return self.small_boxes / self.measured_boxes if self.measured_boxes else 0.0

    @property
    def share_large(self) -> float:
        """Share of measured boxes over the large threshold (0 when there are none)."""
        return self.large_boxes / self.measured_boxes if self.measured_boxes else 0.0


class Leak(Frozen):
    """Images of ``second`` that are byte-identical to an image of ``first``."""

    first: str
    second: str
    images: int
    examples: tuple[tuple[str, str], ...] = ()
    """(path in ``first``, path in ``second``), at most ``MAX_EXAMPLES``."""


class NearPair(Frozen):
    """Two images whose perceptual hashes are within the rule's radius."""

    first_split: str
    first: str
    second_split: str
    second: str
    distance: int
    flipped: bool = False
    """The distance is the mirrored one (a flipped copy)."""

    @property
    def cross(self) -> bool:
        """The two images are in different splits."""
        return self.first_split != self.second_split


class NearDuplicates(Frozen):
    """What the near-duplicate check found: complete counts, the nearest pairs, the unreadable images."""

    rule: LeakageSettings
    images: int = 0
    hashed: int = 0
    """Images decoded and hashed by this check (the others came from the hash cache)."""
    seconds: float = 0.0
    unreadable: tuple[str, ...] = ()
    """Images that could not be decoded (missing, truncated, not an image): not compared."""
    cross: dict[str, int] = {}  # noqa: RUF012 (frozen model: pydantic copies defaults)
    """Per split: images with a near-duplicate in another split."""
    within: dict[str, int] = {}  # noqa: RUF012
    """Per split: images with a near-duplicate in the same split."""
    val_in_train: int = 0
    """Validation images with a near-duplicate in train: the images the ``@clean`` figures leave out."""
    cross_pairs: int = 0
    within_pairs: int = 0
    pairs: tuple[NearPair, ...] = ()
    """Cross-split pairs first, then within-split ones, nearest first; at most ``MAX_PAIRS``."""

    @property
    def leaked(self) -> bool:
        """Is any image near-duplicated across splits?"""
        return self.cross_pairs > 0


class PhaseCheck(Frozen):
    """The box sizes one phase trains and is validated on (all splits, at its own imgsz), and whether
    it lacks the P5 head."""

    name: str
    imgsz: int
    max_stride: int
    drops_p5: bool
    measured_boxes: int
    small_boxes: int
    large_boxes: int
    warned: bool

    @property
    def share_large(self) -> float:
        """Share of boxes over the large threshold at this phase's imgsz."""
        return self.large_boxes / self.measured_boxes if self.measured_boxes else 0.0

    @property
    def share_small(self) -> float:
        """Share of boxes under the small threshold at this phase's imgsz."""
        return self.small_boxes / self.measured_boxes if self.measured_boxes else 0.0


class ProfileWarning(Frozen):
    """One plan-sanity warning: ``where`` is a plan key (``nodes.phase2``) or a split name."""

    kind: WarningKind
    where: str
    message: str


class DataProfile(Frozen):
    """What the labels say, for ``--dry-run`` and the report; made by ``profile_dataset``."""

    imgsz: int
    classes: tuple[str, ...]
    edges_px: tuple[float, ...]
    small_px: float
    large_px: float
    max_large_share: float
    splits: dict[str, SplitProfile]
    overall: SplitProfile
    """All splits together (an image listed in two splits counts twice)."""
    leaks: tuple[Leak, ...] = ()
    """One entry per pair of splits that share identical files."""
    hashed_files: int = 0
    """Files read whole for the leakage check (only those a same-size file in another split forces)."""
    near_duplicates: NearDuplicates | None = None
    """Near-duplicates by perceptual hash (None: the plan's ``leakage`` check is off)."""
    phases: tuple[PhaseCheck, ...] = ()
    warnings: tuple[ProfileWarning, ...] = ()
