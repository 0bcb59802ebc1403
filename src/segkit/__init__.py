"""segkit: a Kaggle competition submission kit for image segmentation on Keras 3."""

__version__ = "0.1.0"
