"""Held-out TGS metric per decoder at the same time budget, on real TGS Salt images: which decoder to pick.

bench/real_tgs.py's split (a fixed, coverage-stratified quarter of ../shared/fixtures/tgs held out, seed 2018) and
its segkit run (the built-in `tgs` recipe through segkit.Run, 96 px, 2 folds, the same fold split for every
decoder), once per decoder, each with `train.time_budget` = `--time-budget` seconds (the recipe's 40 epochs stay
the cap; the budget plans the epochs from the first one, so a slower decoder trains fewer). Per decoder it prints
the model's parameters and forward GFLOPs at the training size, the epochs each fold trained, the seconds of the
whole fit (training, OOF predictions, tuning; the training loop's own seconds beside them), and the held-out TGS
metric at 101x101 of its hflip-TTA ensemble at threshold 0.5 and of the submission it writes with its
cross-validated post-processing chain (what `segkit predict` submits); then a markdown table for the README.

CPU-sized decoders: on the plain encoder of bench/real_tgs.py's U-Net (depth 4, base 8), with their decoder
widths scaled down to it (FPN 64/32 instead of 256/128, DeepLabV3+ 64/64/16 instead of 256/256/48; U-Net++ keeps
the encoder's widths, its default); SegFormer on a random-weight MiT-B0 with 64 projection channels (256 in the
paper); `unet_resnet18` (not in the default list) a U-Net on a random-weight ResNet18. Random weights everywhere:
nothing is downloaded.

    nice -n 5 .venv/bin/python bench/decoders_tgs.py [--limit 0] [--time-budget 180] [--image-size 96]
        [--decoders unet fpn unet_plus_plus deeplabv3_plus segformer] [--set train.key=value ...] [--workdir DIR]

The full run (all 3,001 images, 5 decoders × 180 s) takes about 20 minutes on 2 quiet cores. `--time-budget 0`
trains `--epochs` epochs per fold instead (equal epochs, seconds reported). Wall-clock budgets follow the
machine's load: run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import real_tgs  # noqa: E402  (bench/real_tgs.py: the split, the segkit run and its scoring)

PLAIN = {"backbone": "plain", "depth": 4, "base_filters": 8}  # real_tgs's U-Net encoder (--depth, --base)
DECODERS = {  # key: (label, spec; None = the recipe's U-Net at --depth / --base, as real_tgs trains it)
    "unet": ("U-Net", None),
    "fpn": ("FPN", {"name": "fpn", **PLAIN, "pyramid_filters": 64, "segmentation_filters": 32}),
    "unet_plus_plus": ("U-Net++", {"name": "unet_plus_plus", **PLAIN}),
    "deeplabv3_plus": ("DeepLabV3+", {"name": "deeplabv3_plus", **PLAIN, "aspp_filters": 64,
                                      "decoder_filters": 64, "low_level_filters": 16}),
    "segformer": ("SegFormer (MiT-B0)", {"name": "segformer", "backbone": "mit_b0", "projection_filters": 64}),
    "unet_resnet18": ("U-Net (ResNet18)", {"name": "encoder_unet", "backbone": "resnet18"}),
}
DEFAULT = ["unet", "fpn", "unet_plus_plus", "deeplabv3_plus", "segformer"]


@dataclass
class Result:
    """One decoder's row."""

    label: str
    params: int
    gflops: float
    epochs: list[int]  # per fold
    fit_s: float
    loop_s: float | None  # the budgeted training loop's seconds (None without a budget)
    at_half: float
    submitted: float


def decoder_spec(key: str, args) -> dict:
    """The model spec of decoder `key`, tagged with the key (the plain encoder at --depth / --base)."""
    spec = DECODERS[key][1]
    if spec is None:
        return dict(real_tgs.recipe_model(args), tag=key)
    if spec.get("backbone") == "plain":
        spec = {**spec, "depth": args.depth, "base_filters": args.base}
    return {**spec, "tag": key}


def model_cost(spec: dict, size: int) -> tuple[int, float]:
    """(parameters, forward FLOPs per image) of `spec` at size × size × 3 (bench/models.py's count)."""
    import keras

    from models import count_flops
    from segkit.models.registry import build_model

    shape = (size, size, 3)
    model = build_model(spec, shape, 1)
    try:
        return model.count_params(), count_flops(model, shape, keras)[0]
    finally:
        del model
        keras.backend.clear_session()


def epochs_trained(run) -> list[int]:
    """Epochs each fold trained, from its history.csv (one row per epoch)."""
    from segkit.runs import RunDir, model_tags

    rd = RunDir.of(run.config)
    counts = []
    for tag in model_tags(run.config):
        for k in range(run.config.train.folds):
            path = rd.fold(tag, k).history
            if not path.is_file():
                counts.append(0)
                continue
            with open(path, newline="") as fh:
                counts.append(sum(1 for _ in csv.DictReader(fh)))
    return counts


def train_decoder(key: str, split: real_tgs.Holdout, x_ho: np.ndarray, y_ho: np.ndarray, args) -> Result:
    """Fit the recipe with decoder `key` under the budget on the split's training images and score it."""
    spec = decoder_spec(key, args)
    params, flops = model_cost(spec, args.image_size)
    run, fit_s, _ = real_tgs.train_segkit(split.root, args, args.workdir, args.time_budget or None, model=spec,
                                          name=f"decoders_tgs_{key}")
    plan = real_tgs.read_plan(run)
    at_half, submitted = real_tgs.score_segkit(run, x_ho, y_ho, split.held_ids,
                                               args.workdir / f"submission_{key}.csv")
    return Result(DECODERS[key][0], params, flops / 1e9, epochs_trained(run), fit_s,
                  plan["spent_s"] if plan else None, at_half, submitted)


def text_row(r: Result) -> str:
    """One aligned line of the log."""
    loop = f" (loop {r.loop_s:.0f} s)" if r.loop_s is not None else ""
    return (f"{r.label:20s} {r.params / 1e6:6.2f} M {r.gflops:6.2f} GF  epochs/fold {'+'.join(map(str, r.epochs)):7s} "
            f"fit {r.fit_s:5.0f} s{loop}  held-out @0.5 {r.at_half:.4f}  submission {r.submitted:.4f}")


def markdown(results: list[Result], size: int, empty: float) -> list[str]:
    """The README table: one row per decoder, then the all-empty submission."""
    lines = [f"| decoder | params (M) | GFLOPs {size}² | epochs per fold | fit s (training loop s) | "
             "held-out, threshold 0.5 | held-out, written submission |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        loop = f" ({r.loop_s:.0f})" if r.loop_s is not None else ""
        lines.append(f"| {r.label} | {r.params / 1e6:.2f} | {r.gflops:.2f} | {', '.join(map(str, r.epochs))} | "
                     f"{r.fit_s:.0f}{loop} | {r.at_half:.4f} | {r.submitted:.4f} |")
    lines.append(f"| all-empty | | | | | {empty:.4f} | {empty:.4f} |")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decoders", nargs="+", default=DEFAULT, choices=list(DECODERS))
    ap.add_argument("--time-budget", type=float, default=180.0,
                    help="train.time_budget of every decoder's run, seconds (0: --epochs per fold instead)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per fold when --time-budget is 0")
    ap.add_argument("--limit", type=int, default=0, help="keep N images, stratified (0: all 3,001)")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--depth", type=int, default=4, help="the plain encoder's depth (real_tgs's U-Net)")
    ap.add_argument("--base", type=int, default=8, help="the plain encoder's base filters (real_tgs's U-Net)")
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="an extra segkit override key=value (every run)")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "segkit_decoders_tgs")
    ap.add_argument("--verbose", action="store_true", help="segkit's own progress output")
    ap.set_defaults(model="", seg_epochs=0)  # real_tgs.train_segkit's other settings
    return ap.parse_args(argv)


def main() -> None:
    args = parse_args()
    if not (real_tgs.TGS / "train.csv").is_file():
        sys.exit(f"{real_tgs.TGS}: the real TGS fixture is not there (clone the repo with ../shared beside it)")
    from segkit.cli.console import quiet_tensorflow

    quiet_tensorflow()
    from segkit.evaluate import tgs_score

    split = real_tgs.make_holdout(args.limit, args.workdir)
    x_ho, y_ho = real_tgs.read_set(split.adapter, split.held)
    length = f"a {args.time_budget:.0f} s time budget" if args.time_budget else f"{args.epochs} epochs a fold"
    print(f"{real_tgs.describe(split, y_ho)}; {args.folds} folds at {args.image_size} px, {length} per decoder"
          f"{'; ' + ' '.join(args.set) if args.set else ''}; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
          flush=True)
    results, start = [], time.perf_counter()
    for key in args.decoders:
        results.append(train_decoder(key, split, x_ho, y_ho, args))
        print(text_row(results[-1]) + f"  (load {os.getloadavg()[0]:.1f})", flush=True)
    empty = tgs_score(y_ho, np.zeros_like(y_ho))
    print(f"\nall-empty {empty:.4f}; {time.perf_counter() - start:.0f} s in all\n")
    print(f"markdown (held-out quarter, {len(split.held)} images, TGS metric at 101x101, hflip TTA):\n")
    print("\n".join(markdown(results, args.image_size, empty)))


if __name__ == "__main__":
    main()
