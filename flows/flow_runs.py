"""Earlier flow runs of a resumed run folder that were left Running: ended as Crashed, with why.

A process killed outright cannot report its state: a Prefect worker stopped by SIGTERM or Ctrl-C
kills the flow runs it supervises with SIGKILL, kill -9 and a lost machine do the same, and a SIGTERM
to a terminal's whole group takes the embedded server down with the command. The UI would show those
runs Running for ever, and a deployment limited to one run at a time keeps the next one waiting until
the dead run's concurrency lease (5 minutes) runs out. The run folder names every flow run that
walked it (``flow_runs.txt``, beside the journal): the one that resumes it ends the others that are
not final, and ``python -m flows.flow_runs RUN_DIR`` ends them at once. The training children end on
their own (they watch their parent).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from flows.engine.records.journal import IDENTITY, Journal

STOPPED_WORKER = (
    "its process ended without reporting (a stopped worker, a kill, a signal to the whole process group)"
)


def current_flow_run_id() -> str | None:
    """The id of the flow run this code runs in, or None outside one."""
    from prefect.runtime import flow_run

    return flow_run.get_id()


def close_stale_flow_runs(journal: Journal, log: Callable[[str], object]) -> list[str]:
    """Record this flow run in the journal and end the earlier ones still not final; their ids.

    A server that does not know an earlier run (another server, its history deleted) is passed over.
    """
    current = current_flow_run_id()
    if current is None:
        return []
    earlier = [run_id for run_id in journal.flow_runs() if run_id != current]
    journal.record_flow_run(current)
    why = f"{STOPPED_WORKER}; the run folder was resumed by flow run {current}"
    return [run_id for run_id in earlier if end_if_running(run_id, why, log)]


def end_if_running(run_id: str, why: str, log: Callable[[str], object]) -> bool:
    """Set a flow run that is not final to Crashed; True when it was."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run_id).state
            if state is None or state.is_final():
                return False
            client.set_flow_run_state(run_id, Crashed(message=why), force=True)
    except Exception as exc:  # an unknown run or a server problem: nothing to end here
        log(f"could not check earlier flow run {run_id}: {type(exc).__name__}: {exc}")
        return False
    log(f"earlier flow run {run_id} was left {state.type.value}: set to Crashed")
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.flow_runs RUN_DIR``: end the run folder's flow runs left Running by a stopped
    worker now, which frees the deployment's concurrency slot (otherwise held until its lease, up to
    5 minutes, runs out) so that the next run starts and resumes the folder at once."""
    parser = argparse.ArgumentParser(prog="python -m flows.flow_runs", description=main.__doc__)
    parser.add_argument("run_dir", type=Path, help="the run folder (runs/<plan>-<time>)")
    ns = parser.parse_args(argv)
    if not (ns.run_dir / IDENTITY).is_file():
        print(f"{ns.run_dir}: no {IDENTITY}: not a run folder", file=sys.stderr)
        return 2
    why = f"{STOPPED_WORKER}; ended by `python -m flows.flow_runs`"
    ended = [r for r in Journal(ns.run_dir).flow_runs() if end_if_running(r, why, print)]
    print(f"{len(ended)} flow run(s) ended" + (f": {', '.join(ended)}" if ended else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
