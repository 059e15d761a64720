"""A catalogue of bad inputs, each run through the command line: refused cleanly, nothing touched.

The rule (from the project's issue): bad input gets a clear message naming the culprit and exit
code 2 before any training starts, and nothing already on disk is overwritten or lost. Every case
below builds its inputs in its own folder, snapshots that folder and the shared inputs (path →
size, mtime, sha256), runs the command line's entry function (``flows.optimize.main``, in this
process, in the case's folder) and checks:

- exit code 2 and no traceback;
- every stderr line is one problem that starts with the culprit (file, or option such as
  ``--runs-dir``), and one of them names the key or line and says what is wrong;
- both snapshots are unchanged and the runs folder was not created.

A few cases (``SUBPROCESS_CASES``) also run as the real ``python -m flows.optimize`` in a subprocess, for
the process's own exit code and the absence of a traceback on its stderr.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, SHIPPED_PLAN

from flows.engine.data.checks import check_runs_dir, weights_problem
from flows.engine.fsutil import atomic_copy, atomic_write_text
from flows.engine.plan.problems import Problem, describe_os_error

# ----------------------------------------------------------------------------- snapshots


def snapshot(*roots: Path) -> dict[str, tuple[str, int, int, str]]:
    """Every file and folder under ``roots`` with type, size, mtime and content hash."""
    state: dict[str, tuple[str, int, int, str]] = {}
    for root in roots:
        for p in [root, *root.rglob("*")] if root.is_dir() else [root]:
            st = p.lstat()
            if p.is_symlink() or not p.exists():
                state[str(p)] = ("link", 0, st.st_mtime_ns, os.readlink(p) if p.is_symlink() else "")
            elif p.is_dir():
                state[str(p)] = ("dir", 0, st.st_mtime_ns, "")
            else:
                state[str(p)] = (
                    "file",
                    st.st_size,
                    st.st_mtime_ns,
                    hashlib.sha256(p.read_bytes()).hexdigest(),
                )
    return state


# ----------------------------------------------------------------------------- building inputs


@dataclass
class Ctx:
    """One case's folder and the inputs the command line gets (defaults: valid shipped plan and data)."""

    root: Path
    shipped: dict[str, Any]
    demo_data: Path
    plan: Path = SHIPPED_PLAN
    data: Path | None = None
    runs: Path | None = None
    extra: list[str] = field(default_factory=list)
    source: str = ""
    snap_extra: list[Path] = field(default_factory=list)
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data = self.demo_data
        self.runs = self.root / "runs"

    def plan_doc(self, mutate: Callable[[dict[str, Any]], object] | None = None) -> Path:
        """Write a variant of the shipped plan and make it the culprit."""
        doc = copy.deepcopy(self.shipped)
        if mutate is not None:
            mutate(doc)
        return self.plan_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))

    def plan_text(self, text: str) -> Path:
        return self.plan_bytes(text.encode("utf-8"))

    def plan_bytes(self, data: bytes) -> Path:
        self.plan = self.root / "plan.yaml"
        self.plan.write_bytes(data)
        self.source = str(self.plan)
        return self.plan

    def dataset(self) -> Path:
        """A private copy of the small demo dataset; the culprit becomes its data.yaml."""
        ds = self.root / "ds"
        shutil.copytree(self.demo_data.parent, ds)
        doc = yaml.safe_load((ds / "data.yaml").read_text(encoding="utf-8"))
        doc["path"] = str(ds)
        self.data_doc(doc)
        return ds

    def data_doc(self, doc: Any) -> Path:
        return self.data_text(yaml.safe_dump(doc, sort_keys=False))

    def data_text(self, text: str) -> Path:
        self.data = self.root / "ds" / "data.yaml"
        self.data.parent.mkdir(exist_ok=True)
        self.data.write_text(text, encoding="utf-8")
        self.source = str(self.data)
        return self.data

    def first_label(self, ds: Path) -> Path:
        return sorted((ds / "labels" / "train").glob("*.txt"))[0]

    def first_image(self, ds: Path) -> Path:
        return sorted((ds / "images" / "train").glob("*.jpg"))[0]


@dataclass(frozen=True)
class Case:
    """A bad input: how to build it, which line must name it, and how the CLI is called."""

    id: str
    build: Callable[[Ctx], object]
    expect: tuple[str, ...]
    dry_run: bool = True


def point_at(attr: str, name: str) -> Callable[[Ctx], object]:
    """Give the command line a path (``plan`` or ``data``) under the case folder; it is the culprit."""

    def build(c: Ctx) -> None:
        path = c.root / name if name else c.root
        setattr(c, attr, path)
        c.source = str(path)

    return build


def set_in(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        doc = doc[key]
    doc[last] = value


def plan_set(dotted: str, value: Any) -> Callable[[Ctx], object]:
    return lambda c: c.plan_doc(lambda d: set_in(d, dotted, value))


def plan_sets(*pairs: tuple[str, Any]) -> Callable[[Ctx], object]:
    """Several keys set at once."""

    def mutate(d: dict) -> None:
        for dotted, value in pairs:
            set_in(d, dotted, value)

    return lambda c: c.plan_doc(mutate)


def shipped_text_with(old: str, new: str) -> Callable[[Ctx], object]:
    """The shipped plan's own text (comments and all) with one edit, as a user would make it."""

    def build(c: Ctx) -> None:
        text = SHIPPED_PLAN.read_text(encoding="utf-8")
        assert old in text
        c.plan_text(text.replace(old, new, 1))

    return build


def with_label(text: str) -> Callable[[Ctx], object]:
    def build(c: Ctx) -> None:
        ds = c.dataset()
        c.first_label(ds).write_text(text, encoding="utf-8")

    return build


def with_image_bytes(data: bytes, name: str = "zz_bad.jpg") -> Callable[[Ctx], object]:
    def build(c: Ctx) -> None:
        ds = c.dataset()
        (ds / "images" / "train" / name).write_bytes(data)

    return build


def truncated_jpeg(c: Ctx) -> None:
    ds = c.dataset()
    image = c.first_image(ds)
    image.write_bytes(image.read_bytes()[:-200])


def tiny_png(c: Ctx) -> None:
    from PIL import Image

    ds = c.dataset()
    Image.new("RGB", (5, 5)).save(ds / "images" / "train" / "zz_tiny.png")


def data_edit(mutate: Callable[[dict[str, Any]], object]) -> Callable[[Ctx], object]:
    def build(c: Ctx) -> None:
        ds = c.dataset()
        doc = yaml.safe_load((ds / "data.yaml").read_text(encoding="utf-8"))
        mutate(doc)
        c.data_doc(doc)

    return build


def empty_train_folder(c: Ctx) -> None:
    ds = c.dataset()
    (ds / "images" / "empty").mkdir()
    doc = yaml.safe_load((ds / "data.yaml").read_text(encoding="utf-8"))
    doc["train"] = "images/empty"
    c.data_doc(doc)


def option(*args: str, source: str) -> Callable[[Ctx], object]:
    def build(c: Ctx) -> None:
        c.extra += list(args)
        c.source = source

    return build


def replay_spec(text: bytes) -> Callable[[Ctx], object]:
    def build(c: Ctx) -> None:
        spec = c.root / "spec.yaml"
        spec.write_bytes(text)
        c.extra += ["--replay", str(spec)]
        c.source = str(spec)

    return build


def text_weights(c: Ctx) -> None:
    weights = c.root / "weights.pt"
    weights.write_text("version https://git-lfs.github.com/spec/v1\n", encoding="utf-8")
    c.plan_doc(lambda d: set_in(d, "nodes.phase1.pretrained", str(weights)))


def runs_under_a_file(c: Ctx) -> None:
    (c.root / "not-a-folder").write_text("a file\n", encoding="utf-8")
    c.runs = c.root / "not-a-folder" / "runs"
    c.source = "--runs-dir"


def mount_tmpfs(c: Ctx, folder: Path, options: str) -> None:
    """Mount a tmpfs (root only); skip the case with the reason when this machine cannot."""
    folder.mkdir()
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip() or out.returncode})")
    c.cleanup.append(lambda: subprocess.run(["umount", "-l", str(folder)], check=False))


def read_only_runs(c: Ctx) -> None:
    """chmod 555 as a user; as root (which ignores permission bits) a read-only tmpfs mount."""
    folder = c.root / "ro"
    if os.geteuid() != 0:
        folder.mkdir()
        folder.chmod(0o555)
        c.cleanup.append(lambda: folder.chmod(0o755))
    else:
        mount_tmpfs(c, folder, "ro,size=1m")
    c.runs = folder / "runs"
    c.source = "--runs-dir"


def full_runs(c: Ctx) -> None:
    folder = c.root / "full"
    mount_tmpfs(c, folder, "size=1m")
    fill(folder)
    c.runs = folder / "runs"
    c.source = "--runs-dir"
    c.snap_extra.append(folder)


def fill(folder: Path) -> None:
    """Write a filler file until the file system says it is full (opening it may already fail)."""
    try:
        with open(folder / "filler.bin", "wb") as handle:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc


NESTED = "plan: x\nbaseline: {name: b, map50_95: 0.9}\ndefaults: {deep: " + "[" * 100 + "]" * 100 + "}\n"
BOMB = "".join(
    f"{x}: &{x} [{', '.join([f'*{prev}' if prev else 'lol'] * 10)}]\n"
    for prev, x in zip(["", "a", "b", "c", "d", "e"], "abcdef", strict=True)
)

CORPUS_CURVE = ROOT / "benchmarks" / "curves" / "corpus" / "k012.csv"
FOUR_PROBLEM_SPEC = (
    "nodes:\n"
    "  phase1: {csv: nowhere.csv, speed: 3}\n"
    f"  phase2: {{csv: {CORPUS_CURVE}, images_per_s: fast}}\n"
    f"  phase3: {{trials: [], full: {{csv: {CORPUS_CURVE}}}}}\n"
).encode()
"""A replay SPEC with four problems: a CSV not found, an unknown key, a figure that is not a number, no trials."""

CASES: list[Case] = [
    # --- the plan file itself
    Case("plan missing", point_at("plan", "nope.yaml"), ("plan file not found",)),
    Case("plan is a folder", point_at("plan", ""), ("is a folder",)),
    Case("yaml tab indent", shipped_text_with("  phase1:\n    kind: train", "  phase1:\n\tkind: train"), ("line ", "malformed YAML", "'\\t'")),
    Case("yaml tab indent (run)", shipped_text_with("  phase1:\n    kind: train", "  phase1:\n\tkind: train"), ("malformed YAML",), dry_run=False),
    Case("yaml unclosed bracket", shipped_text_with("[0.008, 0.01, 0.012]", "[0.008, 0.01, 0.012"), ("line ", "malformed YAML")),
    Case("yaml unclosed quote", shipped_text_with("description: the lite", 'description: "the lite'), ("malformed YAML",)),
    Case("yaml bad indentation", shipped_text_with("    kind: gate\n    description: the plan's Phase 1", "    kind: gate\n      description: the plan's Phase 1"), ("line ", "malformed YAML")),
    Case("yaml duplicate node", shipped_text_with("  gate3:\n", "  gate1:\n"), ("line ", "found duplicate key 'gate1'")),
    Case("yaml duplicate key in a node", shipped_text_with("    effective_batch: 16\n", "    effective_batch: 16\n    effective_batch: 32\n"), ("line ", "duplicate key 'effective_batch'")),
    Case("yaml python tag", lambda c: c.plan_text("plan: !!python/object/apply:os.system [echo hi]\n"), ("malformed YAML", "constructor")),
    Case("plan is a list", lambda c: c.plan_text("- phase1\n- phase2\n"), ("a plan must be a mapping",)),
    Case("plan is a scalar", lambda c: c.plan_text("fod-yolo11m-p2\n"), ("a plan must be a mapping",)),
    Case("plan is empty", lambda c: c.plan_bytes(b""), ("a plan must be a mapping",)),
    Case("plan is binary garbage", lambda c: c.plan_bytes(bytes(range(256)) * 8), ("not UTF-8", "offset")),
    Case("plan not UTF-8", lambda c: c.plan_bytes(b"# caf\xe9 (latin-1)\n" + SHIPPED_PLAN.read_bytes()), ("not UTF-8",)),
    Case("plan with a NUL byte", lambda c: c.plan_bytes(b"plan: fod\x00\n"), ("malformed YAML", "#x0000")),
    Case("plan alias bomb", lambda c: c.plan_text(BOMB), ("alias bomb",)),
    Case("plan alias refers to itself", lambda c: c.plan_text("plan: &a [*a]\n"), ("nested more than",)),
    Case("plan nested too deep", lambda c: c.plan_text(NESTED), ("nested more than",)),
    Case("plan nested past the parser", lambda c: c.plan_text("[" * 3000 + "]" * 3000), ("nested too deeply",)),
    Case("plan file too large", lambda c: c.plan_text("# padding\n" * 500_000), ("bytes; a plan is a small YAML file",)),
    # --- schema: types, keys, values
    Case("wrong type: nodes is a list", plan_set("nodes", ["phase1", "gate1"]), ("nodes: ", "valid dictionary")),
    Case("wrong type: baseline is a number", plan_set("baseline", 0.9331), ("baseline: ", "valid dictionary")),
    Case("wrong type: epochs as text", plan_set("nodes.phase1.effective_batch", "18 images"), ("nodes.phase1.effective_batch", "integer")),
    Case("unknown node key", plan_set("nodes.phase1.nxt", "gate1"), ("nodes.phase1.nxt", "unknown key")),
    Case("unknown key (run)", plan_set("nodes.phase1.nxt", "gate1"), ("nodes.phase1.nxt", "unknown key"), dry_run=False),
    Case("a node on several GPUs", plan_set("nodes.phase1.args.device", "0,1"), ("nodes.phase1.args.device", "names several GPUs", "--set device=0,1")),
    Case("key with a newline", plan_set("nodes.phase1.a\nb", 1), ("nodes.phase1.a\\nb", "unknown key")),
    Case("cycle", plan_set("nodes.gate2.on_fail", "phase1"), ("nodes: cycle",)),
    Case("missing target", plan_set("nodes.gate1.on_fail", "phase9"), ("nodes.gate1.on_fail", "'phase9', which is not defined")),
    Case("threshold NaN", lambda c: c.plan_doc(lambda d: d["nodes"]["gate1"]["conditions"][0].update(min=float("nan"))), ("nodes.gate1.conditions[0].min", "finite")),
    Case("threshold negative", lambda c: c.plan_doc(lambda d: d["nodes"]["gate1"]["conditions"][0].update(min=-0.5)), ("nodes.gate1.conditions[0].min", "≥ 0")),
    Case("threshold percent as text", lambda c: c.plan_doc(lambda d: d["nodes"]["gate1"]["conditions"][0].update(min="91.5")), ("nodes.gate1.conditions[0].min", "'91.5%'")),
    Case("speedup infinite", lambda c: c.plan_doc(lambda d: d["nodes"]["gate2"]["conditions"][1].update(min=float("inf"))), ("nodes.gate2.conditions[1].min", "finite")),
    Case("monitor bound NaN", lambda c: c.plan_doc(lambda d: d["nodes"]["phase1"]["monitors"][0].update(max=float("nan"))), ("nodes.phase1.monitors[0].max", "finite")),
    Case("monitor VRAM negative", lambda c: c.plan_doc(lambda d: d["nodes"]["phase1"]["monitors"][0].update(max=-18)), ("nodes.phase1.monitors[0]", "≥ 0 GB")),
    Case("grad_clip_norm infinite", plan_set("nodes.phase1.grad_clip_norm", float("inf")), ("nodes.phase1.grad_clip_norm", "finite")),
    Case("registry escapes runs folder", plan_set("registry", "../../etc"), ("registry: ", "leaves the runs folder")),
    Case("registry escapes (run)", plan_set("registry", "../../etc"), ("registry: ", "leaves the runs folder"), dry_run=False),
    Case("registry absolute", plan_set("registry", "/etc/models"), ("registry: ", "not absolute")),
    Case("profile registry escapes", lambda c: (c.plan_doc(lambda d: set_in(d, "profiles.smoke.registry", "../shared")), c.extra.extend(["--profile", "smoke"])), ("profiles.smoke.registry", "leaves the runs folder")),
    Case("unknown profile", lambda c: (c.plan_doc(), c.extra.extend(["--profile", "tiny"])), ("profiles: no profile 'tiny' (known: demo, smoke)",)),
    # --- evaluation by object size, gates on a bucket or a class, the VRAM planner
    Case("size buckets overlap", plan_set("evaluation", {"buckets": [{"name": "small", "max_px": 32}, {"name": "big", "min_px": 16}]}), ("evaluation.buckets", "overlap")),
    Case("size buckets leave a gap", plan_set("evaluation", {"buckets": [{"name": "small", "max_px": 16}, {"name": "big", "min_px": 32}]}), ("evaluation.buckets", "gap")),
    Case("gate reads an unknown bucket", plan_set("nodes.gate1.conditions", [{"check": "metric", "metric": "map50_95", "min": 0.5, "bucket": "tiny"}]), ("nodes.gate1.conditions[0].bucket", "unknown bucket 'tiny'")),
    Case("gate reads an unknown class", plan_set("nodes.gate1.conditions", [{"check": "metric", "metric": "map50_95", "min": 0.5, "class": "rivet"}]), ("nodes.gate1.conditions[0].class", "unknown class 'rivet'")),
    Case("gate on @clean without the leakage check", plan_sets(("leakage", {"enabled": False}), ("nodes.gate1.conditions", [{"check": "metric", "metric": "map50_95", "min": 0.5, "images": "clean"}])), ("nodes.gate1.conditions[0].images", "needs leakage enabled")),
    Case("latency of a format the deploy does not export", plan_set("nodes.gate2.conditions", [{"check": "latency", "max_ms": 25, "format": "openvino"}]), ("nodes.gate2.conditions[0].format", "which deploy_phase2 does not export")),
    Case("export to TensorRT on the CPU", plan_set("nodes.deploy_phase1.export", {"formats": ["engine"]}), ("nodes.deploy_phase1.export.device", "TensorRT")),
    Case("export format unknown", plan_set("nodes.deploy_phase1.export", {"formats": ["tflite"]}), ("nodes.deploy_phase1.export.formats", "onnx")),
    Case("export parity tolerance as a percentage", plan_set("nodes.deploy_phase1.export", {"parity_tolerance": 5}), ("parity_tolerance", "looks like a percentage")),
    Case("gate on @clean of a bucket", plan_set("nodes.gate1.conditions", [{"check": "metric", "metric": "map50_95", "min": 0.5, "images": "clean", "bucket": "lt16"}]), ("nodes.gate1.conditions", "images: clean reads the overall figures")),
    Case("leakage radius negative", plan_set("leakage", {"radius": -1}), ("leakage.radius", "greater than or equal to 0")),
    Case("batch plan budget in MiB", plan_set("nodes.phase1.batch_plan", {"budget_gb": 18432}), ("nodes.phase1.batch_plan.budget_gb", "looks like MiB")),
    Case("batch plan budget not what the monitor reads", plan_set("nodes.phase1.batch_plan", {"budget_gb": 16, "figure": "nvml_peak"}), ("nodes.phase1.monitors[0]", "differs from")),
    # --- files the plan names
    Case("model file missing", plan_set("nodes.phase2.model", "yolo11m-p3-nope.yaml"), ("nodes.phase2.model", "yolo11m-p3-nope.yaml")),
    Case("model path too long", plan_set("nodes.phase1.model", "m" * 300 + ".yaml"), ("nodes.phase1.model", "too long")),
    Case("pretrained weights missing", plan_set("nodes.phase1.pretrained", "weights/nowhere.pt"), ("nodes.phase1.pretrained", "not found")),
    Case("pretrained weights not a checkpoint", text_weights, ("nodes.phase1.pretrained", "not a PyTorch checkpoint")),
    # --- the dataset
    Case("data missing", point_at("data", "nope.yaml"), ("dataset YAML not found",)),
    Case("data is a folder", point_at("data", ""), ("is a folder",)),
    Case("data YAML malformed", lambda c: c.data_text("train: images/train\nval: [images/val\n"), ("line ", "malformed YAML")),
    Case("data YAML duplicate key", lambda c: c.data_text("train: a\ntrain: b\nval: c\nnames: [x]\n"), ("duplicate key 'train'",)),
    Case("data YAML is a list", lambda c: c.data_text("- images/train\n"), ("must be a mapping",)),
    Case("data without names", data_edit(lambda d: (d.pop("names"), d.pop("nc"))), ("names: ", "give the class names")),
    Case("data nc disagrees with names", data_edit(lambda d: d.update(nc=7)), ("nc: ", "names lists 4 classes")),
    Case("data train folder missing", data_edit(lambda d: d.update(train="images/nowhere")), ("train: ", "images/nowhere does not exist")),
    Case("data train folder empty", empty_train_folder, ("train: ", "no images found")),
    Case("image 0-byte JPEG", with_image_bytes(b""), ("train: ", "zz_bad.jpg: empty file")),
    Case("image text named .jpg", with_image_bytes(b"<html>404 Not Found</html>\n"), ("train: ", "zz_bad.jpg: not an image")),
    Case("image truncated JPEG", truncated_jpeg, ("train: ", "truncated JPEG")),
    Case("image under 10 pixels", tiny_png, ("train: ", "zz_tiny.png: 5x5 pixels")),
    Case("label coordinate > 1", with_label("0 0.5 1.7 0.1 0.1\n"), ("train: ", ".txt:1: ", "normalised to [0, 1]")),
    Case("label coordinate negative", with_label("1 0.5 0.5 -0.1 0.1\n"), ("train: ", ".txt:1: ", "normalised")),
    Case("label wrong column count", with_label("0 0.5 0.5 0.1\n"), ("train: ", ".txt:1: ", "4 columns")),
    Case("label class id >= nc", with_label("0 0.5 0.5 0.1 0.1\n4 0.5 0.5 0.1 0.1\n"), ("train: ", ".txt:2: ", "class id 4")),
    Case("label non-numeric", with_label("bolt 0.5 0.5 0.1 0.1\n"), ("train: ", ".txt:1: ", "non-numeric")),
    Case("label bad (run)", with_label("9 0.5 0.5 0.1 0.1\n"), ("train: ", "class id 9"), dry_run=False),
    # --- options
    Case("--set epochs=abc", option("--set", "epochs=abc", source=str(SHIPPED_PLAN)), ("profile.force.epochs", "'epochs' must be an int")),
    Case("--set epochs=abc (run)", option("--set", "epochs=abc", source=str(SHIPPED_PLAN)), ("profile.force.epochs", "must be an int"), dry_run=False),
    Case("--set unknown argument", option("--set", "lr_0=0.01", source=str(SHIPPED_PLAN)), ("profile.force.lr_0", "lr0")),
    Case("--set reserved argument", option("--set", "data=other.yaml", source=str(SHIPPED_PLAN)), ("profile.force.data", "--data")),
    Case("--set without =", option("--set", "epochs", source="--set"), ("'epochs' is not KEY=VALUE",)),
    Case("replay SPEC malformed YAML", replay_spec(b"nodes: {phase1: {csv: a.csv\n"), ("not valid YAML",)),
    Case("replay SPEC is a list", replay_spec(b"- a.csv\n"), ("a replay SPEC is a mapping",)),
    Case("replay SPEC names a missing CSV", replay_spec(b"default: {csv: nowhere.csv}\n"), ("file not found",)),
    Case("replay SPEC missing", lambda c: (c.extra.extend(["--replay", str(c.root / "nope.yaml")]), setattr(c, "source", str(c.root / "nope.yaml"))), ("cannot read the replay SPEC",)),
    Case("replay SPEC not UTF-8", replay_spec("default: {csv: caf\xe9.csv}\n".encode("latin-1")), ("UTF-8",)),
    Case("replay SPEC with four problems", replay_spec(FOUR_PROBLEM_SPEC), ("nodes.phase1.speed", "unknown key")),
    # --- the runs folder
    Case("runs folder under a regular file", runs_under_a_file, ("not-a-folder", "is a file, not a folder")),
    Case("runs folder read-only", read_only_runs, ("not writable",)),
    Case("runs folder on a full disk", full_runs, ("MB free",)),
]  # fmt: skip

BY_ID = {c.id: c for c in CASES}


# ----------------------------------------------------------------------------- running


@dataclass
class Outcome:
    """What one case did: the command's result and the state before and after."""

    ctx: Ctx
    returncode: int = -1
    stdout: str = ""
    stderr: str = ""
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    skip: str | None = None


def arguments(case: Case, c: Ctx) -> list[str]:
    args = ["--plan", str(c.plan), "--data", str(c.data), "--runs-dir", str(c.runs), *c.extra]
    return [*args, *(["--dry-run"] if case.dry_run else [])]


def in_process(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """``flows.optimize.main(args)`` in ``cwd``: its exit code, stdout and stderr (an exception that
    escapes it is its traceback on stderr, as the real command would print)."""
    from flows.optimize import main

    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(args)
            except SystemExit as exc:  # argparse's own refusals
                code = exc.code if isinstance(exc.code, int) else 1
            except Exception:
                err.write(traceback.format_exc())
                code = 1
    finally:
        os.chdir(here)
    return code, out.getvalue(), err.getvalue()


def as_subprocess(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """The real ``python -m flows.optimize`` in ``cwd``."""
    env = {**os.environ, "YOLO_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "flows.optimize", *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    return done.returncode, done.stdout, done.stderr


def run_case(
    case: Case, root: Path, shipped: dict[str, Any], demo_data: Path, runner: Callable = in_process
) -> Outcome:
    """Build, snapshot, run, snapshot again; undo mounts and modes whatever happens."""
    c = Ctx(root=root, shipped=shipped, demo_data=demo_data)
    c.source = str(SHIPPED_PLAN)
    out = Outcome(c)
    try:
        case.build(c)
        roots = [root, demo_data.parent, SHIPPED_PLAN.parent, *c.snap_extra]
        out.before = snapshot(*roots)
        out.returncode, out.stdout, out.stderr = runner(arguments(case, c), root)
        out.after = snapshot(*roots)
    except pytest.skip.Exception as exc:
        out.skip = str(exc)
    finally:
        for undo in reversed(c.cleanup):
            undo()
    return out


def selected_case_ids(request: pytest.FixtureRequest) -> list[str]:
    """The catalogue cases this session will actually test (so ``-k`` runs only those)."""
    ids = [
        item.callspec.params["case_id"]
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_bad_input_is_refused_cleanly"
    ]
    return ids or [c.id for c in CASES]


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory, shipped_plan_doc, demo_data) -> dict[str, Outcome]:
    """Every selected case, one after another in this process (each changes the working folder)."""
    ids = selected_case_ids(request)
    roots = {i: tmp_path_factory.mktemp(re.sub(r"\W+", "-", i)[:40]) for i in ids}
    return {i: run_case(BY_ID[i], roots[i], shipped_plan_doc, demo_data) for i in ids}


SUBPROCESS_CASES = ("unknown key (run)", "data missing", "--set unknown argument")
"""Cases that also run as the real command, four at a time: a plan problem, a dataset problem found
after the plan loaded, and one that gets as far as Ultralytics' argument checks."""


@pytest.fixture(scope="module")
def subprocess_outcomes(tmp_path_factory, shipped_plan_doc, demo_data) -> dict[str, Outcome]:
    roots = {i: tmp_path_factory.mktemp("sub-" + re.sub(r"\W+", "-", i)[:36]) for i in SUBPROCESS_CASES}
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {
            i: pool.submit(run_case, BY_ID[i], roots[i], shipped_plan_doc, demo_data, as_subprocess)
            for i in SUBPROCESS_CASES
        }
        return {i: f.result() for i, f in futures.items()}


SOURCE_LINE = re.compile(r"^(warning: )?(?P<source>.+?): ")


def assert_refused_cleanly(case: Case, out: Outcome) -> None:
    c = out.ctx
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 2, (out.returncode, out.stdout[-2000:], out.stderr[-2000:])
    lines = out.stderr.strip().splitlines()
    assert lines, "no problem line printed"
    known = {str(c.plan), str(c.data), c.source, "--set", "--runs-dir", "--data", "--replay"}
    for line in lines:  # one problem per line, each starting with the culprit's file or option
        assert any(line.startswith(f"{k}: ") for k in known), line
    culprit = [ln for ln in lines if ln.startswith(f"{c.source}: ")]
    assert any(all(text in ln for text in case.expect) for ln in culprit), (case.expect, lines)
    assert out.after == out.before, "files changed: " + ", ".join(
        sorted(k for k in out.before.keys() | out.after.keys() if out.before.get(k) != out.after.get(k))
    )
    assert not Path(c.runs).exists(), "the runs folder was created"


@pytest.mark.parametrize("case_id", [c.id for c in CASES], ids=[c.id for c in CASES])
def test_bad_input_is_refused_cleanly(case_id, outcomes):
    case, out = BY_ID[case_id], outcomes[case_id]
    if out.skip:
        pytest.skip(out.skip)
    assert_refused_cleanly(case, out)


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_bad_input_is_refused_cleanly_by_the_real_command(case_id, subprocess_outcomes):
    """The process itself exits 2 with the same lines and no traceback."""
    case, out = BY_ID[case_id], subprocess_outcomes[case_id]
    if out.skip:
        pytest.skip(out.skip)
    assert_refused_cleanly(case, out)


def test_catalogue_is_large_enough():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


def test_every_problem_of_a_replay_spec_is_a_line_of_its_own(tmp_path, demo_data, capsys):
    """A replay SPEC with four problems, through the command line's entry function: four lines, each
    naming the SPEC file once, then the key path and what is wrong; exit 2, nothing written."""
    from flows.optimize import main

    spec = tmp_path / "spec.yaml"
    spec.write_bytes(FOUR_PROBLEM_SPEC)
    runs = tmp_path / "runs"
    before = snapshot(tmp_path)
    args = ["--plan", str(SHIPPED_PLAN), "--data", str(demo_data), "--runs-dir", str(runs)]
    code = main([*args, "--replay", str(spec)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "nodes.phase1.csv",
        "nodes.phase1.speed",
        "nodes.phase2.images_per_s",
        "nodes.phase3.trials",
    ], lines
    assert all(line.startswith(f"{spec}: ") and line.count(str(spec)) == 1 for line in lines), lines
    assert "file not found" in lines[0] and "relative to the SPEC" in lines[0]
    assert "unknown key" in lines[1] and "valid number" in lines[2] and "at least 1 item" in lines[3]
    assert snapshot(tmp_path) == before and not runs.exists()


# ----------------------------------------------------------------------------- helpers, in-process


def test_weights_check_accepts_a_real_checkpoint_and_never_unpickles(tmp_path):
    """A torch.save archive passes; a pickle bomb in a zip named like a checkpoint is not loaded."""
    torch = pytest.importorskip("torch")
    good = tmp_path / "good.pt"
    torch.save({"model": torch.zeros(2)}, good)
    assert weights_problem(good) is None
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"x": Evil()}, evil)  # a checkpoint whose pickle would run code
    assert weights_problem(evil) is None  # structurally a checkpoint: accepted, but never run
    assert not marker.exists()
    (tmp_path / "text.pt").write_text("not weights", encoding="utf-8")
    assert "not a PyTorch checkpoint" in weights_problem(tmp_path / "text.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "empty" in weights_problem(tmp_path / "empty.pt")
    shutil.make_archive(str(tmp_path / "plain"), "zip", root_dir=tmp_path, base_dir="text.pt")
    assert "no data.pkl" in weights_problem(tmp_path / "plain.zip")


def test_runs_dir_check_writes_nothing(tmp_path):
    before = snapshot(tmp_path)
    assert check_runs_dir(tmp_path / "runs" / "deeper") == []
    (tmp_path / "file").write_text("x", encoding="utf-8")
    [problem] = check_runs_dir(tmp_path / "file" / "runs")
    assert problem.source == "--runs-dir" and "is a file, not a folder" in problem.message
    assert not (tmp_path / "runs").exists()
    assert set(snapshot(tmp_path)) - set(before) == {str(tmp_path / "file")}


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (errno.ENOSPC, "free some space"),
        (errno.EDQUOT, "free some space"),
        (errno.EACCES, "writable --runs-dir"),
        (errno.EROFS, "writable --runs-dir"),
        (errno.ENOTDIR, "is a file, not a folder"),
        (errno.ENAMETOOLONG, "shorter path"),
        (errno.EIO, "check the path"),
    ],
    ids=lambda v: errno.errorcode.get(v, v) if isinstance(v, int) else v,
)
def test_describe_os_error_names_the_file_and_the_fix(code, text):
    message = describe_os_error(OSError(code, os.strerror(code), "/runs/x/REPORT.md"))
    assert message.startswith("/runs/x/REPORT.md: writing failed: ")
    assert text in message and "\n" not in message


def test_problem_lines_stay_one_line_and_bounded():
    line = Problem("plan\n.yaml", "nodes.a\rb", "first\nsecond " + "x" * 5000).line()
    assert "\n" not in line and "\r" not in line
    assert "plan\\n.yaml: nodes.a\\rb: first second" in line and "more characters" in line
    assert len(line) < 1500


def test_full_disk_leaves_no_partial_file_and_one_clear_message(tmp_path):
    """A run or report written to a full file system fails with one line, and no partial file remains."""
    folder = tmp_path / "full"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        (folder / "run").mkdir()
        (folder / "run" / "decision.json").write_text("{}", encoding="utf-8")
        fill(folder)
        before = snapshot(folder)
        report = folder / "run" / "REPORT.md"
        with pytest.raises(OSError) as info:
            atomic_write_text(report, "# report\n" + "x" * 200_000)
        assert info.value.errno == errno.ENOSPC
        message = describe_os_error(info.value)
        assert "no space left" in message.lower() and "free some space" in message and "\n" not in message
        source = tmp_path / "best.pt"
        source.write_bytes(os.urandom(300_000))
        with pytest.raises(OSError) as info:
            atomic_copy(source, folder / "models" / "v1" / "best.pt")
        assert info.value.errno == errno.ENOSPC
        leftovers = set(snapshot(folder)) - set(before)
        assert all(Path(p).is_dir() for p in leftovers), leftovers  # no partial or temporary file
        assert not report.exists() and not any(folder.rglob("*.tmp"))
        assert (folder / "run" / "decision.json").read_text(encoding="utf-8") == "{}"  # nothing lost
        [problem] = check_runs_dir(folder / "runs")
        assert "MB free" in problem.message
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_snapshot_sees_every_kind_of_change(tmp_path):
    """The catalogue's snapshot must notice a new file, a rewrite with the same size, and a deletion."""
    (tmp_path / "a").write_text("one", encoding="utf-8")
    base = snapshot(tmp_path)
    (tmp_path / "a").write_text("two", encoding="utf-8")
    assert snapshot(tmp_path) != base
    base = snapshot(tmp_path)
    (tmp_path / f"{uuid.uuid4().hex}").write_text("", encoding="utf-8")
    assert snapshot(tmp_path) != base
