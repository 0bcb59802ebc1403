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

import hashlib
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, Union

from segkit.config import Config, load_config
from segkit.data.competitions.base import format_for
from segkit.errors import KaggleError, SubmissionError
from segkit.kaggle.api import KaggleClient, KernelFailed, KernelStatus, PushResult, Submission, log_tail, split_kernel
from segkit.kaggle.bundle import BUILD_DIR, BuiltKernel, build_kernel as build, fold_names, parse_folds, resolve_owner
from segkit.kaggle.config import KaggleConfig, adapter_name_for, kaggle_config
from segkit.kaggle.metadata import read_metadata, stem_slug
from segkit.kaggle.state import StateFile
from segkit.runs import RunDir
from segkit.storage import atomic_write
from segkit.submission import validate

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
    return build(as_config(cfg), name, kind=kind, fold=fold, out_dir=out_dir, owner=owner,
                 extra_kernel_sources=list(kernel_sources))


def fold_list(cfg: ConfigLike, folds: str | Sequence[int] | None = None) -> list[int]:
    """The folds to use: every fold of train.folds when None, else '0-4', '0,2' or a list, each checked."""
    cfg = as_config(cfg)
    if folds is None:
        return list(range(cfg.train.folds))
    text = folds if isinstance(folds, str) else ",".join(str(int(k)) for k in folds)
    return parse_folds(text, cfg.train.folds)


def build_kernels(cfg: ConfigLike, out_dir: str | Path = BUILD_DIR, *, folds: str | Sequence[int] | None = None,
                  owner: str | None = None, infer: bool = True) -> list[BuiltKernel]:
    """One training kernel per fold (slug <stem>-fold<k>), then, unless infer=False, the inference kernel
    (<stem>-infer) taking every fold kernel of train.folds as a source; written under out_dir."""
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
    read_metadata(folder)
    return _client(client, as_config(cfg)).push(folder)


def kernel_status(kernel: str, *, cfg: ConfigLike | None = None, client: KaggleClient | None = None) -> KernelStatus:
    """The latest run state of kernel OWNER/SLUG (QUEUED, RUNNING, COMPLETE, ERROR, CANCEL_*)."""
    return _client(client, as_config(cfg)).status(kernel)


def wait_for_kernel(kernel: str, *, cfg: ConfigLike | None = None, client: KaggleClient | None = None,
                    progress: Progress = _print, quiet: bool = False,
                    log_dir: str | Path | None = None) -> KernelStatus:
    """Poll kernel OWNER/SLUG (with growing intervals) until it completes, reporting each state change;
    KaggleError with Kaggle's failure message when it fails (the tail of its log printed, the whole saved in
    log_dir, default the config's run folder), is cancelled or outlasts kaggle.timeout_minutes."""
    cfg = as_config(cfg)
    on_poll = _state_lines(progress, quiet, lambda _: kernel, lambda st: st.state)
    kaggle = _client(client, cfg)
    try:
        return kaggle.wait(kernel, on_poll=on_poll)
    except KernelFailed as exc:
        if log_dir is None and cfg is not None:
            log_dir = RunDir.of(cfg).kaggle_logs
        raise kernel_failed(exc, kaggle, log_dir, progress or (lambda _: None)) from None


def kernel_output(kernel: str, out_dir: str | Path, *, pattern: str | None = None, cfg: ConfigLike | None = None,
                  client: KaggleClient | None = None) -> list[Path]:
    """Download the output files (only those matching the regular expression `pattern`, if given) and the
    log of the kernel's latest run into out_dir; the paths written."""
    return _client(client, as_config(cfg)).output(kernel, out_dir, pattern=pattern)


@dataclass
class PushedFolds:
    """What push_folds built and pushed (or found already pushed)."""

    fold_kernels: list[BuiltKernel]
    infer_kernel: BuiltKernel | None  # None with infer=False
    pushed: list[PushResult] = field(default_factory=list)  # in push order; empty on a dry run
    resumed: list[PushResult] = field(default_factory=list)  # pushed by an earlier run of the same command
    missing_folds: list[int] = field(default_factory=list)  # fold kernels the inference kernel needs, not on Kaggle
    infer_done: PushResult | None = None  # the inference kernel's version, pushed now or before

    @property
    def infer_pending(self) -> bool:
        """The inference kernel was built but not pushed (wait=False, or fold kernels are missing)."""
        return self.infer_kernel is not None and self.infer_done is None


def kernel_digest(built: BuiltKernel) -> str:
    """What a kernel push sends (code and metadata), hashed: a rerun of the same command has the same digest."""
    import hashlib
    import json

    h = hashlib.sha256(built.code_file.read_bytes())
    h.update(json.dumps(built.metadata, sort_keys=True).encode())
    return h.hexdigest()


def push_once(built: BuiltKernel, state_file: str | Path, kaggle: KaggleClient, *, again: bool = False,
              say: Callable[[str], None] = lambda _: None) -> tuple[PushResult, bool]:
    """Push a built kernel unless the state file says this very kernel (same code and metadata) was pushed
    already: (its version, True) then. An interrupted push is recognised by a newer version on Kaggle than
    the one recorded before it. `again` pushes a new version regardless."""
    state = StateFile(state_file, "kernels")
    kernel = built.metadata["id"]
    digest = kernel_digest(built)
    rec = state.get(kernel)
    if rec and not again and rec.get("digest") == digest:
        if rec.get("version"):
            say(f"{kernel}: version {rec['version']} already pushed by an earlier run; waiting on it "
                "(--again pushes a new version)")
            return PushResult(kernel, rec.get("url", ""), int(rec["version"])), True
        current = kaggle.current_version(kernel)
        if current > int(rec.get("before", 0)):
            state.update(kernel, version=current)
            say(f"{kernel}: the interrupted push reached Kaggle as version {current}; not pushed again")
            return PushResult(kernel, "", current), True
    before = kaggle.current_version(kernel)
    state.put(kernel, digest=digest, before=before, version=None, folder=str(built.folder))
    result = kaggle.push(built.folder, before=before)
    state.update(kernel, version=result.version, url=result.url)
    say(f"pushed {result.ref} version {result.version}: {result.url}")
    return result, False


def push_folds(cfg: ConfigLike, *, folds: str | Sequence[int] | None = None, owner: str | None = None,
               out_dir: str | Path = BUILD_DIR, infer: bool = True, dry_run: bool = False, wait: bool = True,
               again: bool = False, client: KaggleClient | None = None, progress: Progress = _print,
               quiet: bool = False) -> PushedFolds:
    """Build and push one training kernel per fold (they run in parallel on Kaggle); then, once every fold
    kernel of train.folds exists on Kaggle, wait for all of them at once and push the inference kernel that
    ensembles them.

    Reruns resume: what was pushed is recorded in the run folder (RunDir.kaggle_pushes), and the same kernel is
    not pushed twice unless `again`. The inference kernel refers only to fold kernels that exist: when some
    are missing (never pushed), it is left pending with the --folds to push. The first fold kernel to fail
    (ERROR, cancel) stops the wait at once: a KaggleError with Kaggle's message, the tail of the kernel's log
    printed and the whole log saved under RunDir.kaggle_logs. dry_run builds and validates only; wait=False
    pushes the fold kernels and leaves the inference kernel pending."""
    cfg = as_config(cfg)
    say = progress or (lambda _: None)
    folds = fold_list(cfg, folds)
    built = build_kernels(cfg, out_dir, folds=folds, owner=owner, infer=infer)
    result = PushedFolds(built[:len(folds)], built[-1] if infer else None)
    for b in built:
        for line in describe(b):
            say(line)
    if dry_run:
        say("dry run: nothing pushed")
        return result
    kaggle = _client(client, cfg)
    run = RunDir.of(cfg)
    for b in result.fold_kernels:
        r, old = push_once(b, run.kaggle_pushes, kaggle, again=again, say=say)
        (result.resumed if old else result.pushed).append(r)
    if result.infer_kernel is None:
        return result
    fold_kernels = [f"{result.infer_kernel.metadata['id'].split('/')[0]}/{n}"
                    for n in fold_names(kaggle_config(cfg), cfg.name, list(range(cfg.train.folds)))[0]]
    present = {b.metadata["id"] for b in result.fold_kernels}
    result.missing_folds = [k for k, kernel in enumerate(fold_kernels)
                            if kernel not in present and kaggle.current_version(kernel) == 0]
    if result.missing_folds:
        todo = ",".join(str(k) for k in result.missing_folds)
        say(f"note: the inference kernel needs all {cfg.train.folds} fold kernels; fold {todo} not on Kaggle yet: "
            f"push them with --folds {todo} (the inference kernel is pushed once every fold kernel is COMPLETE)")
        return result
    if not wait:
        return result

    def on_poll(kernel: str):
        return _state_lines(progress, quiet, lambda _: kernel, lambda st: st.state)

    try:
        kaggle.wait_all(fold_kernels, on_poll)  # the inference kernel reads every fold's output
    except KernelFailed as exc:
        raise kernel_failed(exc, kaggle, run.kaggle_logs, say, hint=" (fix it, then rerun with --again "
                            f"--folds {fold_kernels.index(exc.kernel)})") from None
    result.infer_done, old = push_once(result.infer_kernel, run.kaggle_pushes, kaggle, again=again, say=say)
    (result.resumed if old else result.pushed).append(result.infer_done)
    return result


def kernel_failed(exc: KernelFailed, kaggle: KaggleClient, log_dir: str | Path | None,
                  say: Callable[[str], None], hint: str = "") -> KaggleError:
    """The error for a failed kernel: its log fetched, the tail printed and the whole saved in log_dir."""
    try:
        text = kaggle.kernel_log(exc.kernel)
    except KaggleError as log_exc:
        return KaggleError(f"{exc}{hint}; its log could not be fetched ({log_exc})")
    if not text.strip():
        return KaggleError(f"{exc}{hint}; its log is empty")
    say(f"--- last lines of the log of {exc.kernel} ---")
    for line in log_tail(text):
        say(line)
    say("---")
    if log_dir is None:
        return KaggleError(f"{exc}{hint}; the end of its log is printed above")
    target = Path(log_dir) / f"{split_kernel(exc.kernel)[1]}.log"
    with atomic_write(target) as fh:
        fh.write(text)
    return KaggleError(f"{exc}{hint}; log saved to {target} (its end is printed above)")


# --- submissions -----------------------------------------------------------------------------------

@dataclass
class Submitted:
    """A submission made by `submit` (or found made by an earlier run of it)."""

    competition: str
    ref: int
    file: Path | None = None  # the uploaded file (file competitions)
    kernel: str | None = None  # the submitted kernel (code competitions)
    version: int | None = None
    scored: Submission | None = None  # with its scores, when waited for
    resumed: bool = False  # submitted by an earlier run of the same command; not submitted again


SAMPLE_RE = re.compile(r"(^|/)sample_submission[^/]*\.csv(\.zip)?$", re.IGNORECASE)


def cache_dir() -> Path:
    """segkit's download cache: $SEGKIT_CACHE_DIR, else $XDG_CACHE_HOME/segkit, else ~/.cache/segkit."""
    import os

    if os.environ.get("SEGKIT_CACHE_DIR"):
        return Path(os.environ["SEGKIT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segkit"


def competition_sample(competition: str, *, client: KaggleClient, progress: Progress = _print) -> Path | None:
    """The competition's sample submission CSV, downloaded once through the API (its data files list, then
    the file) into cache_dir()/kaggle/<competition>/; None when the competition has no such file."""
    import zipfile

    say = progress or (lambda _: None)
    folder = cache_dir() / "kaggle" / competition
    cached = sorted(p for p in folder.glob("*.csv") if SAMPLE_RE.search(p.name)) if folder.is_dir() else []
    if cached:
        return min(cached, key=lambda p: (p.name.lower() != "sample_submission.csv", p.name))
    names = [n for n in client.data_files(competition) if SAMPLE_RE.search(n)]
    if not names:
        return None
    name = min(names, key=lambda n: (Path(n).name.lower().removesuffix(".zip") != "sample_submission.csv", n))
    with tempfile.TemporaryDirectory(prefix="segkit-sample-") as tmp:
        got = client.download_data_file(competition, name, Path(tmp) / Path(name).name)
        if got.suffix.lower() == ".zip":
            try:
                with zipfile.ZipFile(got) as zf:
                    inner = next((n for n in zf.namelist() if n.lower().endswith(".csv")), None)
                    if inner is None:
                        raise KaggleError(f"{name} of {competition} holds no CSV file")
                    target = folder / Path(inner).name
                    with atomic_write(target, "wb") as fh:
                        fh.write(zf.read(inner))
            except zipfile.BadZipFile:
                raise KaggleError(f"{name} of {competition}: the download is not a zip file; run again") from None
        else:
            import shutil

            target = folder / got.name
            with atomic_write(target, "wb") as fh, open(got, "rb") as src:
                shutil.copyfileobj(src, fh)
    say(f"fetched {competition}'s {name} into {target}")
    return target


def submissions_state(cfg: Config | None, path: Path | None) -> Path:
    """Where submit records what it submitted: the run folder's, else beside the file, else the working folder."""
    if cfg is not None:
        return RunDir.of(cfg).kaggle_submissions
    return (path.parent if path is not None else Path.cwd()) / ".segkit-kaggle" / "submissions.json"


def submit(cfg: ConfigLike | None = None, path: str | Path | None = None, *, message: str,
           competition: str | None = None, fmt: str | None = None, sample: str | Path | None = None,
           use_sample: bool = True, kernel: str | None = None, version: int | None = None, wait: bool = True,
           again: bool = False, state_file: str | Path | None = None, client: KaggleClient | None = None,
           progress: Progress = _print, quiet: bool = False) -> Submitted:
    """Validate a submission, then submit it to the competition (default kaggle.competition) and, with
    wait, poll until Kaggle scores it.

    A file competition uploads `path`. A code competition (kaggle.code_competition, or `kernel` given)
    submits kernel OWNER/SLUG (default <owner>/<stem>-infer) at `version` (default: its current version),
    after fetching and validating that version's kaggle.submission_file output. The file must follow `fmt`
    (default: the config's or the slug's adapter) and the ids of the sample submission: `sample`, else the
    competition's sample_submission*.csv fetched through the API and cached (use_sample=False skips the id
    check, with a warning). An invalid file is a SubmissionError and nothing is submitted.

    Reruns resume: each submission is recorded (run folder, else beside the file) before it is sent, so the
    same file (or kernel version) is not submitted twice, even when an earlier run was interrupted after
    Kaggle received it; the rerun waits for its score. `again` submits anyway. A scoring failure is a
    KaggleError with Kaggle's reason."""
    cfg = as_config(cfg)
    say = progress or (lambda _: None)
    kc = kaggle_config(cfg) if cfg is not None else KaggleConfig()
    competition = competition or kc.competition
    if not competition:
        raise KaggleError("submit: no competition; pass --competition SLUG or set kaggle.competition")
    fmt = adapter_name_for(competition, fmt, cfg)
    code = bool(kernel or kc.code_competition)
    if not code:
        path = _submission_file(path)
    kaggle = _client(client, cfg)
    state = StateFile(state_file or submissions_state(cfg, None if code else path), "submissions")
    if code:
        kernel, version = _kernel_version(kernel, version, kc, cfg, kaggle)
        key, file_name = f"{competition} kernel {kernel} version {version}", None
    else:
        key, file_name = f"{competition} file {hashlib.sha256(path.read_bytes()).hexdigest()}", path.name
    result = Submitted(competition, 0, file=None if code else path, kernel=kernel if code else None,
                       version=version if code else None)
    if not again and _found_earlier(result, state, key, kaggle, wait, say):
        if wait:
            result.scored = _wait_score(kaggle, competition, result.ref, state, key, progress, quiet)
        return result
    sample_path = _sample_for(competition, sample, use_sample, kaggle, say)
    say(_validate_submitted(result, fmt, sample_path, kc.submission_file, kaggle))
    result.ref = _send(result, message, file_name, kc.submission_file, state, key, kaggle, say)
    if wait:
        result.scored = _wait_score(kaggle, competition, result.ref, state, key, progress, quiet)
    return result


def _submission_file(path: str | Path | None) -> Path:
    """The file a file competition uploads; KaggleError when none is given, SubmissionError when it is missing."""
    if not path:
        raise KaggleError("submit: give the SUBMISSION file (or --kernel for a code competition)")
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: file not found")
    return path


def _kernel_version(kernel: str | None, version: int | None, kc: KaggleConfig, cfg: Config | None,
                    kaggle: KaggleClient) -> tuple[str, int]:
    """The kernel a code competition submits (default <owner>/<stem>-infer) and its version (default: the
    current one on Kaggle; KaggleError when the kernel is not there)."""
    kernel = kernel or f"{kc.owner or kaggle.username}/{stem_slug(kc, cfg.name)}-infer"
    if not version:
        version = kaggle.current_version(kernel)
        if not version:
            raise KaggleError(f"kernel {kernel} not found on Kaggle; push it first (segkit kernel push-folds)")
    return kernel, version


def _found_earlier(result: Submitted, state: StateFile, key: str, kaggle: KaggleClient, wait: bool,
                   say: Callable[[str], None]) -> bool:
    """Whether an earlier run submitted this very file (or kernel version) already, as recorded under `key`
    in `state` (its ref looked up on Kaggle when the run ended before recording it); then `result` gets
    that ref and is marked resumed."""
    rec = state.get(key)
    if not rec:
        return False
    competition = result.competition
    ref = rec.get("ref") or kaggle.find_submission(competition, set(rec.get("before", [])),
                                                   rec.get("message", ""), rec.get("file_name"))
    if not ref:
        return False
    if not rec.get("ref"):
        state.update(key, ref=ref)
    what = f"kernel {result.kernel} version {result.version}" if result.kernel is not None else str(result.file)
    say(f"{what} already submitted to {competition} as ref {ref} by an earlier run; "
        f"{'waiting for its score' if wait else 'not submitted again'} (--again submits again)")
    result.ref, result.resumed = int(ref), True
    return True


def _validate_submitted(result: Submitted, fmt: str, sample_path: Path | None, submission_file: str,
                        kaggle: KaggleClient) -> str:
    """Validate what is about to be submitted (the file, or the kernel version's `submission_file` output,
    fetched): SubmissionError when invalid, else the line saying it is valid."""
    if result.kernel is None:
        return validate_or_refuse(result.file, fmt, sample_path, what=str(result.file))
    with tempfile.TemporaryDirectory(prefix="segkit-submit-") as tmp:
        csv = kaggle.output_file(result.kernel, submission_file, Path(tmp) / submission_file, result.version)
        return validate_or_refuse(csv, fmt, sample_path,
                                  what=f"{result.kernel} version {result.version}'s {submission_file}")


def _send(result: Submitted, message: str, file_name: str | None, submission_file: str, state: StateFile,
          key: str, kaggle: KaggleClient, say: Callable[[str], None]) -> int:
    """Record the submission under `key` in `state` (with the refs Kaggle lists before it, so an interrupted
    run finds it again), then send the file or kernel version; returns Kaggle's ref."""
    competition = result.competition
    before = {s.ref for s in kaggle.submissions(competition)}
    code = result.kernel is not None
    state.put(key, competition=competition, message=message, file_name=file_name, before=sorted(before), ref=None,
              **({"kernel": result.kernel, "version": result.version} if code else {"file": str(result.file)}))
    if code:
        ref = kaggle.submit_code(competition, result.kernel, result.version, submission_file, message, before=before)
        say(f"submitted kernel {result.kernel} version {result.version} to {competition} (ref {ref})")
    else:
        ref = kaggle.submit(competition, result.file, message, before=before)
        say(f"uploaded {result.file} to {competition} (ref {ref})")
    state.update(key, ref=ref)
    return ref


def _sample_for(competition: str, sample: str | Path | None, use_sample: bool, kaggle: KaggleClient,
                say: Callable[[str], None]) -> Path | None:
    """The sample submission to check ids against (given, or fetched and cached), or None with a warning."""
    if sample:
        return Path(sample)
    if not use_sample:
        say("warning: --no-sample: ids were not checked against the competition's sample submission")
        return None
    found = competition_sample(competition, client=kaggle, progress=say)
    if found is None:
        say(f"warning: {competition} has no sample_submission*.csv among its data files: ids were not checked "
            "(pass --sample FILE to check them)")
        return None
    say(f"ids checked against {found}")
    return found


def _wait_score(kaggle: KaggleClient, competition: str, ref: int, state, key: str, progress: Progress,
                quiet: bool) -> Submission:
    on_poll = _state_lines(progress, quiet, lambda sub: f"submission {sub.ref}", lambda sub: sub.status)
    try:
        scored = kaggle.wait_for_score(competition, ref, on_poll=on_poll)
    except KaggleError as exc:
        if "failed:" in str(exc):
            state.update(key, status="ERROR")
        raise
    state.update(key, status=scored.status, public_score=scored.public_score, private_score=scored.private_score)
    return scored


def wait_for_submission(competition: str, ref: int, *, cfg: ConfigLike | None = None,
                        client: KaggleClient | None = None, progress: Progress = _print,
                        quiet: bool = False) -> Submission:
    """Poll submission `ref` of the competition until it is scored (`segkit submit --wait REF`)."""
    kaggle = _client(client, as_config(cfg))
    on_poll = _state_lines(progress, quiet, lambda sub: f"submission {sub.ref}", lambda sub: sub.status)
    return kaggle.wait_for_score(competition, int(ref), on_poll=on_poll)


def submissions(competition: str, *, cfg: ConfigLike | None = None,
                client: KaggleClient | None = None) -> list[Submission]:
    """The competition's recent submissions (newest first) with status and scores (`segkit submissions`)."""
    return _client(client, as_config(cfg)).submissions(competition)


def validate_or_refuse(path: str | Path, fmt: str, sample: str | Path | None = None, what: str | None = None) -> str:
    """SubmissionError listing the first problems when `path` is not a valid `fmt` submission; else a line
    saying it is valid."""
    what = what or str(path)
    problems = validate(path, format_for(fmt), sample).problems
    if problems:
        listed = "\n  ".join(problems[:20])
        raise SubmissionError(f"{what} is not a valid {fmt} submission; not submitted:\n  {listed}")
    return f"{what}: valid {fmt} submission"
