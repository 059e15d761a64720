"""Ultralytics' default training arguments, read from Ultralytics itself and never typed again.

``ultralytics.cfg.DEFAULT_CFG_DICT`` is its ``cfg/default.yaml`` read with a safe YAML loader; importing
``ultralytics`` imports torch (1.5 s), so this reads the same file without importing the package, and
the plan, the records and the decisions stay importable without torch.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml


@functools.cache
def ultralytics_defaults() -> MappingProxyType[str, Any]:
    """Every default training argument of the installed Ultralytics (``DEFAULT_CFG_DICT``), read-only."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("ultralytics is not installed: its default arguments cannot be read")
    path = Path(next(iter(spec.submodule_search_locations))) / "cfg" / "default.yaml"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return MappingProxyType(yaml.load(path.read_text(encoding="utf-8"), Loader=loader))


def ultralytics_default(key: str) -> Any:
    """Ultralytics' default of one training argument (``epochs`` 100, ``imgsz`` 640, ``batch`` 16 …)."""
    return ultralytics_defaults()[key]
