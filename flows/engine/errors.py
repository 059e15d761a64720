"""Errors that stop a run, as opposed to outcomes that the gates judge.

A gate that fails is an outcome: the walk goes on along the tree. Data that cannot be loaded, a
missing file or an exception in the training child is an error: nothing further trains, the flow run
ends Failed (red in the UI, so a Prefect automation can notify), the command line exits with
``EXIT_RUN_ERROR`` and prints ``message`` (the exception's own words, not the last line of output),
and the journal records it. Running the same command again resumes the run.
"""

from __future__ import annotations

EXIT_RUN_ERROR = 3
"""Exit code of a run stopped by an error (2 is bad input, found before anything runs)."""


class TrainingError(RuntimeError):
    """A training (``run``: its key, e.g. ``phase3/trial-02``) ended in an error.

    ``log`` is the file with the training's full output (Ultralytics' log and the traceback).
    """

    def __init__(self, run: str, message: str, log: str | None = None) -> None:
        self.run = run
        self.message = message
        self.log = log
        super().__init__(run, message, log)

    def __str__(self) -> str:
        where = f" (full log: {self.log})" if self.log else ""
        return f"{self.run}: {self.message}{where}"


class ChildKilled(TrainingError):
    """The training process was killed by a signal (the kernel's out-of-memory killer, an operator).

    Retried once from its ``last.pt``; a second kill is an error like any other.
    """


class DeployError(TrainingError):
    """A deploy that must not happen (its export does not score what best.pt scores): the run stops
    before the registry gets a version, and running it again resumes at the deploy."""
