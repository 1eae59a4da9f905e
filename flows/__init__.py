"""Prefect flows: one per stage, the whole ``pipeline``, and its deployment."""
import tasks  # noqa: F401  (sets the environment defaults before Prefect is imported)
