"""Pure decision-tree engine: plan schema, validation, gates, tree walk, reports.

Nothing in this package imports Prefect, torch or Ultralytics at import time, so
the whole decision logic is testable on any machine in milliseconds.

Its sub-packages form layers, lowest first; a module imports only its own layer or lower ones
(``tests/test_layers.py`` checks it): ``base``, ``errors``, ``faults``, ``fsutil``; ``plan``;
``records``; ``data``; ``metrics``; ``config``; ``decisions``; ``outputs``. ``tasks`` and the
flows build on top.
"""
