"""Post-processing: per-class probability threshold and minimum component area, tuned on OOF predictions."""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
from scipy import ndimage

from segkit.config import Config
from segkit.errors import TrainingError
from segkit.runs import RunData, RunDir, ensembled_tags, open_run_data


def apply(probs: np.ndarray, thresholds: list[float], min_areas: list[int]) -> np.ndarray:
    """Binarise (H, W, C) probabilities per class and drop connected components smaller than min_area."""
    mask = (probs > np.asarray(thresholds, dtype=probs.dtype)).astype(np.uint8)
    for c, area in enumerate(min_areas):
        if area > 0:
            mask[..., c] = remove_small(mask[..., c], area)
    return mask


def remove_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Zero every 8-connected component of a binary (H, W) mask with fewer than min_area pixels."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_area
    keep[0] = False
    return keep[labels].astype(np.uint8)


def load_oof(cfg: Config, n_samples: int, channel: int | None = None) -> np.ndarray:
    """Out-of-fold probabilities of every training sample, averaged over the models predict ensembles
    (predict.models, else all): (N, H, W, C), or (N, H, W) for one `channel` (tuning goes class by class so
    memory holds one class at a time)."""
    rd = RunDir.of(cfg)
    tags = ensembled_tags(cfg)
    total = None
    for tag in tags:
        covered = np.zeros(n_samples, dtype=bool)
        for k in range(cfg.train.folds):
            fold = rd.fold(tag, k)
            if not fold.oof.is_file():
                raise TrainingError(f"{fold.path}: no out-of-fold predictions; finish training first (segkit train)")
            probs, index = _read_oof(fold)
            if channel is not None:
                probs = probs[..., channel]
            if total is None:
                total = np.zeros((n_samples,) + probs.shape[1:], dtype=np.float32)
            total[index] += probs
            covered[index] = True
        if not covered.all():
            raise TrainingError(f"{rd.path / tag}: out-of-fold predictions miss {int((~covered).sum())} samples")
    total /= len(tags)
    return total


def _read_oof(fold) -> tuple[np.ndarray, np.ndarray]:
    """One fold's OOF probabilities (memory-mapped) and sample indices; TrainingError naming a damaged file."""
    try:
        probs = np.load(fold.oof, mmap_mode="r")
        index = np.load(fold.oof_index)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{fold.path}: out-of-fold predictions unreadable ({' '.join(str(exc).split())[:120]}); "
                            f"run {fold.restart_hint()}") from None
    if index.ndim != 1 or len(index) != len(probs):
        raise TrainingError(f"{fold.oof_index}: does not match {fold.oof.name}; run {fold.restart_hint()}")
    return probs, index


def tune(cfg: Config, run: RunData | None = None, quiet: bool = False) -> dict:
    """Choose per class the threshold and minimum area that maximise the competition's metric on the
    ensemble's OOF predictions; save them (with before/after scores) as the run's post-processing file."""
    run = run or open_run_data(cfg, quiet=quiet)
    pc = cfg.postprocess
    masks = run.cache.masks  # memory-mapped (N, H, W, C)
    sub_h, sub_w = run.adapter.submission_size(run.samples[0])
    area_scale = (masks.shape[1] * masks.shape[2]) / float(sub_h * sub_w)  # min_area is in submission pixels
    classes = []
    for c, name in enumerate(run.adapter.classes):
        oof = load_oof(cfg, len(run.samples), channel=c)
        truth = np.ascontiguousarray(masks[..., c])
        before = run.adapter.score_class(truth, (oof > 0.5).astype(np.uint8))
        if pc.tune:
            best = _grid_search(run.adapter, truth, oof, pc.threshold_grid, pc.min_area_grid, area_scale)
        else:
            fixed = _filtered(oof > pc.threshold, round(pc.min_area * area_scale))
            best = (run.adapter.score_class(truth, fixed), pc.threshold, pc.min_area)
        classes.append({"name": name, "threshold": float(best[1]), "min_area": int(best[2]),
                        "oof_score_default": float(before), "oof_score_tuned": float(best[0])})
    result = {
        "classes": classes,
        "oof_score_default": float(np.mean([c["oof_score_default"] for c in classes])),
        "oof_score_tuned": float(np.mean([c["oof_score_tuned"] for c in classes])),
        "metric": type(run.adapter).score_class.__doc__.strip().splitlines()[0] if type(run.adapter).score_class.__doc__ else "",
    }
    RunDir.of(cfg).write_postprocess(result)
    if not quiet:
        for c in classes:
            print(f"[tune] {c['name']}: threshold {c['threshold']:.2f}, min_area {c['min_area']}: "
                  f"OOF {c['oof_score_default']:.4f} -> {c['oof_score_tuned']:.4f}")
    return result


def _filtered(binary: np.ndarray, min_area: int) -> np.ndarray:
    out = binary.astype(np.uint8)
    if min_area > 0:
        for i in range(len(out)):
            out[i] = remove_small(out[i], min_area)
    return out


def _grid_search(adapter, truth: np.ndarray, probs: np.ndarray, thresholds: list[float], min_areas: list[int],
                 area_scale: float) -> tuple[float, float, int]:
    best: tuple[float, float, int] | None = None
    for t in thresholds:
        binary = (probs > t).astype(np.uint8)
        labelled = None
        for area in sorted(set(min_areas)):
            scaled = int(round(area * area_scale))
            if scaled <= 0:
                pred = binary
            else:
                if labelled is None:
                    labelled = [_label_sizes(b) for b in binary]
                pred = np.stack([(sizes >= scaled)[lab].astype(np.uint8) for lab, sizes in labelled])
            score = adapter.score_class(truth, pred)
            if best is None or score > best[0] + 1e-12:
                best = (score, t, area)
    assert best is not None
    return best


def _label_sizes(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, _ = ndimage.label(binary, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels, sizes


class Postprocess(NamedTuple):
    """The post-processing in force: per-class thresholds and minimum areas, and where they come from."""

    thresholds: list[float]
    min_areas: list[int]
    source: str


def load_postprocess(cfg: Config, classes: Sequence[str] | None = None) -> Postprocess:
    """The post-processing predict applies, one threshold and minimum area per class: the config's
    `postprocess.threshold` / `min_area` when `postprocess.tune` is false (a tuned file is then ignored), else
    the run's tuned file (TrainingError when it is missing or damaged)."""
    rd = RunDir.of(cfg)
    pc = cfg.postprocess
    n = len(classes) if classes is not None else 1
    if not pc.tune:
        unused = f"; {rd.postprocess} not used" if rd.postprocess.is_file() else ""
        return Postprocess([pc.threshold] * n, [pc.min_area] * n,
                           f"from config (postprocess.tune=false): threshold {pc.threshold:g}, "
                           f"min_area {pc.min_area}{unused}")
    if not rd.postprocess.is_file():
        raise TrainingError(f"{rd.postprocess}: post-processing not tuned yet; finish training (segkit train) "
                            "or run `segkit tune CONFIG`, or set postprocess.tune=false")
    rows = rd.read_postprocess(classes)["classes"]
    thresholds = [float(c["threshold"]) for c in rows]
    areas = [int(c["min_area"]) for c in rows]
    names = [str(c.get("name", i)) for i, c in enumerate(rows)]
    each = "; ".join(f"{name}: threshold {t:g}, min_area {a}" for name, t, a in zip(names, thresholds, areas))
    return Postprocess(thresholds, areas, f"tuned on OOF ({rd.postprocess}): {each}")
