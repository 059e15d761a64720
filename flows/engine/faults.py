"""Named kill points and faked hardware errors for the crash and recovery tests.

Production code calls ``kill_point(name)`` where a crash is most harmful (between a step and its journal
line, halfway through a deploy, between the report and decision.json). Nothing happens unless
``FOD_KILL_AT`` names that point: then the process SIGKILLs itself, as a power cut or the OOM killer
would, so the tests can prove that re-running the same command recovers. ``FOD_FAKE_OOM_ABOVE`` makes
the trainer raise ``torch.OutOfMemoryError`` above a batch size on a machine without a GPU;
``FOD_KILL_CHILD`` kills a training child after an epoch; ``FOD_DAMAGE_EXPORT`` damages an export.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

KILL_ENV = "FOD_KILL_AT"
KILL_SIGNAL_ENV = "FOD_KILL_SIGNAL"
"""A signal name (``SIGTERM``, ``SIGINT``) a kill point sends this process instead of SIGKILL: an
operator's ``kill PID`` at that exact point, which the command's handler must turn into a clean stop."""


def kill_point(name: str) -> None:
    """SIGKILL this process if ``FOD_KILL_AT`` names this point (test fault injection); with
    ``FOD_KILL_SIGNAL``, that signal instead, then wait for its handler to end the process."""
    if os.environ.get(KILL_ENV) != name:
        return
    chosen = os.environ.get(KILL_SIGNAL_ENV)
    os.kill(os.getpid(), getattr(signal, chosen) if chosen else signal.SIGKILL)
    if chosen:
        time.sleep(60)  # the handler runs in the main thread; this one may be another


def worker_gone_point(name: str) -> None:
    """Close this Dask worker and its nanny for good if ``FOD_KILL_AT`` is ``gone:<name>``: a machine
    that never comes back (a plain kill point's worker is restarted by its nanny). The training stops
    here; the process ends as the nanny closes it."""
    if os.environ.get(KILL_ENV) != f"gone:{name}":
        return
    from distributed import get_worker

    worker = get_worker()
    worker.loop.add_callback(worker.close, nanny=True, executor_wait=False, reason="fault injection: gone")
    while True:  # the worker's threads are daemons: the process ends with its close
        time.sleep(1)


FAKE_OOM_ENV = "FOD_FAKE_OOM_ABOVE"
"""Test fault injection at the hardware boundary: a training batch larger than this raises
``torch.OutOfMemoryError`` when it is moved to the device (``0``: every batch does)."""


def fake_oom_above() -> int | None:
    """The batch size above which the trainer fakes a CUDA out-of-memory error, or None (never)."""
    text = os.environ.get(FAKE_OOM_ENV, "").strip()
    return int(text) if text.isdigit() else None


CHILD_KILL_ENV = "FOD_KILL_CHILD"
"""Test fault injection in the training child: ``KEY@EPOCH`` (e.g. ``phase1@1``) makes the child of that
training SIGKILL itself right after the first epoch ≥ EPOCH it trains (its last.pt is then on disk), as
the kernel's out-of-memory killer would. ``FOD_KILL_CHILD_TIMES`` (default 1) says how many of its
processes die that way; the count is kept in the training's run folder, so a retried child knows."""
CHILD_KILL_TIMES_ENV = "FOD_KILL_CHILD_TIMES"
CHILD_KILL_COUNT = ".fault-kills"


def child_kill_point(key: str, epoch: int, run_dir: Path) -> None:
    """SIGKILL this (child) process if ``FOD_KILL_CHILD`` names this training and an epoch ≤ this one,
    up to ``FOD_KILL_CHILD_TIMES`` processes."""
    target, _, first = os.environ.get(CHILD_KILL_ENV, "").partition("@")
    if target != key or not first.isdigit() or epoch < int(first):
        return
    counter = Path(run_dir) / CHILD_KILL_COUNT
    done = int(counter.read_text() or 0) if counter.is_file() else 0
    if done >= int(os.environ.get(CHILD_KILL_TIMES_ENV, "1")):
        return
    counter.write_text(str(done + 1))
    os.kill(os.getpid(), signal.SIGKILL)


DAMAGE_EXPORT_ENV = "FOD_DAMAGE_EXPORT"
"""Test fault injection in the export step: a format name (``onnx``) whose exported file is damaged right
after the export (its largest weights scaled): it loads and runs, and scores less than best.pt."""


def damage_requested(fmt: str) -> bool:
    """True when ``FOD_DAMAGE_EXPORT`` names this format."""
    return os.environ.get(DAMAGE_EXPORT_ENV) == fmt
