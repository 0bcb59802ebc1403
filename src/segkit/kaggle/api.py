"""Kaggle API calls (push, status, output, submit, score) through the real kaggle client's Python API,
with retries on 429 / 5xx / network failures and every refusal turned into a KaggleError that says why.

The client is imported lazily: `import kaggle` authenticates at import time and exits the process when
credentials are missing."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from segkit.errors import KaggleError
from segkit.kaggle.config import KaggleConfig
from segkit.kaggle.credentials import SETUP_HELP, Credentials, find_credentials
from segkit.storage import atomic_write

log = logging.getLogger("segkit.kaggle")
T = TypeVar("T")

# Kernel session states after which nothing more will happen.
DONE_STATES = {"COMPLETE", "ERROR", "CANCEL_REQUESTED", "CANCEL_ACKNOWLEDGED"}


@dataclass
class PushResult:
    """What Kaggle answered to a kernel push."""

    ref: str
    url: str
    version: int | None


@dataclass
class KernelStatus:
    """A kernel's latest session state (QUEUED, RUNNING, COMPLETE, ERROR, CANCEL_*)."""

    state: str
    failure_message: str = ""


class KernelFailed(KaggleError):
    """A kernel's run ended with ERROR or was cancelled."""

    def __init__(self, kernel: str, status: "KernelStatus") -> None:
        super().__init__(f"kernel {kernel} ended with {status.state}: {status.failure_message or 'no message'}")
        self.kernel = kernel
        self.status = status


class Stopped(KaggleError):
    """A wait given up because another one failed."""


@dataclass
class Submission:
    """One competition submission as ListSubmissions reports it."""

    ref: int
    status: str  # PENDING, COMPLETE, ERROR
    public_score: str | None = None
    private_score: str | None = None
    error_description: str | None = None
    description: str | None = None
    file_name: str | None = None
    date: str | None = None


@dataclass
class Retry:
    """Capped exponential backoff: waits backoff, 2*backoff, 4*backoff ... up to `cap`, `attempts` times."""

    attempts: int = 5
    backoff: float = 2.0
    cap: float = 60.0
    sleep: Callable[[float], None] = time.sleep
    waits: list[float] = field(default_factory=list)  # every wait taken, for the record

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        base = retry_after if retry_after is not None else self.backoff * (2 ** attempt)
        return min(self.cap, max(0.0, base))


class KaggleClient:
    """The kit's door to Kaggle. One instance per set of credentials; `sleep` and `clock` are injectable so
    retries and polling are testable without waiting."""

    def __init__(
        self,
        kc: KaggleConfig | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.kc = kc or KaggleConfig()
        self.retry = Retry(self.kc.retries, self.kc.backoff_seconds, self.kc.max_backoff_seconds, sleep)
        self.sleep = sleep
        self.clock = clock
        self._api = None
        self.credentials: Credentials | None = None

    # --- connection -------------------------------------------------------------------------

    @property
    def api(self):
        """The authenticated kaggle.KaggleApi (created on first use)."""
        if self._api is None:
            self._api = self._connect()
        return self._api

    def _connect(self):
        self.credentials = find_credentials()
        quiet = contextlib.redirect_stdout(io.StringIO())  # the client prints help and warnings to stdout
        saved = {k: os.environ.pop(k) for k in ("VERBOSE", "VERBOSE_OUTPUT") if k in os.environ}
        try:
            with quiet:
                try:
                    from kaggle.api.kaggle_api_extended import KaggleApi
                except SystemExit:
                    raise KaggleError(
                        f"Kaggle rejected the credentials from {self.credentials.source}; {SETUP_HELP}"
                    ) from None
            api = KaggleApi()
            api.config_dir = str(self.credentials.config_dir)
            api.config = str(self.credentials.config_dir / "kaggle.json")
            api.args = [a for a in api.args if a not in ("--verbose", "-v")]  # never print the auth header
            with quiet:
                try:
                    self._call("authenticate", api.authenticate)
                except SystemExit:
                    raise KaggleError(
                        f"Kaggle rejected the credentials from {self.credentials.source}; {SETUP_HELP}"
                    ) from None
        finally:
            os.environ.update(saved)
        return api

    @property
    def username(self) -> str:
        """The authenticated user's name."""
        return str(self.api.config_values.get("username") or "")

    @contextlib.contextmanager
    def sdk(self) -> Iterator[Any]:
        """The client's kagglesdk KaggleClient, authenticated as `api`."""
        with self.api.build_kaggle_client() as kaggle:
            yield kaggle

    def _rpc(self, what: str, request: Callable[[Any], Any], *, context: str, save_to: Path | None = None,
             missing_ok: bool = False, executed: Callable[[], Any] | None = None) -> Any:
        """One kagglesdk request, `request(kaggle)` on a fresh authenticated client, through `_call`'s retries
        and error translation. `save_to`: the answer is a download, streamed to that file (returned);
        `missing_ok`: a 404 answer is None."""
        import requests

        def call():
            try:
                with self.sdk() as kaggle:
                    resp = request(kaggle)
                    if save_to is None:
                        return resp
                    save_response(resp, save_to)
                    return save_to
            except requests.HTTPError as exc:
                if missing_ok and _http_details(exc)[0] == 404:
                    return None
                raise

        return self._call(what, call, context=context, executed=executed)

    # --- retries and error translation ------------------------------------------------------

    def _call(self, what: str, fn: Callable, *args, context: str = "",
              executed: Callable[[], Any] | None = None, **kwargs) -> Any:
        """Run fn, retrying 429 / 5xx / connection failures with capped backoff; explain the rest.

        A call that is not idempotent (a push, a submission) gives `executed`: after a failure whose request
        may have reached Kaggle, it is asked first, and what it returns (not None) is taken as the call's
        result instead of sending the request again."""
        import requests

        last: Exception | None = None
        for attempt in range(self.retry.attempts + 1):
            if attempt and executed is not None:
                done = executed()
                if done is not None:
                    log.warning("%s: the failed request had reached Kaggle; not sent again", what)
                    return done
            try:
                return fn(*args, **kwargs)
            except requests.HTTPError as exc:
                code, message, retry_after = _http_details(exc)
                if code == 429 or (code is not None and code >= 500):
                    last = exc
                    if attempt < self.retry.attempts:
                        self._wait(what, f"HTTP {code}", attempt, retry_after)
                        continue
                    if executed is not None and (done := executed()) is not None:
                        return done
                    raise KaggleError(
                        f"{what}: Kaggle answered HTTP {code} {attempts(attempt + 1)}"
                        f"{': ' + message if message else ''}; try again later"
                    ) from None
                raise KaggleError(explain(what, code, message, context)) from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = exc
                if attempt < self.retry.attempts:
                    self._wait(what, "network failure", attempt, None)
                    continue
                if executed is not None and (done := executed()) is not None:
                    return done
                raise KaggleError(
                    f"{what}: cannot reach Kaggle ({type(exc).__name__}) {attempts(attempt + 1)}; "
                    "check the network connection"
                ) from None
            except ValueError as exc:  # the client's own validation of names and metadata
                raise KaggleError(f"{what}: {exc}") from None
        raise KaggleError(f"{what}: failed ({last})")  # not reached

    def _wait(self, what: str, why: str, attempt: int, retry_after: float | None) -> None:
        delay = self.retry.delay(attempt, retry_after)
        log.warning("%s: %s; retrying in %.1f s (%d/%d)", what, why, delay, attempt + 1, self.retry.attempts)
        self.retry.waits.append(delay)
        self.sleep(delay)

    # --- kernels ----------------------------------------------------------------------------

    def push(self, folder: str | Path, before: int | None = None) -> PushResult:
        """Push a kernel folder (kernel-metadata.json + its code_file) with its session timeout; KaggleError
        when Kaggle refuses it or any source is invalid (the kaggle CLI exits 0 in both cases).

        `before` is the kernel's current version before this push (asked when not given): a push whose answer
        was lost is recognised by a newer version on Kaggle and never sent twice."""
        folder = Path(folder)
        meta = json.loads((folder / "kernel-metadata.json").read_text())
        kernel = str(meta.get("id"))
        if before is None:
            before = self.current_version(kernel)
        timeout = meta.get("session_timeout_seconds") or self.kc.session_timeout_seconds

        def executed() -> PushResult | None:
            version = self.current_version(kernel)
            return PushResult(kernel, "", version) if version > before else None

        with contextlib.redirect_stdout(io.StringIO()):
            resp = self._call(f"push {kernel}", self.api.kernels_push, str(folder),
                              timeout=str(int(timeout)) if timeout else None, context="kernel", executed=executed)
        if isinstance(resp, PushResult):
            return resp
        if getattr(resp, "error", None):
            raise KaggleError(f"push {meta.get('id')}: Kaggle refused the kernel: {resp.error}")
        bad = []
        for kind in ("dataset", "competition", "kernel", "model"):
            invalid = list(getattr(resp, f"invalid_{kind}_sources", None) or [])
            if invalid:
                bad.append(f"{kind} sources {', '.join(invalid)}")
        if bad:
            raise KaggleError(
                f"push {meta.get('id')}: Kaggle does not know (or you cannot access) the {'; '.join(bad)}; "
                "fix kaggle.*_sources in the config (competitions need their rules accepted on the website)"
            )
        return PushResult(str(resp.ref or meta.get("id")), str(resp.url or ""), resp.version_number)

    def current_version(self, kernel: str) -> int:
        """The kernel's current version number on Kaggle; 0 when it does not exist (yet)."""
        from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelRequest

        owner, slug = split_kernel(kernel)
        req = ApiGetKernelRequest()
        req.user_name, req.kernel_slug = owner, slug

        resp = self._rpc(f"version of {kernel}", lambda kaggle: kaggle.kernels.kernels_api_client.get_kernel(req),
                         context="kernel", missing_ok=True)
        if resp is None or resp.metadata is None:
            return 0
        return int(resp.metadata.current_version_number or 0)

    def status(self, kernel: str) -> KernelStatus:
        """The kernel's latest session state."""
        from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelSessionStatusRequest

        owner, slug = split_kernel(kernel)
        req = ApiGetKernelSessionStatusRequest()
        req.user_name, req.kernel_slug = owner, slug

        resp = self._rpc(f"status of {kernel}",
                         lambda kaggle: kaggle.kernels.kernels_api_client.get_kernel_session_status(req),
                         context="kernel")
        state = getattr(resp.status, "name", str(resp.status))
        return KernelStatus(state, resp.failure_message or "")

    def wait(self, kernel: str, on_poll: Callable[[KernelStatus], None] | None = None,
             stop: threading.Event | None = None) -> KernelStatus:
        """Poll the kernel until it finishes; KernelFailed with the failure message on ERROR or cancel,
        KaggleError when timeout_minutes pass (Stopped once `stop` is set)."""

        def finished(st: KernelStatus) -> bool:
            if st.state in DONE_STATES and st.state != "COMPLETE":
                raise KernelFailed(kernel, st)
            return st.state == "COMPLETE"

        return self.poll(lambda: self.status(kernel), finished, on_poll,
                         lambda st: f"kernel {kernel} still {st.state} after {self.kc.timeout_minutes:g} minutes",
                         stop=stop)

    def wait_all(self, kernels: list[str],
                 on_poll: Callable[[str], Callable[[KernelStatus], None] | None] | None = None) -> dict[str, KernelStatus]:
        """Poll every kernel at once (one thread each) until all complete; the first failure (ERROR, cancel,
        timeout) is raised as soon as it is seen, and the other waits stop."""
        if len(kernels) <= 1:
            return {k: self.wait(k, on_poll(k) if on_poll else None) for k in kernels}
        stop = threading.Event()
        done: queue.Queue = queue.Queue()

        def work(kernel: str) -> None:
            try:
                done.put((kernel, self.wait(kernel, on_poll(kernel) if on_poll else None, stop=stop), None))
            except BaseException as exc:  # handed to the waiting thread
                done.put((kernel, None, exc))

        self.api  # connect once, before the threads share the client
        for kernel in kernels:
            threading.Thread(target=work, args=(kernel,), name=f"segkit poll {kernel}", daemon=True).start()
        results: dict[str, KernelStatus] = {}
        try:
            while len(results) < len(kernels):
                kernel, status, exc = done.get()
                if exc is not None:
                    raise exc
                results[kernel] = status
        finally:
            stop.set()
        return {k: results[k] for k in kernels}

    def poll(self, fetch: Callable[[], T | None], finished: Callable[[T], bool],
             on_poll: Callable[[T], None] | None, timeout_message: Callable[[T | None], str],
             stop: threading.Event | None = None) -> T:
        """Call fetch until `finished` accepts what it returns (it raises on failure; None means not there
        yet), waiting poll_seconds, then 1.5 times longer each time up to max_backoff_seconds; KaggleError
        with timeout_message(last) once timeout_minutes have passed."""
        interval = self.kc.poll_seconds
        deadline = self.clock() + 60 * self.kc.timeout_minutes
        while True:
            if stop is not None and stop.is_set():
                raise Stopped("stopped: another wait failed")
            item = fetch()
            if item is not None:
                if on_poll:
                    on_poll(item)
                if finished(item):
                    return item
            if self.clock() + interval > deadline:
                raise KaggleError(timeout_message(item))
            if stop is not None and self.sleep is time.sleep:
                stop.wait(interval)
            else:
                self.sleep(interval)
            interval = min(interval * 1.5, max(self.kc.poll_seconds, self.kc.max_backoff_seconds))

    def output_files(self, kernel: str) -> tuple[list[tuple[str, str]], str]:
        """(file name, download URL) of every output file of the kernel's latest run, and its log."""
        from kagglesdk.kernels.types.kernels_api_service import ApiListKernelSessionOutputRequest

        owner, slug = split_kernel(kernel)
        files: list[tuple[str, str]] = []
        log_text, token = "", None
        while True:
            req = ApiListKernelSessionOutputRequest()
            req.user_name, req.kernel_slug = owner, slug
            if token:
                req.page_token = token
            resp = self._rpc(f"output of {kernel}",
                             lambda kaggle, req=req: kaggle.kernels.kernels_api_client.list_kernel_session_output(req),
                             context="kernel")
            files += [(f.file_name, f.url) for f in resp.files or [] if f.file_name and f.url]
            log_text = log_text or (resp.log or "")
            token = resp.next_page_token
            if not token:
                return files, log_text

    def kernel_log(self, kernel: str) -> str:
        """The log of the kernel's latest run, as text (Kaggle's JSON stream records rendered)."""
        from kagglesdk.kernels.types.kernels_api_service import ApiListKernelSessionOutputRequest

        owner, slug = split_kernel(kernel)
        req = ApiListKernelSessionOutputRequest()
        req.user_name, req.kernel_slug = owner, slug

        resp = self._rpc(f"log of {kernel}",
                         lambda kaggle: kaggle.kernels.kernels_api_client.list_kernel_session_output(req),
                         context="kernel")
        return render_log(resp.log or "")

    def output_file(self, kernel: str, name: str, target: str | Path, version: int | None = None) -> Path:
        """Download one output file of kernel version `version` (default: the latest run) to target."""
        from kagglesdk.kernels.types.kernels_api_service import ApiDownloadKernelOutputRequest

        owner, slug = split_kernel(kernel)
        req = ApiDownloadKernelOutputRequest()
        req.owner_slug, req.kernel_slug, req.file_path = owner, slug, name
        if version:
            req.version_number = int(version)
        which = f" version {version}" if version else ""
        return self._rpc(f"output {name} of {kernel}{which}",
                         lambda kaggle: kaggle.kernels.kernels_api_client.download_kernel_output(req),
                         context="output", save_to=Path(target))

    def output(self, kernel: str, out_dir: str | Path, pattern: str | None = None) -> list[Path]:
        """Download the kernel's output files (and its log) into out_dir, checking each arrived whole and is
        not an error page; files are written atomically."""
        import re

        out_dir = Path(out_dir)
        files, log_text = self.output_files(kernel)
        if pattern:
            files = [(n, u) for n, u in files if re.search(pattern, n)]
        written = []
        for name, url in files:
            target = safe_target(out_dir, name)
            self._call(f"download {name}", download, url, target, context="download")
            written.append(target)
        if log_text:
            target = out_dir / f"{split_kernel(kernel)[1]}.log"
            with atomic_write(target) as fh:
                fh.write(log_text)
            written.append(target)
        return written

    # --- competitions -----------------------------------------------------------------------

    def data_files(self, competition: str) -> list[str]:
        """The names of the competition's data files (every page)."""
        from kagglesdk.competitions.types.competition_api_service import ApiListDataFilesRequest

        names: list[str] = []
        token = None
        while True:
            req = ApiListDataFilesRequest()
            req.competition_name = competition
            if token:
                req.page_token = token
            resp = self._rpc(f"data files of {competition}",
                             lambda kaggle, req=req: kaggle.competitions.competition_api_client.list_data_files(req),
                             context="submit")
            names += [f.name for f in resp.files or [] if f.name]
            token = resp.next_page_token
            if not token:
                return names

    def download_data_file(self, competition: str, name: str, target: str | Path) -> Path:
        """Download one data file of the competition to target (atomically, checked)."""
        from kagglesdk.competitions.types.competition_api_service import ApiDownloadDataFileRequest

        req = ApiDownloadDataFileRequest()
        req.competition_name, req.file_name = competition, name
        return self._rpc(f"download {name} of {competition}",
                         lambda kaggle: kaggle.competitions.competition_api_client.download_data_file(req),
                         context="submit", save_to=Path(target))

    def submit(self, competition: str, path: str | Path, message: str, before: set[int] | None = None) -> int:
        """Upload a submission file (StartSubmissionUpload, PUT the bytes, CreateSubmission); its ref.

        `before` are the refs listed before submitting (asked when not given): a CreateSubmission whose answer
        was lost is found in ListSubmissions (a new ref with this description and file name) and not sent again."""
        import requests
        from kagglesdk.competitions.types.competition_api_service import (
            ApiCreateSubmissionRequest,
            ApiStartSubmissionUploadRequest,
        )

        path = Path(path)
        data = path.read_bytes()
        if before is None:
            before = {s.ref for s in self.submissions(competition)}
        start = ApiStartSubmissionUploadRequest()
        start.competition_name = competition
        start.file_name = path.name
        start.content_length = len(data)
        start.last_modified_epoch_seconds = int(path.stat().st_mtime)

        what = f"submit to {competition}"
        upload = self._rpc(what, lambda kaggle: kaggle.competitions.competition_api_client
                           .start_submission_upload(start), context="submit")
        if not upload.create_url or not upload.token:
            raise KaggleError(f"{what}: Kaggle gave no upload address")

        def put():
            resp = requests.put(upload.create_url, data=data, timeout=600)
            if resp.status_code not in (200, 201):
                resp.raise_for_status()
                raise KaggleError(f"{what}: the upload was answered with HTTP {resp.status_code}")

        self._call(f"{what} (upload)", put, context="upload")
        create = ApiCreateSubmissionRequest()
        create.competition_name = competition
        create.blob_file_tokens = upload.token
        create.submission_description = message

        resp = self._rpc(what, lambda kaggle: kaggle.competitions.competition_api_client.create_submission(create),
                         context="submit",
                         executed=lambda: self.find_submission(competition, before, message, path.name))
        return resp if isinstance(resp, int) else self._submitted(what, resp)

    def submit_code(self, competition: str, kernel: str, version: int | None, file_name: str, message: str,
                    before: set[int] | None = None) -> int:
        """Submit a kernel version's output file to a code competition; its ref (`before` as for submit)."""
        from kagglesdk.competitions.types.competition_api_service import ApiCreateCodeSubmissionRequest

        owner, slug = split_kernel(kernel)
        req = ApiCreateCodeSubmissionRequest()
        req.competition_name = competition
        req.kernel_owner, req.kernel_slug = owner, slug
        if version:
            req.kernel_version = int(version)
        req.file_name = file_name
        req.submission_description = message

        if before is None:
            before = {s.ref for s in self.submissions(competition)}
        what = f"submit {kernel} to {competition}"
        resp = self._rpc(what, lambda kaggle: kaggle.competitions.competition_api_client.create_code_submission(req),
                         context="submit", executed=lambda: self.find_submission(competition, before, message))
        return resp if isinstance(resp, int) else self._submitted(what, resp)

    def find_submission(self, competition: str, before: set[int], message: str,
                        file_name: str | None = None) -> int | None:
        """The ref of a submission not among `before` with this description (and file name), if Kaggle lists one."""
        for sub in self.submissions(competition):
            if sub.ref not in before and (sub.description or "") == message and \
                    (file_name is None or not sub.file_name or sub.file_name == file_name):
                return sub.ref
        return None

    @staticmethod
    def _submitted(what: str, resp: Any) -> int:
        message = (getattr(resp, "message", "") or "").strip()
        ref = int(getattr(resp, "ref", 0) or 0)
        if not ref and message and "success" not in message.lower():
            raise KaggleError(f"{what}: Kaggle refused the submission: {message}")
        return ref

    def submissions(self, competition: str) -> list[Submission]:
        """The newest submissions to the competition (ListSubmissions, first page)."""
        from kagglesdk.competitions.types.competition_api_service import ApiListSubmissionsRequest

        req = ApiListSubmissionsRequest()
        req.competition_name = competition
        req.page = 1

        resp = self._rpc(f"submissions of {competition}",
                         lambda kaggle: kaggle.competitions.competition_api_client.list_submissions(req),
                         context="submit")
        return [
            Submission(
                ref=int(s.ref or 0), status=getattr(s.status, "name", str(s.status)),
                public_score=s.public_score, private_score=s.private_score,
                error_description=s.error_description, description=s.description, file_name=s.file_name,
                date=str(s.date) if s.date else None,
            )
            for s in resp.submissions or []
        ]

    def wait_for_score(self, competition: str, ref: int,
                       on_poll: Callable[[Submission], None] | None = None) -> Submission:
        """Poll ListSubmissions until submission `ref` (the newest when ref is 0) is scored; KaggleError with
        Kaggle's error description when scoring fails."""

        def fetch() -> Submission | None:
            subs = self.submissions(competition)
            return next((s for s in subs if s.ref == ref), None) if ref else (subs[0] if subs else None)

        def finished(sub: Submission) -> bool:
            if sub.status == "ERROR":
                raise KaggleError(
                    f"submission {sub.ref} to {competition} failed: {sub.error_description or 'no description'}"
                )
            return sub.status == "COMPLETE"

        return self.poll(fetch, finished, on_poll, lambda _: (
            f"submission {ref} to {competition} not scored after {self.kc.timeout_minutes:g} min"))


# --- helpers ---------------------------------------------------------------------------------

def render_log(raw: str) -> str:
    """A kernel log as text: Kaggle sends a JSON list of {stream_name, time, data} records; other text is kept."""
    text = raw.strip()
    if text.startswith("["):
        try:
            records = json.loads(text)
            if isinstance(records, list) and all(isinstance(r, dict) for r in records):
                return "".join(str(r.get("data", "")) for r in records)
        except ValueError:
            pass
    return raw


def log_tail(text: str, lines: int = 30) -> list[str]:
    """The last `lines` non-empty lines of a log."""
    return [line for line in text.splitlines() if line.strip()][-lines:]


def split_kernel(kernel: str) -> tuple[str, str]:
    """owner/slug -> (owner, slug), with the client's rules."""
    parts = str(kernel).split("/")
    if len(parts) != 2 or not all(parts):
        raise KaggleError(f"kernel '{kernel}': expected OWNER/SLUG")
    if len(parts[1]) < 5:
        raise KaggleError(f"kernel '{kernel}': a kernel slug has at least 5 characters")
    return parts[0], parts[1]


def attempts(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _http_details(exc: Exception) -> tuple[int | None, str, float | None]:
    """(status code, server message, Retry-After seconds) of an HTTPError; a JSON body's `code` wins."""
    resp = getattr(exc, "response", None)
    code = getattr(resp, "status_code", None)
    message = str(exc)
    retry_after = None
    if resp is not None:
        try:
            body = resp.json()
            if isinstance(body, dict):
                if isinstance(body.get("code"), int) and body["code"] >= 400:
                    code = body["code"]
                message = str(body.get("message") or message)
        except ValueError:
            pass
        try:
            retry_after = float(resp.headers.get("Retry-After"))
        except (TypeError, ValueError):
            retry_after = None
    message = message.split(" for url:")[0].strip()
    return code, message[:300], retry_after


def explain(what: str, code: int | None, message: str, context: str) -> str:
    """A message that says what a 4xx means for this call."""
    detail = f" (Kaggle said: {message})" if message else ""
    if context == "download":
        return (f"{what}: the file server answered HTTP {code}{detail}; the output links expire, "
                "run the command again (and check the kernel's latest run finished)")
    if context == "upload":
        return (f"{what}: Kaggle's file storage refused the upload (HTTP {code}){detail}; the upload link may "
                "have expired or been refused: run the same command again (this is not about the rules)")
    if context == "output" and code == 404:
        return (f"{what}: not found (HTTP 404){detail}; that kernel version has no such output (let it "
                "finish: segkit kernel status OWNER/SLUG --wait; or check the version and file name)")
    if code == 401:
        return f"{what}: Kaggle rejected the credentials (HTTP 401){detail}; {SETUP_HELP}"
    if code == 403:
        if context == "submit":
            return (
                f"{what}: forbidden (HTTP 403){detail}. Accept the competition's rules on its Kaggle page "
                "(they cannot be accepted through the API), and check the competition slug"
            )
        return (
            f"{what}: forbidden (HTTP 403){detail}; the kernel belongs to another account or is private, "
            "or the slug is wrong"
        )
    if code == 404:
        thing = "competition" if context == "submit" else "kernel"
        return f"{what}: not found (HTTP 404){detail}; check the {thing} slug"
    return f"{what}: Kaggle refused the request (HTTP {code}){detail}"


def safe_target(out_dir: Path, name: str) -> Path:
    """out_dir/name, refusing names that would escape out_dir."""
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise KaggleError(f"output file '{name}': refusing a path outside {out_dir}")
    return out_dir / rel


def download(url: str, target: Path) -> None:
    """GET url into target atomically; KaggleError when the answer is an error status, an HTML error page
    instead of the file, or shorter than announced."""
    import requests

    with requests.get(url, stream=True, timeout=600) as resp:
        save_response(resp, target, url)


def save_response(resp, target: Path, url: str | None = None) -> None:
    """Write a streamed HTTP response's body to target atomically, refusing error statuses, HTML error pages
    and short bodies."""
    url = url or getattr(resp, "url", "")
    resp.raise_for_status()
    ctype = resp.headers.get("Content-Type", "")
    if "text/html" in ctype and target.suffix.lower() not in (".html", ".htm"):
        raise KaggleError(f"download {target.name}: got an HTML page instead of the file ({url})")
    size = 0
    html_ok = target.suffix.lower() in (".html", ".htm")
    with atomic_write(target, "wb") as fh:
        for chunk in resp.iter_content(1 << 20):
            if size == 0 and not html_ok and chunk[:512].lstrip().lower().startswith((b"<!doctype html", b"<html")):
                raise KaggleError(f"download {target.name}: got an HTML error page instead of the file ({url})")
            fh.write(chunk)
            size += len(chunk)
        expected = resp.headers.get("Content-Length")
        if expected is not None and "gzip" not in resp.headers.get("Content-Encoding", "") \
                and int(expected) != size:
            raise KaggleError(f"download {target.name}: got {size} of {expected} bytes")
