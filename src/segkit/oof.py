"""Out-of-fold (OOF) predictions as the ensemble sees them: who is in the ensemble with which weight and role
(`ensemble_members`), one class of the weighted OOF average at a time (`load_oof_class`, what post-processing
tunes on), and the choice of ensemble weights per model tag on OOF (`tune_weights`, `predict.tune_weights`).

The weights and roles here are those `segkit.predict.predict_ensemble` applies at predict time: `probs` averages
every model, `gate_probs` only the models not trained positive-only, `label` the classification heads.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np

from segkit.config import Config, check_ensemble_roles
from segkit.errors import ConfigError, TrainingError, unknown_name
from segkit.runs import RunData, RunDir, ensembled_tags, model_tags, open_run_data


@dataclass(frozen=True)
class Member:
    """One model tag of the ensemble: its weight and whether it was trained on non-empty masks only."""

    tag: str
    weight: float
    positive_only: bool


class OofClass(NamedTuple):
    """One class of the ensemble's OOF predictions for every training sample: `probs` (N, H, W) float32 (all
    models), `gate_probs` (N, H, W) (the models not trained positive-only; the very same array as `probs` when
    no model is positive-only or every one is), `label` (N,) float32 (the classification heads) or None."""

    probs: np.ndarray
    gate_probs: np.ndarray
    label: np.ndarray | None


def ensemble_members(cfg: Config, tuned: bool = True) -> list[Member]:
    """The ensembled model tags (predict.models, else all) with their weights and roles.

    Weights: `predict.weights` ({tag: weight}; tags not given weigh 0 — an unknown tag is a ConfigError with
    the closest tag), or with `predict.tune_weights` the weights saved by `tune_weights` (TrainingError when not
    tuned yet; `tuned=False` gives equal weights instead, as while tuning them), else equal."""
    tags = ensembled_tags(cfg)
    every = model_tags(cfg)
    pc = cfg.predict
    if pc.weights is not None:
        for tag in pc.weights:
            if tag not in every:
                raise unknown_name("predict.weights", "model tag", tag, every)
        weights = {t: float(pc.weights.get(t, 0.0)) for t in tags}
        if not any(weights.values()):
            raise ConfigError(f"predict.weights: every ensembled model ({', '.join(tags)}) has weight 0; give one "
                              "a weight > 0")
    elif pc.tune_weights and tuned:
        weights = read_tuned_weights(cfg, tags)
    else:
        weights = {t: 1.0 for t in tags}
    index = {t: i for i, t in enumerate(every)}
    check_ensemble_roles(cfg, [index[t] for t in tags], what="ensembled ")
    return [Member(t, weights[t], cfg.models[index[t]].trains_positive_only(cfg.train.positive_only))
            for t in tags]


def read_tuned_weights(cfg: Config, tags: Sequence[str]) -> dict[str, float]:
    """The weights `tune_weights` saved for these tags; TrainingError when missing or tuned for other tags."""
    rd = RunDir.of(cfg)
    if not rd.weights.is_file():
        raise TrainingError(f"{rd.weights}: ensemble weights not tuned yet (predict.tune_weights is true); run "
                            "`segkit tune CONFIG`, or set predict.tune_weights=false")
    saved = {str(t): float(w) for t, w in rd.read_weights()["weights"].items()}
    if sorted(saved) != sorted(tags):
        raise TrainingError(f"{rd.weights}: tuned for models {sorted(saved)}, the ensemble has {sorted(tags)}; run "
                            "`segkit tune CONFIG` again")
    return saved


def load_oof_class(cfg: Config, n_samples: int, c: int, members: Sequence[Member] | None = None) -> OofClass:
    """Class `c` of the ensemble's OOF predictions for all `n_samples` training samples, averaged over the
    ensembled models with the weights and roles of `ensemble_members` (or `members`). Reads one class of one
    fold at a time from the memory-mapped files, so memory holds two (N, H, W) float32 arrays and the labels."""
    members = list(members) if members is not None else ensemble_members(cfg)
    members = [m for m in members if m.weight > 0]
    separate_gate = any(m.positive_only for m in members) and any(not m.positive_only for m in members)
    probs = gate = label = None
    w_all = w_gate = w_label = 0.0
    for m in members:
        p, lab = _tag_class(cfg, m.tag, n_samples, c)
        if probs is None:
            probs = np.zeros_like(p)
            gate = np.zeros_like(p) if separate_gate else None
        probs += np.float32(m.weight) * p
        w_all += m.weight
        if gate is not None and not m.positive_only:
            gate += np.float32(m.weight) * p
            w_gate += m.weight
        if lab is not None:
            label = (np.zeros(n_samples, np.float32) if label is None else label) + np.float32(m.weight) * lab
            w_label += m.weight
        del p
    if probs is None:
        raise ConfigError("predict.weights: no ensembled model has a weight > 0")
    probs /= np.float32(w_all)
    if gate is not None:
        gate /= np.float32(w_gate)
    if label is not None:
        label /= np.float32(w_label)
    return OofClass(probs, gate if gate is not None else probs, label)


def _tag_class(cfg: Config, tag: str, n_samples: int, c: int, rows: np.ndarray | None = None,
               dtype=np.float32) -> tuple[np.ndarray, np.ndarray | None]:
    """Class `c` of one model's OOF over every sample (or the samples `rows`, in that order): (N, H, W) and its
    head's (N,) float32 or None."""
    rd = RunDir.of(cfg)
    covered = np.zeros(n_samples, dtype=bool)
    pos = np.arange(n_samples) if rows is None else np.full(n_samples, -1)
    if rows is not None:
        pos[rows] = np.arange(len(rows))
    n_out = n_samples if rows is None else len(rows)
    probs = label = None
    heads = []
    for k in range(cfg.train.folds):
        fold = rd.fold(tag, k)
        oof, index = fold.read_oof()
        if probs is None:
            probs = np.zeros((n_out,) + oof.shape[1:3], dtype)
        if len(index) and (index.max() >= n_samples or index.min() < 0):
            raise TrainingError(f"{fold.oof_index}: sample indices outside the {n_samples} training samples; "
                                f"run {fold.restart_hint()}")
        covered[index] = True
        wanted = np.flatnonzero(pos[index] >= 0)  # rows of this fold's file to read
        for s in range(0, len(wanted), 256):  # a few hundred images at a time from the memory map
            part = wanted[s:s + 256]
            probs[pos[index[part]]] = oof[part, ..., c]
        head = fold.oof_label.is_file()
        heads.append(head)
        if head:
            lab = fold.read_oof_label(len(index))
            label = np.zeros(n_out, np.float32) if label is None else label
            label[pos[index[wanted]]] = lab[wanted, c]
    if not covered.all():
        raise TrainingError(f"{rd.path / tag}: out-of-fold predictions miss {int((~covered).sum())} samples")
    if any(heads) and not all(heads):
        missing = [k for k, h in enumerate(heads) if not h]
        raise TrainingError(f"{rd.path / tag}: folds {missing} have no classification-head OOF (oof_label.npy) "
                            f"while others do; retrain them ({rd.fold(tag, missing[0]).restart_hint()})")
    assert probs is not None
    return probs, label


# --- choosing the weights on OOF ------------------------------------------------------------------

WEIGHT_GRID = (0.0, 0.5, 1.0, 2.0)  # candidate weights per model tag (normalised: only ratios matter)
FULL_GRID_TAGS = 4  # up to this many tags every combination is scored, beyond it a coordinate search
MEMORY_BUDGET = 512 * 2**20  # bytes of float16 OOF held per class while tuning (images are subsampled)


def weight_candidates(n_tags: int, roles: Sequence[bool] = ()) -> list[tuple[float, ...]]:
    """Every distinct weight vector (up to scale) over WEIGHT_GRID for `n_tags` tags, equal weights first;
    vectors that leave no model, or (with positive-only `roles`) no gate model, are left out."""
    roles = list(roles) or [False] * n_tags
    seen, out = set(), []
    for combo in [(1.0,) * n_tags, *itertools.product(WEIGHT_GRID, repeat=n_tags)]:
        if not weight_candidates_ok(combo, roles):
            continue
        key = tuple(round(w / sum(combo), 6) for w in combo)
        if key not in seen:
            seen.add(key)
            out.append(tuple(float(w) for w in combo))
    return out


def tune_weights(cfg: Config, run: RunData | None = None, quiet: bool = False) -> dict[str, Any]:
    """Choose the ensemble weight of each model tag on OOF and save them (weights.json) where predict and
    `load_oof_class` find them: every combination over WEIGHT_GRID (a coordinate search beyond FULL_GRID_TAGS
    tags) scored by the competition metric averaged over classes, each class at its best threshold of
    postprocess.threshold_grid, on at most MEMORY_BUDGET of OOF per class (a seeded subsample of the images).
    Equal weights win ties. The choice is judged like a post-processing step (segkit.postprocess.crossval):
    for each fold, weights and thresholds chosen on the other folds are scored on it against equal weights;
    the tuned weights are kept only when that cross-validated gain is > 0 and > 1 SE, else equal weights
    are saved (with `postprocess.crossval: false`: whenever they raise the OOF score). Returns what was saved."""
    from segkit.postprocess.crossval import choose_folds, judge, standard_error  # lazy: postprocess imports oof

    run = run or open_run_data(cfg, quiet=quiet)
    members = ensemble_members(cfg, tuned=False)
    tags, roles = [m.tag for m in members], [m.positive_only for m in members]
    rows = weight_rows(cfg, run, len(tags))
    if len(tags) == 1:
        result = {"weights": {tags[0]: 1.0}, "oof_score": None, "oof_score_equal": None, "candidates": 0,
                  "images": int(len(rows)), "metric": run.adapter.metric_name()}
        RunDir.of(cfg).write_weights(result)
        if not quiet:
            print(f"[tune] ensemble weights {tags[0]}: 1 (one model)", flush=True)
        return result
    folds, source = choose_folds(np.asarray(run.folds)[rows], len(rows), cfg.seed)
    scores = WeightScores(cfg, run, tags, rows, folds)
    tuned, tuned_score, tried = scores.best("all", roles)
    equal_w = (1.0,) * len(tags)
    equal = scores.score(equal_w)
    gains = [scores.held_out(scores.best(("train", k), roles)[0], k) - scores.held_out(equal_w, k)
             for k in scores.folds]
    if cfg.postprocess.crossval:
        kept, reason = judge(gains) if scores.folds else (False, source)
    else:
        kept, reason = tuned_score > equal + 1e-12, "postprocess.crossval: false: kept when it raises the OOF"
    final = tuned if kept else equal_w
    result = {"weights": dict(zip(tags, (float(v) for v in final))),
              "oof_score": tuned_score if kept else equal, "oof_score_equal": equal, "candidates": tried,
              "images": int(len(rows)), "metric": run.adapter.metric_name(),
              "tuned_weights": dict(zip(tags, (float(v) for v in tuned))), "oof_score_tuned": tuned_score,
              "oof_gain": tuned_score - equal, "cv_gain": float(np.mean(gains)) if gains else None,
              "cv_se": standard_error(gains) if gains else None, "cv_fold_gains": [float(g) for g in gains],
              "folds": source, "kept": bool(kept), "reason": reason}
    RunDir.of(cfg).write_weights(result)
    if not quiet:
        shown = ", ".join(f"{t}: {v:g}" for t, v in result["tuned_weights"].items())
        cv = (f"; CV gain {result['cv_gain']:+.4f} ± {result['cv_se']:.4f}" if gains else "")
        decision = "kept" if kept else "dropped, equal weights in force"
        print(f"[tune] ensemble weights {shown} ({tried} candidates on {len(rows)} images): OOF {equal:.4f} "
              f"(equal) -> {tuned_score:.4f} (OOF-tuned gain {tuned_score - equal:+.4f}){cv}: {decision} "
              f"({reason})", flush=True)
    return result


def weight_rows(cfg: Config, run: RunData, n_tags: int) -> np.ndarray:
    """The training images the weights are tuned on: all, or a seeded subsample when `n_tags` models' OOF of one
    class (float16) would exceed MEMORY_BUDGET."""
    n = len(run.samples)
    h, w = run.cache.masks.shape[1:3]
    keep = max(1, min(n, MEMORY_BUDGET // max(1, n_tags * h * w * 2)))
    return np.sort(np.random.default_rng(cfg.seed).choice(n, keep, replace=False)) if keep < n else np.arange(n)


class WeightScores:
    """The ensemble's OOF score of weight vectors on the images `rows`: for each subset of them (all; for each
    fold k, the other folds ("train", k) and the fold itself ("test", k)) the score per class at each threshold
    of postprocess.threshold_grid, computed once per distinct (normalised) weight vector. Holds each class's
    truth and the models' stacked OOF (T, n, H, W) float16."""

    def __init__(self, cfg: Config, run: RunData, tags: Sequence[str], rows: np.ndarray,
                 folds: np.ndarray | None) -> None:
        self.score_class = run.adapter.score_class
        self.grid = sorted(set(cfg.postprocess.threshold_grid))
        n, masks = len(run.samples), run.cache.masks
        self.per_class = [(np.ascontiguousarray(masks[rows, ..., c]),
                           np.stack([_tag_class(cfg, t, n, c, rows, np.float16)[0] for t in tags]))
                          for c in range(len(run.adapter.classes))]
        self.folds = [] if folds is None else sorted(int(k) for k in np.unique(folds))
        self.subsets: dict[Any, np.ndarray] = {"all": np.arange(len(rows))}
        for k in self.folds:
            self.subsets[("train", k)] = np.flatnonzero(folds != k)
            self.subsets[("test", k)] = np.flatnonzero(folds == k)
        self._tables: dict[tuple[float, ...], dict[Any, np.ndarray]] = {}

    def table(self, weights: Sequence[float]) -> dict[Any, np.ndarray]:
        """Per subset of images: the score (classes, thresholds) of these weights."""
        key = tuple(round(float(v) / sum(weights), 9) for v in weights)
        if key not in self._tables:
            wv = np.asarray(weights, np.float32) / np.float32(sum(weights))
            out = {s: np.zeros((len(self.per_class), len(self.grid))) for s in self.subsets}
            for c, (truth, stack) in enumerate(self.per_class):
                probs = np.tensordot(wv, stack, axes=1)
                for j, t in enumerate(self.grid):
                    pred = (probs > t).astype(np.uint8)
                    for s, idx in self.subsets.items():
                        out[s][c, j] = self.score_class(truth[idx], pred[idx])
            self._tables[key] = out
        return self._tables[key]

    def score(self, weights: Sequence[float], subset: Any = "all") -> float:
        """The score of these weights on a subset, mean over classes, each class at its best threshold."""
        return float(self.table(weights)[subset].max(axis=1).mean())

    def held_out(self, weights: Sequence[float], k: int) -> float:
        """The score of these weights on fold k, each class at the threshold best on the other folds."""
        t = self.table(weights)
        at = t[("train", k)].argmax(axis=1)
        return float(t[("test", k)][np.arange(len(self.per_class)), at].mean())

    def best(self, subset: Any, roles: Sequence[bool]) -> tuple[tuple[float, ...], float, int]:
        """(weights, score, candidates tried) best on a subset: every candidate of WEIGHT_GRID up to
        FULL_GRID_TAGS models (equal weights first, so they win ties), else a coordinate search."""
        if len(roles) <= FULL_GRID_TAGS:
            candidates = weight_candidates(len(roles), roles)
            scores = [self.score(cand, subset) for cand in candidates]
            i = int(np.argmax(scores))  # the first maximum: equal weights come first
            return candidates[i], float(scores[i]), len(candidates)
        return _coordinate_search(lambda w: self.score(w, subset), len(roles), roles)


def _coordinate_search(score, n: int, roles: Sequence[bool], rounds: int = 2) -> tuple[tuple[float, ...], float, int]:
    best = [1.0] * n
    best_score, tried = score(best), 1
    for _ in range(rounds):
        changed = False
        for i in range(n):
            for value in WEIGHT_GRID:
                cand = best.copy()
                cand[i] = value
                if cand == best or not weight_candidates_ok(cand, roles):
                    continue
                s = score(cand)
                tried += 1
                if s > best_score + 1e-12:
                    best, best_score, changed = cand, s, True
        if not changed:
            break
    return tuple(best), float(best_score), tried


def weight_candidates_ok(weights: Sequence[float], roles: Sequence[bool]) -> bool:
    """A weight vector keeps some model, and a gate model when there is one."""
    if sum(weights) <= 0:
        return False
    return all(roles) or any(w > 0 for w, po in zip(weights, roles) if not po)


