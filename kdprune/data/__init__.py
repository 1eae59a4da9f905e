"""Dataset registry -> canonical tensors (uint8 images NCHW, int64 labels, stable int64 ids)."""
from kdprune.data.base import (  # noqa: F401
    DATASETS,
    PreparedSplit,
    RawDataset,
    register_dataset,
    stratified_split,
)
from kdprune.data import digits  # noqa: F401,E402
