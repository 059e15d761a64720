"""The plan: its schema, how it is read and profiled, checked, resolved into run arguments, and drawn.

Everything a plan file says, and every rule it must satisfy before any GPU time is spent.
"""
