"""Segmentation models, looked up by name through `segkit.models.registry`.

Importing this package registers everything a segkit checkpoint refers to — every architecture and its
custom layers, `segkit.losses` and `segkit.metrics` — so `keras.models.load_model("best.keras")` works
after `import segkit.models` alone (KerasHub stays unimported until an encoder U-Net is built or
`registry.load_model` is used; built-in backbones save as plain Keras layers).
"""
from segkit.models import registry  # noqa: F401  (first: the architecture modules register into it)
from segkit.models import encoders, fractal, layers, unet  # noqa: F401
from segkit import losses, metrics  # noqa: F401
