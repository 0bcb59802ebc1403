"""Segmentation models, looked up by name through `segkit.models.registry`.

Importing this package registers everything a segkit checkpoint refers to — every architecture and its
custom layers, `segkit.losses` and `segkit.metrics` — so `keras.models.load_model("best.keras")` works
after `import segkit.models` alone (KerasHub stays unimported until an encoder U-Net is built or
`registry.load_model` is used; built-in backbones save as plain Keras layers).
"""
from segkit.models import registry  # noqa: F401  (first: the architecture modules register into it)
from segkit.models import decoders, encoders, fractal, layers, unet  # noqa: F401
from segkit.models import hub_encoders  # noqa: F401  (mobilenet_unet, densenet_unet, mit_unet, segformer)
from segkit import losses, metrics  # noqa: F401

# The builders, each `f(input_shape, n_classes, **params) -> keras.Model` (`unet` names the function from here
# on; its module stays importable as `segkit.models.unet`).
from segkit.models.decoders import deeplabv3_plus, fpn, unet_plus_plus  # noqa: E402
from segkit.models.encoders import efficientnet_unet, encoder_unet, resnet_unet  # noqa: E402
from segkit.models.fractal import fractal_unet  # noqa: E402
from segkit.models.hub_encoders import densenet_unet, mit_unet, mobilenet_unet, segformer  # noqa: E402
from segkit.models.registry import build_model, load_model, model_names  # noqa: E402
from segkit.models.unet import unet  # noqa: E402,F811

__all__ = ["unet", "fractal_unet", "encoder_unet", "resnet_unet", "efficientnet_unet", "fpn", "unet_plus_plus",
           "deeplabv3_plus", "mobilenet_unet", "densenet_unet", "mit_unet", "segformer", "build_model", "load_model",
           "model_names", "registry", "layers"]
