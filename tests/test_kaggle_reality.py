"""Issue 12: the Kaggle workflows against what really happens (interrupted commands, fold kernels pushed in
several goes, one fold failing first, answers lost after the server acted, storage refusals, versions, sample
files, logs, missing packages), through the real kaggle client against the fake server. Each numbered case of
the issue is named in its test."""
import io
import json
import threading
import time
import zipfile

import pytest

from fake_kaggle import FAKE_USER, Reply, fake_kaggle, kaggle_env  # noqa: F401  (fixtures)
from segkit.cli import main
from segkit.config import config_from_dict, load_config
from segkit.errors import KaggleError, SubmissionError
from segkit.kaggle import workflows
from segkit.kaggle.api import KaggleClient
from segkit.kaggle.config import KaggleConfig
from segkit.runs import RunDir

KAGGLE = {"owner": FAKE_USER, "slug": "unit-folds", "competition": "some-seg-comp",
          "dataset_sources": ["someone/some-data"]}
SAVE, STATUS, GET = "KernelsApiService/SaveKernel", "KernelsApiService/GetKernelSessionStatus", "KernelsApiService/GetKernel"
CREATE, LIST = "CompetitionApiService/CreateSubmission", "CompetitionApiService/ListSubmissions"
GOOD = b"id,EncodedPixels\npatch_1,1 5 9 2\npatch_2,\n"


def cfg(tmp_path, folds=3, **kaggle):
    return config_from_dict({"name": "unit", "data": {"competition": "cloud38"}, "train": {"folds": folds},
                             "output": {"runs_dir": str(tmp_path / "runs")}, "kaggle": {**KAGGLE, **kaggle}})


def fast_client(waits=None, now=None, sleep_for=0.0, **kc):
    waits = [] if waits is None else waits
    lock = threading.Lock()

    def sleep(s):
        with lock:
            waits.append(s)
            if now is not None:
                now[0] += s
        if sleep_for:
            time.sleep(sleep_for)

    settings = dict(retries=2, backoff_seconds=1, max_backoff_seconds=4, poll_seconds=1, timeout_minutes=10)
    settings.update(kc)
    return KaggleClient(KaggleConfig(**settings), sleep=sleep, **({"clock": lambda: now[0]} if now is not None else {}))


def saved(fake, slug):
    return [r for r in fake.calls(SAVE) if r.json["slug"] == f"{FAKE_USER}/{slug}"]


# --- 1. the inference kernel refers only to fold kernels that exist, and waits for each -----------------

def test_1_push_folds_subset_on_a_fresh_account_does_not_push_inference(kaggle_env, tmp_path):
    lines = []
    result = workflows.push_folds(cfg(tmp_path), folds="0-1", out_dir=tmp_path / "b", client=fast_client(),
                                  progress=lines.append)
    assert [len(saved(kaggle_env, f"unit-folds-fold{k}")) for k in range(3)] == [1, 1, 0]
    assert saved(kaggle_env, "unit-folds-infer") == []
    assert result.infer_pending and result.missing_folds == [2]
    assert any("fold 2" in line and "--folds 2" in line for line in lines)


def test_1_push_folds_after_an_earlier_push_waits_for_the_earlier_folds_too(kaggle_env, tmp_path):
    workflows.push_folds(cfg(tmp_path), folds="2", out_dir=tmp_path / "b", client=fast_client(), progress=None)
    kaggle_env.kernel_states["unit-folds-fold2"] = [("RUNNING", ""), ("RUNNING", ""), ("COMPLETE", "")]
    workflows.push_folds(cfg(tmp_path), folds="0-1", out_dir=tmp_path / "b", client=fast_client(), progress=None)
    polled = [r.json["kernelSlug"] for r in kaggle_env.calls(STATUS)]
    assert polled.count("unit-folds-fold2") == 3  # waited until the earlier fold finished
    (infer,) = saved(kaggle_env, "unit-folds-infer")
    assert infer.json["kernelDataSources"] == [f"{FAKE_USER}/unit-folds-fold{k}" for k in range(3)]
    last_status = max(i for i, r in enumerate(kaggle_env.received) if r.call.endswith(STATUS))
    assert kaggle_env.received.index(infer) > last_status


# --- 2. reruns are idempotent -------------------------------------------------------------------------------

def test_2_rerun_push_folds_resumes_instead_of_pushing_again(kaggle_env, tmp_path):
    kaggle_env.kernel_states["unit-folds-fold1"] = [("ERROR", "killed")]
    with pytest.raises(KaggleError, match="fold1"):
        workflows.push_folds(cfg(tmp_path), out_dir=tmp_path / "b", client=fast_client(), progress=None)
    assert sum(len(saved(kaggle_env, f"unit-folds-fold{k}")) for k in range(3)) == 3
    kaggle_env.kernel_states["unit-folds-fold1"] = [("COMPLETE", "")]  # (say the user restarted it by hand)
    lines = []
    workflows.push_folds(cfg(tmp_path), out_dir=tmp_path / "b", client=fast_client(), progress=lines.append)
    assert [len(saved(kaggle_env, f"unit-folds-fold{k}")) for k in range(3)] == [1, 1, 1]  # no second push
    assert len(saved(kaggle_env, "unit-folds-infer")) == 1
    assert any("already pushed" in line and "--again" in line for line in lines)
    state = json.loads(RunDir.of(cfg(tmp_path)).kaggle_pushes.read_text())
    assert state["kernels"][f"{FAKE_USER}/unit-folds-fold0"]["version"] == 1
    workflows.push_folds(cfg(tmp_path), folds="0", out_dir=tmp_path / "b", client=fast_client(), progress=None,
                         again=True)
    assert len(saved(kaggle_env, "unit-folds-fold0")) == 2  # --again pushes a new version
    assert len(saved(kaggle_env, "unit-folds-infer")) == 2


def test_2_push_interrupted_after_the_server_saved_it_is_adopted_on_rerun(kaggle_env, tmp_path):
    c = cfg(tmp_path, folds=2)

    class Interrupt(BaseException):
        pass

    def interrupted(*a, **k):
        raise Interrupt()

    kaggle_env.fail_after(SAVE, Reply(500, {"code": 500, "message": "lost"}))
    client = fast_client()
    original = client._wait
    client._wait = interrupted  # Ctrl-C while waiting to check
    with pytest.raises(Interrupt):
        workflows.push_folds(c, folds="0", out_dir=tmp_path / "b", client=client, progress=None, infer=False)
    client._wait = original
    lines = []
    workflows.push_folds(c, folds="0", out_dir=tmp_path / "b", client=fast_client(), progress=lines.append,
                         infer=False)
    assert len(saved(kaggle_env, "unit-folds-fold0")) == 1
    assert any("reached Kaggle" in line for line in lines)


def test_2_rerun_submit_resumes_waiting_instead_of_submitting_again(kaggle_env, tmp_path, capsys):
    sub = tmp_path / "submission.csv"
    sub.write_bytes(GOOD)
    kaggle_env.submission_states = [{"status": "PENDING"}] * 3 + [{"status": "COMPLETE", "publicScore": "0.9"}]
    now = [0.0]
    with pytest.raises(KaggleError, match="not scored"):  # the wait is cut short (as a Ctrl-C would)
        workflows.submit(cfg(tmp_path), sub, message="v1", client=fast_client(now=now, timeout_minutes=0.02),
                         progress=None, use_sample=False)
    assert len(kaggle_env.calls(CREATE)) == 1
    lines = []
    done = workflows.submit(cfg(tmp_path), sub, message="v1", client=fast_client(), progress=lines.append,
                            use_sample=False)
    assert len(kaggle_env.calls(CREATE)) == 1 and done.ref == 4242 and done.scored.public_score == "0.9"
    assert any("already submitted" in line and "--again" in line for line in lines)
    again = workflows.submit(cfg(tmp_path), sub, message="v2", client=fast_client(), progress=None,
                             use_sample=False, again=True, wait=False)
    assert again.ref == 4243 and len(kaggle_env.calls(CREATE)) == 2


def test_2_submit_interrupted_after_kaggle_created_it_is_found_on_rerun(kaggle_env, tmp_path):
    sub = tmp_path / "submission.csv"
    sub.write_bytes(GOOD)

    class Interrupt(BaseException):
        pass

    def interrupted(*a, **k):
        raise Interrupt()

    kaggle_env.fail_after(CREATE, Reply(500, {"code": 500, "message": "lost"}))
    client = fast_client()
    client._wait = interrupted  # Ctrl-C while waiting to retry
    with pytest.raises(Interrupt):
        workflows.submit(cfg(tmp_path), sub, message="v1", client=client, progress=None, use_sample=False)
    lines = []
    done = workflows.submit(cfg(tmp_path), sub, message="v1", client=fast_client(), progress=lines.append,
                            use_sample=False, wait=False)
    assert len(kaggle_env.calls(CREATE)) == 1 and done.ref == 4242 and done.resumed
    state = json.loads(RunDir.of(cfg(tmp_path)).kaggle_submissions.read_text())
    assert [r["ref"] for r in state["submissions"].values()] == [4242]


def test_2_submit_command_rerun_does_not_submit_twice(kaggle_env, tmp_path, capsys):
    sub = tmp_path / "submission.csv"
    sub.write_bytes(GOOD)
    args = ["submit", str(sub), "--competition", "some-seg-comp", "--format", "cloud38", "-m", "x", "--no-sample",
            "--no-wait"]
    assert main(args) == 0 and main(args) == 0
    assert len(kaggle_env.calls(CREATE)) == 1
    assert "already submitted" in capsys.readouterr().out
    assert main([*args, "--again"]) == 0
    assert len(kaggle_env.calls(CREATE)) == 2


# --- 3. fold kernels are polled together; the first failure stops the wait -----------------------------------

def test_3_fold_polling_is_concurrent_and_fails_fast(kaggle_env, tmp_path):
    kaggle_env.kernel_states["unit-folds-fold0"] = [("RUNNING", "")]  # runs for ever
    kaggle_env.kernel_states["unit-folds-fold2"] = [("RUNNING", ""), ("ERROR", "CUDA out of memory")]
    kaggle_env.logs["unit-folds-fold2"] = "".join(f"line {i}\n" for i in range(100)) + "Traceback: OOM\n"
    lines = []
    with pytest.raises(KaggleError) as info:
        workflows.push_folds(cfg(tmp_path), out_dir=tmp_path / "b", client=fast_client(now=[0.0], sleep_for=0.001),
                             progress=lines.append)
    assert "unit-folds-fold2 ended with ERROR: CUDA out of memory" in str(info.value)
    assert saved(kaggle_env, "unit-folds-infer") == []
    # the kernel log: its tail printed, the whole saved beside the run
    log = RunDir.of(cfg(tmp_path)).kaggle_logs / "unit-folds-fold2.log"
    assert log.read_text() == kaggle_env.logs["unit-folds-fold2"]
    assert str(log) in str(info.value)
    assert "Traceback: OOM" in lines and "line 99" in lines and "line 10" not in lines


# --- 4. session_timeout_seconds is sent -----------------------------------------------------------------------

def test_4_session_timeout_is_sent(kaggle_env, tmp_path):
    workflows.push_folds(cfg(tmp_path, session_timeout_seconds=3600), folds="0", out_dir=tmp_path / "b",
                         client=fast_client(), progress=None, infer=False)
    assert saved(kaggle_env, "unit-folds-fold0")[0].json["sessionTimeoutSeconds"] == 3600


# --- 5. titles follow the slug ---------------------------------------------------------------------------------

def test_5_overriding_the_slug_derives_titles_from_it(tmp_path):
    c = load_config("kaggle_example", ["kaggle.slug=my-experiment", f"kaggle.owner={FAKE_USER}"])
    built = workflows.build_kernels(c, tmp_path, folds=[0])
    assert [b.metadata["title"] for b in built] == ["my experiment fold0", "my experiment infer"]
    assert any("kaggle.title" in w for w in built[0].warnings)
    same = workflows.build_kernels(load_config("kaggle_example", [f"kaggle.owner={FAKE_USER}"]), tmp_path, folds=[0])
    assert same[0].metadata["title"] == "segkit cloud38 fold0" and same[0].warnings == []


def test_5_a_title_that_would_give_another_slug_is_refused(kaggle_env, tmp_path):
    built = workflows.build_kernel(cfg(tmp_path), "unit-folds-fold0", out_dir=tmp_path)
    meta = json.loads((built.folder / "kernel-metadata.json").read_text())
    meta["title"] = "segkit cloud38 fold0"
    (built.folder / "kernel-metadata.json").write_text(json.dumps(meta))
    with pytest.raises(KaggleError, match="title .* set 'title' to 'unit folds fold0'"):
        workflows.push_kernel(built.folder, client=fast_client())
    assert kaggle_env.calls(SAVE) == []


# --- 6. a storage refusal is not blamed on the rules --------------------------------------------------------

def test_6_storage_403_is_not_about_the_rules(kaggle_env, tmp_path, capsys):
    kaggle_env.script("/upload/blobtoken1", Reply(403, {"code": 403, "message": "SignatureDoesNotMatch"}))
    sub = tmp_path / "s.csv"
    sub.write_bytes(GOOD)
    rc = main(["submit", str(sub), "--competition", "some-seg-comp", "--format", "cloud38", "-m", "x", "--no-sample"])
    err = capsys.readouterr().err
    assert rc == 1 and "storage" in err and "Accept the competition's rules" not in err
    assert "SignatureDoesNotMatch" in err and "run the same command again" in err
    assert kaggle_env.calls(CREATE) == []


# --- 7. create calls the server executed are not repeated ---------------------------------------------------

def test_7_create_submission_executed_then_500_is_not_repeated(kaggle_env, tmp_path):
    sub = tmp_path / "s.csv"
    sub.write_bytes(GOOD)
    kaggle_env.fail_after(CREATE, Reply(502, {"code": 502, "message": "bad gateway"}))
    done = workflows.submit(cfg(tmp_path), sub, message="m1", client=fast_client(), progress=None, use_sample=False)
    assert len(kaggle_env.calls(CREATE)) == 1 and done.ref == 4242
    assert len(kaggle_env.submissions) == 1


def test_7_create_submission_not_executed_is_retried(kaggle_env, tmp_path):
    sub = tmp_path / "s.csv"
    sub.write_bytes(GOOD)
    kaggle_env.script(CREATE, Reply(503, {"code": 503, "message": "unavailable"}))
    done = workflows.submit(cfg(tmp_path), sub, message="m1", client=fast_client(), progress=None, use_sample=False,
                            wait=False)
    assert len(kaggle_env.calls(CREATE)) == 2 and done.ref == 4242 and len(kaggle_env.submissions) == 1


def test_7_kernel_push_executed_then_500_is_not_repeated(kaggle_env, tmp_path):
    built = workflows.build_kernel(cfg(tmp_path), "unit-folds-fold0", out_dir=tmp_path)
    kaggle_env.fail_after(SAVE, Reply(500, {"code": 500, "message": "oops"}))
    result = workflows.push_kernel(built.folder, client=fast_client())
    assert len(kaggle_env.calls(SAVE)) == 1 and result.version == 1
    kaggle_env.script(SAVE, Reply(500, {"code": 500, "message": "oops"}))  # not executed: pushed again
    assert workflows.push_kernel(built.folder, client=fast_client()).version == 2
    assert len(kaggle_env.calls(SAVE)) == 3 and kaggle_env.versions[f"{FAKE_USER}/unit-folds-fold0"] == 2


# --- 8. submit --version N validates version N's output ------------------------------------------------------

def test_8_code_submission_validates_the_version_it_submits(kaggle_env, tmp_path):
    kernel = f"{FAKE_USER}/unit-folds-infer"
    kaggle_env.versions[kernel] = 4
    kaggle_env.version_files[3] = {"submission.csv": Reply(200, raw=GOOD, content_type="text/csv")}
    kaggle_env.version_files[4] = {"submission.csv": Reply(200, raw=b"bad,header\n", content_type="text/csv")}
    kaggle_env.files["submission.csv"] = Reply(200, raw=b"bad,header\n", content_type="text/csv")
    c = cfg(tmp_path, code_competition=True)
    done = workflows.submit(c, message="v3", version=3, client=fast_client(), progress=None, use_sample=False)
    assert done.version == 3 and kaggle_env.calls("CreateCodeSubmission")[0].json["kernelVersion"] == 3
    with pytest.raises(SubmissionError, match="version 4"):
        workflows.submit(c, message="latest", client=fast_client(), progress=None, use_sample=False)
    assert len(kaggle_env.calls("CreateCodeSubmission")) == 1


# --- 9. the sample submission is fetched and used ------------------------------------------------------------

def test_9_sample_fetched_cached_and_used(kaggle_env, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGKIT_CACHE_DIR", str(tmp_path / "cache"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("sample_submission.csv", "id,EncodedPixels\npatch_1,1 1\npatch_2,1 1\npatch_3,1 1\n")
    kaggle_env.data_files = {"train.zip": b"x", "sample_submission.csv.zip": buf.getvalue()}
    sub = tmp_path / "s.csv"
    sub.write_bytes(GOOD)  # two of the three ids
    with pytest.raises(SubmissionError, match="patch_3"):
        workflows.submit(cfg(tmp_path), sub, message="x", client=fast_client(), progress=None)
    assert kaggle_env.calls(CREATE) == []
    assert [r.json["fileName"] for r in kaggle_env.calls("DownloadDataFile")] == ["sample_submission.csv.zip"]
    assert (tmp_path / "cache" / "kaggle" / "some-seg-comp" / "sample_submission.csv").is_file()
    sub.write_bytes(GOOD + b"patch_3,\n")
    lines = []
    workflows.submit(cfg(tmp_path), sub, message="x", client=fast_client(), progress=lines.append, wait=False)
    assert len(kaggle_env.calls("DownloadDataFile")) == 1  # cached
    assert any("ids checked against" in line for line in lines)


def test_9_no_sample_warns_and_a_competition_without_one_says_so(kaggle_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEGKIT_CACHE_DIR", str(tmp_path / "cache"))
    sub = tmp_path / "s.csv"
    sub.write_bytes(GOOD)
    lines = []
    workflows.submit(cfg(tmp_path), sub, message="x", client=fast_client(), progress=lines.append, wait=False)
    assert any(line.startswith("warning:") and "ids were not checked" in line for line in lines)
    rc = main(["submit", str(sub), "--competition", "other-comp", "--format", "cloud38", "-m", "y", "--no-sample",
               "--no-wait"])
    out = capsys.readouterr().out
    assert rc == 0 and "warning: --no-sample: ids were not checked" in out
    assert kaggle_env.calls("ListDataFiles") and len(kaggle_env.calls("ListDataFiles")) == 1


# --- the kernel log on ERROR, submissions, --wait REF ------------------------------------------------------

def test_kernel_status_wait_prints_the_log_tail_on_error(kaggle_env, capsys):
    kaggle_env.kernel_states["unit-folds-fold0"] = [("ERROR", "boom")]
    kaggle_env.logs["unit-folds-fold0"] = json.dumps([{"stream_name": "stdout", "time": 1, "data": "epoch 1\n"},
                                                      {"stream_name": "stderr", "time": 2, "data": "ValueError: x\n"}])
    rc = main(["kernel", "status", f"{FAKE_USER}/unit-folds-fold0", "--wait"])
    out, err = capsys.readouterr()
    assert rc == 1 and "boom" in err
    assert "epoch 1" in out and "ValueError: x" in out


def test_submissions_list_and_wait_for_a_ref(kaggle_env, tmp_path, capsys):
    sub = tmp_path / "s.csv"
    sub.write_bytes(GOOD)
    assert main(["submit", str(sub), "--competition", "some-seg-comp", "--format", "cloud38", "-m", "first try",
                 "--no-sample", "--no-wait"]) == 0
    capsys.readouterr()
    assert main(["submissions", "--competition", "some-seg-comp"]) == 0
    out = capsys.readouterr().out
    assert "4242" in out and "PENDING" in out and "first try" in out and "0.1" in out
    kaggle_env.submissions[0]["states"] = [{"status": "PENDING"}, {"status": "COMPLETE", "publicScore": "0.77"}]
    cfgfile = tmp_path / "fast.yaml"
    cfgfile.write_text(json.dumps({"name": "unit", "kaggle": {"poll_seconds": 0.01, "max_backoff_seconds": 0.02}}))
    assert main(["submit", "--wait", "4242", "--competition", "some-seg-comp", "--config", str(cfgfile)]) == 0
    assert "score: public 0.77" in capsys.readouterr().out


# --- 10. overrides after options --------------------------------------------------------------------------------

def test_10_overrides_after_options_for_the_kaggle_commands(tmp_path, capsys):
    rc = main(["kernel", "push-folds", "--config", "kaggle_example", "--folds", "0-1", "train.folds=2",
               f"kaggle.owner={FAKE_USER}", "--dry-run", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert (tmp_path / "segkit-cloud38-fold1" / "train.py").is_file()
    meta = json.loads((tmp_path / "segkit-cloud38-infer" / "kernel-metadata.json").read_text())
    assert meta["kernel_sources"] == [f"{FAKE_USER}/segkit-cloud38-fold{k}" for k in range(2)]
