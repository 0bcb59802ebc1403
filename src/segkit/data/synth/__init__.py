"""Synthetic datasets in each competition's real file layout (`segkit synth NAME --out DIR`)."""
from __future__ import annotations

import importlib
from pathlib import Path

from segkit.errors import ConfigError

# name -> module under segkit.data.synth; each module has `generate(out: Path, seed: int, **options) -> Path`.
SYNTH_MODULES = {"cloud38": "cloud38", "carvana": "carvana", "clouds": "clouds", "airbus": "airbus", "siim": "siim",
                 "severstal": "severstal", "tgs": "tgs"}


def generate(name: str, out: str | Path, seed: int = 0, **options) -> Path:
    """Write the synthetic dataset `name` under `out` and return the dataset root."""
    if name not in SYNTH_MODULES:
        raise ConfigError(f"synth: unknown dataset '{name}' (known: {', '.join(SYNTH_MODULES)})")
    module = importlib.import_module(f"segkit.data.synth.{SYNTH_MODULES[name]}")
    return module.generate(Path(out), seed=seed, **options)
