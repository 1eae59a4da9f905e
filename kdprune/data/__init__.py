"""Dataset registry -> canonical tensors (uint8 images NCHW, int64 labels, stable int64 ids). Every
module of this package is imported here, so adding a dataset is adding one file."""
from kdprune.registry import discover
from kdprune.data.base import (  # noqa: F401
    DATASETS,
    DatasetFormatError,
    DatasetUnavailable,
    PreparedSplit,
    RawDataset,
    register_dataset,
    stratified_split,
    stratified_subsample,
)

discover(__name__, __path__)
