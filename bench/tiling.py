"""Tiled inference (`predict.tiling`): 38-Cloud scene Jaccard of patch-by-patch prediction against whole scenes
predicted with overlapping windows, and the memory of the tiled path against the image size.

1. Scene Jaccard. The demo's synthetic 38-Cloud data (segkit.data.synth.cloud38 with the demo config's
   `data.synth`: 64-px patches, scenes of 5-7 x 5-7 patches) and the demo's models trained on it (the demo
   config; `--models unet --epochs 8` for a quicker run). The test set is then predicted twice or more with the
   same checkpoints, TTA and tuned post-processing: patch by patch (`predict.tiling: null`, each 64-px patch
   alone, as the official pipeline does) and as whole scenes (each scene stitched from its patches by row/col,
   predicted with overlapping windows, blended, cut back to the official patch grid). Each submission is scored
   with the official scene metric (segkit.scene_eval: stitch, centred crop to the scene GT, Jaccard; macro over
   scenes and pooled over all pixels).
2. Memory. Peak numpy memory (tracemalloc) and process RSS of `Ensemble.predict` with tiling on raw uint16
   4-band images of growing side (to 6000 x 6000), with the first checkpoint; and of the blend loop alone
   (segkit.tiling.blend_windows), whose working memory is one band of windows.

    .venv/bin/python bench/tiling.py [--out demo_out/bench_tiling] [--models unet] [--epochs 8] [--test-scenes 3]
                                     [--sizes 1500 3000 6000] [--skip-jaccard] [--skip-memory]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

VARIANTS = [  # (label, predict.tiling)
    ("patch by patch (tiling: null)", None),
    ("tile 64, overlap 0.5, gaussian", {"tile": 64, "overlap": 0.5, "blend": "gaussian"}),
    ("tile 128, overlap 0.25, gaussian", {"tile": 128, "overlap": 0.25, "blend": "gaussian"}),
    ("tile 128, overlap 0.5, gaussian", {"tile": 128, "overlap": 0.5, "blend": "gaussian"}),
    ("tile 128, overlap 0.5, uniform", {"tile": 128, "overlap": 0.5, "blend": "uniform"}),
    ("tile 256, overlap 0.25, gaussian", {"tile": 256, "overlap": 0.25, "blend": "gaussian"}),
]


def scene_jaccard(args) -> None:
    import segkit as sk
    from segkit.data.synth import generate
    from segkit.pipeline import predict, train
    from segkit.scene_eval import evaluate_submission

    out = Path(args.out)
    overrides = [f"data.root={out / 'data'}", f"data.cache_dir={out / 'cache'}", f"output.runs_dir={out / 'runs'}",
                 f"output.submissions_dir={out / 'submissions'}", "train.verbose=0",
                 f"data.synth.n_test_scenes={args.test_scenes}"]
    if args.epochs:
        overrides.append(f"train.epochs={args.epochs}")
    cfg = sk.load_config("demo", overrides)
    if args.models:
        cfg = sk.load_config(cfg, models=[m for m in cfg.models if m["tag"] in args.models])
    root = Path(cfg.data.root)
    if not (root / "38-Cloud_test").is_dir():
        generate("cloud38", root, seed=cfg.seed, patch_size=cfg.data.image_size[0], quiet=True, **cfg.data.synth)
    start = time.time()
    train(cfg, quiet=True)
    print(f"trained {', '.join(m['tag'] for m in cfg.models)} × {cfg.train.folds} folds "
          f"({cfg.train.epochs} epochs max) in {time.time() - start:.0f} s; TTA {cfg.predict.tta}")
    adapter = sk.Run(cfg, quiet=True).adapter
    n_patches = len(adapter.test_samples())
    print(f"test set: {args.test_scenes} synthetic scenes, {n_patches} patches of {cfg.data.image_size[0]} px\n")
    print(f"{'prediction':34s} {'Jaccard macro %':>16s} {'Jaccard pooled %':>17s} {'precision %':>12s} "
          f"{'recall %':>9s} {'seconds':>8s}")
    for label, tiling in VARIANTS:
        run_cfg = sk.load_config(cfg, predict={"tiling": tiling}) if tiling else cfg
        t = time.time()
        path = predict(run_cfg, quiet=True, out=out / "submissions" / f"{_slug(label)}.csv")
        seconds = time.time() - t
        rep = evaluate_submission(path, adapter.scene_gt_dir(), patch_size=cfg.data.image_size[0], previews=False,
                                  quiet=True)
        print(f"{label:34s} {rep.macro['jaccard']:16.2f} {rep.pooled['jaccard']:17.2f} "
              f"{rep.pooled['precision']:12.2f} {rep.pooled['recall']:9.2f} {seconds:8.1f}")


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label).strip("_")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def memory(args) -> None:
    from segkit import tiling as tl

    print("\nblend loop alone (segkit.tiling.blend_windows, 384-px windows, overlap 0.25, 1 class; tracemalloc):")
    print(f"{'image':>12s} {'windows':>8s} {'one float32 plane MB':>21s} {'peak traced MB':>15s}")
    for side in args.sizes:
        lay = tl.Layout((side, side), 384, 0.25)
        win = np.full((384, 384, 1), 0.5, np.float32)
        tracemalloc.start()
        for _ in tl.blend_windows(lay, (win for _ in range(lay.n_windows))):
            pass
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"{side:>5d}x{side:<6d} {lay.n_windows:8d} {side * side * 4 / 2**20:21.1f} {peak / 2**20:15.1f}")

    import segkit as sk
    from segkit.models.registry import load_model

    ckpts = sorted(Path(args.out).glob("runs/*/*/fold_0/best.keras"))
    if ckpts:
        model, source = load_model(ckpts[0]), str(ckpts[0])
    else:  # no trained run (--skip-jaccard on a fresh folder): an untrained demo U-Net costs the same
        from segkit.models.registry import build_model

        model, source = build_model({"name": "unet", "depth": 3, "base_filters": 8}, (64, 64, 4), 1,
                                    normalisation=([1 / 65535] * 4, [0.0] * 4)), "untrained demo U-Net"
    tile = args.tile
    ens = sk.Ensemble([model], ["identity"], batch_size=8, tiling={"tile": tile, "overlap": 0.25})
    print(f"\nEnsemble.predict with tiling (tile {tile}, overlap 0.25, identity TTA, {source}) on raw uint16 "
          f"4-band images:")
    print(f"{'image':>12s} {'input MB':>9s} {'output MB':>10s} {'peak traced MB':>15s} {'traced - output MB':>19s} "
          f"{'max RSS MB':>11s} {'seconds':>8s}")
    rng = np.random.default_rng(0)
    for side in args.sizes:
        image = rng.integers(0, 30000, size=(side, side, 4), dtype=np.uint16)
        out_mb = side * side * 4 / 2**20
        t = time.time()
        tracemalloc.start()
        probs = ens.predict(image)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        seconds = time.time() - t
        assert probs.shape == (side, side, 1)
        del probs
        print(f"{side:>5d}x{side:<6d} {image.nbytes / 2**20:9.1f} {out_mb:10.1f} {peak:15.1f} {peak - out_mb:19.1f} "
              f"{_rss_mb():11.0f} {seconds:8.1f}")
        del image
    print("(traced: numpy/Python allocations of the call, the output included, the input excluded (made before); "
          "max RSS: the process's high-water mark so far, TensorFlow included)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="demo_out/bench_tiling")
    ap.add_argument("--models", nargs="*", help="model tags of the demo config to train (default: all)")
    ap.add_argument("--epochs", type=int, help="train.epochs (default: the demo's)")
    ap.add_argument("--test-scenes", type=int, default=3, help="synthetic test scenes (the demo writes 3)")
    ap.add_argument("--sizes", type=int, nargs="*", default=[1500, 3000, 6000])
    ap.add_argument("--tile", type=int, default=256, help="window of the memory measurement")
    ap.add_argument("--skip-jaccard", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--fresh", action="store_true", help="delete --out first")
    args = ap.parse_args()
    if args.fresh:
        shutil.rmtree(args.out, ignore_errors=True)
    if not args.skip_jaccard:
        scene_jaccard(args)
    if not args.skip_memory:
        memory(args)


if __name__ == "__main__":
    main()
