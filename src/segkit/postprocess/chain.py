"""The post-processing chain applied to one image's probabilities: threshold → min area → gate → triplet.

Each step is a small pure function over probability arrays; `apply_chain` runs them per class with the tuned
parameters (`ChainParams`, read from postprocess.json v1 or v2). Areas and `k` are in submission pixels, the
resolution predict binarises at.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import numpy as np
from scipy import ndimage

from segkit.config import Config
from segkit.errors import TrainingError
from segkit.runs import RunDir

GATE_KINDS = ("topk", "area", "label")


# --- the steps, each a pure function ------------------------------------------------------------------

def binarise(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Step 1: pixels above the threshold, uint8."""
    return (probs > threshold).astype(np.uint8)


def remove_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Step 2: zero every 8-connected component of a binary (H, W) mask with fewer than min_area pixels."""
    if min_area <= 0:
        return mask
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_area
    keep[0] = False
    return keep[labels].astype(np.uint8)


def topk_mean(probs: np.ndarray, k: int) -> float:
    """Mean of the k largest probabilities of an (H, W) map (the image-level score of the top-k gate)."""
    flat = np.asarray(probs, dtype=np.float32).ravel()
    k = int(min(max(k, 1), flat.size))
    return float(np.partition(flat, flat.size - k)[flat.size - k:].mean(dtype=np.float64))


def gate_score(gate: dict[str, Any], gate_probs: np.ndarray, threshold: float, label: float | None) -> float:
    """The image-level score a gate compares with its cut: mean of the top-k probabilities (`topk`), the
    number of pixels above the class threshold (`area`), or the classification head's probability (`label`)."""
    kind = gate["kind"]
    if kind == "topk":
        return topk_mean(gate_probs, int(gate["k"]))
    if kind == "area":
        return float(np.count_nonzero(gate_probs > threshold))
    if label is None:
        raise TrainingError("post-processing gates on the classification head ('label'), but the ensemble has no "
                            "head; re-tune (segkit tune CONFIG) or set postprocess.gate to topk/area/none")
    return float(label)


def passes_top(probs: np.ndarray, top_threshold: float | None, top_k: int) -> bool:
    """Step 4 (triplet): the mask is kept only if at least top_k pixels are above the top threshold."""
    if top_threshold is None:
        return True
    return int(np.count_nonzero(probs > top_threshold)) >= max(int(top_k), 1)


# --- the parameters -----------------------------------------------------------------------------------

@dataclass
class ClassParams:
    """One class's chain: bottom (pixel) threshold, minimum component area, optional gate, optional top threshold."""

    name: str = ""
    threshold: float = 0.5
    min_area: int = 0
    gate: dict[str, Any] | None = None  # {"kind": "topk"|"area"|"label", "k": int|None, "cut": float}
    top_threshold: float | None = None
    top_k: int = 1

    def describe(self) -> str:
        out = f"{self.name}: threshold {self.threshold:g}, min_area {self.min_area}"
        if self.gate:
            k = f" k={self.gate['k']}" if self.gate.get("k") else ""
            out += f", gate {self.gate['kind']}{k} > {self.gate['cut']:g}"
        if self.top_threshold is not None:
            out += f", top {self.top_threshold:g} (k={self.top_k})"
        return out


@dataclass
class ChainParams:
    """The post-processing in force for every class, and where it comes from."""

    classes: list[ClassParams] = field(default_factory=list)
    source: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> "ChainParams":
        """From postprocess.json (v1: threshold and min_area per class; v2 adds gate, top_threshold, top_k)."""
        rows = []
        for i, c in enumerate(data["classes"]):
            gate = c.get("gate")
            rows.append(ClassParams(
                name=str(c.get("name", i)), threshold=float(c["threshold"]), min_area=int(c["min_area"]),
                gate=dict(gate) if gate else None,
                top_threshold=None if c.get("top_threshold") is None else float(c["top_threshold"]),
                top_k=int(c.get("top_k") or 1)))
        return cls(rows, source)

    @classmethod
    def plain(cls, thresholds: Sequence[float], min_areas: Sequence[int], names: Sequence[str] = (),
              source: str = "") -> "ChainParams":
        names = list(names) or [str(i) for i in range(len(thresholds))]
        return cls([ClassParams(n, float(t), int(a)) for n, t, a in zip(names, thresholds, min_areas)], source)

    @property
    def thresholds(self) -> list[float]:
        return [c.threshold for c in self.classes]

    @property
    def min_areas(self) -> list[int]:
        return [c.min_area for c in self.classes]

    @property
    def uses_label(self) -> bool:
        return any(c.gate and c.gate["kind"] == "label" for c in self.classes)


def apply_chain(probs: np.ndarray, params: ChainParams | dict[str, Any], gate_probs: np.ndarray | None = None,
                label: np.ndarray | None = None) -> np.ndarray:
    """Binarise one image's (H, W, C) probabilities with the tuned chain → uint8 mask (H, W, C).

    `gate_probs` (H, W, C): the probabilities the top-k/area gates look at (the ensemble without its
    positive-only models; default `probs`); `label` (C,): the classification heads' probabilities (needed only
    by a `label` gate). The triplet's top threshold looks at `probs`."""
    if isinstance(params, dict):
        params = ChainParams.from_dict(params)
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[-1] != len(params.classes):
        raise TrainingError(f"post-processing is tuned for {len(params.classes)} classes, the probabilities have "
                            f"shape {probs.shape}; re-tune (segkit tune CONFIG)")
    gate_probs = probs if gate_probs is None else np.asarray(gate_probs)
    out = np.zeros(probs.shape, np.uint8)
    for c, p in enumerate(params.classes):
        if p.gate is not None:
            lab = None if label is None else float(np.asarray(label).reshape(-1)[c])
            if gate_score(p.gate, gate_probs[..., c], p.threshold, lab) <= float(p.gate["cut"]):
                continue
        if not passes_top(probs[..., c], p.top_threshold, p.top_k):
            continue
        out[..., c] = remove_small(binarise(probs[..., c], p.threshold), p.min_area)
    return out


def apply(probs: np.ndarray, thresholds: list[float], min_areas: list[int]) -> np.ndarray:
    """Binarise (H, W, C) probabilities per class and drop connected components smaller than min_area (the
    first two steps of the chain; v1 post-processing)."""
    mask = (probs > np.asarray(thresholds, dtype=probs.dtype)).astype(np.uint8)
    for c, area in enumerate(min_areas):
        if area > 0:
            mask[..., c] = remove_small(mask[..., c], area)
    return mask


# --- what predict applies -----------------------------------------------------------------------------

class Postprocess(NamedTuple):
    """The post-processing in force: per-class thresholds and minimum areas, and where they come from (the
    first two steps; `load_chain` gives the whole chain)."""

    thresholds: list[float]
    min_areas: list[int]
    source: str


def load_chain(cfg: Config, classes: Sequence[str] | None = None) -> ChainParams:
    """The chain predict applies: the config's `postprocess.threshold` / `min_area` (no gate, no triplet) when
    `postprocess.tune` is false (a tuned file is then ignored), else the run's tuned file, v1 or v2
    (TrainingError when it is missing or damaged)."""
    rd = RunDir.of(cfg)
    pc = cfg.postprocess
    n = len(classes) if classes is not None else 1
    names = list(classes) if classes is not None else ["0"]
    if not pc.tune:
        unused = f"; {rd.postprocess} not used" if rd.postprocess.is_file() else ""
        return ChainParams.plain([pc.threshold] * n, [pc.min_area] * n, names,
                                 f"from config (postprocess.tune=false): threshold {pc.threshold:g}, "
                                 f"min_area {pc.min_area}{unused}")
    if not rd.postprocess.is_file():
        raise TrainingError(f"{rd.postprocess}: post-processing not tuned yet; finish training (segkit train) "
                            "or run `segkit tune CONFIG`, or set postprocess.tune=false")
    data = rd.read_postprocess(classes)
    try:
        params = ChainParams.from_dict(data)
        for c in params.classes:
            if c.gate is not None and (c.gate.get("kind") not in GATE_KINDS or "cut" not in c.gate
                                       or (c.gate["kind"] == "topk" and not c.gate.get("k"))):
                raise ValueError(f"bad gate {c.gate}")
    except (KeyError, TypeError, ValueError) as exc:
        raise TrainingError(f"{rd.postprocess}: damaged ({' '.join(str(exc).split())[:120]}); delete it and run "
                            "`segkit tune CONFIG` to tune it again") from None
    params.source = f"tuned on OOF ({rd.postprocess}): " + "; ".join(c.describe() for c in params.classes)
    return params


def load_postprocess(cfg: Config, classes: Sequence[str] | None = None) -> Postprocess:
    """Thresholds and minimum areas per class of the chain in force (see `load_chain`)."""
    chain = load_chain(cfg, classes)
    return Postprocess(chain.thresholds, chain.min_areas, chain.source)
