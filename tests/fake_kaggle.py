"""A small fake Kaggle API server for the tests: the real kaggle client talks to it over HTTP on 127.0.0.1.

It answers the calls of ../shared/notes/kaggle-api.md (POST /v1/<service>/<Method> with JSON bodies), the upload
PUT and the file downloads, records every request, and can be scripted to answer with errors. The fixture
`kaggle_env` points the client at it by overriding kagglesdk's PROD endpoint (read each time a client is
built), gives it fake credentials in a temporary KAGGLE_CONFIG_DIR and HOME, and routes any other HTTPS
traffic to a closed local port, so no test can reach the real network."""
from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

FAKE_USER = "fakeuser"
FAKE_KEY = "f0e1d2c3b4a5968778695a4b3c2d1e0f"
FAKE_TOKEN = "KGAT_faketoken0123456789abcdef"


@dataclass
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body or b"{}")

    @property
    def call(self) -> str:
        """`Service/Method` of an API call, else the path."""
        parts = self.path.split("/")
        return "/".join(parts[-2:]) if self.path.startswith("/v1/") else self.path


@dataclass
class Reply:
    """A scripted answer: status, JSON body, headers (raw bytes and content type for files)."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    content_type: str = "application/json"


class FakeKaggle:
    """The server's state: what it received, what it answers."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.scripts: dict[str, list[Reply]] = {}  # call -> replies used in order before the default
        self.kernel_states: dict[str, list[tuple[str, str]]] = {}  # slug -> [(status, failureMessage)]
        self.files: dict[str, Reply] = {}  # output file name -> what GET /files/<name> answers
        self.log = "kernel log line 1\nkernel log line 2\n"
        self.uploads: dict[str, bytes] = {}
        self.submission_states: list[dict] = [{"status": "PENDING"}, {"status": "COMPLETE", "publicScore": "0.8765"}]
        self.versions: dict[str, int] = {}  # "owner/slug" -> current version (GetKernel; SaveKernel adds one)
        self.pushed: dict[str, list[dict]] = {}  # "owner/slug" -> every SaveKernel body, one per version
        self.logs: dict[str, str] = {}  # kernel slug -> its log (default `log`)
        self.version_files: dict[int, dict[str, Reply]] = {}  # version -> output name -> reply (DownloadKernelOutput)
        self.data_files: dict[str, bytes] = {}  # competition data file name -> bytes (ListDataFiles/DownloadDataFile)
        self.submissions: list[dict] = []  # created submissions, newest first (ListSubmissions)
        self.next_ref = {"file": 4242, "code": 4343}
        self.upload_names: dict[str, str] = {}  # upload token -> the file name StartSubmissionUpload gave
        self.after: dict[str, list[Reply]] = {}  # call -> replies sent AFTER executing it (executed, then 5xx)
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    def __enter__(self) -> "FakeKaggle":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- scripting ----------------------------------------------------------------------------

    def script(self, call: str, *replies: Reply) -> None:
        """Answer the next calls of `Service/Method` (e.g. 'KernelsApiService/SaveKernel') with `replies`."""
        self.scripts.setdefault(call, []).extend(replies)

    def fail_after(self, call: str, *replies: Reply) -> None:
        """Execute the next calls of `call` as usual, then answer `replies` instead of the result (the request
        reached Kaggle, the answer did not reach the client)."""
        self.after.setdefault(call, []).extend(replies)

    def calls(self, call: str) -> list[Received]:
        """Every request whose `service.Service/Method` (or path) ends with `call`, in order."""
        return [r for r in self.received if r.call.endswith(call)]

    # --- answering ----------------------------------------------------------------------------

    def answer(self, req: Received) -> Reply:
        with self.lock:
            self.received.append(req)
            queue = next((q for key, q in self.scripts.items() if req.call.endswith(key) and q), None)
            if queue:
                return queue.pop(0)
        if req.method == "PUT" and req.path.startswith("/upload/"):
            self.uploads[req.path.rsplit("/", 1)[1]] = req.body
            return Reply(200, {})
        if req.method == "GET" and req.path.startswith("/files/v"):
            version, name = req.path[len("/files/v"):].split("/", 1)
            return self.version_files.get(int(version), {}).get(name, Reply(404, {"code": 404, "message": "no such file"}))
        if req.method == "GET" and req.path.startswith("/files/"):
            name = req.path[len("/files/"):]
            return self.files.get(name, Reply(404, {"code": 404, "message": "no such file"}))
        if req.method == "GET" and req.path.startswith("/data/"):
            name = req.path[len("/data/"):]
            if name not in self.data_files:
                return Reply(404, {"code": 404, "message": "no such data file"})
            return Reply(200, raw=self.data_files[name], content_type="application/octet-stream")
        if not self.authorised(req):
            return Reply(401, {"code": 401, "message": "Unauthenticated"})
        handler = getattr(self, "do_" + req.call.split("/")[-1], None)
        if handler is None:
            return Reply(404, {"code": 404, "message": f"unknown call {req.call}"})
        reply = handler(req.json)
        with self.lock:
            after = next((q for key, q in self.after.items() if req.call.endswith(key) and q), None)
            if after:
                return after.pop(0)
        return reply

    def authorised(self, req: Received) -> bool:
        auth = req.headers.get("Authorization", "")
        basic = "Basic " + base64.b64encode(f"{FAKE_USER}:{FAKE_KEY}".encode()).decode()
        return auth in (basic, f"Bearer {FAKE_TOKEN}") or req.call.endswith("IntrospectToken")

    def do_IntrospectToken(self, body: dict) -> Reply:
        ok = body.get("token") == FAKE_TOKEN
        return Reply(200, {"active": ok, "username": "tokenuser" if ok else ""})

    def do_SaveKernel(self, body: dict) -> Reply:
        slug = body.get("slug", "")
        self.versions[slug] = self.versions.get(slug, 0) + 1
        self.pushed.setdefault(slug, []).append(body)
        path = "/code/" + slug
        return Reply(200, {"ref": path, "url": self.url + path, "versionNumber": self.versions[slug]})

    def do_GetKernel(self, body: dict) -> Reply:
        kernel = f"{body.get('userName', '')}/{body.get('kernelSlug', '')}"
        if kernel not in self.versions:
            return Reply(404, {"code": 404, "message": "Kernel not found"})
        last = (self.pushed.get(kernel) or [{}])[-1]
        return Reply(200, {"metadata": {"ref": kernel, "slug": body.get("kernelSlug"), "title": last.get("newTitle", ""),
                                        "currentVersionNumber": self.versions[kernel]},
                           "blob": {"source": last.get("text", "")}})

    def do_DownloadKernelOutput(self, body: dict) -> Reply:
        version = body.get("versionNumber")
        where = f"/files/v{version}/" if version else "/files/"
        return Reply(302, {}, {"Location": self.url + where + body.get("filePath", "")})

    def do_ListDataFiles(self, body: dict) -> Reply:
        return Reply(200, {"files": [{"ref": n, "name": n, "totalBytes": len(b)} for n, b in self.data_files.items()]})

    def do_DownloadDataFile(self, body: dict) -> Reply:
        return Reply(302, {}, {"Location": f"{self.url}/data/{body.get('fileName', '')}"})

    def do_GetKernelSessionStatus(self, body: dict) -> Reply:
        states = self.kernel_states.get(body.get("kernelSlug", ""), [("COMPLETE", "")])
        status, message = states.pop(0) if len(states) > 1 else states[0]
        reply = {"status": status}
        if message:
            reply["failureMessage"] = message
        return Reply(200, reply)

    def do_ListKernelSessionOutput(self, body: dict) -> Reply:
        names = sorted(self.files)
        half = (len(names) + 1) // 2  # two pages when there are two files or more
        if not body.get("pageToken"):
            log = self.logs.get(body.get("kernelSlug", ""), self.log)
            return Reply(200, {"files": [self._file(n) for n in names[:half]], "log": log,
                               **({"nextPageToken": "page2"} if names[half:] else {})})
        return Reply(200, {"files": [self._file(n) for n in names[half:]]})

    def _file(self, name: str) -> dict:
        return {"url": f"{self.url}/files/{name}", "fileName": name}

    def do_StartSubmissionUpload(self, body: dict) -> Reply:
        self.upload_names["blobtoken1"] = body.get("fileName", "")
        return Reply(200, {"token": "blobtoken1", "createUrl": f"{self.url}/upload/blobtoken1"})

    def _create(self, kind: str, body: dict) -> Reply:
        ref = self.next_ref[kind]
        self.next_ref[kind] += 1
        self.submissions.insert(0, {"ref": ref, "description": body.get("submissionDescription", ""),
                                    "fileName": body.get("fileName") or self.upload_names.get(
                                        body.get("blobFileTokens", ""), "submission.csv"),
                                    "states": [dict(s) for s in self.submission_states]})
        return Reply(200, {"message": "Successfully submitted", "ref": ref})

    def do_CreateSubmission(self, body: dict) -> Reply:
        return self._create("file", body)

    def do_CreateCodeSubmission(self, body: dict) -> Reply:
        return self._create("code", body)

    def do_ListSubmissions(self, body: dict) -> Reply:
        """Every created submission (newest first), each moving through `submission_states` as it is listed,
        then an older scored one."""
        listed = []
        for sub in self.submissions:
            states = sub["states"]
            state = states.pop(0) if len(states) > 1 else states[0]
            listed.append({"ref": sub["ref"], "description": sub["description"], "fileName": sub["fileName"],
                           **state})
        older = {"ref": 1, "status": "COMPLETE", "publicScore": "0.1", "description": "old"}
        return Reply(200, {"submissions": [*listed, older]})


def _handler(fake: FakeKaggle):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            req = Received(self.command, self.path.split("?")[0], dict(self.headers.items()), body)
            reply = fake.answer(req)
            data = reply.raw if reply.raw is not None else json.dumps(reply.body or {}).encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(data)))
            for k, v in reply.headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _serve

        def log_message(self, *args) -> None:  # keep test output clean
            pass

    return Handler


def isolate_kaggle_env(monkeypatch, tmp_path: Path, endpoint: str) -> Path:
    """Fresh HOME and KAGGLE_CONFIG_DIR without credentials, the client's PROD endpoint at `endpoint`, no
    proxies for 127.0.0.1 and every other HTTP(S) request sent to a closed port. Returns the config dir."""
    from kagglesdk import kaggle_env

    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_API_ENVIRONMENT",
                "KAGGLE_KERNEL_RUN_TYPE", "VERBOSE", "VERBOSE_OUTPUT", "XDG_CONFIG_HOME",
                "http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    cfg_dir = tmp_path / "kaggle-config"
    home.mkdir()
    cfg_dir.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(cfg_dir))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # anything not local fails at once
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    assert endpoint.startswith("http://127.0.0.1:")
    monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.PROD, endpoint)
    return cfg_dir


def write_kaggle_json(cfg_dir: Path, mode: int = 0o600) -> Path:
    """The fake legacy key as kaggle.json with the given permissions."""
    path = cfg_dir / "kaggle.json"
    path.write_text(json.dumps({"username": FAKE_USER, "key": FAKE_KEY}))
    path.chmod(mode)
    return path


@pytest.fixture
def fake_kaggle():
    """A running fake server (no environment changes)."""
    with FakeKaggle() as fake:
        yield fake


@pytest.fixture
def kaggle_env(fake_kaggle, monkeypatch, tmp_path):
    """The real client pointed at the fake server, with the fake legacy key in kaggle.json (mode 600), run in a
    fresh working folder with a fresh download cache."""
    cfg_dir = isolate_kaggle_env(monkeypatch, tmp_path, fake_kaggle.url)
    write_kaggle_json(cfg_dir)
    work = tmp_path / "work"  # run folders (and their Kaggle state) of relative runs_dir land here
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("SEGKIT_CACHE_DIR", str(tmp_path / "segkit-cache"))
    return fake_kaggle
