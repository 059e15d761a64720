"""The run journal: an append-only record of what finished, so a crashed run resumes where it stopped.

Each finished training (phase, trial or a search's full run) and each gate appends one JSON
line, flushed and fsynced before the walk moves on. A kill at any instant leaves at most
one torn last line, which is ignored on reading. ``run.json`` holds the run's identity
(plan, profile, data fingerprint, code version): a re-run resumes only a run whose identity
matches, and says what changed otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from flows.engine.fsutil import atomic_write_text
from flows.engine.records.results import Frozen, GateResult, PhaseResult, TrainSpec

JOURNAL = "journal.jsonl"
IDENTITY = "run.json"
FLOW_RUNS = "flow_runs.txt"
"""The Prefect flow runs that walked a run folder, one id a line (flows/flow_runs.py ends stale ones)."""
LOCK = ".lock"


class RunIdentity(BaseModel):
    """What must be equal for a re-run to continue an unfinished run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    plan: str
    plan_sha: str
    profile: str | None
    data: str
    data_fingerprint: str
    code_version: str

    def changes_from(self, other: RunIdentity) -> list[str]:
        """Human lines naming every field that differs."""
        names = {
            "plan_sha": "the plan's settings",
            "profile": "the profile",
            "data": "the dataset path",
            "data_fingerprint": "the dataset's contents",
            "code_version": "the code version",
        }
        return [
            f"{label} changed ({getattr(other, key)} → {getattr(self, key)})"
            for key, label in names.items()
            if getattr(self, key) != getattr(other, key)
        ]


class JournalEntry(Frozen):
    """One finished step of the walk, or an error that stopped it (an error entry finishes nothing:
    a re-run trains that step again)."""

    kind: Literal["train", "gate", "terminal", "error"]
    key: str
    at: float
    message: str | None = None
    result: PhaseResult | None = None
    gate: GateResult | None = None
    deployed: Path | None = None
    deployed_from: str | None = None


def code_version() -> str:
    """The package version plus a hash of the engine's own source, so changed code never resumes silently."""
    root = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for folder in ("flows", "tasks", "fod_models"):
        for path in sorted((root / folder).rglob("*")):
            if path.suffix in {".py", ".yaml"} and path.is_file():
                digest.update(path.relative_to(root).as_posix().encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def plan_sha(document: dict[str, Any]) -> str:
    """A stable hash of the resolved plan and forced arguments."""
    text = json.dumps(document, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Journal:
    """Append-only JSON lines; tolerant of a torn last line."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / JOURNAL
        self.repair()

    def repair(self) -> None:
        """Cut a line torn by a kill mid-append, so that new entries never follow garbage."""
        if not self.path.is_file():
            return
        with open(self.path, "r+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            data = handle.read()
            if data and not data.endswith(b"\n"):
                handle.truncate(data.rfind(b"\n") + 1)
                os.fsync(handle.fileno())

    def append(self, entry: JournalEntry) -> None:
        """Write one entry durably before the caller moves on.

        Locked while it writes: a search's trials are recorded by the workers that train them, side by
        side with the flow's own entries."""
        line = entry.model_dump_json() + "\n"
        with open(self.path, "a", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def entries(self) -> list[JournalEntry]:
        """Every complete entry, in order; a torn or unreadable line ends the journal there."""
        if not self.path.is_file():
            return []
        entries = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entries.append(JournalEntry.model_validate_json(line))
            except ValidationError:
                break
        return entries

    def finished(self) -> dict[str, JournalEntry]:
        """Finished steps by key (the last entry of a key wins; errors finish nothing)."""
        return {entry.key: entry for entry in self.entries() if entry.kind != "error"}

    def errors(self) -> list[JournalEntry]:
        """Every error that stopped this run, oldest first."""
        return [entry for entry in self.entries() if entry.kind == "error"]

    def record_error(self, key: str, message: str) -> None:
        """Record that the step ``key`` ended in an error and stopped the run."""
        self.append(JournalEntry(kind="error", key=key, at=time.time(), message=message))

    def record_train(self, spec: TrainSpec, result: PhaseResult) -> None:
        """Record a finished training."""
        self.append(JournalEntry(kind="train", key=spec.key, at=time.time(), result=result))

    def record_terminal(self, node: str, deployed: tuple[Path | None, str | None]) -> None:
        """Record that the terminal's action (a deploy) is done, so a re-run never deploys twice."""
        self.append(
            JournalEntry(
                kind="terminal",
                key=f"terminal:{node}",
                at=time.time(),
                deployed=deployed[0],
                deployed_from=deployed[1],
            )
        )

    def terminal_done(self, node: str) -> tuple[Path | None, str | None] | None:
        """What a finished terminal recorded, or None when it has not run."""
        entry = self.finished().get(f"terminal:{node}")
        return None if entry is None else (entry.deployed, entry.deployed_from)

    def record_flow_run(self, flow_run_id: str) -> None:
        """Record that a flow run walks this run folder (a resumed run has one per attempt), beside the
        journal (``flow_runs.txt``, one id a line): the journal itself holds only steps."""
        with open(self.path.parent / FLOW_RUNS, "a", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.write(f"{flow_run_id}\n")
            handle.flush()
            os.fsync(handle.fileno())

    def flow_runs(self) -> list[str]:
        """The flow runs that walked this run folder, oldest first (a torn last line is left out)."""
        path = self.path.parent / FLOW_RUNS
        if not path.is_file():
            return []
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        return [line.strip() for line in lines if line.endswith("\n") and line.strip()]

    def record_gate(self, result: GateResult) -> None:
        """Record a gate's evaluation."""
        self.append(JournalEntry(kind="gate", key=f"gate:{result.node}", at=time.time(), gate=result))


def write_identity(run_dir: Path, identity: RunIdentity) -> None:
    """Store the run's identity once, atomically."""
    atomic_write_text(Path(run_dir) / IDENTITY, identity.model_dump_json(indent=2))


def read_identity(run_dir: Path) -> RunIdentity | None:
    """The identity of a run folder, or None when it has none (or a corrupt one)."""
    try:
        return RunIdentity.model_validate_json((Path(run_dir) / IDENTITY).read_text(encoding="utf-8"))
    except (OSError, ValidationError):
        return None


def unfinished_runs(runs_dir: Path, plan: str) -> list[Path]:
    """Run folders of this plan without a decision.json, newest first."""
    if not Path(runs_dir).is_dir():
        return []
    folders = [
        p
        for p in Path(runs_dir).glob(f"{plan}-*")
        if p.is_dir() and (p / IDENTITY).is_file() and not (p / "decision.json").exists()
    ]
    return sorted(folders, key=lambda p: p.stat().st_mtime, reverse=True)


def find_resumable(runs_dir: Path, identity: RunIdentity) -> tuple[Path | None, list[str]]:
    """The newest unfinished run with the same identity, or None and what changed in the newest one."""
    candidates = unfinished_runs(runs_dir, identity.plan)
    for run_dir in candidates:
        if read_identity(run_dir) == identity:
            return run_dir, []
    if candidates and (previous := read_identity(candidates[0])) is not None:
        return None, [f"{candidates[0].name}: {line}" for line in identity.changes_from(previous)]
    return None, []


class RunLockedError(RuntimeError):
    """Another process is writing this run folder."""


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder so two processes never write one run."""
    handle = open(Path(run_dir) / LOCK, "a+", encoding="utf-8")  # noqa: SIM115 - held for the block
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(f"{run_dir} is being written by another process") from None
        yield
    finally:
        handle.close()
