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

from flows.engine.plan.problems import PlanError, Problem
from flows.engine.plan.schema import Plan, Profile

MAX_FILE_BYTES = 4 * 1024 * 1024
"""A plan or dataset YAML is a few kilobytes; anything this big is the wrong file."""
MAX_DEPTH = 64
MAX_VALUES = 200_000
"""Limits on a document after aliases are expanded: a YAML 'billion laughs' is a few lines of
text that expands to gigabytes when printed or validated, and a self-referencing alias never ends."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping.

    PyYAML keeps the last of two equal keys without a word, so a second ``phase1:`` would
    silently replace the first. Merge keys (``<<: *anchor``) still override as YAML intends.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Check for duplicate keys, then build the mapping as ``SafeLoader`` does."""
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable: SafeLoader reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str, *, what: str = "plan") -> Any:
    """Parse YAML text safely (no Python objects, no duplicate keys, bounded size) or raise ``PlanError``."""
    try:
        doc = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PlanError([Problem(source, where, f"malformed YAML: {reason}")]) from None
    except RecursionError:
        raise PlanError([Problem(source, "", f"malformed {what}: nested too deeply to read")]) from None
    if message := size_problem(doc):
        raise PlanError([Problem(source, "", f"{what} {message}")])
    return doc


def size_problem(doc: Any) -> str | None:
    """Why a parsed document is too deep or too large once aliases are expanded, or None.

    Walks iteratively (no recursion) and stops at the first limit, so even a cyclic
    document answers at once.
    """
    stack: list[tuple[Any, int]] = [(doc, 0)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            return f"holds more than {MAX_VALUES} values once its aliases are expanded (an alias bomb?)"
        if depth > MAX_DEPTH:
            return f"is nested more than {MAX_DEPTH} levels deep (or an alias refers to itself)"
        if isinstance(value, dict):
            stack += [(v, depth + 1) for v in value.values()]
            stack += [(k, depth + 1) for k in value if isinstance(k, tuple)]
        elif isinstance(value, list | tuple | set):
            stack += [(v, depth + 1) for v in value]
    return None


def read_text_file(path: Path, source: str, *, what: str = "plan") -> str:
    """A small UTF-8 text file's content, or ``PlanError`` saying why it cannot be read."""
    try:
        if path.is_dir():
            raise PlanError([Problem(source, "", f"is a folder; give the {what} file")])
        if not path.is_file():
            raise PlanError([Problem(source, "", f"{what} file not found")])
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise PlanError(
                [Problem(source, "", f"{what} file is {size} bytes; a {what} is a small YAML file")]
            )
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PlanError(
            [
                Problem(
                    source,
                    "",
                    f"{what} file is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                    f"{exc.start}); save it as UTF-8",
                )
            ]
        ) from None
    except OSError as exc:
        raise PlanError([Problem(source, "", f"cannot read {what} file: {exc.strerror or exc}")]) from None


def read_yaml(path: Path, *, what: str = "plan") -> Any:
    """Load a YAML file safely, turning every failure into a ``PlanError`` naming the file."""
    path = Path(path)
    return parse_yaml(read_text_file(path, str(path), what=what), str(path), what=what)


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
    if not isinstance(profiles, dict):
        raise PlanError([Problem(source, "profiles", "must be a mapping of profile names to overrides")])
    if profile_name not in profiles:
        known = ", ".join(sorted(map(str, profiles))) or "none"
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
