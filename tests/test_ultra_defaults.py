"""Ultralytics' default arguments are read from Ultralytics (its default.yaml), never typed again."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT

from flows.engine.plan.ultra_defaults import ultralytics_default, ultralytics_defaults


def test_the_defaults_are_ultralytics_own() -> None:
    from ultralytics.cfg import DEFAULT_CFG_DICT

    assert dict(ultralytics_defaults()) == DEFAULT_CFG_DICT
    assert [ultralytics_default(k) for k in ("epochs", "imgsz", "batch", "nbs", "close_mosaic")] == [
        DEFAULT_CFG_DICT[k] for k in ("epochs", "imgsz", "batch", "nbs", "close_mosaic")
    ]


def test_reading_them_imports_neither_ultralytics_nor_torch() -> None:
    code = (
        "import sys; from flows.engine.plan.ultra_defaults import ultralytics_default as d; d('epochs'); "
        "print(sorted(m for m in ('torch', 'ultralytics') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


RETYPED = re.compile(r"""\.get\(\s*["'](epochs|imgsz|batch|nbs|close_mosaic)["']\s*,\s*\d""")


def test_no_module_types_a_default_again() -> None:
    """``args.get("epochs", 100)`` and the like: the default is ``ultralytics_default("epochs")``."""
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("flows", "tasks", "benchmarks")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if RETYPED.search(line)
    ]
    assert found == []
