"""Prefect flows: one per stage, the whole ``pipeline`` and the ``sweep``."""
