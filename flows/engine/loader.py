"""Read a plan file safely, apply a profile, and build the validated ``Plan``.

YAML is read with ``yaml.safe_load`` only. Pydantic errors are turned into one
``Problem`` per error with the key path, so a user sees every mistake at once.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from flows.engine.problems import PlanError, Problem
from flows.engine.schema import Plan, Profile


def read_yaml(path: Path, *, what: str = "plan") -> Any:
    """Load a YAML file safely, turning every failure into a ``PlanError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise PlanError([Problem(str(path), "", f"{what} file not found")])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError([Problem(str(path), "", f"cannot read {what} file: {exc}")]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PlanError([Problem(str(path), where, f"malformed YAML: {reason}")]) from None


def deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``patch`` merged in: mappings merge key by key, anything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


NODE_TAGS = {"train", "search", "gate", "deploy", "keep_baseline"}
CONDITION_TAGS = {"metric", "speedup", "vram", "no_divergence", "completed"}


def is_union_tag(loc: tuple[Any, ...], i: int) -> bool:
    """True when ``loc[i]`` is the discriminator tag pydantic inserts for a node or condition union."""
    item = loc[i]
    after_node_name = i == 2 and loc[0] == "nodes" and item in NODE_TAGS
    after_index = i > 0 and isinstance(loc[i - 1], int) and item in CONDITION_TAGS
    return after_node_name or after_index


def format_loc(loc: tuple[Any, ...]) -> str:
    """Turn a pydantic error location into a dotted key path, dropping union tags."""
    parts: list[str] = []
    for i, item in enumerate(loc):
        if is_union_tag(loc, i):
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(f".{item}" if parts else str(item))
    return "".join(parts)


def problems_from_validation(source: str, error: ValidationError, prefix: str = "") -> list[Problem]:
    """One ``Problem`` per pydantic error, with a hint for unknown keys."""
    problems = []
    for err in error.errors():
        where = format_loc(tuple(err["loc"]))
        where = f"{prefix}.{where}" if prefix and where else prefix or where
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see the commented plan in configs/fod_plan.yaml)"
        problems.append(Problem(source, where, message))
    return problems


def apply_profile(
    raw: dict[str, Any], profile_name: str | None, source: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Merge the named profile's overrides into the raw plan; return it and the profile's forced args."""
    if profile_name is None:
        return raw, {}
    profiles = raw.get("profiles") or {}
    if profile_name not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise PlanError([Problem(source, "profiles", f"no profile {profile_name!r} (known: {known})")])
    try:
        profile = Profile.model_validate(profiles[profile_name])
    except ValidationError as exc:
        raise PlanError(problems_from_validation(source, exc, f"profiles.{profile_name}")) from None
    patch: dict[str, Any] = {"defaults": profile.defaults, "nodes": profile.nodes}
    if profile.registry:
        patch["registry"] = profile.registry
    return deep_merge(raw, patch), dict(profile.force)


def load_plan(path: Path, profile: str | None = None) -> tuple[Plan, dict[str, Any]]:
    """Load and schema-validate a plan; return it with the profile's forced args.

    Raises ``PlanError`` with every schema problem found.
    """
    source = str(path)
    raw = read_yaml(Path(path))
    if not isinstance(raw, dict):
        raise PlanError(
            [Problem(source, "", "a plan must be a mapping with keys plan, baseline, start, nodes")]
        )
    merged, force = apply_profile(raw, profile, source)
    try:
        plan = Plan.model_validate(merged)
    except ValidationError as exc:
        raise PlanError(problems_from_validation(source, exc)) from None
    return plan, force
