"""The dataset: how its YAML is read and resolved, and every check of its images and labels."""
