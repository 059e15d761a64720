"""The plan's ``leakage`` section: how near-duplicate images across splits are found.

One rule serves the dry run, plan validation, the report and the evaluation's ``@clean`` figures, so
an image counted as leaked before training is the one left out of the clean figure after it. The
default was chosen on measured pairs (docs/LEAKAGE.md). Pure: pydantic only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flows.engine.plan.buckets import Settings

HashKind = Literal["phash", "dhash", "ahash", "whash"]


class LeakageSettings(Settings):
    """Perceptual hash (``imagehash``), its side in cells, and the largest Hamming distance of a match."""

    enabled: bool = Field(default=True, description="Look for near-duplicate images across splits.")
    hash: HashKind = "phash"
    size: int = Field(default=8, ge=4, le=32, description="Hash side: size x size bits.")
    radius: int = Field(default=11, ge=0, description="Largest Hamming distance that counts as a match.")
    mirror: bool = Field(default=True, description="Also match horizontally flipped copies.")

    @property
    def bits(self) -> int:
        """Bits per hash."""
        return self.size * self.size

    @property
    def label(self) -> str:
        """The rule in words, for the dry run and the report."""
        flip = ", flipped copies too" if self.mirror else ""
        return f"{self.hash} {self.size}x{self.size}, Hamming distance ≤ {self.radius}{flip}"
