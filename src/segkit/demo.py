"""The demo: synthetic 38-Cloud data in the real file format, end to end to a validated, scored submission."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from segkit.config import Config, load_config

JACCARD_TARGET = 0.80
MINUTES_TARGET = 10.0


def run_demo(config: str = "demo", out: str | Path = "demo_out", overrides: list[str] | tuple[str, ...] = (),
             quiet: bool = False) -> int:
    """synth → prepare → train K folds × models → tune on OOF → predict with TTA → submission.csv → evaluate;
    prints a summary table and writes curves and overlays. Returns 0 when the submission validates."""
    from segkit.data.synth import generate
    from segkit.predict import predict
    from segkit.train import train

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
    plots = write_plots(cfg)
    minutes = (time.time() - start) / 60
    print_summary(cfg, submission, scenes, plots, minutes)
    return 0


def evaluate_scenes(cfg: Config, submission: Path):
    """Score the submission on the test scenes with the official 38-Cloud scene metrics."""
    from segkit.data.competitions.base import make_adapter
    from segkit.scene_eval import evaluate_submission

    adapter = make_adapter(cfg.data.competition, cfg.data.root, cfg.data.options)
    return evaluate_submission(submission, adapter.scene_gt_dir(), out_dir=cfg.run_dir / "evaluation",
                               patch_size=cfg.data.image_size[0])


def write_plots(cfg: Config) -> list[Path]:
    """Training curves of every fold and an overlay of a few out-of-fold predictions."""
    from segkit import plots
    from segkit.postprocess import load_oof, load_postprocess
    from segkit.train import fold_dir, model_tags, open_run_data

    histories = {}
    for tag in model_tags(cfg):
        for k in range(cfg.train.folds):
            path = fold_dir(cfg, tag, k) / "history.csv"
            if path.is_file():
                histories[f"{tag} fold {k}"] = pd.read_csv(path)
    written = [plots.training_curves(histories, cfg.run_dir / "plots" / "training_curves.png")]
    run = open_run_data(cfg, quiet=True)
    oof = load_oof(cfg, len(run.samples))
    thresholds, areas = load_postprocess(cfg)
    from segkit.postprocess import apply

    cover = np.asarray(run.cache.masks).reshape(len(run.samples), -1).mean(1)
    picks = np.argsort(np.abs(cover - 0.4))[:6]
    written.append(plots.overlays(
        [np.asarray(run.cache.images[i]) for i in picks],
        [np.asarray(run.cache.masks[i])[..., 0] for i in picks],
        [apply(oof[i], thresholds, areas)[..., 0] for i in picks],
        [run.samples[i].id[:28] for i in picks],
        cfg.run_dir / "plots" / "oof_overlays.png",
    ))
    return written


def print_summary(cfg: Config, submission: Path, scenes, plots: list[Path], minutes: float) -> None:
    """The demo's closing table: per-fold validation Dice, OOF Jaccard, test-scene metrics, timing."""
    from segkit.train import fold_dir, model_tags

    print("\n=== segkit demo summary ===")
    rows = []
    for tag in model_tags(cfg):
        for k in range(cfg.train.folds):
            done = json.loads((fold_dir(cfg, tag, k) / "done.json").read_text())
            rows.append({"model": tag, "fold": k, "val_dice": done["best"], "epochs": done["epochs"]})
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    post = json.loads((cfg.run_dir / "postprocess.json").read_text())
    for c in post["classes"]:
        print(f"OOF Jaccard ({c['name']}, pooled): {c['oof_score_default']:.4f} at 0.5 -> {c['oof_score_tuned']:.4f} "
              f"with threshold {c['threshold']:.2f}, min_area {c['min_area']}")
    print("\nTest scenes (official 38-Cloud metrics, %):")
    print(scenes.summary())
    jaccard = scenes.macro["jaccard"] / 100 if scenes.macro["jaccard"] > 1 else scenes.macro["jaccard"]
    print(f"\nsubmission: {submission}")
    print(f"plots: {', '.join(str(p) for p in plots + list(scenes.previews))}")
    ok_j = "meets" if jaccard >= JACCARD_TARGET else "MISSES"
    ok_t = "meets" if minutes <= MINUTES_TARGET else "MISSES"
    print(f"test-scene Jaccard (macro): {jaccard:.4f}  ({ok_j} the {JACCARD_TARGET:.2f} target)")
    print(f"wall time: {minutes:.1f} min  ({ok_t} the {MINUTES_TARGET:.0f}-minute target)")
