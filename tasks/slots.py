"""The accelerator slot a search's Dask worker trains on, as the worker's environment names it.

Set by ``flows.trial_cluster`` for each worker it starts; read by the training step (the worker's one GPU
is its device 0) and by the train task (the Prefect concurrency limit the training holds).
"""

SLOT_ENV = "FOD_SLOT"
"""The accelerator a worker trains on (``gpu-0``…): the Prefect concurrency limit its trainings hold."""
LEASE_ENV = "FOD_SLOT_LEASE_S"
"""Seconds a slot's lease lasts unless renewed (a dead worker's slot frees itself after this)."""
