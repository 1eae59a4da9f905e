"""Model registry: ``build_model(name, in_channels, num_classes, image_size)``. Every module of this
package is imported here, so adding an architecture is adding one file."""
from kdprune.models.base import MODELS, build_model, register_model  # noqa: F401
from kdprune.registry import discover

discover(__name__, __path__)
