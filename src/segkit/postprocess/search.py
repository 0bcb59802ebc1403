"""Searches for the chain's parameters on one class's OOF probabilities, each beside the step it tunes.

Everything is scored from per-image statistics computed once, so a candidate costs O(images), not a pass over
the pixels:
- when the competition metric is a function of per-image counts (the adapter's `score_counts(inter,
  pred_area, true_area)`: Dice, pooled Jaccard, IoU-based precision), the statistics are (intersection,
  predicted area) per image;
- otherwise (e.g. Airbus' object-matched F2, a mean over images) they are the per-image scores from the
  adapter's `score_class` on each image.
An image declared empty (by a gate or the top threshold) takes the statistics of an empty prediction, so a
gate or top-threshold candidate only switches rows. One sorted copy of each image's probabilities (a chunk at a
time) gives the counts above every grid threshold, the k-th largest probability and the top-k means; minimum
areas need one connected-component pass per bottom threshold (cv2, per image; each pass covers every area of
the grid).

Search cost is bounded: the plain threshold is searched over the whole `threshold_grid` (no labelling); the
minimum area and the triplet are searched coarse-to-fine over the bottom threshold — every `stride`-th grid
value plus the current one, then the grid values between the best one and its coarse neighbours — and jointly
over every min area × top threshold at each bottom threshold visited: at most ⌈G/stride⌉ + 1 + 2·(stride − 1)
labelling passes per step for a grid of G thresholds (stride = ⌈G/6⌉: 11 passes for the default 17).
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np

_CHUNK = 32  # images sorted at once (32 × 350 × 525 float32 ≈ 24 MB)
_MAX_CUTS = 256  # gate cut candidates per score (quantiles of the OOF scores)
_TIE = 1e-12


def count_metric(adapter) -> Callable | None:
    """The adapter's `score_counts` when it scores the same metric as its `score_class` (defined by the same
    class or a subclass of the one defining score_class), else None."""
    fn = getattr(adapter, "score_counts", None)
    if fn is None:
        return None
    mro = type(adapter).__mro__
    owner = {name: next((k for k in mro if name in vars(k)), object) for name in ("score_counts", "score_class")}
    return fn if issubclass(owner["score_counts"], owner["score_class"]) else None


class Scorer:
    """Turns per-image statistics (..., N, S) into the competition's score (...) for one class."""

    def __init__(self, adapter, truth: np.ndarray, counts: bool = True) -> None:
        self.adapter = adapter
        self.truth = truth
        self.fn = count_metric(adapter) if counts else None
        self.counts = self.fn is not None
        n = len(truth)
        if self.counts:
            flat = truth.reshape(n, -1)
            self.tsum = np.array([np.count_nonzero(flat[i]) for i in range(n)], dtype=np.float64)
            self.empty = np.zeros((n, 2))
        else:
            zero = np.zeros((1,) + truth.shape[1:], np.uint8)
            self.empty = np.array([[adapter.score_class(truth[i:i + 1], zero)] for i in range(n)], dtype=np.float64)

    def reduce(self, stats: np.ndarray) -> np.ndarray:
        """Scores of statistics (..., N, S), vectorised over the leading axes."""
        if self.counts:
            return np.asarray(self.fn(stats[..., 0], stats[..., 1], self.tsum), dtype=np.float64)
        return stats[..., 0].mean(axis=-1)

    def image(self, i: int, pred: np.ndarray) -> np.ndarray:
        """Statistics of image i's (H, W) prediction (per-image score path)."""
        if not pred.any():
            return self.empty[i]
        return np.array([self.adapter.score_class(self.truth[i:i + 1], pred[None])])

    def switched(self, stats: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """Score with the rows where `keep` (..., N) is False replaced by the empty prediction's."""
        return self.reduce(np.where(keep[..., None], stats, self.empty))

    def subset(self, idx: np.ndarray) -> "Scorer":
        """The same metric over the images `idx` only (cross-validation scores folds with it)."""
        out = object.__new__(Scorer)
        out.adapter, out.fn, out.counts = self.adapter, self.fn, self.counts
        out.truth = self.truth  # image() is only called on the full tables
        out.empty = self.empty[idx]
        if self.counts:
            out.tsum = self.tsum[idx]
        return out


def _workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


class ClassTables:
    """Per-image statistics of one class's OOF probabilities (N, H, W), computed once and cached per bottom
    threshold: the plain statistics at every threshold, the k-th largest probability (`top_k`) and the top-k
    means of the gate probabilities for each k, and the gate probabilities' area above every threshold."""

    def __init__(self, probs: np.ndarray, truth: np.ndarray, scorer: Scorer, thresholds: Sequence[float],
                 top_k: int = 1, topk_ks: Sequence[int] = (), gate_probs: np.ndarray | None = None,
                 label: np.ndarray | None = None) -> None:
        self.probs, self.truth, self.scorer = probs, truth, scorer
        self.n = len(probs)
        self.hw = int(np.prod(probs.shape[1:]))
        self.thresholds = sorted({float(t) for t in thresholds} | {0.5})
        self.top_k = int(min(max(top_k, 1), self.hw))
        self.topk_ks = [int(min(max(k, 1), self.hw)) for k in topk_ks]
        self.gate_probs = probs if gate_probs is None else gate_probs
        self.label = None if label is None else np.asarray(label, dtype=np.float64).reshape(-1)
        self._cache: dict[tuple[float, tuple[int, ...]], np.ndarray] = {}
        self.passes = 0  # connected-component passes made (for the cost bound)
        self._sweep()

    # --- one pass over the pixels: sorted rows ---------------------------------------------------------

    def _sweep(self) -> None:
        n, g = self.n, len(self.thresholds)
        thr = np.asarray(self.thresholds, dtype=np.float32)
        self.kth = np.zeros(n)
        self.topk_means = np.zeros((len(self.topk_ks), n))
        self.gate_area = np.zeros((g, n))
        psum = np.zeros((g, n))
        inter = np.zeros((g, n))
        separate_gate = self.gate_probs is not self.probs
        kmax = max(self.topk_ks, default=0)

        def chunk(start: int) -> None:
            stop = min(start + _CHUNK, n)
            p = np.asarray(self.probs[start:stop], dtype=np.float32).reshape(stop - start, -1)
            s = np.sort(p, axis=1)
            above = np.stack([self.hw - np.searchsorted(row, thr, side="right") for row in s], axis=1)
            psum[:, start:stop] = above
            self.kth[start:stop] = s[:, self.hw - self.top_k]
            if self.scorer.counts:  # the probabilities on true pixels only, sorted
                t = np.asarray(self.truth[start:stop]).reshape(stop - start, -1) > 0
                for r in range(stop - start):
                    v = np.sort(p[r][t[r]])
                    inter[:, start + r] = len(v) - np.searchsorted(v, thr, side="right")
            if separate_gate:
                s = np.sort(np.asarray(self.gate_probs[start:stop], dtype=np.float32).reshape(stop - start, -1),
                            axis=1)
                self.gate_area[:, start:stop] = np.stack(
                    [self.hw - np.searchsorted(row, thr, side="right") for row in s], axis=1)
            if kmax:
                tail = np.cumsum(s[:, ::-1][:, :kmax], axis=1, dtype=np.float64)
                for j, k in enumerate(self.topk_ks):
                    self.topk_means[j, start:stop] = tail[:, k - 1] / k

        with ThreadPoolExecutor(_workers()) as pool:
            list(pool.map(chunk, range(0, n, _CHUNK)))
        self.psum = psum  # pixels above each threshold, per image
        if not separate_gate:
            self.gate_area = psum
        if self.scorer.counts:
            for j, t in enumerate(self.thresholds):
                self._cache[(t, (0,))] = np.stack([inter[j], psum[j]], axis=-1)[None]

    # --- statistics per bottom threshold and minimum area ----------------------------------------------

    def area_above(self, threshold: float) -> np.ndarray:
        """Pixels of the gate probabilities above `threshold`, per image (a grid threshold)."""
        return self.gate_area[self.thresholds.index(float(threshold))]

    def stats(self, threshold: float, areas: Sequence[int]) -> np.ndarray:
        """Statistics (len(areas), N, S) of the masks `probs > threshold` with components smaller than each
        area removed (areas in OOF pixels)."""
        key = (float(threshold), tuple(int(a) for a in areas))
        if key not in self._cache:
            for (t, have), stats in list(self._cache.items()):  # a pass that covered these areas already
                if t == key[0] and set(key[1]) <= set(have):
                    return stats[[have.index(a) for a in key[1]]]
            self._cache[key] = self._pass(float(threshold), np.asarray(key[1], dtype=np.int64))
        return self._cache[key]

    def _pass(self, threshold: float, areas: np.ndarray) -> np.ndarray:
        import cv2

        label = bool((areas > 0).any())
        self.passes += int(label)
        sc = self.scorer
        out = np.zeros((len(areas), self.n, sc.empty.shape[1]))
        out[:] = sc.empty[None]
        shape = self.probs.shape[1:]
        known = self.psum[self.thresholds.index(threshold)] if threshold in self.thresholds else None
        smallest = int(areas[areas > 0].min()) if label else 0
        plain = self._cache.get((threshold, (0,)))

        def image(i: int) -> None:
            if known is not None and known[i] == 0:
                return  # nothing predicted: every area leaves it empty
            if known is not None and plain is not None and known[i] < smallest:
                out[areas == 0, i] = plain[0, i]  # every component is smaller than every positive area
                return
            m = (np.asarray(self.probs[i]) > threshold).astype(np.uint8)
            if not m.any():
                return
            if not label:
                out[:, i] = (np.array([np.count_nonzero(m & (self.truth[i] > 0)), np.count_nonzero(m)])
                             if sc.counts else sc.image(i, m))
                return
            k, lab = cv2.connectedComponents(m.reshape(shape), connectivity=8, ltype=cv2.CV_32S)
            sizes = np.bincount(lab[m.view(bool)], minlength=k)[1:].astype(np.float64)
            keep = sizes[None, :] >= areas[:, None]  # (A, components)
            if sc.counts:
                inter = np.bincount(lab[np.asarray(self.truth[i]) > 0], minlength=k)[1:].astype(np.float64)
                out[:, i, 0] = keep @ inter
                out[:, i, 1] = keep @ sizes
                return
            last, value = None, None
            for j in range(len(areas)):
                sig = keep[j].tobytes()
                if sig != last:
                    flags = np.concatenate([[False], keep[j]])
                    value, last = sc.image(i, flags[lab].astype(np.uint8)), sig
                out[j, i] = value

        def block(start: int) -> None:
            for i in range(start, min(start + _CHUNK, self.n)):
                image(i)

        with ThreadPoolExecutor(_workers()) as pool:
            list(pool.map(block, range(0, self.n, _CHUNK)))
        return out

    def score(self, threshold: float, area: int, keep: np.ndarray | None = None) -> float:
        """The class's score with one (threshold, area) and images where `keep` is False declared empty."""
        stats = self.stats(threshold, [area])[0]
        return float(self.scorer.reduce(stats) if keep is None else self.scorer.switched(stats, keep))

    def top_keep(self, top_threshold: float | None) -> np.ndarray:
        """Images with at least top_k pixels above the top threshold (all when None)."""
        if top_threshold is None:
            return np.ones(self.n, dtype=bool)
        return self.kth > top_threshold

    def subset(self, idx: np.ndarray) -> "TableView":
        """The tables of the images `idx` only, sharing this object's cached statistics (so a fold's search
        costs no new pass over the pixels)."""
        return TableView(self, np.asarray(idx, dtype=np.int64))


class TableView:
    """A subset of a ClassTables' images, with the interface the searches use: statistics are computed (and
    cached) over every image by the parent and sliced."""

    def __init__(self, parent: ClassTables, idx: np.ndarray) -> None:
        self.parent, self.idx = parent, idx
        self.n = len(idx)
        self.scorer = parent.scorer.subset(idx)
        self.thresholds, self.top_k, self.topk_ks = parent.thresholds, parent.top_k, parent.topk_ks
        self.topk_means = parent.topk_means[:, idx]
        self.kth = parent.kth[idx]
        self.label = None if parent.label is None else parent.label[idx]

    def area_above(self, threshold: float) -> np.ndarray:
        return self.parent.area_above(threshold)[self.idx]

    def stats(self, threshold: float, areas: Sequence[int]) -> np.ndarray:
        return self.parent.stats(threshold, areas)[:, self.idx]

    def subset(self, idx: np.ndarray) -> "TableView":
        """A subset of this subset (positions in it)."""
        return TableView(self.parent, self.idx[np.asarray(idx, dtype=np.int64)])

    score = ClassTables.score
    top_keep = ClassTables.top_keep


# --- the searches, one per step ---------------------------------------------------------------------------

def search_threshold(tab: ClassTables, grid: Sequence[float], tried: list[int] | None = None,
                     ) -> tuple[float, float]:
    """Step "threshold": the best pixel threshold of the grid, no minimum area → (score, threshold). The number
    of candidates scored is appended to `tried` when given."""
    best = (-math.inf, 0.5)
    values = sorted(set(float(x) for x in grid), key=lambda t: (abs(t - 0.5), t))  # ties go to the nearest 0.5
    for t in values:
        s = tab.score(t, 0)
        if s > best[0] + _TIE:
            best = (s, t)
    if tried is not None:
        tried.append(len(values))
    return best


def coarse_to_fine(grid: Sequence[float], current: float, evaluate: Callable[[float], tuple[float, Any]],
                   n_coarse: int = 6, tried: list[int] | None = None) -> tuple[float, float, Any]:
    """Maximise evaluate(b) over a sorted grid: every stride-th value plus `current` (evaluated first, so it
    wins ties), then the values between the best one and its coarse neighbours → (score, b, extra). The number
    of grid values evaluated is appended to `tried` when given."""
    grid = sorted(set(float(x) for x in grid) | {float(current)})
    stride = max(1, math.ceil(len(grid) / n_coarse))
    seen: dict[float, tuple[float, Any]] = {}
    order = [float(current)] + [b for b in grid[::stride] if b != current]
    best_b = None
    for b in order:
        seen[b] = evaluate(b)
        if best_b is None or seen[b][0] > seen[best_b][0] + _TIE:
            best_b = b
    i = grid.index(best_b)
    for j in range(max(0, i - stride + 1), min(len(grid), i + stride)):
        b = grid[j]
        if b not in seen:
            seen[b] = evaluate(b)
            if seen[b][0] > seen[best_b][0] + _TIE:
                best_b = b
    if tried is not None:
        tried.append(len(seen))
    return seen[best_b][0], best_b, seen[best_b][1]


def search_min_area(tab: ClassTables, grid: Sequence[float], areas: Sequence[int], threshold: float,
                    tried: list[int] | None = None) -> tuple[float, float, int]:
    """Step "min area": threshold and minimum component area (OOF pixels) jointly, coarse-to-fine over the
    threshold from the tuned one → (score, threshold, area). Area 0 at the current threshold is a candidate.
    The number of (threshold, area) candidates scored is appended to `tried` when given."""
    areas = sorted({0} | {int(a) for a in areas})

    def evaluate(b: float) -> tuple[float, int]:
        scores = tab.scorer.reduce(tab.stats(b, areas))
        j = int(np.argmax(scores))
        return float(scores[j]), areas[j]

    visited: list[int] = []
    score, b, area = coarse_to_fine(grid, threshold, evaluate, tried=visited)
    if tried is not None:
        tried.append(visited[0] * len(areas))
    return score, b, area


def gate_cuts(scores: np.ndarray, grid: Sequence[float] | None = None, max_cuts: int = _MAX_CUTS) -> np.ndarray:
    """Cut candidates for an image-level score (kept when score > cut): the given grid, else midpoints
    between consecutive distinct OOF scores (at most `max_cuts`, by quantile) plus the largest score (every
    image declared empty)."""
    if grid is not None:
        return np.asarray(sorted(set(float(c) for c in grid)), dtype=np.float64)
    u = np.unique(scores)
    mids = (u[:-1] + u[1:]) / 2
    if len(mids) > max_cuts - 1:
        mids = mids[np.unique(np.linspace(0, len(mids) - 1, max(1, max_cuts - 1)).round().astype(int))]
    return np.concatenate([mids, u[-1:]])


def search_gate(tab: ClassTables, threshold: float, area: int, kinds: Sequence[str],
                cut_grid: Sequence[float] | None = None, max_cuts: int = _MAX_CUTS,
                tried: list[int] | None = None) -> tuple[float, dict[str, Any] | None, np.ndarray]:
    """Step "gate": among the gate kinds (topk for each k, area above the threshold, label) and their cuts
    (at most `max_cuts` per score), the one that scores best, or None when no gate beats no gate → (score,
    gate in OOF units, keep (N,)). The number of (gate, cut) candidates is appended to `tried` when given."""
    stats = tab.stats(threshold, [area])[0]
    best_score = float(tab.scorer.reduce(stats))
    best: tuple[dict[str, Any] | None, np.ndarray] = (None, np.ones(tab.n, dtype=bool))
    candidates: list[tuple[dict[str, Any], np.ndarray, Sequence[float] | None]] = []
    if "topk" in kinds:
        candidates += [({"kind": "topk", "k": k}, tab.topk_means[j], cut_grid) for j, k in enumerate(tab.topk_ks)]
    if "area" in kinds:
        candidates.append(({"kind": "area", "k": None, "threshold": float(threshold)}, tab.area_above(threshold),
                           None))
    if "label" in kinds and tab.label is not None:
        candidates.append(({"kind": "label", "k": None}, tab.label, cut_grid))
    n_tried = 0
    for gate, s, grid in candidates:
        cuts = gate_cuts(s, grid, max_cuts)
        n_tried += len(cuts)
        keep = s[None, :] > cuts[:, None]  # (M, N)
        scores = tab.scorer.switched(stats[None], keep)
        j = int(np.argmax(scores))
        if scores[j] > best_score + _TIE:
            best_score = float(scores[j])
            best = ({**gate, "cut": float(cuts[j])}, keep[j])
    if tried is not None:
        tried.append(n_tried)
    return best_score, best[0], best[1]


def search_triplet(tab: ClassTables, grid: Sequence[float], areas: Sequence[int], tops: Sequence[float],
                   threshold: float, keep: np.ndarray | None = None, tried: list[int] | None = None,
                   ) -> tuple[float, float, int, float | None]:
    """Step "triplet": bottom threshold, minimum area and top threshold jointly, the gate (`keep`) held:
    coarse-to-fine over the bottom threshold from the current one, every area × top threshold (and no top
    threshold) at each → (score, bottom, area, top or None). The current parameters are a candidate. The
    number of (bottom, area, top) candidates is appended to `tried` when given."""
    areas = sorted({0} | {int(a) for a in areas})
    tops_all: list[float | None] = [None] + sorted({float(t) for t in tops})
    gate = np.ones(tab.n, dtype=bool) if keep is None else keep
    top_keep = np.stack([tab.top_keep(t) for t in tops_all]) & gate[None]  # (T, N)

    def evaluate(b: float) -> tuple[float, tuple[int, float | None]]:
        stats = tab.stats(b, areas)  # (A, N, S)
        scores = tab.scorer.switched(stats[:, None], top_keep[None])  # (A, T)
        a, t = np.unravel_index(int(np.argmax(scores)), scores.shape)
        return float(scores[a, t]), (areas[a], tops_all[t])

    visited: list[int] = []
    score, b, (area, top) = coarse_to_fine(grid, threshold, evaluate, tried=visited)
    if tried is not None:
        tried.append(visited[0] * len(areas) * len(tops_all))
    return score, b, area, top
