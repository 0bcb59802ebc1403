"""Segmentation models, looked up by name through `segkit.models.registry`."""
