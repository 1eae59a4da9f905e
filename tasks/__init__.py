"""Prefect tasks, one module per stage: read input paths, call the core, write outputs atomically."""
