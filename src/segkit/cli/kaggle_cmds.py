"""Kaggle commands: `segkit kernel build|push|status|output|push-folds` and `segkit submit`."""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from segkit.errors import KaggleError, SubmissionError


def register(sub: argparse._SubParsersAction) -> None:
    """Add `kernel ...` and `submit` to the `segkit` parser."""
    kernel = sub.add_parser("kernel", help="build, push, watch and fetch Kaggle kernels")
    ksub = kernel.add_subparsers(dest="kernel_command", metavar="ACTION")
    kernel.set_defaults(func=lambda args: kernel.print_help() or 2)

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

    p = ksub.add_parser("push", help="push a built kernel folder (a new version runs on Kaggle)")
    p.add_argument("folder", help="kernel folder holding kernel-metadata.json")
    _client_config_arg(p)
    p.set_defaults(func=_push)

    p = ksub.add_parser("status", help="a kernel's latest run state; --wait polls until it ends")
    p.add_argument("kernel", metavar="OWNER/SLUG")
    p.add_argument("--wait", action="store_true", help="poll (with growing intervals) until it finishes")
    _client_config_arg(p)
    p.set_defaults(func=_status)

    p = ksub.add_parser("output", help="download a kernel's output files and log")
    p.add_argument("kernel", metavar="OWNER/SLUG")
    p.add_argument("--out", required=True, help="folder to download into")
    p.add_argument("--pattern", help="only files whose name matches this regular expression")
    _client_config_arg(p)
    p.set_defaults(func=_output)

    p = ksub.add_parser("push-folds", help="one training kernel per fold (run in parallel on Kaggle), then an "
                                           "inference kernel taking them as sources")
    _config_with_overrides(p)
    p.add_argument("--folds", help="folds to push, e.g. 0-4 or 0,2 (default: all)")
    p.add_argument("--owner", help="Kaggle user name owning the kernels")
    p.add_argument("--out", default="build/kernels", help="parent folder of the built kernels")
    p.add_argument("--no-infer", action="store_true", help="do not build/push the inference kernel")
    p.add_argument("--dry-run", action="store_true", help="build and validate only; push nothing")
    p.add_argument("--no-wait", action="store_true",
                   help="push the fold kernels and return; push the inference kernel later yourself")
    p.set_defaults(func=_push_folds)

    p = sub.add_parser("submit", help="validate a submission, upload it, wait for its score")
    p.add_argument("submission", nargs="?", help="submission CSV (not for code competitions)")
    p.add_argument("--competition", required=False, help="Kaggle competition slug (default kaggle.competition)")
    p.add_argument("-m", "--message", required=True, help="submission description")
    p.add_argument("--format", help="segkit adapter whose rules the file must follow (default: from the slug "
                                    "or the config)")
    p.add_argument("--sample", help="the competition's sample_submission.csv, to check ids and their order")
    p.add_argument("--config", help="run config: kaggle.competition, code_competition, kernel, retries")
    p.add_argument("--kernel", metavar="OWNER/SLUG", help="code competition: submit this kernel's output")
    p.add_argument("--version", type=int, help="code competition: kernel version (default: latest)")
    p.add_argument("--no-wait", action="store_true", help="do not wait for the score")
    p.set_defaults(func=_submit)


def _config_with_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, nargs="+", metavar="CFG",
                   help="run config (file or name in configs/), optionally followed by key.sub=value overrides")


def _client_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="run config whose kaggle: section sets retries, backoff and polling")


def _load(config: str | None, overrides=()):
    from segkit.config import load_config

    return load_config(config, list(overrides)) if config else None


def _client(cfg):
    from segkit.kaggle.api import KaggleClient
    from segkit.kaggle.config import KaggleConfig, kaggle_config

    return KaggleClient(kaggle_config(cfg) if cfg is not None else KaggleConfig())


def _build(args) -> int:
    from segkit.kaggle.bundle import build_kernel

    cfg = _load(args.config[0], args.config[1:])
    built = build_kernel(cfg, args.name, kind=args.kind, fold=args.fold, out_dir=args.out, owner=args.owner,
                         extra_kernel_sources=args.kernel_source)
    _report_built(built)
    return 0


def _report_built(built) -> None:
    size = built.code_file.stat().st_size
    meta = built.metadata
    print(f"built {built.folder}: {built.code_file.name} ({size / 1024:.0f} KiB), id {meta['id']}, "
          f"gpu {meta['enable_gpu']}{' ' + meta['machine_shape'] if meta.get('machine_shape') else ''}, "
          f"internet {meta['enable_internet']}")
    for w in built.warnings:
        print(f"warning: {w}")


def _push(args) -> int:
    from segkit.kaggle.metadata import read_metadata

    read_metadata(args.folder)  # the client's rules, checked before anything leaves
    result = _client(_load(args.config)).push(args.folder)
    print(f"pushed {result.ref} version {result.version}: {result.url}")
    return 0


def _status(args) -> int:
    client = _client(_load(args.config))
    if not args.wait:
        st = client.status(args.kernel)
        print(f"{args.kernel}: {st.state}")
        if st.state in ("ERROR", "CANCEL_REQUESTED", "CANCEL_ACKNOWLEDGED"):
            raise KaggleError(f"kernel {args.kernel} ended with {st.state}: {st.failure_message or 'no message'}")
        return 0
    last = [None]

    def show(st):
        if st.state != last[0] and not args.quiet:
            print(f"{args.kernel}: {st.state}", flush=True)
        last[0] = st.state

    st = client.wait(args.kernel, on_poll=show)
    print(f"{args.kernel}: {st.state}")
    return 0


def _output(args) -> int:
    files = _client(_load(args.config)).output(args.kernel, args.out, pattern=args.pattern)
    for f in files:
        print(f)
    print(f"{len(files)} files in {args.out}")
    return 0


def _push_folds(args) -> int:
    from segkit.kaggle.bundle import build_kernel, fold_names, parse_folds, resolve_owner
    from segkit.kaggle.config import kaggle_config

    cfg = _load(args.config[0], args.config[1:])
    kc = kaggle_config(cfg)
    folds = parse_folds(args.folds, cfg.train.folds) if args.folds else list(range(cfg.train.folds))
    owner = resolve_owner(kc, args.owner)
    train_names, infer_name = fold_names(kc, cfg.name, folds)
    built = [build_kernel(cfg, name, "train", k, args.out, owner) for name, k in zip(train_names, folds)]
    if not args.no_infer:
        if len(folds) != cfg.train.folds:
            print(f"note: the inference kernel expects all {cfg.train.folds} folds; only {folds} are pushed now")
        all_train = fold_names(kc, cfg.name, list(range(cfg.train.folds)))[0]
        built.append(build_kernel(cfg, infer_name, "infer", None, args.out, owner,
                                  extra_kernel_sources=[f"{owner}/{n}" for n in all_train]))
    for b in built:
        _report_built(b)
    if args.dry_run:
        print("dry run: nothing pushed")
        return 0
    client = _client(cfg)
    infer = None if args.no_infer else built.pop()
    for b in built:
        r = client.push(b.folder)
        print(f"pushed {r.ref} version {r.version}: {r.url}", flush=True)
    if infer is None:
        return 0
    if args.no_wait:
        print(f"when the fold kernels are COMPLETE, run: segkit kernel push {infer.folder}")
        return 0
    for b in built:  # the inference kernel reads the folds' outputs: they must have finished
        kernel = b.metadata["id"]
        last = [None]

        def show(st, kernel=kernel, last=last):
            if st.state != last[0] and not args.quiet:
                print(f"{kernel}: {st.state}", flush=True)
            last[0] = st.state

        client.wait(kernel, on_poll=show)
    r = client.push(infer.folder)
    print(f"pushed {r.ref} version {r.version}: {r.url}", flush=True)
    return 0


def _submit(args) -> int:
    from segkit.kaggle.config import KaggleConfig, adapter_for, kaggle_config
    from segkit.kaggle.metadata import stem_slug

    cfg = _load(args.config)
    kc = kaggle_config(cfg) if cfg is not None else KaggleConfig()
    competition = args.competition or kc.competition
    if not competition:
        raise KaggleError("submit: no competition; pass --competition SLUG or set kaggle.competition")
    fmt = adapter_for(competition, args.format, cfg)
    client = _client(cfg)
    code = bool(args.kernel) or kc.code_competition
    if code:
        kernel = args.kernel or f"{kc.owner or client.username}/{stem_slug(kc, cfg.name)}-infer"
        with tempfile.TemporaryDirectory(prefix="segkit-submit-") as tmp:
            got = client.output(kernel, tmp, pattern=rf"(^|/){_re_escape(kc.submission_file)}$")
            csvs = [p for p in got if p.name == kc.submission_file]
            if not csvs:
                raise KaggleError(f"kernel {kernel} has no output {kc.submission_file}; let it finish first "
                                  f"(segkit kernel status {kernel} --wait)")
            _validate_or_refuse(csvs[0], fmt, args.sample, what=f"{kernel}'s {kc.submission_file}")
        ref = client.submit_code(competition, kernel, args.version, kc.submission_file, args.message)
        print(f"submitted kernel {kernel}{f' version {args.version}' if args.version else ''} to {competition} "
              f"(ref {ref})")
    else:
        if not args.submission:
            raise KaggleError("submit: give the SUBMISSION file (or --kernel for a code competition)")
        path = Path(args.submission)
        if not path.is_file():
            raise SubmissionError(f"{path}: file not found")
        _validate_or_refuse(path, fmt, args.sample, what=str(path))
        ref = client.submit(competition, path, args.message)
        print(f"uploaded {path} to {competition} (ref {ref})")
    if args.no_wait:
        return 0
    last = [None]

    def show(sub):
        if sub.status != last[0] and not args.quiet:
            print(f"submission {sub.ref}: {sub.status}", flush=True)
        last[0] = sub.status

    sub = client.wait_for_score(competition, ref, on_poll=show)
    print(f"score: public {sub.public_score}"
          + (f", private {sub.private_score}" if sub.private_score not in (None, "") else ""))
    return 0


def _validate_or_refuse(path: Path, fmt: str, sample: str | None, what: str) -> None:
    from segkit.submission import validate_submission

    problems = validate_submission(path, fmt, sample)
    if problems:
        listed = "\n  ".join(problems[:20])
        raise SubmissionError(f"{what} is not a valid {fmt} submission; not submitted:\n  {listed}")
    print(f"{what}: valid {fmt} submission")


def _re_escape(text: str) -> str:
    import re

    return re.escape(text)
