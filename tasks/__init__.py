"""Prefect tasks: the I/O and tracking boundary around the kdprune core."""
from tasks.runtime import configure_env

configure_env()
