"""The servers: the process environment with the local Prefect server on loopback, and the lab's
shared stores. Output-neutral: no DVC dep."""
