"""Children that a terminal's Ctrl-C does not reach: the command alone decides how they end.

A terminal sends SIGINT to its whole foreground process group. A training child that gets it raises
``KeyboardInterrupt`` wherever it is (a traceback on the terminal, a half-written file) and Prefect's
embedded server shuts down before the command can mark its flow run. Started inside
``children_ignore_sigint``, a child ignores SIGINT from its first instruction (an ignored signal stays
ignored across ``exec``; from another thread the signal is blocked instead, which ``exec`` keeps too,
and the child calls ``ignore_sigint`` first thing). The command's handler (``flows/signals.py``) ends
them with SIGTERM. Standard library only.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def children_ignore_sigint() -> Iterator[None]:
    """Processes started inside the block do not receive a terminal's Ctrl-C."""
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
        return
    with sigint_blocked():
        yield


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread inside the block: a process ``subprocess`` starts here keeps it
    blocked for its life, even when it installs its own handler (uvicorn does)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def ignore_sigint() -> None:
    """In a child started inside ``children_ignore_sigint``: ignore SIGINT, then drop a pending one."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
