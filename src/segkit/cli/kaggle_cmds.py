"""Kaggle commands: `segkit kernel build|push|status|output|push-folds` and `segkit submit`, argument parsing
and printing over segkit.kaggle.workflows."""
from __future__ import annotations

import argparse

from segkit.errors import KaggleError


def register(sub: argparse._SubParsersAction) -> None:
    """Add `kernel ...` and `submit` to the `segkit` parser."""
    kernel = sub.add_parser("kernel", help="build, push, watch and fetch Kaggle kernels")
    ksub = kernel.add_subparsers(dest="kernel_command", metavar="ACTION")
    kernel.set_defaults(func=lambda args: kernel.print_help() or 2)
    for add in (_add_build, _add_push, _add_status, _add_output, _add_push_folds, _add_wheels):
        add(ksub)
    _add_submit(sub)
    _add_submissions(sub)


def _add_build(ksub: argparse._SubParsersAction) -> None:
    """`segkit kernel build`."""
    p = ksub.add_parser("build", help="a self-contained kernel script (segkit + resolved config) and its metadata")
    p.add_argument("name", help="kernel slug (at least 5 characters); written to build/kernels/NAME/")
    _config_with_overrides(p)
    p.add_argument("--kind", choices=("train", "infer"), default="train")
    p.add_argument("--fold", type=int, help="train only this fold (default: every fold)")
    p.add_argument("--owner", help="Kaggle user name owning the kernel (default kaggle.owner or credentials)")
    p.add_argument("--kernel-source", action="append", default=[], metavar="OWNER/SLUG",
                   help="extra kernel source (e.g. a training kernel for --kind infer); repeatable")
    p.add_argument("--out", default="build/kernels", help="parent folder of the built kernel")
    p.set_defaults(func=_build)


def _add_push(ksub: argparse._SubParsersAction) -> None:
    """`segkit kernel push`."""
    p = ksub.add_parser("push", help="push a built kernel folder (a new version runs on Kaggle)")
    p.add_argument("folder", help="kernel folder holding kernel-metadata.json")
    _client_config_arg(p)
    p.set_defaults(func=_push)


def _add_status(ksub: argparse._SubParsersAction) -> None:
    """`segkit kernel status`."""
    p = ksub.add_parser("status", help="a kernel's latest run state; --wait polls until it ends")
    p.add_argument("kernel", metavar="OWNER/SLUG")
    p.add_argument("--wait", action="store_true", help="poll (with growing intervals) until it finishes")
    _client_config_arg(p)
    p.set_defaults(func=_status)


def _add_output(ksub: argparse._SubParsersAction) -> None:
    """`segkit kernel output`."""
    p = ksub.add_parser("output", help="download a kernel's output files and log")
    p.add_argument("kernel", metavar="OWNER/SLUG")
    p.add_argument("--out", required=True, help="folder to download into")
    p.add_argument("--pattern", help="only files whose name matches this regular expression")
    _client_config_arg(p)
    p.set_defaults(func=_output)


def _add_push_folds(ksub: argparse._SubParsersAction) -> None:
    """`segkit kernel push-folds`."""
    p = ksub.add_parser("push-folds", help="one training kernel per fold (run in parallel on Kaggle), then an "
                                           "inference kernel taking them as sources")
    _config_with_overrides(p)
    p.add_argument("--folds", help="folds to push, e.g. 0-4 or 0,2 (default: all)")
    p.add_argument("--owner", help="Kaggle user name owning the kernels")
    p.add_argument("--out", default="build/kernels", help="parent folder of the built kernels")
    p.add_argument("--no-infer", action="store_true", help="do not build/push the inference kernel")
    p.add_argument("--dry-run", action="store_true", help="build and validate only; push nothing")
    p.add_argument("--no-wait", action="store_true",
                   help="push the fold kernels and return; rerun later to wait and push the inference kernel")
    p.add_argument("--again", action="store_true",
                   help="push new versions even of kernels an earlier run of this command pushed already")
    p.set_defaults(func=_push_folds)


def _add_wheels(ksub: argparse._SubParsersAction) -> None:
    """`segkit kernel wheels`."""
    p = ksub.add_parser("wheels", help="download the wheels of segkit's dependencies missing from a Kaggle image, "
                                       "ready to upload as a dataset the kernels install from")
    p.add_argument("--out", required=True, help="folder to download the wheels into (upload it as a dataset)")
    p.add_argument("--image", metavar="FILE",
                   help="the Kaggle image's package list (`pip list --format=freeze` run in a Kaggle notebook); "
                        "without it every dependency is downloaded")
    p.add_argument("--python-version", default="3.11", help="the Kaggle image's Python (default 3.11)")
    p.add_argument("--platform", action="append", default=None,
                   help="wheel platform tag(s) of the Kaggle image (default manylinux x86_64); repeatable")
    p.add_argument("--pip-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `pip download` (e.g. --pip-arg=--index-url=URL); repeatable")
    p.set_defaults(func=_wheels)


def _add_submit(sub: argparse._SubParsersAction) -> None:
    """`segkit submit`."""
    p = sub.add_parser("submit", help="validate a submission, upload it, wait for its score (a rerun resumes)")
    p.add_argument("submission", nargs="?", help="submission CSV (not for code competitions)")
    p.add_argument("--competition", required=False, help="Kaggle competition slug (default kaggle.competition)")
    p.add_argument("-m", "--message", help="submission description (required to submit)")
    p.add_argument("--format", help="segkit adapter whose rules the file must follow (default: from the slug "
                                    "or the config)")
    p.add_argument("--sample", help="the competition's sample_submission.csv, to check ids and their order "
                                    "(default: fetched through the API and cached)")
    p.add_argument("--no-sample", action="store_true", help="do not check ids against a sample submission")
    p.add_argument("--again", action="store_true",
                   help="submit even when an earlier run already submitted this file / kernel version")
    p.add_argument("--wait", type=int, metavar="REF", dest="wait_ref",
                   help="only wait for the score of submission REF (see segkit submissions)")
    p.add_argument("--config", help="run config: kaggle.competition, code_competition, kernel, retries")
    p.add_argument("--kernel", metavar="OWNER/SLUG", help="code competition: submit this kernel's output")
    p.add_argument("--version", type=int, help="code competition: kernel version (default: latest)")
    p.add_argument("--no-wait", action="store_true", help="do not wait for the score")
    p.set_defaults(func=_submit)


def _add_submissions(sub: argparse._SubParsersAction) -> None:
    """`segkit submissions`."""
    p = sub.add_parser("submissions", help="a competition's recent submissions with status and scores")
    p.add_argument("--competition", help="Kaggle competition slug (default kaggle.competition)")
    p.add_argument("--config", help="run config: kaggle.competition, retries")
    p.add_argument("-n", type=int, default=20, help="how many (default 20)")
    p.set_defaults(func=_submissions)


def _config_with_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, nargs="+", metavar="CFG",
                   help="run config (file or built-in name), optionally followed by key.sub=value overrides")


def _client_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="run config whose kaggle: section sets retries, backoff and polling")


def _load(config: str | None, overrides=()):
    from segkit.kaggle.workflows import as_config  # lazy: `segkit --help` stays numpy-free

    return as_config(config, list(overrides)) if config else None


def _say(args):
    """Progress lines for the workflows; --quiet drops the state changes of long waits."""
    return dict(progress=lambda line: print(line, flush=True), quiet=bool(getattr(args, "quiet", False)))


def _build(args) -> int:
    from segkit.kaggle import workflows  # lazy: `segkit --help` stays numpy-free

    built = workflows.build_kernel(_load(args.config[0], args.config[1:]), args.name, kind=args.kind, fold=args.fold,
                                   out_dir=args.out, owner=args.owner, kernel_sources=args.kernel_source)
    print("\n".join(workflows.describe(built)))
    return 0


def _push(args) -> int:
    from segkit.kaggle import workflows  # lazy: `segkit --help` stays numpy-free

    result = workflows.push_kernel(args.folder, cfg=_load(args.config))
    print(f"pushed {result.ref} version {result.version}: {result.url}")
    return 0


def _status(args) -> int:
    from segkit.kaggle import workflows  # lazy: `segkit --help` stays numpy-free

    cfg = _load(args.config)
    if args.wait:
        st = workflows.wait_for_kernel(args.kernel, cfg=cfg, **_say(args))
    else:
        st = workflows.kernel_status(args.kernel, cfg=cfg)
    print(f"{args.kernel}: {st.state}")
    if st.state in ("ERROR", "CANCEL_REQUESTED", "CANCEL_ACKNOWLEDGED"):
        raise KaggleError(f"kernel {args.kernel} ended with {st.state}: {st.failure_message or 'no message'}")
    return 0


def _output(args) -> int:
    from segkit.kaggle import workflows  # lazy: `segkit --help` stays numpy-free

    files = workflows.kernel_output(args.kernel, args.out, pattern=args.pattern, cfg=_load(args.config))
    for f in files:
        print(f)
    print(f"{len(files)} files in {args.out}")
    return 0


def _push_folds(args) -> int:
    from segkit.kaggle import workflows  # lazy: `segkit --help` stays numpy-free

    result = workflows.push_folds(_load(args.config[0], args.config[1:]), folds=args.folds, owner=args.owner,
                                  out_dir=args.out, infer=not args.no_infer, dry_run=args.dry_run,
                                  wait=not args.no_wait, again=args.again, **_say(args))
    if result.infer_pending and not args.dry_run and not result.missing_folds:
        print("rerun the same command to wait for the fold kernels and push the inference kernel")
    return 0


def _submit(args) -> int:
    from segkit.kaggle import workflows  # lazy: `segkit --help` stays numpy-free

    cfg = _load(args.config)
    if args.wait_ref is not None:
        competition = _competition(args, cfg)
        _print_score(workflows.wait_for_submission(competition, args.wait_ref, cfg=cfg, **_say(args)))
        return 0
    if not args.message:
        raise KaggleError("submit: give a description with -m MESSAGE")
    done = workflows.submit(cfg, args.submission, message=args.message,
                            competition=args.competition, fmt=args.format, sample=args.sample,
                            use_sample=not args.no_sample, kernel=args.kernel, version=args.version,
                            wait=not args.no_wait, again=args.again, **_say(args))
    if done.scored is not None:
        _print_score(done.scored)
    return 0


def _competition(args, cfg) -> str:
    from segkit.kaggle.config import kaggle_config  # lazy: `segkit --help` stays numpy-free

    competition = args.competition or (kaggle_config(cfg).competition if cfg is not None else "")
    if not competition:
        raise KaggleError(f"{args.command}: no competition; pass --competition SLUG or set kaggle.competition")
    return competition


def _print_score(sub) -> None:
    print(f"score: public {sub.public_score}"
          + (f", private {sub.private_score}" if sub.private_score not in (None, "") else ""))


def _submissions(args) -> int:
    from segkit.kaggle import workflows  # lazy: `segkit --help` stays numpy-free

    cfg = _load(args.config)
    competition = _competition(args, cfg)
    subs = workflows.submissions(competition, cfg=cfg)[:max(args.n, 0)]
    if not subs:
        print(f"no submissions to {competition}")
        return 0
    rows = [("ref", "status", "public", "private", "date", "description")]
    rows += [(str(s.ref), s.status, s.public_score or "", s.private_score or "", s.date or "",
              (s.description or "") + (f"  [{s.error_description}]" if s.error_description else "")) for s in subs]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[5])
    return 0


def _wheels(args) -> int:
    from segkit.kaggle import deps  # lazy: `segkit --help` stays numpy-free

    got = deps.download_wheels(args.out, image=args.image, python_version=args.python_version,
                               platforms=args.platform, pip_args=args.pip_arg,
                               progress=lambda line: print(line, flush=True))
    print(f"{len(got)} wheels in {args.out}: upload the folder as a Kaggle dataset (kaggle datasets create -p "
          f"{args.out}) and add it to kaggle.dataset_sources; the kernels install from it without internet")
    return 0
