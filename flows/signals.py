"""Ctrl-C and SIGTERM end the command within seconds, with nothing left behind.

A terminal's Ctrl-C (and ``timeout``, cron, systemd) signals the whole process group: the command,
Prefect's embedded server and the training child at once. Left to Python and Prefect, the server and
the child die while the command's unwinding waits on the dead server; a SIGTERM to the command alone
ends it before ``atexit`` stops the server, which is left running. So the command handles both signals
itself: it ends its children (the training first, so its last.pt stays the last whole epoch), marks the
flow run as interrupted while the server still answers, stops the server, and exits 130 or 143 with one
line that says how to resume. A second signal while shutting down ends at once. The run journal needs
no flushing: each record is one appended line, and a torn last line is repaired on the next read.

Installed by the command line only: under a Prefect worker the runner owns SIGTERM (UI cancellation).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
"""The shells' convention: 128 + the signal's number."""

CHILD_GRACE_S = 3.0
"""Seconds a child has after SIGTERM before SIGKILL."""

STATE_TIMEOUT_S = 2.0
"""Seconds to mark the flow run as interrupted; a server that does not answer by then is gone."""

SERVER_MARK = "prefect.server.api.server:create_app"
"""What the embedded server's command line holds (``uvicorn --factory …``)."""

TRACKER_MARK = "multiprocessing.resource_tracker"
"""multiprocessing's resource tracker ignores SIGTERM (and SIGINT): it is killed, not asked."""


def descendants() -> list:
    """Every process below this one (children, their children …), as psutil processes."""
    import psutil

    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def runs(process, mark: str) -> bool:
    """Does the process's command line hold ``mark``?"""
    try:
        return any(mark in part for part in process.cmdline())
    except Exception:  # gone, or not ours to read
        return False


def end_processes(processes: Sequence, grace_s: float = CHILD_GRACE_S) -> None:
    """SIGTERM each, wait up to ``grace_s`` for all, SIGKILL what is left."""
    import psutil

    alive = []
    for process in processes:
        try:
            process.terminate()
            alive.append(process)
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(alive, timeout=grace_s)
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(left, timeout=1.0)


def kill_all_now() -> None:
    """SIGKILL every descendant (the second signal: no waiting)."""
    for process in descendants():
        with contextlib.suppress(Exception):
            process.kill()


def mark_flow_run(signal_name: str, resume_hint: str) -> str | None:
    """Set the current flow run's state to Crashed (named Interrupted) when the server answers in time;
    None when it was marked, else why not."""
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
    except Exception as exc:
        return f"no flow run context ({type(exc).__name__})"
    if ctx is None or ctx.flow_run is None:
        return "not inside a flow run"
    import httpx

    url = f"{str(ctx.client.api_url).rstrip('/')}/flow_runs/{ctx.flow_run.id}/set_state"
    body = {
        "state": {
            "type": "CRASHED",
            "name": "Interrupted",
            "message": f"interrupted by {signal_name}; {resume_hint}",
        },
        "force": True,
    }
    try:
        response = httpx.post(url, json=body, timeout=STATE_TIMEOUT_S)
        response.raise_for_status()
    except Exception as exc:
        return f"the server did not answer ({type(exc).__name__})"
    return None


def write_stderr(line: str) -> None:
    """One line on the process's real stderr (not through Prefect's captured ``print``)."""
    stream = sys.__stderr__ or sys.stderr
    stream.write(line + "\n")
    stream.flush()


@dataclass
class Shutdown:
    """The command's SIGINT/SIGTERM handler: what to say, and how to leave."""

    resume_hint: str
    write: Callable[[str], object] = field(default=write_stderr)
    exit: Callable[[int], object] = field(default=os._exit)
    started: float | None = None

    def install(self) -> None:
        """Handle SIGINT and SIGTERM from now on (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in EXIT_CODES:
            signal.signal(signum, self.handle)
        _active[:] = [self]

    @contextlib.contextmanager
    def installed(self) -> Iterator[Shutdown]:
        """Handle the signals inside the block; the previous handlers afterwards (the command may run
        inside another program, such as a test)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.getsignal(signum) for signum in EXIT_CODES}
        self.install()
        try:
            yield self
        finally:
            _active.clear()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def handle(self, signum: int, frame: FrameType | None = None) -> None:
        """End children, mark the flow run, stop the server, say how to resume, exit 130/143."""
        name = signal.Signals(signum).name
        code = EXIT_CODES.get(signal.Signals(signum), 128 + signum)
        if self.started is not None:  # a second signal: at once
            kill_all_now()
            self.write(f"{name} again: stopped at once")
            self.exit(code)
            return
        self.started = time.monotonic()
        children = descendants()
        end_processes([p for p in children if not runs(p, SERVER_MARK) and not runs(p, TRACKER_MARK)])
        why = mark_flow_run(name, self.resume_hint)
        end_processes(descendants(), grace_s=1.0 if why is None else 0.2)
        noted = "" if why is None else f" (flow run not marked: {why})"
        took = time.monotonic() - self.started
        self.write(f"interrupted by {name}; shut down in {took:.1f} s{noted}; {self.resume_hint}")
        sys.stdout.flush()
        self.exit(code)


_active: list[Shutdown] = []
"""The handler the command installed (at most one), so the flow can put it back after Prefect."""


def reinstall() -> None:
    """Put the command's handler back (Prefect swaps SIGTERM for its own while a flow runs); a no-op
    when no command installed one, as under a worker, whose runner owns SIGTERM."""
    if _active:
        _active[0].install()
