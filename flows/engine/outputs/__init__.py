"""What a run writes for people, on top of the decisions: the report, the model registry's versions and
model cards, and how figures read in their tables."""
