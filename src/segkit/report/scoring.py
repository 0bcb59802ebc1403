"""Scoring a trained run for the ablation report: each fold's and model's OOF at the plain threshold, the
ensemble's OOF (`segkit.oof.load_oof_class`, what post-processing tunes on) plain and after the tuned chain
re-applied, the score-versus-threshold sweep and the worst images; then the recorded rows
(`segkit.report.records`) around them, into a `Report` (`segkit.report.rendering`).

Memory: one class of the ensemble's OOF (N, H, W) is held at a time, as tuning does.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from segkit import plots
from segkit.config import Config
from segkit.errors import TrainingError
from segkit.oof import OofClass, ensemble_members, load_oof_class
from segkit.postprocess import ChainParams, ClassParams, apply_chain
from segkit.postprocess.search import count_metric
from segkit.report.records import (averaging_rows, baseline_rows, crossval_notes, final_class_score, json_float,
                                   pseudo_rows, step_rows, tuned_params)
from segkit.report.rendering import PLAIN, Curve, GalleryItem, Report, Row
from segkit.runs import RunData, RunDir, ensembled_tags, model_tags, open_run_data
from segkit.storage import atomic_write

if TYPE_CHECKING:
    from segkit.data.competitions.base import Adapter

# A metric of per-image counts (adapter.score_counts) is swept at every one of these in one pass; any other
# metric is called once per threshold of the coarser grid.
FINE_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.02, 0.99, 0.02), 2))
COARSE_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.05, 0.96, 0.05), 2))


# --- the report ------------------------------------------------------------------------------------------------

def check_trained(cfg: Config) -> RunDir:
    """The run folder, when every fold of every model is trained and the post-processing tuned; else a
    TrainingError saying what to run."""
    rd = RunDir.of(cfg)
    tags = model_tags(cfg)
    folds = [rd.fold(t, k) for t in tags for k in range(cfg.train.folds)]
    missing = [f.path.relative_to(rd.path).as_posix() for f in folds if not f.is_done()]
    if len(missing) == len(folds):
        raise TrainingError(f"{rd.path}: run not trained yet (no finished fold); run `segkit train CONFIG` first")
    if missing:
        more = " ..." if len(missing) > 3 else ""
        raise TrainingError(f"{rd.path}: not every fold is trained ({', '.join(missing[:3])}{more} missing); "
                            "finish training with `segkit train CONFIG` first")
    if not rd.postprocess.is_file():
        raise TrainingError(f"{rd.postprocess}: post-processing not tuned yet; run `segkit tune CONFIG` first")
    return rd


def build_report(cfg: Config, run: RunData | None = None, curves: bool = True, worst: int = 8,
                 quiet: bool = True) -> Report:
    """Score every stage of the run on its OOF predictions. `curves` adds the score-versus-threshold sweeps,
    `worst` the gallery's size (0: none); both off gives the printed table only (what `segkit train` shows)."""
    rd = check_trained(cfg)
    run = run or open_run_data(cfg, quiet=quiet)
    classes = list(run.adapter.classes)
    tuned = rd.read_postprocess(classes)
    chain = ChainParams.from_dict(tuned)
    report = Report(cfg.name, str(tuned.get("metric", "")), classes, [], tuned_params(tuned),
                    int(tuned.get("version", 1)), rd.postprocess.name)
    report.rows += fold_rows(cfg, run)
    scores = score_ensemble(cfg, run, tuned, chain, curves=curves, per_image=worst > 0)
    report.curves = scores.curves
    ensemble = ensemble_row(cfg, scores.plain, [r.score for r in report.rows if r.section == "model"])
    report.rows.append(ensemble)
    report.rows += step_rows(tuned, ensemble.score)
    report.rows[:0] = baseline_rows(tuned)
    report.notes += crossval_notes(tuned)
    report.rows += averaging_rows(cfg)
    report.rows += pseudo_rows(cfg, tuned)
    if scores.per_image is not None:
        recorded, again = json_float(tuned.get("oof_score_tuned")), float(np.mean(scores.chained))
        if recorded is not None and abs(again - recorded) > 1e-6:
            report.notes.append(f"the chain re-applied to today's OOF scores {again:.4f}, {rd.postprocess.name} "
                                f"records {recorded:.4f}: the OOF or the file changed since tuning (run `segkit "
                                "tune CONFIG`)")
        report.gallery = gallery(cfg, run, chain, scores.per_image, worst)
    return report


def write_report(cfg: Config, worst: int = 8, quiet: bool = False) -> Path:
    """Build the full report, write runs/<name>/report.html atomically, print the table (unless quiet) and
    return the page's path."""
    report = build_report(cfg, worst=worst, quiet=quiet)
    path = RunDir.of(cfg).report
    with atomic_write(path) as fh:
        fh.write(report.html())
    if not quiet:
        print(report.table())
        print(f"[report] written: {path}")
    return path


def print_table(cfg: Config, run: RunData | None = None) -> None:
    """Print the ablation table (no plots, no gallery): what `segkit train` ends with."""
    print(build_report(cfg, run, curves=False, worst=0).table(), flush=True)


# --- folds and models ----------------------------------------------------------------------------------------------

def fold_rows(cfg: Config, run: RunData) -> list[Row]:
    """Per model: each fold's OOF score on its own validation images and the model's score over all folds, at
    threshold 0.5. One class at a time: its truth and one model's binarised OOF (N, H, W) uint8 are held."""
    rd = RunDir.of(cfg)
    adapter, masks = run.adapter, run.cache.masks
    n_classes = len(adapter.classes)
    tags = model_tags(cfg)
    folds = {tag: [rd.fold(tag, k) for k in range(cfg.train.folds)] for tag in tags}
    fold_scores = {tag: [[0.0] * n_classes for _ in folds[tag]] for tag in tags}
    model_scores = {tag: [0.0] * n_classes for tag in tags}
    n_val: dict[tuple[str, int], int] = {}
    for c in range(n_classes):
        truth = np.ascontiguousarray(masks[..., c])
        for tag in tags:
            whole = np.zeros(truth.shape, np.uint8)
            for j, fold in enumerate(folds[tag]):
                probs, index = fold.read_oof()
                pred = (np.asarray(probs[..., c]) > PLAIN).astype(np.uint8)
                whole[index] = pred
                n_val[(tag, j)] = len(index)
                fold_scores[tag][j][c] = float(adapter.score_class(truth[index], pred))
            model_scores[tag][c] = float(adapter.score_class(truth, whole))
    rows: list[Row] = []
    for tag in tags:
        for j, fold in enumerate(folds[tag]):
            rows.append(Row("fold", f"{tag} fold {fold.k}", float(np.mean(fold_scores[tag][j])), fold_scores[tag][j],
                            f"{n_val[(tag, j)]} val images"))
        rows.append(Row("model", f"{tag} (all folds)", float(np.mean(model_scores[tag])), model_scores[tag]))
    return rows


def ensemble_row(cfg: Config, per_class: list[float], model_scores: Sequence[float | None]) -> Row:
    """The ensemble at the plain threshold, with its weights and positive-only models when they are not plain
    equal weights, and its gain over the best model when there are several."""
    tags = ensembled_tags(cfg)
    label = f"ensemble of {'+'.join(tags)} ({PLAIN})" if len(tags) > 1 else f"ensemble ({PLAIN})"
    members = ensemble_members(cfg)
    notes = []
    if len({m.weight for m in members}) > 1:
        notes.append("weights " + ", ".join(f"{m.tag} {m.weight:g}" for m in members))
    if any(m.positive_only for m in members):
        notes.append("positive-only " + ", ".join(m.tag for m in members if m.positive_only))
    row = Row("ensemble", label, float(np.mean(per_class)), per_class, "; ".join(notes))
    models = [s for s in model_scores if s is not None]
    if len(models) > 1:
        row.delta = row.score - max(models)
        row.note = "; ".join(x for x in (row.note, "Δ: over the best model") if x)
    return row


# --- the ensemble's OOF, plain and after the chain ------------------------------------------------------------

@dataclass
class EnsembleScores:
    """The ensemble's OOF scored class by class: at the plain threshold, after the tuned chain (per class and,
    for the gallery, per image (N, C)), and the score-versus-threshold curves."""

    plain: list[float]
    chained: list[float]
    per_image: np.ndarray | None
    curves: list[Curve]


def score_ensemble(cfg: Config, run: RunData, tuned: dict[str, Any], chain: ChainParams, curves: bool,
                   per_image: bool) -> EnsembleScores:
    """Score the ensemble's OOF one class at a time: plain always; the threshold sweep with `curves`; the
    chain re-applied, overall and per image, with `per_image`."""
    adapter, masks, n = run.adapter, run.cache.masks, len(run.samples)
    area_scale = oof_area_scale(run)
    scores = EnsembleScores([], [], np.zeros((n, len(adapter.classes)), np.float64) if per_image else None, [])
    for c, name in enumerate(adapter.classes):
        oof = load_oof_class(cfg, n, c)
        truth = np.ascontiguousarray(masks[..., c])
        scores.plain.append(float(adapter.score_class(truth, (oof.probs > PLAIN).astype(np.uint8))))
        if curves:
            grid, values, vectorised = threshold_sweep(adapter, truth, oof.probs)
            scores.curves.append(Curve(name, grid, values, json_float(tuned["classes"][c].get("threshold")),
                                       final_class_score(tuned, c), vectorised))
        if scores.per_image is not None:
            pred = chain_class(chain.classes[c], oof, area_scale)
            scores.chained.append(float(adapter.score_class(truth, pred)))
            scores.per_image[:, c] = [adapter.score_class(truth[i:i + 1], pred[i:i + 1]) for i in range(n)]
        del oof
    return scores


def oof_area_scale(run: RunData) -> float:
    """OOF (training-size) pixels per submission pixel: what the chain's pixel counts, tuned and saved in
    submission pixels, are multiplied by to apply to the OOF."""
    masks = run.cache.masks
    sub_h, sub_w = run.adapter.submission_size(run.samples[0])
    return (masks.shape[1] * masks.shape[2]) / float(sub_h * sub_w)


def oof_class_params(params: ClassParams, area_scale: float) -> ClassParams:
    """One class's chain with its pixel counts — min_area, top_k, a top-k gate's k, an area gate's cut — from
    submission pixels to the OOF's (training) resolution, as tuning scaled them."""
    gate = dict(params.gate) if params.gate is not None else None
    if gate is not None and gate.get("kind") == "topk" and gate.get("k") is not None:
        gate["k"] = max(1, int(round(float(gate["k"]) * area_scale)))
    elif gate is not None and gate.get("kind") == "area":
        gate["cut"] = float(gate["cut"]) * area_scale
    return dataclasses.replace(params, min_area=int(round(params.min_area * area_scale)), gate=gate,
                               top_k=max(1, int(round(params.top_k * area_scale))))


def chain_class(params: ClassParams, oof: OofClass, area_scale: float) -> np.ndarray:
    """One class's OOF masks (N, H, W) uint8 after its tuned chain (`params`, in submission pixels), image by
    image as predict applies it (postprocess.apply_chain), the pixel counts scaled to the OOF's resolution."""
    chain = ChainParams([oof_class_params(params, area_scale)])
    out = np.empty(oof.probs.shape, np.uint8)
    for i in range(len(out)):
        label = oof.label[i:i + 1] if oof.label is not None else None
        out[i] = apply_chain(oof.probs[i][..., None], chain, gate_probs=oof.gate_probs[i][..., None],
                             label=label)[..., 0]
    return out


def chained_masks(cfg: Config, run: RunData, chain: ChainParams, rows: Sequence[int] | np.ndarray) -> np.ndarray:
    """The ensemble's OOF masks of the training images `rows` (in that order) after `chain`:
    (len(rows), H, W, C) uint8, one class of the OOF held at a time."""
    rows = np.asarray(rows, dtype=np.int64)
    area_scale = oof_area_scale(run)
    out = np.zeros((len(rows),) + run.cache.masks.shape[1:], np.uint8)
    for c in range(len(run.adapter.classes)):
        oof = load_oof_class(cfg, len(run.samples), c)
        picked = OofClass(oof.probs[rows], oof.gate_probs[rows], oof.label[rows] if oof.label is not None else None)
        out[..., c] = chain_class(chain.classes[c], picked, area_scale)
        del oof
    return out


def gallery(cfg: Config, run: RunData, chain: ChainParams, per_image: np.ndarray, worst: int) -> list[GalleryItem]:
    """The `worst` images by mean per-image score over classes after the chain (a second pass, one class at a
    time, keeps only their masks)."""
    mean = per_image.mean(1)
    picks = np.argsort(mean, kind="stable")[:worst]
    if not len(picks):
        return []
    preds = chained_masks(cfg, run, chain, picks)
    return [GalleryItem(run.samples[i].id, float(mean[i]), *plots.at_submission_size(  # as the submission draws it
        np.asarray(run.cache.images[i]), np.asarray(run.cache.masks[i]), preds[j],
        run.adapter.submission_size(run.samples[i]))) for j, i in enumerate(picks)]


# --- the sweep ----------------------------------------------------------------------------------------------

def threshold_sweep(adapter: Adapter, truth: np.ndarray, probs: np.ndarray,
                    thresholds: Sequence[float] | None = None) -> tuple[list[float], list[float], bool]:
    """(thresholds, scores, vectorised): the adapter's metric of `probs > t` against `truth` (N, H, W) for each t.
    When the metric is a function of per-image counts (the adapter's `score_counts`, as post-processing's search
    uses it), one histogram pass over the pixels gives every threshold of a fine grid at once; otherwise
    score_class is called once per threshold of a coarser grid."""
    fn = count_metric(adapter)
    if fn is not None:
        grid = sorted({*(list(thresholds) if thresholds is not None else FINE_THRESHOLDS), PLAIN})
        tp, pos, true_n = pixel_counts(truth, probs, grid)
        scores = np.asarray(fn(tp.T.astype(np.float64), pos.T.astype(np.float64), true_n.astype(np.float64)))
        scores = scores.reshape(len(grid))
        exact = adapter.score_class(truth, (probs > np.float32(PLAIN)).astype(np.uint8))
        if abs(scores[grid.index(PLAIN)] - exact) <= 1e-6:  # else score_counts is not this metric: call it
            return grid, [float(v) for v in scores], True
    grid = list(thresholds) if thresholds is not None else list(COARSE_THRESHOLDS)
    scores = [float(adapter.score_class(truth, (probs > np.float32(t)).astype(np.uint8))) for t in grid]
    return grid, scores, False


def pixel_counts(truth: np.ndarray, probs: np.ndarray, thresholds: Sequence[float],
                 chunk: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image and threshold: true positives (N, T), predicted positives (N, T) of `probs > t`, and the true
    pixels (N,), from one histogram of each image's probabilities over the threshold bins (chunks of images)."""
    t32 = np.asarray(thresholds, np.float32)
    if np.any(np.diff(t32) <= 0):
        raise ValueError("thresholds must increase")
    n, bins = len(probs), len(t32) + 1
    tp = np.zeros((n, len(t32)), np.int64)
    pos = np.zeros((n, len(t32)), np.int64)
    true_n = np.zeros(n, np.int64)
    for s in range(0, n, chunk):
        p = np.asarray(probs[s:s + chunk], np.float32).reshape(min(chunk, n - s), -1)
        t = np.asarray(truth[s:s + chunk]).reshape(len(p), -1).astype(bool)
        b = np.searchsorted(t32, p, side="left")  # how many thresholds lie below p: positive for those
        offset = (np.arange(len(p)) * bins)[:, None]
        all_hist = np.bincount((b + offset).ravel(), minlength=len(p) * bins).reshape(len(p), bins)
        true_hist = np.bincount((b + offset)[t], minlength=len(p) * bins).reshape(len(p), bins)
        # positive at threshold j <=> bin > j: a reversed cumulative sum from the top bin
        pos[s:s + len(p)] = np.cumsum(all_hist[:, ::-1], axis=1)[:, ::-1][:, 1:]
        tp[s:s + len(p)] = np.cumsum(true_hist[:, ::-1], axis=1)[:, ::-1][:, 1:]
        true_n[s:s + len(p)] = t.sum(1)
    return tp, pos, true_n
