"""segkit: a Kaggle competition submission kit for image segmentation on Keras 3.

From a notebook (`import segkit as sk` imports neither TensorFlow nor the kaggle client; each name below is
imported on first use):

    cfg = sk.load_config("cloud38", train={"epochs": 2})    # a built-in name or a YAML path, with overrides
    run = sk.Run(cfg).fit(folds=[0, 1])                     # runs/<name>/, resumable
    ens = run.ensemble(tta=["identity", "hflip"])
    probs = {i: ens.predict(image) for i, image in run.iter_images("test", limit=4)}  # yields (id, image)
    run.write_submission(); run.validate()

Also `sk.models.unet(...)` and the other builders, `sk.losses.get(name)`, `sk.rle.encode/decode`,
`sk.kaggle.push_folds(...)` / `sk.kaggle.submit(...)`, `sk.validate(path, competition)`, `sk.synth(...)`.
"""
import importlib as _importlib

from segkit.quiet import quiet_tensorflow as _quiet_tensorflow

_quiet_tensorflow()  # before TensorFlow loads: no start-up lines or retracing warnings (TF_CPP_MIN_LOG_LEVEL=0: all)

__version__ = "0.1.0"

# name -> (module, attribute in it; None for the module itself)
_EXPORTS: "dict[str, tuple[str, str | None]]" = {
    "load_config": ("segkit.api", "load_config"),
    "Run": ("segkit.api", "Run"),
    "Ensemble": ("segkit.api", "Ensemble"),
    "write_submission": ("segkit.api", "write_submission"),
    "validate": ("segkit.api", "validate"),
    "synth": ("segkit.api", "synth"),
    "Config": ("segkit.config", "Config"),
    "models": ("segkit.models", None),
    "losses": ("segkit.losses", None),
    "metrics": ("segkit.metrics", None),
    "rle": ("segkit.rle", None),
    "kaggle": ("segkit.kaggle", None),
    "errors": ("segkit.errors", None),
    "SegkitError": ("segkit.errors", "SegkitError"),
    "ConfigError": ("segkit.errors", "ConfigError"),
    "DataError": ("segkit.errors", "DataError"),
    "TrainingError": ("segkit.errors", "TrainingError"),
    "SubmissionError": ("segkit.errors", "SubmissionError"),
    "KaggleError": ("segkit.errors", "KaggleError"),
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> object:
    """Import an exported name on first use (PEP 562), so `import segkit` stays cheap."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'segkit' has no attribute '{name}'")
    module, attr = _EXPORTS[name]
    value = _importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The exports (what a notebook's completion should offer)."""
    return sorted(__all__)
