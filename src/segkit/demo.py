"""The demo: synthetic 38-Cloud data in the real file format, end to end to a validated, scored submission."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from segkit import plots
from segkit.config import Config, load_config
from segkit.data.synth import generate
from segkit.pipeline import predict, train
from segkit.postprocess import load_chain
from segkit.report.scoring import chained_masks
from segkit.runs import RunDir, model_tags, open_run_data
from segkit.scene_eval import SceneReport, evaluate_submission

JACCARD_TARGET = 0.80
MINUTES_TARGET = 10.0


def run_demo(config: str = "demo", out: str | Path = "demo_out", overrides: list[str] | tuple[str, ...] = (),
             quiet: bool = False) -> int:
    """synth → prepare → train K folds × models → tune on OOF → predict with TTA → submission.csv → evaluate;
    prints a summary table and writes curves and overlays. Returns 0 when the submission validates."""
    start = time.time()
    out = Path(out)
    cfg = load_config(config, [f"data.root={out / 'data'}", f"data.cache_dir={out / 'cache'}",
                               f"output.runs_dir={out / 'runs'}", *overrides])
    root = Path(cfg.data.root)
    patch = cfg.data.image_size[0]
    if not (root / "38-Cloud_test").is_dir():
        print(f"[demo] writing synthetic 38-Cloud data ({patch}-px patches) to {root}")
        generate("cloud38", root, seed=cfg.seed, patch_size=patch, **cfg.data.synth)
    train(cfg, quiet=quiet)
    submission = predict(cfg, quiet=quiet)
    scenes = evaluate_scenes(cfg, submission)
    plot_paths = write_plots(cfg)
    metrics = demo_metrics(cfg, submission, scenes, (time.time() - start) / 60)
    RunDir.of(cfg).write_metrics(metrics)
    print_summary(metrics, scenes, plot_paths)
    return 0


def evaluate_scenes(cfg: Config, submission: Path) -> SceneReport:
    """Score the submission on the test scenes with the official 38-Cloud scene metrics."""
    adapter = cfg.adapter()
    return evaluate_submission(submission, adapter.scene_gt_dir(), out_dir=RunDir.of(cfg).evaluation,
                               patch_size=cfg.data.image_size[0])


def write_plots(cfg: Config) -> list[Path]:
    """Training curves of every fold and an overlay of a few out-of-fold predictions: the ensemble's OOF after
    the post-processing chain predict applies (the report's `chained_masks`)."""
    rd = RunDir.of(cfg)
    histories = {}
    for tag in model_tags(cfg):
        for k in range(cfg.train.folds):
            path = rd.fold(tag, k).history
            if path.is_file():
                histories[f"{tag} fold {k}"] = pd.read_csv(path)
    written = [plots.training_curves(histories, rd.plots / "training_curves.png")]
    run = open_run_data(cfg, quiet=True)
    cover = np.asarray(run.cache.masks).reshape(len(run.samples), -1).mean(1)
    picks = np.argsort(np.abs(cover - 0.4))[:6]
    predicted = chained_masks(cfg, run, load_chain(cfg, run.adapter.classes), picks)
    written.append(plots.overlays(
        [np.asarray(run.cache.images[i]) for i in picks],
        [np.asarray(run.cache.masks[i])[..., 0] for i in picks],
        [mask[..., 0] for mask in predicted],
        [run.samples[i].id[:28] for i in picks],
        rd.plots / "oof_overlays.png",
    ))
    return written


def demo_metrics(cfg: Config, submission: Path, scenes: SceneReport, minutes: float) -> dict:
    """Everything the demo reports, as saved in the run's metrics file."""
    rd = RunDir.of(cfg)
    folds = []
    for tag in model_tags(cfg):
        for k in range(cfg.train.folds):
            done = rd.fold(tag, k).read_done()
            folds.append({"model": tag, "fold": k, "val_dice": done["best"], "epochs": done["epochs"]})
    post = rd.read_postprocess()
    return {
        "folds": folds,
        "postprocess": post["classes"],
        "test_scenes_macro_percent": scenes.macro,
        "test_scenes_pooled_percent": scenes.pooled,
        "test_scene_jaccard_macro": scenes.macro["jaccard"] / 100,
        "submission": str(submission),
        "wall_minutes": minutes,
    }


def print_summary(metrics: dict, scenes: SceneReport, plot_paths: list[Path]) -> None:
    """The demo's closing table: per-fold validation Dice, OOF Jaccard, test-scene metrics, timing."""
    print("\n=== segkit demo summary ===")
    print(pd.DataFrame(metrics["folds"]).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for c in metrics["postprocess"]:
        print(f"OOF Jaccard ({c['name']}, pooled): {c['oof_score_default']:.4f} at 0.5 -> {c['oof_score_tuned']:.4f} "
              f"with threshold {c['threshold']:.2f}, min_area {c['min_area']}")
    print("\nTest scenes (official 38-Cloud metrics, %):")
    print(scenes.summary())
    jaccard, minutes = metrics["test_scene_jaccard_macro"], metrics["wall_minutes"]
    print(f"\nsubmission: {metrics['submission']}")
    print(f"plots: {', '.join(str(p) for p in plot_paths + list(scenes.previews))}")
    ok_j = "meets" if jaccard >= JACCARD_TARGET else "MISSES"
    ok_t = "meets" if minutes <= MINUTES_TARGET else "MISSES"
    print(f"test-scene Jaccard (macro): {jaccard:.4f}  ({ok_j} the {JACCARD_TARGET:.2f} target)")
    print(f"wall time: {minutes:.1f} min  ({ok_t} the {MINUTES_TARGET:.0f}-minute target)")
