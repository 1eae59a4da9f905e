"""MLflow tracking: the tracker and its writer process, the teacher's pyfunc model, provenance tags.
Output-neutral: no stage imports it (execution/observe.py), so it is no DVC dep."""
