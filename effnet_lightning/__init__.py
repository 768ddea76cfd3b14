"""EfficientNet B0-B7 and Lite, built from compound scaling, trained with Lightning.

from effnet_lightning import create_model
model = create_model("b3", num_classes=10, weights="imagenet")
"""

__version__ = "0.1.0"
__all__ = ["EfficientNet", "Preprocessing", "create_model", "get_variant"]

# Imported on first use, so that `effnet_lightning.models.scaling` stays free of torch.
_EXPORTS = {
    "EfficientNet": "effnet_lightning.models.efficientnet",
    "create_model": "effnet_lightning.models.factory",
    "Preprocessing": "effnet_lightning.models.preprocessing",
    "get_variant": "effnet_lightning.models.scaling",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'effnet_lightning' has no attribute {name!r}")
