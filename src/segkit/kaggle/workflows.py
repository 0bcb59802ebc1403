"""The Kaggle workflows as Python functions: build kernels, push them (one per fold, then the inference
kernel that ensembles them), watch and fetch them, submit. `segkit kernel ...` and `segkit submit` are thin
layers over these; a notebook calls them directly:

    from segkit.kaggle import workflows as kw
    kw.push_folds("cloud38", folds=[0, 1])
    kw.submit("cloud38", "runs/cloud38/submission.csv", message="fold ensemble v1")

Functions take a Config or a config name/path and keyword arguments, and return what they did. Long waits
report progress through `progress` (default `print`; None for silence; `quiet=True` drops the state-change
lines). The kaggle client is imported only when a call needs the network (it logs in at import).
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, Union

from segkit.config import Config, load_config
from segkit.errors import KaggleError, SubmissionError
from segkit.kaggle.api import KaggleClient, KernelStatus, PushResult, Submission
from segkit.kaggle.bundle import BUILD_DIR, BuiltKernel
from segkit.kaggle.config import KaggleConfig, adapter_for, kaggle_config

ConfigLike = Union[Config, str, Path]
Progress = Union[Callable[[str], None], None]


def _print(text: str) -> None:
    print(text, flush=True)


def as_config(cfg: ConfigLike | None, overrides: Sequence[str] = ()) -> Config | None:
    """A Config from a Config, a built-in config name or a YAML path (with `key.sub=value` overrides)."""
    if cfg is None or isinstance(cfg, Config):
        if overrides:
            raise KaggleError("config overrides need a config name or path, not a loaded Config")
        return cfg
    return load_config(cfg, list(overrides))


def client(cfg: ConfigLike | None = None) -> KaggleClient:
    """A KaggleClient with the retries, backoff and polling of the config's `kaggle:` section (defaults without)."""
    cfg = as_config(cfg)
    return KaggleClient(kaggle_config(cfg) if cfg is not None else KaggleConfig())


def _client(given: KaggleClient | None, cfg: Config | None) -> KaggleClient:
    return given if given is not None else client(cfg)


def describe(built: BuiltKernel) -> list[str]:
    """One line saying what a built kernel is (size, id, machine, internet), then its warnings."""
    size = built.code_file.stat().st_size
    meta = built.metadata
    shape = f" {meta['machine_shape']}" if meta.get("machine_shape") else ""
    return [f"built {built.folder}: {built.code_file.name} ({size / 1024:.0f} KiB), id {meta['id']}, "
            f"gpu {meta['enable_gpu']}{shape}, internet {meta['enable_internet']}",
            *(f"warning: {w}" for w in built.warnings)]


def _state_lines(progress: Progress, quiet: bool, label: Callable[[object], str], state: Callable[[object], str]):
    """An on_poll callback that reports each change of state once."""
    last: list[str | None] = [None]

    def show(item) -> None:
        if state(item) != last[0] and progress and not quiet:
            progress(f"{label(item)}: {state(item)}")
        last[0] = state(item)

    return show


# --- kernels ---------------------------------------------------------------------------------------

def build_kernel(cfg: ConfigLike, name: str, *, kind: str = "train", fold: int | None = None,
                 out_dir: str | Path = BUILD_DIR, owner: str | None = None,
                 kernel_sources: Sequence[str] = ()) -> BuiltKernel:
    """Write out_dir/name/: a self-contained kernel script (segkit + the resolved config) and its validated
    kernel-metadata.json. `kind` is "train" (every fold, or `fold`) or "infer"; `kernel_sources` are added
    to kaggle.kernel_sources (e.g. the training kernels an inference kernel reads)."""
    from segkit.kaggle.bundle import build_kernel as build

    return build(as_config(cfg), name, kind=kind, fold=fold, out_dir=out_dir, owner=owner,
                 extra_kernel_sources=list(kernel_sources))


def fold_list(cfg: ConfigLike, folds: str | Sequence[int] | None = None) -> list[int]:
    """The folds to use: every fold of train.folds when None, else '0-4', '0,2' or a list, each checked."""
    from segkit.kaggle.bundle import parse_folds

    cfg = as_config(cfg)
    if folds is None:
        return list(range(cfg.train.folds))
    text = folds if isinstance(folds, str) else ",".join(str(int(k)) for k in folds)
    return parse_folds(text, cfg.train.folds)


def build_kernels(cfg: ConfigLike, out_dir: str | Path = BUILD_DIR, *, folds: str | Sequence[int] | None = None,
                  owner: str | None = None, infer: bool = True) -> list[BuiltKernel]:
    """One training kernel per fold (slug <stem>-fold<k>), then, unless infer=False, the inference kernel
    (<stem>-infer) taking every fold kernel of train.folds as a source; written under out_dir."""
    from segkit.kaggle.bundle import fold_names, resolve_owner

    cfg = as_config(cfg)
    kc = kaggle_config(cfg)
    folds = fold_list(cfg, folds)
    owner = resolve_owner(kc, owner)
    train_names, infer_name = fold_names(kc, cfg.name, folds)
    built = [build_kernel(cfg, name, kind="train", fold=k, out_dir=out_dir, owner=owner)
             for name, k in zip(train_names, folds)]
    if infer:
        all_train = fold_names(kc, cfg.name, list(range(cfg.train.folds)))[0]
        built.append(build_kernel(cfg, infer_name, kind="infer", out_dir=out_dir, owner=owner,
                                  kernel_sources=[f"{owner}/{n}" for n in all_train]))
    return built


def push_kernel(folder: str | Path, *, cfg: ConfigLike | None = None, client: KaggleClient | None = None) -> PushResult:
    """Push a built kernel folder (a new version then runs on Kaggle), after checking its metadata against
    the client's rules so nothing leaves when it would be refused."""
    from segkit.kaggle.metadata import read_metadata

    read_metadata(folder)
    return _client(client, as_config(cfg)).push(folder)


def kernel_status(kernel: str, *, cfg: ConfigLike | None = None, client: KaggleClient | None = None) -> KernelStatus:
    """The latest run state of kernel OWNER/SLUG (QUEUED, RUNNING, COMPLETE, ERROR, CANCEL_*)."""
    return _client(client, as_config(cfg)).status(kernel)


def wait_for_kernel(kernel: str, *, cfg: ConfigLike | None = None, client: KaggleClient | None = None,
                    progress: Progress = _print, quiet: bool = False) -> KernelStatus:
    """Poll kernel OWNER/SLUG (with growing intervals) until it completes, reporting each state change;
    KaggleError with Kaggle's failure message when it fails, is cancelled or outlasts kaggle.timeout_minutes."""
    on_poll = _state_lines(progress, quiet, lambda _: kernel, lambda st: st.state)
    return _client(client, as_config(cfg)).wait(kernel, on_poll=on_poll)


def kernel_output(kernel: str, out_dir: str | Path, *, pattern: str | None = None, cfg: ConfigLike | None = None,
                  client: KaggleClient | None = None) -> list[Path]:
    """Download the output files (only those matching the regular expression `pattern`, if given) and the
    log of the kernel's latest run into out_dir; the paths written."""
    return _client(client, as_config(cfg)).output(kernel, out_dir, pattern=pattern)


@dataclass
class PushedFolds:
    """What push_folds built and pushed."""

    fold_kernels: list[BuiltKernel]
    infer_kernel: BuiltKernel | None  # None with infer=False
    pushed: list[PushResult] = field(default_factory=list)  # in push order; empty on a dry run

    @property
    def infer_pending(self) -> bool:
        """The fold kernels were pushed but the inference kernel was not (wait=False)."""
        return self.infer_kernel is not None and len(self.pushed) == len(self.fold_kernels) > 0


def push_folds(cfg: ConfigLike, *, folds: str | Sequence[int] | None = None, owner: str | None = None,
               out_dir: str | Path = BUILD_DIR, infer: bool = True, dry_run: bool = False, wait: bool = True,
               client: KaggleClient | None = None, progress: Progress = _print, quiet: bool = False) -> PushedFolds:
    """Build and push one training kernel per fold (they run in parallel on Kaggle); then wait until every
    one of them completes and push the inference kernel that ensembles them. dry_run builds and validates
    only; wait=False pushes the fold kernels and leaves the inference kernel built but not pushed. A failed
    fold kernel is a KaggleError, and the inference kernel is then not pushed."""
    cfg = as_config(cfg)
    say = progress or (lambda _: None)
    folds = fold_list(cfg, folds)
    built = build_kernels(cfg, out_dir, folds=folds, owner=owner, infer=infer)
    result = PushedFolds(built[:len(folds)], built[-1] if infer else None)
    if infer and len(folds) != cfg.train.folds:
        say(f"note: the inference kernel expects all {cfg.train.folds} folds; only {folds} are pushed now")
    for b in built:
        for line in describe(b):
            say(line)
    if dry_run:
        say("dry run: nothing pushed")
        return result
    kaggle = _client(client, cfg)

    def push(b: BuiltKernel) -> None:
        r = kaggle.push(b.folder)
        result.pushed.append(r)
        say(f"pushed {r.ref} version {r.version}: {r.url}")

    for b in result.fold_kernels:
        push(b)
    if result.infer_kernel is None or not wait:
        return result
    for b in result.fold_kernels:  # the inference kernel reads the folds' outputs: they must have finished
        kernel = b.metadata["id"]
        kaggle.wait(kernel, on_poll=_state_lines(progress, quiet, lambda _, k=kernel: k, lambda st: st.state))
    push(result.infer_kernel)
    return result


# --- submissions -----------------------------------------------------------------------------------

@dataclass
class Submitted:
    """A submission made by `submit`."""

    competition: str
    ref: int
    file: Path | None = None  # the uploaded file (file competitions)
    kernel: str | None = None  # the submitted kernel (code competitions)
    version: int | None = None
    scored: Submission | None = None  # with its scores, when waited for


def submit(cfg: ConfigLike | None = None, path: str | Path | None = None, *, message: str,
           competition: str | None = None, fmt: str | None = None, sample: str | Path | None = None,
           kernel: str | None = None, version: int | None = None, wait: bool = True,
           client: KaggleClient | None = None, progress: Progress = _print, quiet: bool = False) -> Submitted:
    """Validate a submission, then submit it to the competition (default kaggle.competition) and, with
    wait, poll until Kaggle scores it.

    A file competition uploads `path`. A code competition (kaggle.code_competition, or `kernel` given)
    fetches the inference kernel's kaggle.submission_file output, validates it, and submits kernel OWNER/SLUG
    (default <owner>/<stem>-infer; `version` default latest). The file must follow `fmt` (default: the
    config's or the slug's adapter) and, given `sample`, the ids of the sample submission: an invalid file is
    a SubmissionError and nothing is submitted. A scoring failure is a KaggleError with Kaggle's reason."""
    from segkit.kaggle.metadata import stem_slug

    cfg = as_config(cfg)
    say = progress or (lambda _: None)
    kc = kaggle_config(cfg) if cfg is not None else KaggleConfig()
    competition = competition or kc.competition
    if not competition:
        raise KaggleError("submit: no competition; pass --competition SLUG or set kaggle.competition")
    fmt = adapter_for(competition, fmt, cfg)
    kaggle = _client(client, cfg)
    if kernel or kc.code_competition:
        kernel = kernel or f"{kc.owner or kaggle.username}/{stem_slug(kc, cfg.name)}-infer"
        with tempfile.TemporaryDirectory(prefix="segkit-submit-") as tmp:
            got = kaggle.output(kernel, tmp, pattern=rf"(^|/){re.escape(kc.submission_file)}$")
            csvs = [p for p in got if p.name == kc.submission_file]
            if not csvs:
                raise KaggleError(f"kernel {kernel} has no output {kc.submission_file}; let it finish first "
                                  f"(segkit kernel status {kernel} --wait)")
            say(validate_or_refuse(csvs[0], fmt, sample, what=f"{kernel}'s {kc.submission_file}"))
        ref = kaggle.submit_code(competition, kernel, version, kc.submission_file, message)
        result = Submitted(competition, ref, kernel=kernel, version=version)
        say(f"submitted kernel {kernel}{f' version {version}' if version else ''} to {competition} (ref {ref})")
    else:
        if not path:
            raise KaggleError("submit: give the SUBMISSION file (or --kernel for a code competition)")
        path = Path(path)
        if not path.is_file():
            raise SubmissionError(f"{path}: file not found")
        say(validate_or_refuse(path, fmt, sample, what=str(path)))
        ref = kaggle.submit(competition, path, message)
        result = Submitted(competition, ref, file=path)
        say(f"uploaded {path} to {competition} (ref {ref})")
    if wait:
        on_poll = _state_lines(progress, quiet, lambda sub: f"submission {sub.ref}", lambda sub: sub.status)
        result.scored = kaggle.wait_for_score(competition, ref, on_poll=on_poll)
    return result


def validate_or_refuse(path: str | Path, fmt: str, sample: str | Path | None = None, what: str | None = None) -> str:
    """SubmissionError listing the first problems when `path` is not a valid `fmt` submission; else a line
    saying it is valid."""
    from segkit.submission import validate_submission

    what = what or str(path)
    problems = validate_submission(path, fmt, sample)
    if problems:
        listed = "\n  ".join(problems[:20])
        raise SubmissionError(f"{what} is not a valid {fmt} submission; not submitted:\n  {listed}")
    return f"{what}: valid {fmt} submission"
