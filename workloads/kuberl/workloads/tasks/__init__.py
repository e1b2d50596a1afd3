"""Tasks: datasets, verifiers and tools."""
