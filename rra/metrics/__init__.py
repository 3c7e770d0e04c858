"""Metrics derived from the common kNN model (methods.md §3)."""
