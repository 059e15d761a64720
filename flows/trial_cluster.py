"""The Dask cluster a search's trials run on, side by side: one worker per GPU, one trial per worker.

Each worker runs one task at a time and names its accelerator in ``FOD_SLOT`` (``gpu-N``, or ``cpu-N``
without GPUs); the train task holds the Prefect global concurrency limit of that name while it trains,
as a lease that a dead worker gives back after ``lease_s``. A worker that dies mid-trial has its task
re-queued onto another, which resumes the trial from its ``last.pt``. Set-up, and why Dask (against
Ray and deployment runs on a work pool): docs/operations.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from flows.engine.plan.search_settings import TrialWorkers
from tasks.slots import LEASE_ENV, SLOT_ENV


def worker_slots(workers: TrialWorkers) -> list[tuple[str, str]]:
    """(slot, CUDA_VISIBLE_DEVICES) of each local worker: a GPU each, or CPU-only workers."""
    if workers.devices:
        return [(f"gpu-{d}", str(d)) for d in workers.devices]
    return [(f"cpu-{i}", "") for i in range(workers.cpu)]


def worker_env(slot: str, visible: str, workers: TrialWorkers) -> dict[str, str]:
    """A worker's environment: its slot, its one GPU, and the Prefect API the flow run reports to.

    The rest (credentials and profile included) the worker inherits from this process, unread."""
    from prefect.settings import PREFECT_API_URL

    env: dict[str, str] = {}
    if (url := PREFECT_API_URL.value()) is not None:
        env["PREFECT_API_URL"] = str(url)  # the embedded server's too, which the environment lacks
    env.update({SLOT_ENV: slot, LEASE_ENV: str(workers.lease_s), "YOLO_OFFLINE": "1"})
    env["DASK_LOGGING__DISTRIBUTED"] = "warning"  # the worker's own start-up lines stay out of the terminal
    env["CUDA_VISIBLE_DEVICES"] = visible
    return env


def local_cluster(workers: TrialWorkers) -> Any:
    """A Dask cluster on this machine: one single-threaded worker process (under a nanny) per slot.

    Worker processes are not daemons: a training runs in a child process of its own (so that a cancel
    or a kill gives the GPU back), and a daemonic process may not start one. A worker restarted by its
    nanny reads the same setting.
    """
    import dask
    from distributed import Nanny, Scheduler, SpecCluster

    dask.config.set({"distributed.worker.daemon": False})
    specs = {
        f"trial-worker-{slot}": {
            "cls": Nanny,
            "options": {"nthreads": 1, "env": worker_env(slot, visible, workers), "name": slot},
        }
        for slot, visible in worker_slots(workers)
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    return SpecCluster(workers=specs, scheduler=scheduler, silence_logs=40, name="fod-trials")


@contextlib.contextmanager
def trial_runner(workers: TrialWorkers) -> Iterator[Any]:
    """A started ``DaskTaskRunner`` over the search's workers: a local cluster made (and closed) here,
    or the existing cluster at ``workers.address``."""
    from prefect_dask import DaskTaskRunner

    if workers.address is not None:
        with DaskTaskRunner(address=workers.address) as runner:
            yield runner
        return
    from flows.engine.interrupts import sigint_blocked

    with sigint_blocked():  # the cluster's loop thread, and the workers it spawns, inherit the mask:
        cluster = local_cluster(workers)  # a terminal's Ctrl-C reaches the command alone
    try:
        with DaskTaskRunner(cluster=cluster) as runner:
            yield runner
    finally:
        cluster.close()
