"""``YOLO_OFFLINE=1`` for every process that runs Ultralytics: nothing may be downloaded at run time."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def offline_environment() -> Iterator[None]:
    """``YOLO_OFFLINE=1`` in this process's environment for the block (as it was, after it).

    Spawned children (training, memory probes) start with it: a spawned child re-imports the parent's
    main module before its target runs, and if that module imports Ultralytics the variable must
    already be there.
    """
    previous = os.environ.get("YOLO_OFFLINE")
    os.environ["YOLO_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("YOLO_OFFLINE", None)
        else:
            os.environ["YOLO_OFFLINE"] = previous
