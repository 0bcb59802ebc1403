"""Competition metrics, computed the way each leaderboard computes them.

- Carvana: mean over images of Dice (both empty = 1).
- Understanding Clouds: mean over (image, label) pairs of Dice (both empty = 1).
- Airbus Ship Detection: per image, F2 = 5TP / (5TP + 4FN + FP) averaged over IoU thresholds
  0.50, 0.55, ..., 0.95, with predicted and true ships matched one to one (a match counts when IoU > t);
  an image with no ship and no prediction scores 1; then the mean over images.
- TGS Salt Identification: per image, the share of IoU thresholds 0.50, 0.55, ..., 0.95 that the mask's IoU
  exceeds (the whole mask is the one object; both empty = 1, one of them empty = 0); then the mean over images.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

AIRBUS_THRESHOLDS = tuple(np.round(np.arange(0.5, 1.0, 0.05), 2))
IOU_THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)  # TGS: 0.50 … 0.95 (unrounded, 0.8 is 0.80…03)
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def dice_per_image(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Dice of each mask in a stack (N, ...) with its truth; 1.0 where both are empty."""
    t = np.asarray(truth).reshape(len(truth), -1).astype(bool)
    p = np.asarray(pred).reshape(len(pred), -1).astype(bool)
    if t.shape != p.shape:
        raise ValueError(f"truth and prediction differ in shape: {np.shape(truth)} vs {np.shape(pred)}")
    return dice_of_counts(np.count_nonzero(t & p, axis=1), np.count_nonzero(p, axis=1), np.count_nonzero(t, axis=1))


def dice_of_counts(inter: np.ndarray, pred_area: np.ndarray, true_area: np.ndarray) -> np.ndarray:
    """Dice from pixel counts (intersection, predicted and true area), element-wise; 1.0 where both masks are
    empty. The one numpy Dice of the kit: from masks (`dice_per_image`) and from counts (post-processing)."""
    total = np.asarray(pred_area, dtype=np.float64) + true_area
    return np.where(total == 0, 1.0, 2.0 * np.asarray(inter) / np.maximum(total, 1))


def carvana_score(truth: np.ndarray, pred: np.ndarray) -> float:
    """Carvana's leaderboard score: mean Dice over images of binary masks (N, H, W)."""
    return float(dice_per_image(truth, pred).mean())


def clouds_score(truth: np.ndarray, pred: np.ndarray) -> float:
    """Understanding Clouds' score: mean Dice over every (image, label) pair of masks (N, H, W, labels)."""
    t = np.moveaxis(np.asarray(truth), -1, 1)  # (N, labels, H, W): one Dice per pair
    p = np.moveaxis(np.asarray(pred), -1, 1)
    return float(dice_per_image(t.reshape(-1, *t.shape[2:]), p.reshape(-1, *p.shape[2:])).mean())


def tgs_iou_from_counts(inter: np.ndarray, pred_area: np.ndarray, true_area: np.ndarray) -> np.ndarray:
    """TGS Salt's metric from per-image counts (..., N): per image the share of IoU thresholds 0.50-0.95 that
    the mask's IoU exceeds (both empty = 1, one empty = 0), mean over images (last axis)."""
    inter = np.asarray(inter, dtype=np.float64)
    union = np.asarray(pred_area, dtype=np.float64) + true_area - inter
    iou = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    return (iou[..., None] > IOU_THRESHOLDS).mean(axis=-1).mean(axis=-1)


def tgs_score(truth: np.ndarray, pred: np.ndarray) -> float:
    """TGS Salt's leaderboard score over a stack of binary masks (N, H, W) (see tgs_iou_from_counts)."""
    t = np.asarray(truth).reshape(len(truth), -1).astype(bool)
    p = np.asarray(pred).reshape(len(pred), -1).astype(bool)
    if t.shape != p.shape:
        raise ValueError(f"truth and prediction differ in shape: {np.shape(truth)} vs {np.shape(pred)}")
    return float(tgs_iou_from_counts(np.count_nonzero(t & p, axis=1), np.count_nonzero(p, axis=1),
                                     np.count_nonzero(t, axis=1)))


def label_objects(mask: np.ndarray) -> np.ndarray:
    """Connected components (8-connected) of a binary (H, W) mask as a label image, 0 = background."""
    labels, _ = ndimage.label(np.asarray(mask) > 0, structure=EIGHT_CONNECTED)
    return labels


def iou_matrix(true_labels: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """IoU of every true object (rows) with every predicted object (columns), from two label images."""
    t = np.asarray(true_labels, dtype=np.int64).ravel()
    p = np.asarray(pred_labels, dtype=np.int64).ravel()
    nt, npred = int(t.max(initial=0)), int(p.max(initial=0))
    joint = np.bincount(t * (npred + 1) + p, minlength=(nt + 1) * (npred + 1)).reshape(nt + 1, npred + 1)
    inter = joint[1:, 1:].astype(np.float64)
    area_t = joint[1:, :].sum(axis=1)
    area_p = joint[:, 1:].sum(axis=0)
    union = area_t[:, None] + area_p[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def airbus_f2_image(true_labels: np.ndarray, pred_labels: np.ndarray,
                    thresholds: tuple[float, ...] = AIRBUS_THRESHOLDS) -> float:
    """Airbus F2 of one image, averaged over IoU thresholds, from label images of true and predicted ships
    (each ship its own positive label). One-to-one matching maximises the total IoU (Hungarian)."""
    true_labels, n_true = _compact(true_labels)
    pred_labels, n_pred = _compact(pred_labels)
    if n_true == 0 and n_pred == 0:
        return 1.0
    if n_true == 0 or n_pred == 0:
        return 0.0
    iou = iou_matrix(true_labels, pred_labels)
    rows, cols = linear_sum_assignment(-iou)
    matched = iou[rows, cols]
    scores = []
    for t in thresholds:
        tp = int(np.count_nonzero(matched > t))
        fp, fn = n_pred - tp, n_true - tp
        scores.append(5 * tp / (5 * tp + 4 * fn + fp))
    return float(np.mean(scores))


def airbus_score(true_ships: list[list[np.ndarray]] | np.ndarray, pred_ships: list[list[np.ndarray]] | np.ndarray) -> float:
    """Airbus leaderboard score over images. Each element is either a list of one binary mask per ship
    (as in the CSV, one row per ship) or a binary (H, W) mask split into ships by connected components."""
    if len(true_ships) != len(pred_ships):
        raise ValueError(f"{len(true_ships)} true images but {len(pred_ships)} predicted")
    scores = [airbus_f2_image(_as_labels(t), _as_labels(p)) for t, p in zip(true_ships, pred_ships)]
    return float(np.mean(scores)) if scores else 1.0


def _compact(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel to 1..n without gaps (so every label is one object) and return n; O(pixels), no sort."""
    labels = np.asarray(labels, dtype=np.int64)
    present = np.bincount(labels.ravel()) > 0
    present[0] = False
    mapping = np.cumsum(present)
    mapping[~present] = 0
    return mapping[labels], int(mapping[-1]) if present.any() else 0


def _as_labels(ships) -> np.ndarray:
    if isinstance(ships, np.ndarray) and ships.ndim == 2:
        return label_objects(ships)
    ships = list(ships)
    if not ships:
        return np.zeros((1, 1), np.int64)
    labels = np.zeros(np.shape(ships[0]), np.int64)
    for k, m in enumerate(ships, start=1):
        labels[np.asarray(m) > 0] = k  # a pixel claimed twice goes to the later ship
    return labels
