"""Data commands: `segkit synth`, `segkit prepare`, `segkit evaluate`."""
from __future__ import annotations

import argparse
import inspect
from pathlib import Path

from segkit.cli import add_config_args
from segkit.data.synth import SYNTH_MODULES
from segkit.errors import ConfigError, DataError

EVALUATORS = ("cloud38", "cloud95")  # both share 38-Cloud's test set and scene evaluation


def register(sub: argparse._SubParsersAction) -> None:
    """Add the data commands to the `segkit` parser."""
    p = sub.add_parser("synth", help="write a synthetic dataset in a competition's real file layout")
    p.add_argument("name", choices=sorted(SYNTH_MODULES), help="which competition's format")
    p.add_argument("--out", required=True, type=Path, help="folder to write (created; replaced if it is an older synthetic dataset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patch-size", type=int, default=None, help="patch/image side in pixels (format default when omitted)")
    p.add_argument("--n-train", type=int, default=None, help="training images (airbus, clouds, severstal, tgs, siim; format default when omitted)")
    p.add_argument("--n-test", type=int, default=None, help="test images (airbus, clouds, severstal, tgs, siim)")
    p.add_argument("--empty-fraction", type=float, default=None,
                   help="share of training images with an empty mask (airbus: ship-free; clouds: no label at all; "
                        "severstal: defect-free; tgs: salt-free; siim: pneumothorax-free)")
    p.add_argument("--faint", type=float, default=None,
                   help="share of objects drawn small and faint (airbus ships, clouds regions)")
    p.add_argument("--clutter", type=float, default=None,
                   help="share of images with sea clutter: whitecaps, a cloud veil or a coast with buildings (airbus)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("prepare", help="decode the training and test images once into the memory-mapped cache")
    add_config_args(p)
    p.add_argument("--split", choices=("train", "test", "both"), default="both")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("evaluate", help="38-Cloud scene evaluation of a submission (official metrics, macro and pooled)")
    p.add_argument("competition", choices=EVALUATORS)
    p.add_argument("--submission", required=True, type=Path, help="submission CSV (id,EncodedPixels)")
    p.add_argument("--gt-dir", required=True, type=Path, help="folder of edited_corrected_gts_<scene>.TIF")
    p.add_argument("--out", type=Path, default=None, help="write scene_metrics.csv and previews/ here")
    p.add_argument("--patches-csv", type=Path, default=None,
                   help="test patch list (default: test_patches_38-Cloud.csv beside the GT folder)")
    p.add_argument("--patch-size", type=int, default=None, help="patch side (default: read from the test_red/ folder beside the GT folder; required without it)")
    p.add_argument("--no-previews", action="store_true", help="skip the PNG previews")
    p.set_defaults(func=cmd_evaluate)


def cmd_synth(args: argparse.Namespace) -> int:
    """segkit synth NAME --out DIR --seed N [--patch-size P] [--n-train N] [--n-test N] [--empty-fraction F]
    [--faint F] [--clutter F]."""
    import importlib

    module = importlib.import_module(f"segkit.data.synth.{SYNTH_MODULES[args.name]}")
    options = {}
    if args.patch_size is not None:
        params = inspect.signature(module.generate).parameters
        key = next((k for k in ("patch_size", "image_size", "size") if k in params), None)
        if key is None:
            raise ConfigError(f"synth {args.name}: this format takes no --patch-size")
        if args.patch_size < 8:
            raise ConfigError(f"--patch-size: expected at least 8, got {args.patch_size}")
        options[key] = args.patch_size
    params = inspect.signature(module.generate).parameters
    # option -> the generate() keywords it may be called (the first one the format has)
    for option, keys in (("n_train", ("n_train",)), ("n_test", ("n_test",)),
                         ("empty_fraction", ("empty_fraction", "ship_free")), ("faint", ("faint",)),
                         ("clutter", ("clutter",))):
        value = getattr(args, option, None)
        if value is None:
            continue
        key = next((k for k in keys if k in params), None)
        if key is None:
            raise ConfigError(f"synth {args.name}: this format takes no --{option.replace('_', '-')}")
        options[key] = value
    root = module.generate(Path(args.out), seed=args.seed, quiet=bool(getattr(args, "quiet", False)), **options)
    print(f"synthetic {args.name} data written to {root}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """segkit prepare CONFIG [k=v ...]: build (or reuse) the train and test caches at data.image_size."""
    from segkit.config import load_config  # lazy: `segkit --help` stays numpy-free
    from segkit.data.cache import prepare  # lazy: `segkit --help` stays numpy-free

    cfg = load_config(args.config, args.overrides)
    quiet = bool(getattr(args, "quiet", False))
    adapter = cfg.adapter()
    h, w = cfg.data.image_size
    jobs = []
    if args.split in ("train", "both"):
        samples = adapter.train_samples()
        if cfg.data.max_train_samples:
            samples = samples[: cfg.data.max_train_samples]
        jobs.append(("train", samples, True))
    if args.split in ("test", "both"):
        jobs.append(("test", adapter.test_samples(), False))
    for split, samples, masks in jobs:
        if not samples:
            raise DataError(f"{cfg.data.root}: no {split} samples found for {cfg.data.competition}")
        cache = prepare(adapter, samples, (h, w), cfg.data.cache_dir, name=f"{cfg.data.competition}-{split}-{h}x{w}",
                        with_masks=masks, quiet=quiet)
        print(f"{split}: {len(cache)} items, images {cache.images.shape} {cache.images.dtype} -> {cache.path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """segkit evaluate cloud38 --submission CSV --gt-dir DIR [--out DIR]."""
    from segkit.scene_eval import evaluate_submission  # lazy: scene_eval imports pandas

    report = evaluate_submission(args.submission, args.gt_dir, out_dir=args.out, patches_csv=args.patches_csv,
                                 patch_size=args.patch_size, previews=not args.no_previews,
                                 quiet=bool(getattr(args, "quiet", False)))
    print("38-Cloud scene evaluation (%), macro = mean over scenes, pooled = over all pixels:")
    print(report.summary())
    if report.csv_path:
        print(f"metrics: {report.csv_path}")
    if report.previews:
        print(f"previews: {report.previews[0].parent} ({len(report.previews)} PNGs)")
    return 0
