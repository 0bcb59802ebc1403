"""The Kaggle workflows called from Python (as a notebook would), through the real kaggle client against the
fake server: what they return, what the server received, and the progress they report."""
import subprocess
import sys

import pytest

from fake_kaggle import FAKE_USER, Reply, fake_kaggle, kaggle_env  # noqa: F401  (fixtures)
from segkit.config import config_from_dict
from segkit.errors import ConfigError, KaggleError, SubmissionError
from segkit.kaggle import workflows
from segkit.kaggle.api import KaggleClient
from segkit.kaggle.config import KaggleConfig

KAGGLE = {"owner": FAKE_USER, "slug": "unit-folds", "competition": "some-seg-comp",
          "dataset_sources": ["someone/some-data"]}


def cfg(**kaggle):
    return config_from_dict({"name": "unit", "data": {"competition": "cloud38"}, "train": {"folds": 3},
                             "kaggle": {**KAGGLE, **kaggle}})


def fast_client(waits=None, now=None):
    """A real client that records its waits instead of sleeping (and reads a fake clock when given one)."""
    waits = [] if waits is None else waits

    def sleep(s):
        waits.append(s)
        if now is not None:
            now[0] += s

    kc = KaggleConfig(retries=1, backoff_seconds=1, max_backoff_seconds=4, poll_seconds=1, timeout_minutes=1)
    return KaggleClient(kc, sleep=sleep, **({"clock": lambda: now[0]} if now is not None else {}))


def calls(fake):
    """The API calls received, without the GetKernel version checks before each push."""
    return [r.call.split("/")[-1] for r in fake.received if r.path.startswith("/v1/") and r.call.split("/")[-1] != "GetKernel"]


def test_build_kernels_from_a_config_name_and_a_config(tmp_path):
    built = workflows.build_kernels("demo", tmp_path / "a", folds=[0], owner="someone", infer=False)
    assert [b.folder.name for b in built] == ["segkit-demo-fold0"] and (built[0].folder / "train.py").is_file()
    built = workflows.build_kernels(cfg(), tmp_path / "b", folds="0,2")
    assert [b.metadata["id"] for b in built] == [f"{FAKE_USER}/unit-folds-fold0", f"{FAKE_USER}/unit-folds-fold2",
                                                 f"{FAKE_USER}/unit-folds-infer"]
    assert built[-1].metadata["kernel_sources"] == [f"{FAKE_USER}/unit-folds-fold{k}" for k in range(3)]
    assert workflows.describe(built[0])[0].startswith(f"built {built[0].folder}: train.py (")
    with pytest.raises(ConfigError, match="--folds"):
        workflows.build_kernels(cfg(), tmp_path / "c", folds=[3])


def test_push_folds_pushes_the_folds_waits_then_pushes_inference(kaggle_env, tmp_path):
    kaggle_env.versions[f"{FAKE_USER}/unit-folds-fold2"] = 1  # pushed by an earlier push-folds --folds 2
    kaggle_env.kernel_states["unit-folds-fold1"] = [("RUNNING", ""), ("RUNNING", ""), ("COMPLETE", "")]
    lines, waits = [], []
    result = workflows.push_folds(cfg(), folds=[0, 1], out_dir=tmp_path, client=fast_client(waits),
                                  progress=lines.append)
    assert [r.ref for r in result.pushed] == [f"/code/{FAKE_USER}/unit-folds-fold0",
                                              f"/code/{FAKE_USER}/unit-folds-fold1",
                                              f"/code/{FAKE_USER}/unit-folds-infer"]
    assert not result.infer_pending and result.infer_done.version == 1
    assert calls(kaggle_env) == ["SaveKernel"] * 2 + ["GetKernelSessionStatus"] * 5 + ["SaveKernel"]
    assert sorted(waits) == [1, 1.5]  # fold 1 polled twice more while RUNNING (folds 0 and 2: COMPLETE at once)
    assert f"{FAKE_USER}/unit-folds-fold1: RUNNING" in lines and f"{FAKE_USER}/unit-folds-fold1: COMPLETE" in lines
    assert lines.count(f"{FAKE_USER}/unit-folds-fold1: RUNNING") == 1  # a state is reported when it changes
    assert f"{FAKE_USER}/unit-folds-fold2: COMPLETE" in lines  # the earlier fold is waited for too
    quiet_lines = []
    workflows.push_folds(cfg(), folds=[0], out_dir=tmp_path, client=fast_client(), progress=quiet_lines.append,
                         quiet=True, again=True)
    assert not any(line.endswith(": COMPLETE") for line in quiet_lines)
    assert any(line.startswith("pushed ") for line in quiet_lines)


def test_push_folds_without_wait_leaves_inference_pending_and_a_failed_fold_stops_it(kaggle_env, tmp_path):
    result = workflows.push_folds(cfg(), out_dir=tmp_path, wait=False, client=fast_client(), progress=None)
    assert result.infer_pending and len(result.pushed) == 3
    assert calls(kaggle_env) == ["SaveKernel"] * 3
    kaggle_env.received.clear()
    kaggle_env.kernel_states["unit-folds-fold0"] = [("ERROR", "Kernel ran out of time")]
    kaggle_env.kernel_states["unit-folds-fold1"] = kaggle_env.kernel_states["unit-folds-fold2"] = [("RUNNING", "")]
    with pytest.raises(KaggleError, match="unit-folds-fold0 ended with ERROR: Kernel ran out of time"):
        workflows.push_folds(cfg(), out_dir=tmp_path, client=fast_client(now=[0.0]), progress=None, again=True)
    assert calls(kaggle_env)[:3] == ["SaveKernel"] * 3 and "SaveKernel" not in calls(kaggle_env)[3:]
    dry = workflows.push_folds(cfg(), out_dir=tmp_path / "dry", dry_run=True, client=fast_client(), progress=None)
    assert dry.pushed == [] and (tmp_path / "dry" / "unit-folds-infer" / "kernel-metadata.json").is_file()
    assert "SaveKernel" not in calls(kaggle_env)[3:]


def test_kernel_status_wait_and_output(kaggle_env, tmp_path):
    kernel = f"{FAKE_USER}/unit-folds-fold0"
    kaggle_env.kernel_states["unit-folds-fold0"] = [("ERROR", "CUDA out of memory")]
    st = workflows.kernel_status(kernel, client=fast_client())
    assert (st.state, st.failure_message) == ("ERROR", "CUDA out of memory")  # a state, not a failure
    with pytest.raises(KaggleError, match="CUDA out of memory"):
        workflows.wait_for_kernel(kernel, client=fast_client(), progress=None)
    kaggle_env.files["submission.csv"] = Reply(200, raw=b"id,EncodedPixels\n", content_type="text/csv")
    kaggle_env.files["model.keras"] = Reply(200, raw=b"PK\x03\x04", content_type="application/octet-stream")
    got = workflows.kernel_output(kernel, tmp_path, pattern=r"\.csv$", client=fast_client())
    assert sorted(p.name for p in got) == ["submission.csv", "unit-folds-fold0.log"]
    assert (tmp_path / "submission.csv").read_bytes() == b"id,EncodedPixels\n"


def test_submit_a_file_and_wait_for_the_score(kaggle_env, tmp_path):
    sub = tmp_path / "submission.csv"
    sub.write_bytes(b"id,EncodedPixels\npatch_1,1 5 9 2\npatch_2,\n")
    lines = []
    done = workflows.submit(cfg(), sub, message="fold ensemble v1", client=fast_client(), progress=lines.append,
                            use_sample=False)
    assert (done.competition, done.ref, done.file) == ("some-seg-comp", 4242, sub)
    assert done.scored.public_score == "0.8765" and done.scored.status == "COMPLETE"
    assert kaggle_env.uploads["blobtoken1"] == sub.read_bytes()
    assert kaggle_env.calls("CreateSubmission")[0].json["submissionDescription"] == "fold ensemble v1"
    assert lines == ["warning: --no-sample: ids were not checked against the competition's sample submission",
                     f"{sub}: valid cloud38 submission", f"uploaded {sub} to some-seg-comp (ref 4242)",
                     "submission 4242: PENDING", "submission 4242: COMPLETE"]
    no_wait = workflows.submit(cfg(), sub, message="again", wait=False, client=fast_client(), progress=None,
                               again=True)
    assert no_wait.scored is None and no_wait.ref == 4243


def test_submit_refuses_an_invalid_file_and_code_competitions_submit_the_kernel(kaggle_env, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"ImageId,Pixels\na,1 5\n")
    with pytest.raises(SubmissionError, match="not a valid cloud38 submission; not submitted"):
        workflows.submit(cfg(), bad, message="x", client=fast_client(), progress=None, use_sample=False)
    assert kaggle_env.received == []
    kaggle_env.version_files[7] = {"submission.csv": Reply(200, raw=b"id,EncodedPixels\na,1 5\n",
                                                           content_type="text/csv")}
    done = workflows.submit(cfg(code_competition=True), message="code sub", version=7, client=fast_client(),
                            progress=None)
    assert (done.kernel, done.version, done.ref) == (f"{FAKE_USER}/unit-folds-infer", 7, 4343)
    assert kaggle_env.calls("CreateCodeSubmission")[0].json["kernelVersion"] == 7
    assert kaggle_env.calls("StartSubmissionUpload") == []


def test_a_score_that_never_comes_times_out(kaggle_env, tmp_path):
    kaggle_env.submission_states = [{"status": "PENDING"}]
    sub = tmp_path / "s.csv"
    sub.write_bytes(b"id,EncodedPixels\na,1 5\n")
    now = [0.0]
    with pytest.raises(KaggleError, match="submission 4242 to some-seg-comp not scored after 1 min"):
        workflows.submit(cfg(), sub, message="x", client=fast_client(now=now), progress=None, use_sample=False)
    # polled at 0, 1, 2.5, 4.75, 8.125 s (the interval growing 1.5 times), then every 4 s (max_backoff) to 56.125 s,
    # after the one listing before submitting
    assert len(kaggle_env.calls("ListSubmissions")) == 1 + 17
    assert now[0] == pytest.approx(56.125)


def test_importing_the_workflows_imports_neither_the_kaggle_client_nor_keras():
    code = ("import sys, segkit.kaggle.workflows; "
            "print(sorted(m for m in ('kaggle', 'kagglesdk', 'keras', 'tensorflow', 'jax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
