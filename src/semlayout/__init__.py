"""semlayout: bidirectional SEM <-> layout translation with an MLOps loop around it."""

__version__ = "0.1.0"
