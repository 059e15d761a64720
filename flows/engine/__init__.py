"""Pure decision-tree engine: plan schema, validation, gates, tree walk, reports.

Nothing in this package imports Prefect, torch or Ultralytics at import time, so
the whole decision logic is testable on any machine in milliseconds.
"""
