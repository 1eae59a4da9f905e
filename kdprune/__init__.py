"""kdprune core: data pruning with knowledge distillation (PyTorch + NumPy only).

Each subpackage fills its own registry when imported (``kdprune.scores`` registers every score, ...);
nothing is imported here, so a stage imports only the parts of the core it uses (its dvc.yaml deps).
"""

__version__ = "0.1.0"
