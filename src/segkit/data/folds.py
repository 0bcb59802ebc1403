"""K-fold splits grouped by a key (scene, car) and stratified by a bin (cloud cover); segkit.runs saves them with
the run."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from segkit.data.sample import Sample
from segkit.errors import ConfigError


def assign_folds(samples: Sequence[Sample], n_folds: int, seed: int, quiet: bool = False) -> np.ndarray:
    """Fold index (0..n_folds-1) per sample; every group falls in exactly one fold, and folds are
    balanced on `stratum` as far as the groups allow (scikit-learn's StratifiedGroupKFold). A stratum with fewer
    samples than folds is said in segkit's words (not scikit-learn's warning) unless quiet."""
    import warnings

    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    if n_folds < 2:
        raise ConfigError(f"train.folds: need at least 2 folds, got {n_folds}")
    groups = np.array([s.group or s.id for s in samples])
    n_groups = len(np.unique(groups))
    if n_groups < n_folds:
        raise ConfigError(
            f"train.folds: {n_folds} folds need at least {n_folds} groups (scenes/objects), the data has {n_groups}"
        )
    strata = np.array([s.stratum for s in samples])
    folds = np.full(len(samples), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    if not quiet:
        _note_rare_strata(strata, n_folds)
    try:
        with warnings.catch_warnings():  # "The least populated class in y has only 1 members": said above
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            splits = list(splitter.split(np.zeros(len(samples)), strata, groups))
    except ValueError:  # a stratum rarer than the folds: fall back to grouping alone
        splits = list(GroupKFold(n_splits=n_folds).split(np.zeros(len(samples)), strata, groups))
    for k, (_, val_idx) in enumerate(splits):
        folds[val_idx] = k
    if (np.bincount(folds, minlength=n_folds) == 0).any():
        raise ConfigError(f"train.folds: could not give every one of {n_folds} folds a validation sample")
    return folds


def _note_rare_strata(strata: np.ndarray, n_folds: int) -> None:
    """Say which strata have fewer samples than folds: some folds then validate on none of them."""
    values, counts = np.unique(strata, return_counts=True)
    rare = [f"{v} ({c})" for v, c in zip(values.tolist(), counts.tolist()) if c < n_folds]
    if rare:
        print(f"[folds] stratum {', '.join(rare)} has fewer samples than the {n_folds} folds (train.folds): some "
              "folds validate on none of them; the others are balanced across folds", flush=True)
