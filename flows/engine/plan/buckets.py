"""Object-size buckets: the plan's ``evaluation`` settings and the checks of what a plan says about them.

A bucket is a half-open range ``[min_px, max_px)`` of object size in pixels of the original image,
measured as the box's longest side (the FOD default: < 16, 16–32, 32–64, ≥ 64 px) or, as COCO does,
by area against the bounds squared (``preset: coco``). ``bucket_problems`` and ``reference_problems``
return one ``Problem`` line per mistake (overlaps, gaps, names; gates on unknown buckets or classes)
instead of raising, so three mistakes give three lines. docs/EVALUATION.md. Pure: pydantic only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from flows.engine.base import Frozen, parse_fraction
from flows.engine.plan.problems import Problem

Measure = Literal["longest_side", "area"]
BUCKET_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}$"
ALL = "all"
"""The name of the bucket that holds every object (COCO's ``all`` area range); reserved."""
BUCKET_METRICS = ("map50_95", "map50", "recall")
"""Figures reported per bucket and per class (COCO has no single precision per size)."""


class Settings(Frozen):
    """Base of plan-side models: unknown keys are errors, values are finite, nothing changes after load
    (the settings travel to the training child inside the run's spec)."""

    model_config = ConfigDict(allow_inf_nan=False)


class SizeBucket(Settings):
    """One size range ``[min_px, max_px)``; ``max_px`` unset means no upper bound."""

    name: str = Field(pattern=BUCKET_NAME)
    min_px: float = Field(default=0.0, ge=0, le=100_000)
    max_px: float | None = Field(default=None, gt=0, le=100_000)

    @model_validator(mode="after")
    def _ordered(self) -> SizeBucket:
        if self.name == ALL:
            raise ValueError(f"bucket name {ALL!r} is reserved for all sizes together; choose another name")
        if self.max_px is not None and self.max_px <= self.min_px:
            raise ValueError(
                f"bucket {self.name!r}: max_px ({self.max_px:g}) must be larger than min_px ({self.min_px:g})"
            )
        return self

    @property
    def upper(self) -> float:
        """The upper bound, infinity when open."""
        return math.inf if self.max_px is None else self.max_px

    def label(self) -> str:
        """How the range reads in a table: ``< 16 px``, ``16–32 px``, ``≥ 64 px``."""
        if self.min_px == 0 and self.max_px is not None:
            return f"< {self.max_px:g} px"
        if self.max_px is None:
            return f"≥ {self.min_px:g} px"
        return f"{self.min_px:g}–{self.max_px:g} px"

    def holds(self, size_px: float) -> bool:
        """True when an object of this size (in the bucket's measure, px) falls in the bucket."""
        return self.min_px <= size_px < self.upper


FOD_BUCKETS: tuple[SizeBucket, ...] = (
    SizeBucket(name="lt16", max_px=16),
    SizeBucket(name="16-32", min_px=16, max_px=32),
    SizeBucket(name="32-64", min_px=32, max_px=64),
    SizeBucket(name="gt64", min_px=64),
)
"""Runway FOD: longest side < 16 px (what P2 is for), 16–32, 32–64 and ≥ 64 px."""

COCO_BUCKETS: tuple[SizeBucket, ...] = (
    SizeBucket(name="small", max_px=32),
    SizeBucket(name="medium", min_px=32, max_px=96),
    SizeBucket(name="large", min_px=96),
)
"""COCO's area ranges: small w×h < 32², medium < 96², large the rest (with ``measure: area``)."""

PRESETS: dict[str, tuple[Measure, tuple[SizeBucket, ...]]] = {
    "fod": ("longest_side", FOD_BUCKETS),
    "coco": ("area", COCO_BUCKETS),
}


class EvaluationSettings(Settings):
    """The plan's ``evaluation`` section: size buckets and how sure the gates must be.

    ``preset: coco`` (or ``fod``, the default) fills ``measure`` and ``buckets``; give either a preset or
    your own buckets. ``confidence`` is the level of every interval (two-sided, percentile bootstrap over
    validation images with ``resamples`` resamples and ``seed``).
    """

    enabled: bool = True
    measure: Measure = "longest_side"
    buckets: tuple[SizeBucket, ...] = Field(default=FOD_BUCKETS, min_length=1, max_length=16)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    resamples: int = Field(default=1000, ge=1000, le=100_000)
    seed: int = Field(default=0, ge=0)
    bucket_intervals: bool = Field(
        default=True, description="Bootstrap the per-bucket and per-class figures too (a few seconds more)."
    )

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        """Expand ``preset`` into ``measure`` and ``buckets``."""
        if not isinstance(data, dict) or "preset" not in data:
            return data
        data = dict(data)
        preset = data.pop("preset")
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        if "buckets" in data:
            raise ValueError("give either preset or buckets, not both")
        measure, buckets = PRESETS[preset]
        if data.get("measure", measure) != measure:
            raise ValueError(f"preset {preset!r} measures {measure}; remove measure or the preset")
        data.update(measure=measure, buckets=buckets)
        return data

    @field_validator("confidence", mode="before")
    @classmethod
    def _level(cls, value: Any) -> float:
        """Accept ``"95%"`` as well as 0.95; refuse a bare 95 with the fraction to write."""
        return parse_fraction(value, what="evaluation.confidence")

    def bucket(self, name: str) -> SizeBucket | None:
        """The bucket called ``name``, or None."""
        return next((b for b in self.buckets if b.name == name), None)

    def bucket_names(self) -> tuple[str, ...]:
        """Names in plan order."""
        return tuple(b.name for b in self.buckets)


def bucket_problems(settings: EvaluationSettings, *, source: str, where: str = "evaluation") -> list[Problem]:
    """Every problem of the bucket set, one each: duplicate names, overlaps, gaps; open ends are warnings.

    Each object must fall in at most one bucket (an overlap counts it twice) and the buckets must be
    contiguous (a gap silently drops the sizes between them from every bucket figure).
    """
    problems: list[Problem] = []
    key = f"{where}.buckets"
    seen: dict[str, int] = {}
    for i, b in enumerate(settings.buckets):
        if b.name in seen:
            problems.append(
                Problem(
                    source, f"{key}[{i}]", f"bucket name {b.name!r} is used twice (also at [{seen[b.name]}])"
                )
            )
        seen.setdefault(b.name, i)
    ordered = sorted(settings.buckets, key=lambda b: (b.min_px, b.upper))
    for low, high in pairwise(ordered):
        problems += pair_problems(low, high, source=source, key=key)
    problems += open_end_problems(ordered, source=source, key=key)
    return problems


def pair_problems(low: SizeBucket, high: SizeBucket, *, source: str, key: str) -> list[Problem]:
    """Overlap or gap between two buckets adjacent in size order."""
    if high.min_px < low.upper:
        top = min(low.upper, high.upper)
        return [
            Problem(
                source,
                key,
                f"buckets {low.name!r} ({low.label()}) and {high.name!r} ({high.label()}) overlap from "
                f"{high.min_px:g} to {top:g} px; make {high.name!r} start at {low.upper:g} (each object "
                "must fall in one bucket)",
            )
        ]
    if high.min_px > low.upper:
        return [
            Problem(
                source,
                key,
                f"no bucket holds sizes from {low.upper:g} to {high.min_px:g} px (between {low.name!r} and "
                f"{high.name!r}); make {high.name!r} start at {low.upper:g}",
            )
        ]
    return []


def open_end_problems(ordered: Sequence[SizeBucket], *, source: str, key: str) -> list[Problem]:
    """Warnings when the smallest or largest objects fall in no bucket (they still count in ``all``)."""
    if not ordered:
        return []
    out: list[Problem] = []
    if ordered[0].min_px > 0:
        out.append(
            Problem(
                source,
                key,
                f"objects under {ordered[0].min_px:g} px fall in no bucket (they still count in {ALL!r})",
                severity="warning",
            )
        )
    top = max(b.upper for b in ordered)
    if math.isfinite(top):
        out.append(
            Problem(
                source,
                key,
                f"objects of {top:g} px and more fall in no bucket (they still count in {ALL!r})",
                severity="warning",
            )
        )
    return out


ClassNames = Mapping[int, str] | Sequence[str]


def names_by_id(names: ClassNames) -> dict[int, str]:
    """Class names of a dataset YAML (a list or an {id: name} mapping) as {id: name}."""
    if isinstance(names, Mapping):
        return {int(k): str(v) for k, v in names.items()}
    return dict(enumerate(str(n) for n in names))


def resolve_class(ref: str | int, names: ClassNames) -> int | None:
    """The class id a gate names by id or by name; None when the dataset has no such class."""
    table = names_by_id(names)
    if isinstance(ref, int) and not isinstance(ref, bool):
        return ref if ref in table else None
    text = str(ref).strip()
    by_name = [k for k, v in table.items() if v == text]
    if by_name:
        return by_name[0]
    return int(text) if text.isdigit() and int(text) in table else None


def reference_problems(
    *,
    metric: str,
    bucket: str | None,
    class_ref: str | int | None,
    settings: EvaluationSettings,
    names: ClassNames | None,
    source: str,
    where: str,
) -> list[Problem]:
    """What is wrong with a gate (or monitor) that reads a bucket's or a class's figure, one line each.

    ``names`` are the dataset's classes; None when the dataset could not be read (that is reported
    elsewhere, so the class is not checked here).
    """
    if bucket is None and class_ref is None:
        return []
    problems: list[Problem] = []
    if not settings.enabled:
        problems.append(
            Problem(source, where, "reads a size bucket or class figure, but evaluation.enabled is false")
        )
    if metric not in BUCKET_METRICS:
        problems.append(
            Problem(
                source,
                f"{where}.metric",
                f"{metric} is not reported per size or class; use one of {', '.join(BUCKET_METRICS)}",
            )
        )
    if bucket is not None and bucket != ALL and settings.bucket(bucket) is None:
        known = ", ".join([*settings.bucket_names(), ALL])
        problems.append(
            Problem(source, f"{where}.bucket", f"unknown bucket {bucket!r}; the plan's buckets: {known}")
        )
    if class_ref is not None and names is not None and resolve_class(class_ref, names) is None:
        known = ", ".join(f"{k} {v}" for k, v in sorted(names_by_id(names).items()))
        problems.append(
            Problem(source, f"{where}.class", f"unknown class {class_ref!r}; the dataset's classes: {known}")
        )
    return problems
