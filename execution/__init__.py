"""How a stage runs: its params (read, validated, CPU kernels pinned), its task runner (local pool or
Ray) and its observer (the one door to the output-neutral side). Result-determining: a DVC dep."""
