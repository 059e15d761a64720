"""Ctrl-C and SIGTERM, as a terminal, ``timeout`` or a supervisor send them, to a real smoke run.

Each run is started in its own session, as a terminal's foreground job is; a signal goes to the whole
group (Ctrl-C, ``timeout``, systemd) or to the command alone (``kill PID``). What must hold: the command
ends within 10 s with 130 / 143 and one line saying how to resume, no traceback, no process of its
session left (training child, embedded server), the flow run marked when the server could be reached,
and the same command afterwards continues the same run folder to the same terminal.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ROOT

EXIT_WITHIN_S = 10.0


class Run:
    """One ``python -m flows.optimize`` in its own session, its output in a file."""

    def __init__(self, cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT
        )

    @property
    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, ready: Callable[[], bool], timeout: float = 240.0) -> None:
        """Until ``ready()``; fails if the run ends first."""
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, (
                f"the run ended early ({self.proc.returncode}):\n{self.output[-3000:]}"
            )
            assert time.monotonic() < deadline, f"not ready after {timeout} s:\n{self.output[-3000:]}"
            time.sleep(0.2)

    def interrupt(self, signum: int, *, group: bool = True) -> tuple[int, float]:
        """Send the signal (to the group or the command alone); the exit code and seconds to exit."""
        sent = time.monotonic()
        if group:
            os.killpg(self.proc.pid, signum)
        else:
            os.kill(self.proc.pid, signum)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            pytest.fail(f"still running 60 s after {signal.Signals(signum).name}:\n{self.output[-3000:]}")
        return code, time.monotonic() - sent

    def left_behind(self) -> list[str]:
        """Processes of the run's session still alive a moment after it exited (zombies aside)."""
        import psutil

        time.sleep(0.5)
        left = []
        for process in psutil.process_iter(["pid", "cmdline", "status"]):
            try:
                if os.getsid(process.pid) == self.proc.pid and process.info["status"] != psutil.STATUS_ZOMBIE:
                    left.append(" ".join(process.info["cmdline"] or [])[:120])
            except (ProcessLookupError, psutil.Error):
                continue
        return left


@pytest.fixture
def smoke(tmp_path: Path) -> Callable[[str], Run]:
    """Start the shipped plan's smoke profile (two epochs a training) on a small demo dataset."""
    from flows.demo_data import generate_demo_dataset

    data = generate_demo_dataset(tmp_path / "data", n_train=16, n_val=8, image_size=160)
    cmd = [sys.executable, "-m", "flows.optimize", "--data", str(data), "--profile", "smoke"]
    cmd += ["--set", "epochs=2", "--runs-dir", str(tmp_path / "runs")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PYTHONPATH=str(ROOT), YOLO_OFFLINE="1", PREFECT_HOME=str(tmp_path / "prefect"))

    def start(name: str, **extra: str) -> Run:
        return Run(cmd, tmp_path, {**env, **extra}, tmp_path / f"{name}.log")

    return start


def run_dir_of(tmp_path: Path) -> Path:
    [run_dir] = [p for p in (tmp_path / "runs").glob("fod-yolo11m-p2-*") if p.is_dir()]
    return run_dir


def epochs_done(run_dir: Path, node_dir: str) -> int:
    events = run_dir / "phases" / node_dir / "epochs.jsonl"
    return len(events.read_text(encoding="utf-8").splitlines()) if events.is_file() else 0


def flow_run_states(tmp_path: Path) -> list[tuple[str, str]]:
    """(state type, state name) of every flow run in the embedded server's database."""
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        return db.execute("select state_type, state_name from flow_run order by start_time").fetchall()


def check_interrupted(run: Run, code: int, seconds: float, expected: int) -> None:
    """Exit code, time, the one line, no traceback, nothing left behind."""
    out = run.output
    assert code == expected, out[-3000:]
    assert seconds < EXIT_WITHIN_S, f"{seconds:.1f} s"
    assert "Traceback" not in out, out[-3000:]
    [line] = [text for text in out.splitlines() if text.startswith("interrupted by")]
    assert "run the same command again to resume" in line
    assert run.left_behind() == []


@pytest.mark.slow
def test_ctrl_c_and_sigterm_during_trainings_then_the_same_command_resumes_to_the_terminal(smoke, tmp_path):
    """Ctrl-C to the group while phase1 trains (after its first epoch), SIGTERM to the group during a
    Phase 3 trial, SIGTERM to the command alone between two nodes (the search's full run recorded, its
    gate not read); each time the same command continues the same run, and the last one reaches the
    smoke tree's terminal without training the full run again."""
    first = smoke("first")
    first.wait_for(
        lambda: (tmp_path / "runs").is_dir() and any((tmp_path / "runs").glob("*/phases/phase1/epochs.jsonl"))
    )
    run_dir = run_dir_of(tmp_path)
    first.wait_for(lambda: epochs_done(run_dir, "phase1") >= 1)
    check_interrupted(first, *first.interrupt(signal.SIGINT), expected=130)
    assert (run_dir / "phases" / "phase1" / "weights" / "last.pt").is_file()
    assert flow_run_states(tmp_path)[-1] == ("CRASHED", "Interrupted")  # the server was out of Ctrl-C's reach

    second = smoke("second")
    second.wait_for(lambda: "training process trial-phase3-01 started" in second.output)
    assert "phase1: resuming the interrupted training from" in second.output
    check_interrupted(second, *second.interrupt(signal.SIGTERM), expected=143)

    # between two nodes: the search's full run recorded, its gate not yet read; a `kill PID` there
    third = smoke("third", FOD_KILL_AT="journal:phase3/full", FOD_KILL_SIGNAL="SIGTERM")
    code = third.proc.wait(timeout=300)
    check_interrupted(third, code, 0.0, expected=143)
    journal = (run_dir / "journal.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(journal[-1])["key"] == "phase3/full", journal[-1][:200]

    last = smoke("last")
    code = last.proc.wait(timeout=600)
    assert code == 0, last.output[-3000:]
    assert run_dir_of(tmp_path) == run_dir  # one run folder throughout
    decision = json.loads((run_dir / "decision.json").read_text(encoding="utf-8"))
    assert decision["terminal"] == "keep_baseline"
    assert decision["path"] == ["phase1", "gate1", "phase2", "gate2", "phase3", "gate3", "keep_baseline"]
    keys = [
        json.loads(line)["key"]
        for line in (run_dir / "journal.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert len(keys) == len(set(keys)), "a finished step was recorded twice"
    assert epochs_done(run_dir, "phase1") == 2
    assert "training process full-phase3" not in last.output, "the recorded full run is not trained again"
    states = flow_run_states(tmp_path)
    assert len(states) == 4 and states[-1] == ("COMPLETED", "Completed")
    # the group SIGTERM took the server down before the second run could be marked: the run that
    # resumed the folder ended it (flows/flow_runs.py); no run is left Running
    assert [t for t, _ in states[:-1]] == ["CRASHED"] * 3, states


@pytest.mark.slow
def test_a_signal_before_training_and_a_second_ctrl_c_end_at_once(smoke, tmp_path):
    """During the server's start-up, SIGINT to the group ends the command at once; a second Ctrl-C while
    it shuts down a training ends it at once too."""
    early = smoke("early")
    early.wait_for(lambda: "Starting temporary server" in early.output)
    check_interrupted(early, *early.interrupt(signal.SIGINT), expected=130)

    twice = smoke("twice")
    twice.wait_for(lambda: "training process train-phase1 started" in twice.output)
    os.killpg(twice.proc.pid, signal.SIGINT)
    time.sleep(0.3)
    code, seconds = twice.interrupt(signal.SIGINT)
    assert code == 130 and seconds < EXIT_WITHIN_S
    assert twice.left_behind() == []
    assert "Traceback" not in twice.output


def test_the_embedded_server_and_the_training_child_do_not_get_a_terminals_ctrl_c(tmp_path):
    """The children the command starts have SIGINT blocked or ignored from birth (flows/engine/interrupts.py)."""
    code = (
        "import signal, subprocess, sys\n"
        "from flows.engine.interrupts import sigint_blocked, children_ignore_sigint\n"
        "probe = 'import signal; print(signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []), signal.getsignal(signal.SIGINT) == signal.SIG_IGN)'\n"
        "with sigint_blocked():\n"
        "    print(subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True).stdout.strip())\n"
        "with children_ignore_sigint():\n"
        "    print(subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True).stdout.strip())\n"
        "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:3] == ["True False", "False True", "True"]
