"""Run commands: train, tune, predict, pseudo, report and the end-to-end demo."""
from __future__ import annotations

import argparse

from segkit.cli import add_config_args
from segkit.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the run commands to the `segkit` parser."""
    p = sub.add_parser("train", help="K-fold training (resumes an interrupted run), then OOF tuning")
    add_config_args(p)
    p.add_argument("--restart", action="store_true", help="delete the run folder first and train from scratch")
    p.add_argument("--restart-fold", type=int, metavar="K",
                   help="delete fold K of every model first and train it again")
    p.set_defaults(func=_train)

    p = sub.add_parser("tune", help="re-tune post-processing on the run's out-of-fold predictions")
    add_config_args(p)
    p.set_defaults(func=_tune)

    p = sub.add_parser("predict", help="fold × model × TTA ensemble over the test set -> submission.csv")
    add_config_args(p)
    p.add_argument("--out", help="submission path (default submissions/<run>/submission.csv)")
    p.set_defaults(func=_predict)

    p = sub.add_parser("pseudo", help="pseudo-label round: the ensemble's confident test images and masks -> "
                       "runs/<name>/pseudo/round_<r> (then train a new run with train.pseudo=<name>/<r>)")
    add_config_args(p)
    p.set_defaults(func=_pseudo)

    p = sub.add_parser("report", help="ablation report of a trained run: OOF score per fold, model, ensemble and "
                       "post-processing step -> one self-contained HTML page in the run folder, and the same table")
    add_config_args(p)
    p.add_argument("--worst", type=int, default=8, metavar="N",
                   help="how many of the worst OOF images the gallery shows (default 8; 0: none)")
    p.set_defaults(func=_report)

    p = sub.add_parser("demo", help="synthetic 38-Cloud end to end: synth, train, tune, predict, evaluate")
    p.add_argument("--out", default="demo_out", help="folder for data, cache and runs (default demo_out)")
    p.add_argument("--config", default="demo", help="config to run (default: the built-in demo)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    p.set_defaults(func=_demo)


def _load(args):
    from segkit.config import load_config  # lazy: `segkit --help` stays numpy-free

    return load_config(args.config, args.overrides)


def _load_trained(args, stage: str):
    """The config of a stage after training: as `_load`, with the run's saved `data.root` (where it was trained)
    unless the command line gives one or the saved folder is gone while the given one exists — so
    `segkit report tgs` after `segkit train tgs data.root=...` finds the data as `sk.Run.open` does."""
    from pathlib import Path

    from segkit.runs import RunDir  # lazy: `segkit --help` stays numpy-free

    cfg = _load(args)
    if any(o.partition("=")[0].strip() in ("data", "data.root") for o in args.overrides):
        return cfg
    saved = RunDir.of(cfg).read_config()
    if saved is None or saved.data.root == cfg.data.root:
        return cfg
    if Path(saved.data.root).is_dir() or not Path(cfg.data.root).is_dir():
        if not args.quiet:
            print(f"[{stage}] data.root: {saved.data.root} (as the run was trained; give data.root=... to change "
                  "it)", flush=True)
        cfg.data.root = saved.data.root
    return cfg


def _train(args) -> int:
    cfg = _load(args)  # config errors come before the slow TensorFlow import
    from segkit.pipeline import train  # lazy: `segkit --help` stays numpy-free

    run_dir = train(cfg, quiet=args.quiet, restart=args.restart, restart_fold=args.restart_fold)
    print(f"run folder: {run_dir}")
    return 0


def _tune(args) -> int:
    cfg = _load_trained(args, "tune")
    from segkit.pipeline import tune  # lazy: `segkit --help` stays numpy-free

    tune(cfg, quiet=args.quiet)
    return 0


def _predict(args) -> int:
    cfg = _load_trained(args, "predict")
    from segkit.pipeline import predict  # lazy: `segkit --help` stays numpy-free

    path = predict(cfg, quiet=args.quiet, out=args.out)
    print(f"submission: {path}")
    return 0


def _pseudo(args) -> int:
    cfg = _load_trained(args, "pseudo")
    from segkit.pipeline import pseudo  # lazy: `segkit --help` stays numpy-free

    pseudo(cfg, quiet=args.quiet)
    return 0


def _report(args) -> int:
    if args.worst < 0:
        raise ConfigError(f"--worst: must be ≥ 0, got {args.worst}")
    cfg = _load_trained(args, "report")
    from segkit.pipeline import report  # lazy: `segkit --help` stays numpy-free

    path = report(cfg, quiet=args.quiet, worst=args.worst)
    print(f"report: {path}")
    return 0


def _demo(args) -> int:
    from segkit.demo import run_demo  # lazy: demo imports pandas

    return run_demo(args.config, args.out, args.overrides, quiet=args.quiet)
