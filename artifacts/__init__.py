"""Artifact I/O: atomic files with their hashes, each stage artifact's reader and writer, models,
training checkpoints, and what a DVC output keeps of a result. Result-determining: a DVC dep."""
