"""The records: typed results that cross process boundaries, training records (results.csv), the
replay SPEC, the run journal, the model registry and the report."""
