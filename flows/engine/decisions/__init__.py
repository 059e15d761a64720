"""The decisions: gates, per-epoch monitors and the walk of the tree that follows their outcomes."""
