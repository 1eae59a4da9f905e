"""Dataset registry -> canonical tensors (uint8 images NCHW, int64 labels, stable int64 ids)."""
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
from kdprune.data import cifar, digits, imagefolder, mnist, svhn  # noqa: F401,E402
