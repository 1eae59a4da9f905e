"""One trainer for teacher, proxies and students."""
from kdprune.train.augment import augment_batch, epoch_augmentation  # noqa: F401
from kdprune.train.trainer import (  # noqa: F401
    CheckpointStore,
    evaluate,
    lr_factor,
    predict_logits,
    seeded,
    train,
)
from kdprune.train.types import DeviceData, TrainConfig, TrainResult, train_config  # noqa: F401
