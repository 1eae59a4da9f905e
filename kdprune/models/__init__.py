"""Model registry: ``build_model(name, in_channels, num_classes, image_size)``."""
from kdprune.models.base import MODELS, build_model, register_model  # noqa: F401
from kdprune.models import small_cnn, pool_cnn, resnet_cifar, resnet, wide_resnet  # noqa: F401,E402
