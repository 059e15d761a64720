"""The engine's building blocks: the strict base models and the readers of paths and fractions.

Kept apart so that any module — settings of the search or the batch planner, records of the data
profile or the evaluation — can build on them without importing the plan or the results (and so
without import cycles).
"""

from __future__ import annotations

import math
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from pydantic import BaseModel, ConfigDict

MAX_PATH_CHARS = 1024
MAX_NAME_CHARS = 255
"""Longer paths or file names make the OS raise ENAMETOOLONG instead of answering 'not found'."""


class Strict(BaseModel):
    """Base model: unknown keys are errors, NaN and infinity are not numbers, values are checked on
    assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def check_path_text(value: str | None, *, what: str) -> str | None:
    """A file path from the plan that the OS can look up: no NUL byte, no over-long name."""
    if value is None:
        return None
    if "\x00" in value or not value.strip():
        raise ValueError(f"{what} must be a file name or path, got {value!r}")
    if len(value) > MAX_PATH_CHARS or any(len(part) > MAX_NAME_CHARS for part in value.split("/")):
        raise ValueError(f"{what} is too long for a file path ({len(value)} characters)")
    return value


def check_inside(value: str, *, what: str) -> str:
    """A folder relative to the runs folder that stays inside it (no absolute path, no '..').

    The model registry holds deployed models that are never overwritten; a plan must not be
    able to point it (or anything the engine writes) at ``../../etc`` or ``/``.
    """
    check_path_text(value, what=what)
    posix, windows = PurePosixPath(value), PureWindowsPath(value)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or value.startswith("~"):
        raise ValueError(f"{what} {value!r} must be a folder relative to the runs folder, not absolute")
    if ".." in posix.parts or ".." in windows.parts:
        raise ValueError(f"{what} {value!r} leaves the runs folder ('..'); name a folder inside it")
    if posix.parts in ((), (".",)):
        raise ValueError(f"{what} must name a folder inside the runs folder, got {value!r}")
    return value


def parse_fraction(value: Any, *, what: str, upper: float | None = 1.0) -> float:
    """Read a threshold as a fraction; accept ``"91.5%"`` strings; reject bare percentages.

    One unit everywhere (fractions, as Ultralytics reports mAP) so that 91.5 and 0.915 can
    never be confused: a bare number above ``upper`` is refused with the fraction to write.
    """
    if isinstance(value, str):
        text = value.strip()
        if not text.endswith("%"):
            raise ValueError(
                f"{what} must be a number (fraction) or a percentage like '91.5%', got {value!r}"
            )
        try:
            number = float(text[:-1]) / 100.0
        except ValueError:
            raise ValueError(f"{what}: cannot read {value!r} as a percentage") from None
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number, got {type(value).__name__}")
    else:
        number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{what} must be a finite number ≥ 0, got {value!r}")
    if upper is not None and number > upper:
        raise ValueError(
            f"{what} = {value!r} looks like a percentage; thresholds are fractions: "
            f"write {number / 100:g} (or the string '{number:g}%')"
        )
    return number


class Frozen(BaseModel):
    """Base for immutable, strict records (results, events, profiles): unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)
