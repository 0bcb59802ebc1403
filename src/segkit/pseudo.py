"""Pseudo-labelling: a round of confidently predicted test images added to the training set (`segkit pseudo`).

The run's fold × model × TTA ensemble predicts the test set; an image is kept when every probability of every
class is confident (below `pseudo.low` or above `pseudo.high`; up to `pseudo.max_uncertain` of its pixels per
class may lie between) and, when the run has a gate (a classifier head, a tuned gate in postprocess.json), the
gate agrees with each class mask's emptiness — the rule of Severstal's winners. Kept images and their binarised
masks are written as round r of the run (`runs/<name>/pseudo/round_<r>/`, a segkit cache like the training
set's, see segkit.runs.PseudoRoundDir); a following `segkit train CONFIG name=<new> train.pseudo=<name>/<r>`
adds them to every fold's training side while validation and OOF stay on true labels only.
"""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from segkit.config import Config
from segkit.data.cache import prepare
from segkit.data.sample import Sample
from segkit.errors import DataError
from segkit.predict import Ensemble
from segkit.runs import PseudoRoundDir, RunDir, pseudo_round_of
from segkit.storage import temp_prefix


@dataclass
class Selection:
    """The verdict on a batch of predictions: which images to keep and their pseudo-label masks."""

    keep: np.ndarray  # (N,) bool: every class confident and agreeing with the gate
    masks: np.ndarray  # (N, H, W, C) uint8 {0, 1}: the binarised probabilities
    confident: np.ndarray  # (N, C) bool: class c's pixels (and head label) are confident
    agrees: np.ndarray  # (N, C) bool: the gate's empty/non-empty verdict matches the mask's


def binarise(probs: np.ndarray, thresholds: Sequence[float] | None = None, activation: str = "sigmoid") -> np.ndarray:
    """Masks uint8 (N, H, W, C) from probabilities (N, H, W, C): per-class thresholds (default 0.5) for sigmoid
    outputs, the one-hot argmax for softmax outputs (so the label stays one class per pixel)."""
    probs = np.asarray(probs, dtype=np.float32)
    if activation == "softmax":
        return (probs.argmax(-1)[..., None] == np.arange(probs.shape[-1])).astype(np.uint8)
    cut = np.asarray(thresholds if thresholds is not None else [0.5] * probs.shape[-1], dtype=np.float32)
    return (probs > cut).astype(np.uint8)


def select_confident(probs: np.ndarray, low: float = 0.05, high: float = 0.95, max_uncertain: float = 0.0,
                     thresholds: Sequence[float] | None = None, label: np.ndarray | None = None,
                     gate_empty: np.ndarray | None = None, activation: str = "sigmoid") -> Selection:
    """Which of N predicted images (probabilities (N, H, W, C)) make confident pseudo-labels.

    A class is confident in an image when at most `max_uncertain` of its pixels lie in [low, high] (0: every
    probability < low or > high) and, given the classifier head's `label` (N, C), that probability too is
    < low or > high and says present exactly when the mask is non-empty. `gate_empty` (N, C) bool — a tuned
    gate's "this class is empty" verdict — must match the mask's emptiness. An image is kept when every class
    passes both. Masks come from `binarise(probs, thresholds, activation)`."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 4:
        raise ValueError(f"select_confident: probabilities must be (N, H, W, C), got {probs.shape}")
    n, c = probs.shape[0], probs.shape[-1]
    masks = binarise(probs, thresholds, activation)
    uncertain = ~((probs < low) | (probs > high))
    confident = uncertain.reshape(n, -1, c).mean(axis=1) <= max_uncertain
    present = masks.reshape(n, -1, c).any(axis=1)
    agrees = np.ones((n, c), dtype=bool)
    if label is not None:
        label = np.asarray(label, dtype=np.float32).reshape(n, c)
        confident &= (label < low) | (label > high)
        agrees &= (label > 0.5) == present
    if gate_empty is not None:
        agrees &= np.asarray(gate_empty, dtype=bool).reshape(n, c) == ~present
    keep = (confident & agrees).all(axis=1)
    return Selection(keep, masks, confident, agrees)


class _RoundSource:
    """The adapter `prepare` reads a round from: images from the test cache, masks from the selection's map."""

    def __init__(self, adapter, test_cache, masks: np.ndarray) -> None:
        self.bands, self.classes = adapter.bands, list(adapter.classes)
        self.test_cache, self.masks = test_cache, masks

    def read_image(self, sample: Sample) -> np.ndarray:
        return np.asarray(self.test_cache.images[sample.meta["index"]])

    def read_mask(self, sample: Sample) -> np.ndarray:
        return np.asarray(self.masks[sample.meta["index"]])


def round_to_write(cfg: Config) -> int:
    """The round `segkit pseudo` writes: pseudo.round, else one past the round the run itself trained on
    (train.pseudo), else 1."""
    if cfg.pseudo.round is not None:
        return cfg.pseudo.round
    source = pseudo_round_of(cfg)
    return (source.round or 0) + 1 if source is not None else 1


def pseudo_label(cfg: Config, quiet: bool = False) -> dict[str, Any]:
    """Predict the test set with the run's ensemble, keep the confident images (see `select_confident`) and
    write them as the run's pseudo-label round (images and masks cached like the training set, ids.csv,
    report.json); returns the report (kept images overall and per class)."""
    pc = cfg.pseudo
    adapter = cfg.adapter()
    samples = adapter.test_samples()
    if not samples:
        raise DataError(f"{cfg.data.root}: no test samples found for {cfg.data.competition}")
    h, w = cfg.data.image_size
    ens = Ensemble.from_run(cfg, adapter)
    activation = _activation(cfg)
    thresholds, gate = _postprocess_in_force(cfg, adapter.classes, activation)
    rnd = RunDir.of(cfg).pseudo_round(round_to_write(cfg))
    cache = prepare(adapter, samples, (h, w), cfg.data.cache_dir, name=f"{cfg.data.competition}-test-{h}x{w}",
                    quiet=quiet, with_masks=False)
    _fresh_round(rnd, quiet)
    n, n_classes = len(samples), len(adapter.classes)
    tmp = rnd.path / f"{temp_prefix('masks')}w.tmp.npy"
    masks = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, h, w, n_classes))
    keep, confident, pixels, gate_used = _select_all(cfg, ens, cache, masks, thresholds, gate, activation, quiet)
    masks.flush()
    kept = np.flatnonzero(keep)
    pixels = pixels[kept]
    digest = _write_kept(adapter, samples, cache, masks, kept, rnd, quiet)
    del masks
    tmp.unlink()
    rnd.write_ids({"id": [samples[i].id for i in kept], "test_index": kept.tolist(),
                   **{f"{name}_pixels": [int(v) for v in pixels[:, c]] for c, name in enumerate(adapter.classes)}})
    report = {
        "round": rnd.round, "run": cfg.name, "trained_on": cfg.train.pseudo,
        "low": pc.low, "high": pc.high, "max_uncertain": pc.max_uncertain, "gate": sorted(gate_used),
        "image_size": [h, w], "n_test": n, "n_kept": int(len(kept)),
        "classes": _class_counts(adapter.classes, pixels, confident), "digest": digest,
        "checkpoints": len(ens.models), "tta": ens.tta, "scales": list(cfg.predict.scales),
    }
    rnd.write_report(report)  # last: the round is complete
    if not quiet:
        print_report(report, rnd)
    return report


def _select_all(cfg: Config, ens: Ensemble, cache: Any, masks: np.ndarray, thresholds: Any, gate: Any,
                activation: str, quiet: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, set[str]]:
    """Stream the ensemble over the test cache and select the confident images (`select_confident`), writing
    every image's mask into `masks`; returns which images are kept, which (image, class) are confident, the
    positive pixels per image and class, and the gates that were used."""
    pc = cfg.pseudo
    n, n_classes = masks.shape[0], masks.shape[-1]
    keep = np.zeros(n, dtype=bool)
    confident = np.zeros((n, n_classes), dtype=bool)
    pixels = np.zeros((n, n_classes), dtype=np.int64)  # positive pixels per image and class
    gate_used: set[str] = set()
    pos = 0
    for batch in ens.stream(cache, np.arange(len(cache)), quiet):
        probs, label = batch.probs, batch.label
        gate_probs = None if batch.gate_probs is batch.probs else batch.gate_probs
        gate_empty = gate(probs, gate_probs, label) if (gate is not None and pc.gate) else None
        sel = select_confident(probs, pc.low, pc.high, pc.max_uncertain, thresholds,
                               label=label if pc.gate else None, gate_empty=gate_empty, activation=activation)
        if pc.gate and label is not None:
            gate_used.add("classifier head")
        if gate_empty is not None:
            gate_used.add(f"tuned gate ({RunDir.of(cfg).postprocess.name})")
        masks[pos:pos + len(probs)] = sel.masks
        keep[pos:pos + len(probs)] = sel.keep
        confident[pos:pos + len(probs)] = sel.confident
        pixels[pos:pos + len(probs)] = sel.masks.reshape(len(probs), -1, n_classes).sum(axis=1)
        pos += len(probs)
    return keep, confident, pixels, gate_used


def _fresh_round(rnd: PseudoRoundDir, quiet: bool) -> None:
    """An empty folder for the round, replacing one written before."""
    if rnd.path.exists():
        if not quiet:
            print(f"[pseudo] replacing {rnd.path}", flush=True)
        shutil.rmtree(rnd.path)
    rnd.path.mkdir(parents=True)


def _write_kept(adapter, samples: Sequence[Sample], cache, masks: np.ndarray, kept: np.ndarray,
                rnd: PseudoRoundDir, quiet: bool) -> str:
    """Cache the kept test images and their masks as the round (`prepare`, like the training set); returns the
    round's digest (its ids and masks)."""
    digest = hashlib.sha1()
    if len(kept):
        round_samples = [Sample(id=samples[i].id, image=(f"{cache.path}#{i}",), mask=(f"{rnd.path}#{i}",),
                                meta={"index": int(i)}) for i in kept]
        prepare(_RoundSource(adapter, cache, masks), round_samples, tuple(masks.shape[1:3]), rnd.path,
                name=rnd.cache_name, with_masks=True, quiet=quiet)
        for i in kept:
            digest.update(samples[i].id.encode() + b"\n")
            digest.update(np.ascontiguousarray(masks[i]).tobytes())
    return digest.hexdigest()[:12]


def _class_counts(classes: Sequence[str], pixels: np.ndarray, confident: np.ndarray) -> list[dict[str, Any]]:
    """Per class: kept images with and without it (`pixels` of the kept images) and the confident images."""
    return [{"name": name, "kept_nonempty": int((pixels[:, c] > 0).sum()),
             "kept_empty": int((pixels[:, c] == 0).sum()), "confident": int(confident[:, c].sum())}
            for c, name in enumerate(classes)]


def print_report(report: dict[str, Any], rnd: PseudoRoundDir | None = None) -> None:
    """The round's table: per class, the images confident in that class and the kept ones with and without it."""
    gate = ", ".join(report["gate"]) or "none"
    print(f"[pseudo] round {report['round']}: kept {report['n_kept']} of {report['n_test']} test images "
          f"(probabilities < {report['low']:g} or > {report['high']:g}, up to {report['max_uncertain']:g} uncertain; "
          f"gate: {gate})")
    head = ("class", "confident", "kept non-empty", "kept empty")
    rows = [(c["name"], str(c["confident"]), str(c["kept_nonempty"]), str(c["kept_empty"])) for c in report["classes"]]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  " + "  ".join(v.ljust(wd) for v, wd in zip(r, widths)))
    if rnd is not None:
        print(f"[pseudo] written to {rnd.path}; train on it with `segkit train CONFIG name={report['run']}_p"
              f"{report['round']} train.pseudo={report['run']}/{report['round']}`")


def _activation(cfg: Config) -> str:
    acts = {spec.activation for spec in cfg.models}
    return "softmax" if acts == {"softmax"} else "sigmoid"


def _postprocess_in_force(cfg: Config, classes: Sequence[str], activation: str = "sigmoid"):
    """(per-class thresholds or None for 0.5, gate function or None) from the post-processing chain predict
    applies (segkit.postprocess.load_chain): its thresholds binarise the pseudo masks; for each class with a tuned
    gate or top threshold, the chain's verdict (empty or not) is what must agree with the mask."""
    from segkit.postprocess import apply_chain, load_chain  # lazy: postprocess imports scipy

    if cfg.postprocess.tune and not RunDir.of(cfg).postprocess.is_file():
        return None, None
    params = load_chain(cfg, classes)
    thresholds = params.thresholds
    gated = np.array([c.gate is not None or c.top_threshold is not None for c in params.classes])
    if not gated.any():
        return thresholds, None

    def gate(probs: np.ndarray, gate_probs: np.ndarray | None, label: np.ndarray | None) -> np.ndarray:
        n = len(probs)
        chain = np.stack([apply_chain(probs[i], params, gate_probs=None if gate_probs is None else gate_probs[i],
                                      label=None if label is None else label[i]) for i in range(n)])
        empty = ~chain.reshape(n, -1, len(classes)).any(axis=1)
        plain = ~binarise(probs, thresholds, activation).reshape(n, -1, len(classes)).any(axis=1)
        return np.where(gated, empty, plain)  # classes without a gate always agree

    return thresholds, gate
