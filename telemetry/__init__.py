"""What a run says about itself on this machine: progress bars, run records with timings, costs, and
the stages' observer that the entry point installs. Output-neutral: no DVC dep."""
