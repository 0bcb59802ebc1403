"""The Kaggle API layer against a fake server, through the real kaggle client: push, status, output, submit,
retries and the explanation of every refusal. Assertions are on what the server received."""
import json
import socket

import pytest
import yaml

from fake_kaggle import FAKE_KEY, FAKE_USER, Reply, fake_kaggle, kaggle_env  # noqa: F401  (fixtures)
from segkit.cli import main
from segkit.config import config_from_dict
from segkit.errors import KaggleError
from segkit.kaggle.api import KaggleClient
from segkit.kaggle.bundle import build_kernel
from segkit.kaggle.config import KaggleConfig

SAVE = "KernelsApiService/SaveKernel"
STATUS = "KernelsApiService/GetKernelSessionStatus"
OUTPUT = "KernelsApiService/ListKernelSessionOutput"
START = "CompetitionApiService/StartSubmissionUpload"
CREATE = "CompetitionApiService/CreateSubmission"
CODE = "CompetitionApiService/CreateCodeSubmission"
LIST = "CompetitionApiService/ListSubmissions"

KAGGLE = {
    "owner": FAKE_USER, "slug": "segkit-unit-test", "competition": "some-seg-comp",
    "dataset_sources": ["someone/some-data"], "kernel_sources": ["someone/earlier-kernel"],
    "model_sources": ["someone/a-model/keras/default/3"], "machine_shape": "NvidiaL4",
    "retries": 2, "backoff_seconds": 0.5, "max_backoff_seconds": 4, "poll_seconds": 1,
}


def make_client(waits: list, **overrides) -> KaggleClient:
    kc = KaggleConfig(**{k: v for k, v in KAGGLE.items() if k in ("retries", "backoff_seconds",
                                                                   "max_backoff_seconds", "poll_seconds")})
    for k, v in overrides.items():
        setattr(kc, k, v)
    return KaggleClient(kc, sleep=waits.append)


@pytest.fixture
def built(tmp_path):
    cfg = config_from_dict({"name": "unit", "train": {"folds": 3}, "kaggle": dict(KAGGLE)})
    return build_kernel(cfg, "segkit-unit-test-fold1", "train", 1, tmp_path / "build")


@pytest.fixture
def fast_config(tmp_path):
    """A config file whose kaggle: section makes the CLI retry and poll without waiting."""
    path = tmp_path / "fast.yaml"
    path.write_text(yaml.safe_dump({"name": "unit", "data": {"competition": "cloud38"}, "kaggle": {
        **KAGGLE, "backoff_seconds": 0.01, "max_backoff_seconds": 0.02, "poll_seconds": 0.01}}))
    return path


# --- push -------------------------------------------------------------------------------------

def test_push_sends_the_built_script_and_configured_metadata(kaggle_env, built):
    result = make_client([]).push(built.folder)
    (call,) = kaggle_env.calls(SAVE)
    body = call.json
    assert body["text"] == built.code_file.read_text()
    assert body["slug"] == f"{FAKE_USER}/segkit-unit-test-fold1"
    assert body["newTitle"] == "segkit unit test fold1"
    assert body["enableInternet"] is False
    assert body["enableGpu"] is True and body["machineShape"] == "NvidiaL4"
    assert body["isPrivate"] is True
    assert body["language"] == "python" and body["kernelType"] == "script"
    assert body["datasetDataSources"] == ["someone/some-data"]
    assert body["competitionDataSources"] == ["some-seg-comp"]
    assert body["kernelDataSources"] == ["someone/earlier-kernel"]
    assert body["modelDataSources"] == ["someone/a-model/keras/default/3"]
    assert call.headers["Authorization"].startswith("Basic ")
    assert FAKE_KEY not in body["text"]
    assert result.version == 1 and result.url.endswith("/code/" + body["slug"])


def test_push_error_in_the_response_is_an_error(kaggle_env, built, capsys):
    kaggle_env.script(SAVE, Reply(200, {"error": "Notebook title is already in use"}))
    with pytest.raises(KaggleError, match="Notebook title is already in use"):
        make_client([]).push(built.folder)
    kaggle_env.script(SAVE, Reply(200, {"error": "Notebook title is already in use"}))
    assert main(["kernel", "push", str(built.folder)]) == 1
    assert "Notebook title is already in use" in capsys.readouterr().err


def test_push_invalid_sources_are_an_error(kaggle_env, built):
    kaggle_env.script(SAVE, Reply(200, {"ref": "/code/x", "url": "u", "versionNumber": 3,
                                        "invalidDatasetSources": ["someone/some-data"],
                                        "invalidModelSources": ["someone/a-model/keras/default/3"]}))
    with pytest.raises(KaggleError, match="dataset sources someone/some-data; model sources someone/a-model"):
        make_client([]).push(built.folder)


def test_a_500_then_success_is_retried_once(kaggle_env, built):
    kaggle_env.script(SAVE, Reply(500, {"code": 500, "message": "backend hiccup"}))
    waits = []
    result = make_client(waits).push(built.folder)
    assert result.version == 1
    assert len(kaggle_env.calls(SAVE)) == 2
    assert waits == [0.5]


def test_a_500_that_never_ends_gives_up_after_the_retries(kaggle_env, built):
    kaggle_env.script(SAVE, *[Reply(503, {"code": 503, "message": "unavailable"})] * 3)
    waits = []
    with pytest.raises(KaggleError, match="HTTP 503 3 times: unavailable; try again later"):
        make_client(waits).push(built.folder)
    assert len(kaggle_env.calls(SAVE)) == 3
    assert waits == [0.5, 1.0]


def test_429_honours_retry_after_and_backoff_is_capped(kaggle_env, built):
    kaggle_env.script(SAVE, Reply(429, {"code": 429, "message": "slow down"}, {"Retry-After": "3"}),
                      *[Reply(502, {"code": 502, "message": "bad gateway"})] * 4)
    waits = []
    make_client(waits, retries=5, backoff_seconds=1.0, max_backoff_seconds=4.0).push(built.folder)
    assert waits == [3.0, 2.0, 4.0, 4.0, 4.0]  # Retry-After, then 1*2^k capped at 4
    assert len(kaggle_env.calls(SAVE)) == 6


def test_push_command_retries_a_500_then_succeeds(kaggle_env, built, fast_config, capsys):
    kaggle_env.script(SAVE, Reply(500, {"code": 500, "message": "oops"}))
    assert main(["kernel", "push", str(built.folder), "--config", str(fast_config)]) == 0
    assert "version 1" in capsys.readouterr().out
    assert len(kaggle_env.calls(SAVE)) == 2


# --- status -----------------------------------------------------------------------------------

def test_status_polling_stops_on_complete(kaggle_env):
    kaggle_env.kernel_states["segkit-unit-test"] = [("QUEUED", ""), ("RUNNING", ""), ("RUNNING", ""),
                                                    ("COMPLETE", "")]
    waits, seen = [], []
    st = make_client(waits).wait(f"{FAKE_USER}/segkit-unit-test", on_poll=lambda s: seen.append(s.state))
    assert st.state == "COMPLETE"
    assert seen == ["QUEUED", "RUNNING", "RUNNING", "COMPLETE"]
    assert waits == [1, 1.5, 2.25]  # polling interval grows
    calls = kaggle_env.calls(STATUS)
    assert len(calls) == 4
    assert calls[0].json == {"userName": FAKE_USER, "kernelSlug": "segkit-unit-test"}


def test_status_error_fails_with_the_failure_message(kaggle_env, fast_config, capsys):
    kaggle_env.kernel_states["segkit-unit-test"] = [("RUNNING", ""), ("ERROR", "CUDA out of memory")]
    with pytest.raises(KaggleError, match="ended with ERROR: CUDA out of memory"):
        make_client([]).wait(f"{FAKE_USER}/segkit-unit-test")
    kaggle_env.kernel_states["segkit-unit-test"] = [("RUNNING", ""), ("ERROR", "CUDA out of memory")]
    rc = main(["kernel", "status", f"{FAKE_USER}/segkit-unit-test", "--wait", "--config", str(fast_config)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "RUNNING" in out and "CUDA out of memory" in err and "Traceback" not in err


def test_status_without_wait_reports_once(kaggle_env, capsys):
    kaggle_env.kernel_states["segkit-unit-test"] = [("RUNNING", "")]
    assert main(["kernel", "status", f"{FAKE_USER}/segkit-unit-test"]) == 0
    assert capsys.readouterr().out.strip() == f"{FAKE_USER}/segkit-unit-test: RUNNING"
    assert len(kaggle_env.calls(STATUS)) == 1


def test_status_gives_up_after_the_timeout(kaggle_env):
    kaggle_env.kernel_states["segkit-unit-test"] = [("RUNNING", "")]
    now = [0.0]
    client = KaggleClient(KaggleConfig(poll_seconds=60, max_backoff_seconds=60, timeout_minutes=5),
                          sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0])
    with pytest.raises(KaggleError, match="still RUNNING after 5 minutes"):
        client.wait(f"{FAKE_USER}/segkit-unit-test")
    assert len(kaggle_env.calls(STATUS)) == 6  # at 0, 60, ... 300 s


def test_404_and_403_are_explained(kaggle_env):
    kaggle_env.script(STATUS, Reply(404, {"code": 404, "message": "Kernel not found"}))
    with pytest.raises(KaggleError, match="not found.*check the kernel slug"):
        make_client([]).status(f"{FAKE_USER}/no-such-kernel")
    kaggle_env.script(STATUS, Reply(403, {"code": 403, "message": "Permission 'kernels.get' was denied"}))
    with pytest.raises(KaggleError, match="forbidden.*another account or is private"):
        make_client([]).status("someone/private-kernel")


# --- output -----------------------------------------------------------------------------------

def test_output_downloads_every_page_and_the_log(kaggle_env, tmp_path):
    files = {"submission.csv": b"id,EncodedPixels\na,1 2\n", "runs/unit/unet/fold_0/best.keras": bytes(range(256)) * 40,
             "runs/unit/unet/fold_0/history.csv": b"epoch,loss\n1,0.5\n"}
    for name, data in files.items():
        kaggle_env.files[name] = Reply(200, raw=data, content_type="application/octet-stream")
    written = make_client([]).output(f"{FAKE_USER}/segkit-unit-test", tmp_path / "out")
    for name, data in files.items():
        assert (tmp_path / "out" / name).read_bytes() == data
    assert (tmp_path / "out" / "segkit-unit-test.log").read_text() == kaggle_env.log
    assert len(written) == 4
    pages = kaggle_env.calls(OUTPUT)
    assert [p.json.get("pageToken") for p in pages] == [None, "page2"]


def test_output_refuses_an_error_page_saved_as_a_file(kaggle_env, tmp_path, capsys):
    kaggle_env.files["best.keras"] = Reply(200, raw=b"<!DOCTYPE html><html><body>Error 500</body></html>",
                                           content_type="text/html; charset=utf-8")
    with pytest.raises(KaggleError, match="HTML"):
        make_client([]).output(f"{FAKE_USER}/segkit-unit-test", tmp_path / "out")
    assert not (tmp_path / "out" / "best.keras").exists()
    kaggle_env.files["best.keras"] = Reply(200, raw=b"  <html>oops</html>", content_type="application/octet-stream")
    assert main(["kernel", "output", f"{FAKE_USER}/segkit-unit-test", "--out", str(tmp_path / "o2")]) == 1
    assert "HTML error page" in capsys.readouterr().err


def test_output_missing_file_and_unsafe_names(kaggle_env, tmp_path):
    kaggle_env.files["a.csv"] = Reply(404, {"code": 404, "message": "gone"})
    with pytest.raises(KaggleError, match="download a.csv: the file server answered HTTP 404"):
        make_client([]).output(f"{FAKE_USER}/segkit-unit-test", tmp_path / "out")
    kaggle_env.files.clear()
    kaggle_env.files["../escape.csv"] = Reply(200, raw=b"x", content_type="text/csv")
    with pytest.raises(KaggleError, match="outside"):
        make_client([]).output(f"{FAKE_USER}/segkit-unit-test", tmp_path / "out")
    assert not (tmp_path / "escape.csv").exists()


# --- submit -----------------------------------------------------------------------------------

def write_csv(path, text):
    path.write_bytes(text.encode())
    return path


def test_submit_uploads_the_exact_bytes_and_waits_for_the_score(kaggle_env, tmp_path, fast_config, capsys):
    sub = write_csv(tmp_path / "submission.csv", "id,EncodedPixels\npatch_1_1_by_1_LC08_x,1 5 9 2\npatch_2,\n")
    rc = main(["submit", "--competition", "some-seg-comp", str(sub), "-m", "fold ensemble v1",
               "--config", str(fast_config)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    (start,) = kaggle_env.calls(START)
    assert start.json["competitionName"] == "some-seg-comp"
    assert start.json["fileName"] == "submission.csv"
    assert start.json["contentLength"] == sub.stat().st_size
    assert kaggle_env.uploads["blobtoken1"] == sub.read_bytes()
    (create,) = kaggle_env.calls(CREATE)
    assert create.json == {"competitionName": "some-seg-comp", "blobFileTokens": "blobtoken1",
                           "submissionDescription": "fold ensemble v1"}
    assert len(kaggle_env.calls(LIST)) == 3  # the refs before submitting, then PENDING, COMPLETE
    assert "score: public 0.8765" in out
    assert FAKE_KEY not in out + err


def test_submit_refuses_an_invalid_file_before_any_call(kaggle_env, tmp_path, capsys):
    sub = write_csv(tmp_path / "bad.csv", "ImageId,Pixels\na,1 5\n")
    rc = main(["submit", "--competition", "some-seg-comp", "--format", "cloud38", str(sub), "-m", "x"])
    assert rc == 1
    assert "not a valid cloud38 submission; not submitted" in capsys.readouterr().err
    assert [r.call for r in kaggle_env.received] == ["competitions.CompetitionApiService/ListDataFiles"]


def test_submit_403_says_accept_the_rules(kaggle_env, tmp_path, capsys):
    kaggle_env.script(START, Reply(403, {"code": 403, "message": "Permission denied"}))
    sub = write_csv(tmp_path / "s.csv", "id,EncodedPixels\na,1 5\n")
    rc = main(["submit", "--competition", "carvana-image-masking-challenge", "--format", "cloud38", str(sub),
               "-m", "x"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "Accept the competition's rules" in err and "check the competition slug" in err
    assert kaggle_env.uploads == {} and kaggle_env.calls(CREATE) == []


def test_submit_reports_the_scoring_error(kaggle_env, tmp_path, fast_config, capsys):
    kaggle_env.submission_states = [{"status": "ERROR", "errorDescription": "Submission has 3 rows, expected 9201"}]
    sub = write_csv(tmp_path / "s.csv", "id,EncodedPixels\na,1 5\n")
    rc = main(["submit", "--competition", "some-seg-comp", str(sub), "-m", "x", "--config", str(fast_config)])
    assert rc == 1
    assert "Submission has 3 rows, expected 9201" in capsys.readouterr().err


def test_failed_upload_is_an_error(kaggle_env, tmp_path):
    kaggle_env.script("/upload/blobtoken1", Reply(400, {"code": 400, "message": "bad upload"}))
    sub = write_csv(tmp_path / "s.csv", "id,EncodedPixels\na,1 5\n")
    with pytest.raises(KaggleError, match="upload"):
        make_client([]).submit("some-seg-comp", sub, "x")
    assert kaggle_env.calls(CREATE) == []


def test_code_competition_submits_the_kernel_after_validating_its_output(kaggle_env, tmp_path, capsys):
    cfg = tmp_path / "code.yaml"
    cfg.write_text(yaml.safe_dump({"name": "unit", "data": {"competition": "cloud38"}, "kaggle": {
        **KAGGLE, "code_competition": True, "poll_seconds": 0.01, "backoff_seconds": 0.01}}))
    kaggle_env.version_files[7] = {"submission.csv": Reply(200, raw=b"id,EncodedPixels\na,1 5\n",
                                                           content_type="text/csv"),
                                   "other.txt": Reply(200, raw=b"never fetched", content_type="text/plain")}
    kaggle_env.versions[f"{FAKE_USER}/segkit-unit-test-infer"] = 7
    rc = main(["submit", "--config", str(cfg), "-m", "code sub", "--version", "7"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    (code,) = kaggle_env.calls(CODE)
    assert code.json == {"competitionName": "some-seg-comp", "kernelOwner": FAKE_USER,
                         "kernelSlug": "segkit-unit-test-infer", "kernelVersion": 7,
                         "fileName": "submission.csv", "submissionDescription": "code sub"}
    assert [r.path for r in kaggle_env.received if r.method == "GET"] == ["/files/v7/submission.csv"]
    assert kaggle_env.calls(START) == []
    assert "score: public 0.8765" in out

    kaggle_env.versions[f"{FAKE_USER}/segkit-unit-test-infer"] = 8  # the latest version's output is checked
    kaggle_env.version_files[8] = {"submission.csv": Reply(200, raw=b"wrong,header\na,1 5\n", content_type="text/csv")}
    assert main(["submit", "--config", str(cfg), "-m", "code sub"]) == 1
    assert "not submitted" in capsys.readouterr().err
    assert len(kaggle_env.calls(CODE)) == 1


# --- network and credentials failures ---------------------------------------------------------

def test_network_failure_is_an_error_not_a_traceback(kaggle_env, monkeypatch, fast_config, capsys):
    from kagglesdk import kaggle_env as env

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setitem(env._env_to_endpoint, env.KaggleEnv.PROD, f"http://127.0.0.1:{closed}")
    waits = []
    with pytest.raises(KaggleError, match="cannot reach Kaggle .*3 times"):
        make_client(waits).status(f"{FAKE_USER}/segkit-unit-test")
    assert waits == [0.5, 1.0]
    assert main(["kernel", "status", f"{FAKE_USER}/segkit-unit-test", "--config", str(fast_config)]) == 1
    err = capsys.readouterr().err
    assert "cannot reach Kaggle" in err and "Traceback" not in err


def test_rejected_credentials_are_explained_without_the_key(kaggle_env, tmp_path, monkeypatch):
    (tmp_path / "kaggle-config" / "kaggle.json").write_text(json.dumps({"username": FAKE_USER,
                                                                        "key": "wrongkey123456789"}))
    with pytest.raises(KaggleError) as info:
        make_client([]).status(f"{FAKE_USER}/segkit-unit-test")
    assert "rejected the credentials (HTTP 401)" in str(info.value)
    assert "wrongkey123456789" not in str(info.value)
