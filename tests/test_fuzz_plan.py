"""Property-based fuzzing of the plan loader: whatever the file holds, only ``PlanError`` comes out.

Hypothesis writes plan files of five kinds: random bytes, random Unicode text, YAML-like token soup,
random nested documents, and mutations of the shipped ``configs/fod_plan.yaml`` (keys deleted, values
replaced by other types, unknown keys added, keys renamed, the text cut or spliced). Each goes through
``load_plan`` and the full validation (``collect_problems`` then ``prepare``, with a profile or not), and:

- nothing but ``PlanError`` is raised (no ``KeyError``, ``TypeError``, ``RecursionError``...);
- every problem is one line that starts with the culprit file (or the option it is about);
- a plan that loads is a ``Plan``.

The runs are derandomized and use no example database, so CI sees the same examples every time.
By hand, ``FOD_FUZZ_EXAMPLES=2000`` explores further and ``FOD_FUZZ_RANDOM=1`` draws new examples.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import SHIPPED_PLAN
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.engine.config import OptimizeRequest, collect_problems, prepare
from flows.engine.plan.loader import load_plan, parse_yaml, read_yaml
from flows.engine.plan.problems import PlanError
from flows.engine.plan.schema import Plan

SCALE = int(os.environ.get("FOD_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=SCALE,
    deadline=None,
    derandomize=not os.environ.get("FOD_FUZZ_RANDOM"),
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
SHIPPED_TEXT = SHIPPED_PLAN.read_text(encoding="utf-8")
SHIPPED_DOC: dict[str, Any] = yaml.safe_load(SHIPPED_TEXT)


def value_paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and indices) to a value of the document, the root excluded."""
    found = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += value_paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            found += value_paths(value, (*prefix, i))
    return found


PATHS = value_paths(SHIPPED_DOC)
KEYS = sorted({p[-1] for p in PATHS if isinstance(p[-1], str)})
PROFILES = st.sampled_from([None, "smoke", "demo", "nope", "", "smoke\n"])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(KEYS)
    | st.sampled_from(["91.5%", "%", "1e3%", "off", "yolo11n-p2.yaml", "../x", "/", ".", "~", "\x00"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | scalars, inner, max_size=4)
    ),
    max_leaves=12,
)
TOKENS = [
    ":", ": ", "- ", "-", "[", "]", "{", "}", ",", "\n", "\n  ", "\t", "#", "&a ", "*a", "<<: *a", "!!python/name:os.system",
    "!!binary", "'", '"', "|", ">", "---", "...", "%YAML 1.1", "? ", "\ufeff", "\x85", "\u2028", "\x00", "\x1b", "nodes",
    "phase1", "kind: train", "next: gate1", "baseline", "map50_95: ", ".nan", ".inf", "1e999", "0x1F", "0o17", "~",
]  # fmt: skip
token_soup = st.lists(st.sampled_from(TOKENS) | st.text(max_size=6), max_size=40).map("".join)


def set_path(doc: Any, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


def delete_path(doc: Any, path: tuple) -> None:
    for key in path[:-1]:
        doc = doc[key]
    del doc[path[-1]]


def get_path(doc: Any, path: tuple) -> Any:
    for key in path:
        doc = doc[key]
    return doc


@st.composite
def mutated_docs(draw: st.DrawFn) -> Any:
    """The shipped plan with one to four edits, each at a path that still exists."""
    doc = copy.deepcopy(SHIPPED_DOC)
    for _ in range(draw(st.integers(1, 4))):
        live = value_paths(doc)
        if not live:
            break
        path = draw(st.sampled_from(live))
        op = draw(st.sampled_from(["delete", "replace", "swap_type", "add_key", "rename"]))
        parent = get_path(doc, path[:-1])
        if op == "delete":
            delete_path(doc, path)
        elif op == "replace":
            set_path(doc, path, draw(values))
        elif op == "swap_type":
            old = get_path(doc, path)
            set_path(doc, path, draw(st.sampled_from([str(old), [old], {"value": old}, None, -1, math.nan])))
        elif op == "add_key" and isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS) | st.text(max_size=8))] = draw(values)
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS) | st.text(max_size=8))] = parent.pop(path[-1])
    return doc


@st.composite
def spliced_texts(draw: st.DrawFn) -> str:
    """The shipped plan's own text (comments and all) cut, or with random text spliced in."""
    text = SHIPPED_TEXT
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        if draw(st.booleans()):
            text = text[:at] + text[at + draw(st.integers(1, 80)) :]
        else:
            text = text[:at] + draw(st.sampled_from(TOKENS) | st.text(max_size=10)) + text[at:]
    return text


def dump(doc: Any) -> bytes:
    try:
        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode("utf-8", "surrogatepass")
    except yaml.YAMLError:
        return b"plan: [unrepresentable\n"  # safe_dump refuses some keys; still a (malformed) plan


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def assert_clean(exc: PlanError, *sources: str) -> None:
    """One line per problem, each starting with a culprit the user can find."""
    assert exc.problems, "a PlanError without problems"
    lines = str(exc).split("\n")
    assert len(lines) == len(exc.problems)
    for line in lines:
        assert line.strip() and "\r" not in line, repr(line)
        assert any(line.startswith(f"{s}: ") for s in sources), line


def check_load(path: Path, data: bytes, profile: str | None = None) -> Plan | None:
    """Write ``data`` as the plan and load it: a Plan, or a clean PlanError."""
    path.write_bytes(data)
    try:
        plan, force = load_plan(path, profile)
    except PlanError as exc:
        assert_clean(exc, str(path))
        return None
    assert isinstance(plan, Plan) and isinstance(force, dict)
    return plan


def check_full(path: Path, data: bytes, demo_data: Path, runs: Path, profile: str | None) -> None:
    """The whole validation a run goes through: every problem clean; prepare raises only PlanError."""
    path.write_bytes(data)
    request = OptimizeRequest(plan=path, data=demo_data, runs_dir=runs, profile=profile)
    problems = collect_problems(request).problems
    for problem in problems:
        line = problem.line()
        assert "\n" not in line and "\r" not in line, repr(line)
        assert problem.source in {str(path), str(demo_data), "--runs-dir"}, line
    try:
        prepare(request)
    except PlanError as exc:
        assert_clean(exc, str(path), str(demo_data), "--runs-dir")


@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes(workdir, data):
    check_load(workdir / "bytes.yaml", data)


@FUZZ
@given(text=st.text(max_size=300))
def test_random_unicode_text(workdir, text):
    check_load(workdir / "text.yaml", text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(text=token_soup)
def test_yaml_token_soup(workdir, text):
    check_load(workdir / "soup.yaml", text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(doc=values)
def test_random_documents(workdir, doc):
    check_load(workdir / "doc.yaml", dump(doc))


@FUZZ
@given(doc=mutated_docs(), profile=PROFILES)
def test_mutated_shipped_plan_loads_or_says_why(workdir, doc, profile):
    check_load(workdir / "mutated.yaml", dump(doc), profile)


@FUZZ
@given(text=spliced_texts(), profile=PROFILES)
def test_spliced_shipped_text_loads_or_says_why(workdir, text, profile):
    check_load(workdir / "spliced.yaml", text.encode("utf-8", "surrogatepass"), profile)


@settings(FUZZ, max_examples=max(SCALE * 2 // 3, 1))
@given(doc=mutated_docs(), profile=PROFILES)
def test_mutated_shipped_plan_full_validation(workdir, demo_data, doc, profile):
    """Schema, tree, Ultralytics arguments, model files and dataset: problems, never a crash."""
    check_full(workdir / "full.yaml", dump(doc), demo_data, workdir / "runs", profile)


@FUZZ
@given(text=st.text(max_size=200) | token_soup)
def test_parse_yaml_and_read_yaml_raise_only_plan_error(workdir, text):
    """The YAML reader on its own (also used for dataset YAMLs): a document or a clean PlanError."""
    try:
        parse_yaml(text, "source.yaml", what="dataset")
    except PlanError as exc:
        assert_clean(exc, "source.yaml")
    path = workdir / "read.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        read_yaml(path, what="dataset")
    except PlanError as exc:
        assert_clean(exc, str(path))


def test_fuzzing_covers_the_shipped_plan():
    """The mutations reach every part of the plan: nodes, conditions, monitors, profiles, the search space."""
    joined = {".".join(map(str, p)) for p in PATHS}
    for expected in (
        "nodes.gate1.conditions.0.min",
        "nodes.phase1.monitors.0.max",
        "profiles.smoke.force.imgsz",
    ):
        assert expected in joined
    assert "nodes.phase3.space.lr0.0" in joined
