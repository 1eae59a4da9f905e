"""The command line (``kdprune`` / ``python -m flows``) and its tools: ui, bench, data, verify,
deployments. Output-neutral: no DVC dep."""
