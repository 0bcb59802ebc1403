"""PNG plots of a run: training curves per fold and image/mask overlays."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from segkit.storage import atomic_write


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
    """First three bands stretched to [0, 1] by their 2nd–98th percentiles, for viewing (one band as grey, two
    as a false colour with their mean as blue)."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, -1)
    elif img.shape[-1] == 2:
        img = np.concatenate([img, img.mean(-1, keepdims=True)], -1)
    img = img[..., :3]
    lo, hi = np.percentile(img, 2), np.percentile(img, 98)
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def threshold_curves(curves: Sequence, ncols: int = 4) -> bytes:
    """PNG of each class's OOF score versus threshold (objects with name, thresholds, scores, tuned_threshold,
    tuned_score), the tuned threshold dashed and the score after the whole chain dotted."""
    plt = _pyplot()
    n = len(curves)
    cols = min(ncols, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    for ax, cur in zip(axes.ravel(), curves):
        ax.plot(cur.thresholds, cur.scores, "-", color="tab:blue", marker="." if len(cur.thresholds) < 25 else None)
        if cur.tuned_threshold is not None:
            ax.axvline(cur.tuned_threshold, color="tab:red", ls="--", lw=1, label=f"tuned {cur.tuned_threshold:g}")
        if cur.tuned_score is not None:
            ax.axhline(cur.tuned_score, color="tab:green", ls=":", lw=1, label=f"chain {cur.tuned_score:.4f}")
        ax.set_title(cur.name, fontsize=9)
        ax.set_xlabel("threshold")
        ax.set_ylabel("OOF score")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.tight_layout()
    return png_bytes(fig)


CLASS_COLOURS = np.array([(0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16),
                          (0.58, 0.4, 0.74), (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.5, 0.5, 0.5),
                          (0.74, 0.74, 0.13), (0.09, 0.75, 0.81)], np.float32)


def class_colour_map(mask: np.ndarray) -> np.ndarray:
    """A (H, W, C) binary mask as an RGB image: one colour per class (the brightest where classes overlap),
    black where none."""
    mask = np.asarray(mask)
    if mask.ndim == 2:
        mask = mask[..., None]
    colours = CLASS_COLOURS[np.arange(mask.shape[-1]) % len(CLASS_COLOURS)]
    return (mask[..., None].astype(np.float32) * colours).max(axis=-2, initial=0.0)


def at_submission_size(image: np.ndarray, truth: np.ndarray, pred: np.ndarray,
                       size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image and its truth and prediction masks (H, W, C) from the training size to `size` (H, W), the size
    the submission's RLE refers to (`adapter.submission_size(sample)`), so the gallery shows an image as it is
    submitted: the image resized bilinearly (as predict resizes its probabilities), the masks by nearest
    neighbour (they stay binary). Arrays already at `size` come back unchanged."""
    h, w = int(size[0]), int(size[1])
    return (_resize(image, (h, w), nearest=False), _resize(truth, (h, w), nearest=True),
            _resize(pred, (h, w), nearest=True))


def _resize(a: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """(h, w[, C]) resized to `size` (H, W) keeping its dtype and channel count."""
    import cv2  # lazy: cv2 is heavy and only the report's gallery resizes

    a = np.asarray(a)
    h, w = size
    if a.shape[:2] == (h, w):
        return a
    work = a.astype(np.float32) if a.dtype not in (np.uint8, np.float32) else a
    out = cv2.resize(np.ascontiguousarray(work), (w, h),
                     interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)
    return out.reshape((h, w) + a.shape[2:]).astype(a.dtype, copy=False)


def gallery(items: Sequence[tuple], classes: Sequence[str]) -> bytes:
    """PNG grid, one block per (id, score, raw image, truth (H, W, C), prediction (H, W, C)): the image as
    RGB/false colour, the truth and the prediction with one colour per class (legend below). Images at least
    twice as wide as tall (Severstal's 1:6.25 strips) put the three panels under each other at the page's full
    width, so the strips fill their panels instead of sitting in mostly blank squares."""
    plt = _pyplot()
    n = max(len(items), 1)
    h, w = np.asarray(items[0][2]).shape[:2] if items else (1, 1)
    wide = w >= 2 * h
    width = 7.5
    panel_h = (width * h / w if wide else width / 3) + 0.3  # + the title
    rows, cols = (3 * n, 1) if wide else (n, 3)
    per_row = panel_h if wide else 2.5
    legend_h = 0.4
    fig, axes = plt.subplots(rows, cols, figsize=(width, per_row * rows + legend_h), squeeze=False)
    blocks = axes.reshape(n, 3)
    for row, (ident, score, image, truth, pred) in zip(blocks, items):
        row[0].imshow(to_display_rgb(image), aspect="auto" if wide else None)
        row[0].set_title(f"{str(ident)[:32]}  score {score:.3f}", fontsize=7)
        row[1].imshow(class_colour_map(truth), interpolation="nearest", aspect="auto" if wide else None)
        row[1].set_title("truth", fontsize=7)
        row[2].imshow(class_colour_map(pred), interpolation="nearest", aspect="auto" if wide else None)
        row[2].set_title("prediction after the chain", fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    from matplotlib.patches import Patch

    handles = [Patch(color=CLASS_COLOURS[i % len(CLASS_COLOURS)], label=str(c)) for i, c in enumerate(classes)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, legend_h / (per_row * rows + legend_h), 1, 1))
    return png_bytes(fig)


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes (for embedding as a data URI); the figure is closed."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
