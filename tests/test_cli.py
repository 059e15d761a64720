"""The command line as a user runs it: exit codes, messages, and nothing written on bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import GOLFBALL, ROOT, SHIPPED_PLAN, leaky_golfball, needs_shared


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m flows.optimize ARGS`` in a subprocess, from ``cwd``."""
    env = {**os.environ, "YOLO_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "flows.optimize", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under a folder with its size and mtime, to prove nothing changed."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_help_explains_each_option(tmp_path):
    out = run_cli("--help", cwd=tmp_path)
    assert out.returncode == 0
    for option in ("--plan", "--data", "--profile", "--runs-dir", "--dry-run", "--replay", "--demo"):
        assert option in out.stdout


@needs_shared
def test_dry_run_on_shipped_plan_and_golfball(tmp_path):
    """The issue's acceptance check: exits 0, prints the tree, rules and epochs, writes nothing."""
    before = snapshot(tmp_path)
    out = run_cli("--plan", str(SHIPPED_PLAN), "--data", str(GOLFBALL), "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "fail: phase2 (train phase2)" in out.stdout
    assert "path rules:" in out.stdout and "planned epochs per branch:" in out.stdout
    assert "worst case 460 epochs" in out.stdout
    assert snapshot(tmp_path) == before


@needs_shared
def test_dry_run_names_val_images_that_are_altered_copies_of_train_images(tmp_path):
    """Re-encoded, shrunk, brightened and flipped copies of train images in val, under other names: no
    byte is shared, and the dry run counts them, names them and says the gates' figures count them."""
    data, copies = leaky_golfball(tmp_path / "data")
    out = run_cli("--plan", str(SHIPPED_PLAN), "--data", str(data), "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "leakage: no image is byte-identical across splits" in out.stdout
    assert f"val {len(copies)} of {36 + len(copies)}" in out.stdout
    assert f"{len(copies)} val images have one in train" in out.stdout
    for copy in copies:
        assert f"val/{copy.name}" in out.stdout
    warning = f"{len(copies)} val image(s) have a near-duplicate in another split"
    assert warning in out.stdout + out.stderr


def test_bad_plan_exits_2_with_one_line_per_problem_and_writes_nothing(tmp_path, write_plan, demo_data):
    def two_mistakes(doc: dict) -> None:
        doc["nodes"]["phase1"]["args"]["lr_0"] = 0.01
        doc["nodes"]["gate1"]["conditions"][0]["min"] = 91.5

    plan = write_plan(two_mistakes)
    before = snapshot(tmp_path)
    out = run_cli(
        "--plan", str(plan), "--data", str(demo_data), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, lines  # schema errors stop before argument checks: the threshold line
    assert "nodes.gate1.conditions[0].min" in lines[0] and "write 0.915" in lines[0]
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "runs").exists()


def test_bad_arguments_are_listed_together(tmp_path, write_plan, demo_data):
    def mistakes(doc: dict) -> None:
        doc["nodes"]["phase1"]["args"]["lr_0"] = 0.01
        doc["nodes"]["phase2"]["args"]["accumulate"] = 2

    out = run_cli("--plan", str(write_plan(mistakes)), "--data", str(demo_data), cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2
    assert "'lr_0' is not a valid YOLO argument. Similar arguments are i.e. ['lr0=0.01']" in lines[0]
    assert "declare effective_batch" in lines[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--data: give the dataset YAML"),
        (("--data", "missing.yaml"), "missing.yaml: dataset YAML not found"),
        (("--data", "missing.yaml", "--plan", "nope.yaml"), "nope.yaml: plan file not found"),
        (("--data", "missing.yaml", "--set", "device"), "'device' is not KEY=VALUE"),
    ],
    ids=["no data", "missing data", "missing plan", "bad --set"],
)
def test_bad_options_exit_2(tmp_path, args, message):
    out = run_cli(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_replay_spec_missing_a_node_is_refused(tmp_path, demo_data):
    curve = ROOT / "benchmarks" / "curves" / "corpus" / "k012.csv"  # a real curve committed in the project
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"nodes:\n  phase1: {{csv: {curve}}}\n", encoding="utf-8")
    out = run_cli("--data", str(demo_data), "--replay", str(spec), "--dry-run", cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert [line.split(": ")[1] for line in lines] == ["nodes.phase2", "nodes.phase3"], lines
    for line in lines:  # one line per node, each naming the SPEC once
        assert line.startswith(f"{spec}: ") and line.count(str(spec)) == 1, line
        assert "no recorded run for this node" in line
