"""kdprune core: data pruning with knowledge distillation (PyTorch + NumPy only)."""
from kdprune import data, distill, models, scores, selection  # noqa: F401  (fill the registries)

__version__ = "0.1.0"
