"""Trainer back-ends: what actually runs one training (a ``TrainSpec``) and streams its epochs.

- ``ultra``: real Ultralytics training in a spawned child process (``ultra_child``), the GPU given
  back whenever the parent stops waiting;
- ``replay``: recorded ``results.csv`` curves replayed in place of training;
- ``vram``: the NVML probe (the hardware boundary), used by the child.

The Prefect tasks in ``tasks/`` choose a back-end and wrap it; nothing here imports Prefect.
"""
