"""PNG plots of a run: training curves per fold and image/mask overlays."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(histories: dict[str, "object"], path: str | Path) -> Path:
    """One PNG with loss and (if logged) Dice per epoch, train dashed and validation solid, per fold."""
    plt = _pyplot()
    keys = [("loss", "loss"), ("dice", "Dice")]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6))
    for (key, label), ax in zip(keys, axes):
        for name, frame in histories.items():
            if key in frame:
                line, = ax.plot(frame["epoch"], frame[key], "--", alpha=0.6)
                if f"val_{key}" in frame:
                    ax.plot(frame["epoch"], frame[f"val_{key}"], "-", color=line.get_color(), label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("training (dashed) and validation (solid)")
    fig.tight_layout()
    return _save(fig, path)


def overlays(images: Sequence[np.ndarray], truths: Sequence[np.ndarray | None], preds: Sequence[np.ndarray],
             titles: Sequence[str], path: str | Path) -> Path:
    """A grid of RGB images with the true mask outlined in green and the prediction in red."""
    plt = _pyplot()
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3.2), squeeze=False)
    for ax, img, truth, pred, title in zip(axes[0], images, truths, preds, titles):
        ax.imshow(to_display_rgb(img))
        if truth is not None and truth.any():
            ax.contour(truth, levels=[0.5], colors="lime", linewidths=1)
        if pred.any():
            ax.contour(pred, levels=[0.5], colors="red", linewidths=1)
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    fig.suptitle("truth (green) vs prediction (red)")
    fig.tight_layout()
    return _save(fig, path)


def to_display_rgb(image: np.ndarray) -> np.ndarray:
    """First three bands stretched to [0, 1] by their 2nd–98th percentiles, for viewing."""
    img = image[..., :3].astype(np.float32) if image.ndim == 3 else np.repeat(image[..., None], 3, -1).astype(np.float32)
    lo, hi = np.percentile(img, 2), np.percentile(img, 98)
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def _save(fig, path: str | Path) -> Path:
    from segkit.data.io import atomic_write

    path = Path(path)
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
