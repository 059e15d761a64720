"""The records: typed results that cross process boundaries (phase results with their batch plan,
evaluation and data profile), training records (results.csv), the replay SPEC and the run journal.

Records build on the plan only; the report and the model registry that write them out for people are
``flows/engine/outputs``."""
