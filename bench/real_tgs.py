"""The default `tgs` recipe, K-fold, on the real TGS Salt training images in ../shared/fixtures/tgs (3,001 of the
4,000, read as-is by the tgs adapter), CPU-sized: a small U-Net and few epochs, optionally on the first N images
of train.csv. Prints the out-of-fold competition metric (mean over images of the precision averaged over IoU
thresholds 0.50-0.95) at the submission size 101x101 — the OOF probabilities resized back from the training size,
as predict does, then plain 0.5 and the tuned post-processing chain — next to the all-empty baseline (an empty
mask for every image: the share of salt-free images) and the wall times. Wall-clock on a shared machine is
indicative only.

    nice -n 10 .venv/bin/python bench/real_tgs.py [--limit 600] [--epochs 3] [--folds 2] [--depth 3] [--base 8]
        [--image-size 128] [--workdir DIR] [--verbose]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TGS = ROOT.parent / "shared" / "fixtures" / "tgs"


def oof_at_submission_size(run) -> dict[str, float]:
    """The OOF metric at 101x101: plain threshold 0.5 and the tuned chain, against the real masks."""
    import cv2

    from segkit.evaluate import tgs_score
    from segkit.oof import load_oof_class
    from segkit.postprocess.chain import apply_chain, load_chain
    from segkit.runs import open_run_data

    data = open_run_data(run.config, quiet=True)
    adapter, samples = data.adapter, data.samples
    oof = load_oof_class(run.config, len(samples), 0)
    chain = load_chain(run.config, adapter.classes)
    truth, plain, tuned = [], [], []
    for i, s in enumerate(samples):
        h, w = adapter.submission_size(s)
        p = cv2.resize(np.asarray(oof.probs[i], np.float32), (w, h), interpolation=cv2.INTER_LINEAR)[..., None]
        g = cv2.resize(np.asarray(oof.gate_probs[i], np.float32), (w, h), interpolation=cv2.INTER_LINEAR)[..., None]
        label = None if oof.label is None else oof.label[i:i + 1]
        truth.append(adapter.read_mask(s)[..., 0])
        plain.append(p[..., 0] > 0.5)
        tuned.append(apply_chain(p, chain, g, label)[..., 0])
    truth_a = np.stack(truth)
    return {"n": len(samples), "empty_share": float(np.mean([not t.any() for t in truth])),
            "all_empty": tgs_score(truth_a, np.zeros_like(truth_a)), "plain": tgs_score(truth_a, np.stack(plain)),
            "tuned": tgs_score(truth_a, np.stack(tuned)), "chain": chain.classes[0].describe()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=600, help="the first N images of train.csv (0: all 3,001)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--depth", type=int, default=3, help="U-Net depth (the recipe's is 5)")
    ap.add_argument("--base", type=int, default=8, help="U-Net base filters (the recipe's is 16)")
    ap.add_argument("--image-size", type=int, default=128, help="training size (the recipe's 128)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "segkit_real_tgs",
                    help="cache and run folders (a finished run is reused, not retrained)")
    ap.add_argument("--verbose", action="store_true", help="segkit's own progress output")
    args = ap.parse_args()
    if not (TGS / "train.csv").is_file():
        sys.exit(f"{TGS}: the real TGS fixture is not there (clone the repo with ../shared beside it)")
    from segkit.cli.console import quiet_tensorflow

    quiet_tensorflow()
    import segkit as sk

    name = f"tgs_{args.limit or 'all'}_d{args.depth}b{args.base}_{args.image_size}_{args.folds}f{args.epochs}e"
    settings = {
        "name": name,
        "data": {"root": str(TGS), "image_size": [args.image_size] * 2, "cache_dir": str(args.workdir / "cache"),
                 "max_train_samples": args.limit or None},
        "models": [{"name": "unet", "tag": "unet", "depth": args.depth, "base_filters": args.base}],
        "train": {"folds": args.folds, "epochs": args.epochs, "batch_size": args.batch, "verbose": 0},
        "output": {"runs_dir": str(args.workdir / "runs"), "submissions_dir": str(args.workdir / "submissions")},
    }
    run = sk.Run("tgs", quiet=not args.verbose, **settings)
    cfg = run.config
    print(f"real TGS: {TGS} ({args.limit or 'all'} images), recipe tgs: loss {cfg.train.loss}, "
          f"U-Net depth {args.depth} base {args.base} at {args.image_size}x{args.image_size}, "
          f"{args.folds} folds x {args.epochs} epochs; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
          flush=True)
    start = time.perf_counter()
    run.fit()  # trains every fold, then tunes the chain on the OOF predictions
    fit_s = time.perf_counter() - start
    t = time.perf_counter()
    scores = oof_at_submission_size(run)
    score_s = time.perf_counter() - t
    pp = run.postprocess
    print(f"run folder {run.dir}")
    print(f"images {scores['n']}, salt-free {scores['empty_share']:.1%}")
    print(f"metric: TGS mean over images of the precision averaged over IoU 0.50-0.95, out of fold, at 101x101")
    print(f"  all-empty baseline          {scores['all_empty']:.4f}")
    print(f"  OOF, threshold 0.5          {scores['plain']:.4f}")
    print(f"  OOF, tuned chain            {scores['tuned']:.4f}   ({scores['chain']})")
    print(f"  (tune's own figures at {args.image_size}x{args.image_size}: default {pp['oof_score_default']:.4f}, "
          f"tuned {pp['oof_score_tuned']:.4f})")
    print(f"wall: train + tune {fit_s:.0f} s, scoring at 101x101 {score_s:.1f} s, total {fit_s + score_s:.0f} s")


if __name__ == "__main__":
    main()
