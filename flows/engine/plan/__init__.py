"""The plan: its schema, how it is read and profiled, checked, resolved into run arguments, and drawn.

Everything a plan file says (every plan-side setting model: search, batch planner, size buckets), and
every rule it must satisfy before any GPU time is spent. The bottom layer of the engine: it imports no
other engine sub-package.
"""
