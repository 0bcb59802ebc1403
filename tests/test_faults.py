"""Fault injection through the CLI: disk full, read-only file systems, a file where a folder should be,
`kill -9` mid-write, damaged caches, missing inputs. Each case ends in one line `segkit: error: ...` naming
the path, exit != 0, no traceback, earlier outputs intact and no temporary files left.

A full disk and a read-only folder are real: a tiny tmpfs (remounted read-only) in a private mount namespace
made with `unshare -m` (tests run as root, so chmod cannot stop a write). `kill -9` is delivered by strace at a
chosen system call of the writer (the n-th rename, the space reservation), so the kill lands mid-write every
time. Cases skip, with the reason, where the platform has neither.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segkit.cli import main
from segkit.data.cache import Cache, file_signature, fingerprint
from segkit.storage import atomic_write, sweep_stale, temp_prefix
from segkit.data.synth.cloud38 import generate
from segkit.errors import DataError

P = 16  # patch side of the synthetic 38-Cloud data
TEMP = re.compile(r"\.segkit-\d+-")  # any segkit temporary file or folder name
ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "CUDA_VISIBLE_DEVICES": ""}  # no .pyc renames under strace


# --- helpers -------------------------------------------------------------------------------------------------

def segkit(*args: str) -> list[str]:
    """The command line of `segkit -q ARGS` in this interpreter (quiet: no progress bars on stderr)."""
    return [sys.executable, "-m", "segkit", "-q", *map(str, args)]


def one_error_line(err: str, *names: object) -> str:
    """Assert stderr is exactly one `segkit: error:` line that names every one of `names`; return it."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("segkit: error: "), err
    assert "Traceback" not in err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def temporaries(folder: Path) -> list[Path]:
    """Every segkit temporary file or folder anywhere under `folder`."""
    return [p for p in folder.rglob("*") if TEMP.search(p.name)]


def _can(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.fixture(scope="session")
def namespaces(tmp_path_factory) -> None:
    """Skip unless a private mount namespace with a tmpfs can be made here (root, or user namespaces)."""
    if shutil.which("unshare") is None:
        pytest.skip("no `unshare` here: cannot make a full or read-only file system")
    probe = tmp_path_factory.mktemp("probe")
    if not _can(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe} && "
                 f"mount -o remount,ro {probe}"]):
        pytest.skip("mount namespaces are not permitted here (unshare -m + mount tmpfs failed)")


@pytest.fixture(scope="session")
def strace() -> str:
    """strace, when it can inject a signal at a system call here (ptrace permitted)."""
    path = shutil.which("strace")
    if path is None:
        pytest.skip("strace is not installed: cannot kill a writer at a chosen system call")
    if not _can([path, "-f", "-qq", "-o", "/dev/null", "-e", "trace=getppid", "-e", "inject=getppid:retval=0",
                 "true"]):
        pytest.skip("strace cannot trace here (ptrace not permitted)")
    return path


def in_namespace(mnt: Path, setup: str, cmd: list[str], after: Path, check: str = "") -> subprocess.CompletedProcess:
    """Run `cmd` in a private mount namespace where `setup` (shell) has mounted something at `mnt`; the listing of
    `mnt` afterwards is written to `after`, then the shell `check` runs (the namespace and its mounts vanish
    with the process)."""
    script = f"{setup}\n{shlex.join(cmd)}\nrc=$?\nls -A1R {mnt} > {after}\n{check}\nexit $rc\n"
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=ENV,
                          timeout=300)


def killed_at(strace: str, syscall: str, when: int, cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run `cmd` and SIGKILL it at its `when`-th `syscall` (deterministically mid-write)."""
    res = subprocess.run([strace, "-f", "-qq", "-o", "/dev/null", "-e", f"trace={syscall}",
                          "-e", f"inject={syscall}:signal=KILL:when={when}", *cmd],
                         capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)
    assert res.returncode in (-9, 137), (res.returncode, res.stderr[-2000:])
    return res


def snapshot(folder: Path) -> dict[str, bytes]:
    """Relative path -> contents of every file under `folder`."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- data ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A small synthetic 38-Cloud dataset (16-px patches) shared by the cases below (read only)."""
    return generate(tmp_path_factory.mktemp("faults") / "data", seed=5, patch_size=P, n_train_scenes=2,
                    n_test_scenes=2, scene_patches=(3.0, 4.0), quiet=True)


def prepare_args(data: Path, cache: Path, *more: str) -> list[str]:
    return ["prepare", "demo", f"data.root={data}", f"data.cache_dir={cache}", f"data.image_size={P}", *more]


@pytest.fixture(scope="module")
def submission(data: Path, tmp_path_factory) -> Path:
    """An all-clear submission for the synthetic test patches (scored by `segkit evaluate`)."""
    names = (data / "38-Cloud_test" / "test_patches_38-Cloud.csv").read_text().split()[1:]
    path = tmp_path_factory.mktemp("sub") / "submission.csv"
    path.write_text("id,EncodedPixels\n" + "".join(f"{n},\n" for n in names))
    return path


def evaluate_args(data: Path, submission: Path, out: Path) -> list[str]:
    return ["evaluate", "cloud38", "--submission", str(submission), "--gt-dir",
            str(data / "38-Cloud_test" / "Entire_scene_gts"), "--out", str(out)]


# --- a full disk ---------------------------------------------------------------------------------------------

def test_disk_full_during_prepare(namespaces, data: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    setup = f"mount -t tmpfs -o size=16k tmpfs {mnt} && echo keep > {mnt}/earlier.txt || exit 99"
    res = in_namespace(mnt, setup, segkit(*prepare_args(data, mnt / "cache")), tmp_path / "after.txt")
    line = one_error_line(res.stderr, mnt / "cache" / f"cloud38-train-{P}x{P}", "no space left on device")
    assert re.search(r"needs \d+\.\d MB, \d+\.\d MB free", line)
    after = (tmp_path / "after.txt").read_text()
    assert "earlier.txt" in after and not TEMP.search(after)


def test_disk_full_during_synth(namespaces, tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    setup = f"mount -t tmpfs -o size=96k tmpfs {mnt} && echo keep > {mnt}/earlier.txt || exit 99"
    res = in_namespace(mnt, setup, segkit("synth", "cloud38", "--out", mnt / "d", "--patch-size", 64),
                       tmp_path / "after.txt")
    one_error_line(res.stderr, f"{mnt / 'd'}:", "no space left on device")
    assert res.returncode == 1
    after = (tmp_path / "after.txt").read_text()
    assert "earlier.txt" in after and not TEMP.search(after) and "38-Cloud" not in after


def test_disk_full_writing_outputs_keeps_the_old_ones(namespaces, data: Path, submission: Path,
                                                      tmp_path: Path) -> None:
    """`evaluate --out` on a full disk (the same atomic writer writes predict's submission.csv)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    setup = (f"mount -t tmpfs -o size=24k tmpfs {mnt} && mkdir {mnt}/out && echo old > {mnt}/out/scene_metrics.csv"
             f" && head -c 20000 /dev/zero > {mnt}/filler || exit 99")
    cmd = segkit(*evaluate_args(data, submission, mnt / "out"), "--no-previews")
    res = in_namespace(mnt, setup, cmd, tmp_path / "after.txt", f"cp {mnt}/out/scene_metrics.csv {tmp_path}/old.csv")
    one_error_line(res.stderr, mnt / "out" / "scene_metrics.csv", "no space left on device")
    after = (tmp_path / "after.txt").read_text()
    assert "scene_metrics.csv" in after and not TEMP.search(after)
    assert (tmp_path / "old.csv").read_text() == "old\n"


# --- a read-only file system, a file where a folder should be ------------------------------------------------

@pytest.mark.parametrize("case", ["synth", "prepare", "evaluate"])
def test_read_only_file_system(namespaces, case: str, data: Path, submission: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "ro"
    mnt.mkdir()
    setup = f"mount -t tmpfs -o size=1m tmpfs {mnt} && echo keep > {mnt}/earlier.txt && mount -o remount,ro {mnt} || exit 99"
    target, cmd = {
        "synth": (mnt / "d", segkit("synth", "cloud38", "--out", mnt / "d", "--patch-size", P)),
        "prepare": (mnt / "cache", segkit(*prepare_args(data, mnt / "cache"))),
        "evaluate": (mnt / "out", segkit(*evaluate_args(data, submission, mnt / "out"))),
    }[case]
    res = in_namespace(mnt, setup, cmd, tmp_path / "after.txt")
    one_error_line(res.stderr, target, "read-only file system")
    assert (tmp_path / "after.txt").read_text().split() == [f"{mnt}:", "earlier.txt"]


def test_out_under_a_file(data: Path, submission: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder\n")
    for args in (["synth", "cloud38", "--out", blocker / "d", "--patch-size", P],
                 ["synth", "cloud38", "--out", blocker / "a" / "b", "--patch-size", P],
                 evaluate_args(data, submission, blocker / "eval"),
                 prepare_args(data, blocker / "cache")):
        assert main(["-q", *map(str, args)]) == 1
        one_error_line(capsys.readouterr().err, blocker, "is a file, not a folder")
    assert blocker.read_text() == "not a folder\n" and sorted(tmp_path.iterdir()) == [blocker]


def test_a_stray_os_error_is_one_line(data: Path, tmp_path: Path, capsys) -> None:
    """Last resort: an OSError no module turned into a SegkitError (here a file name longer than the file
    system allows) still ends in one line naming the file; a read error names the file too."""
    too_long = tmp_path / ("a" * 300 + ".csv")
    gts = data / "38-Cloud_test" / "Entire_scene_gts"
    assert main(["evaluate", "cloud38", "--submission", str(too_long), "--gt-dir", str(gts)]) == 1
    one_error_line(capsys.readouterr().err, too_long, "File name too long")
    assert main(["evaluate", "cloud38", "--submission", "/proc/self/mem", "--gt-dir", str(gts)]) == 1
    one_error_line(capsys.readouterr().err, "/proc/self/mem", "cannot read")


# --- kill -9 mid-write, then the next run sweeps the leftover ------------------------------------------------

def test_kill_during_synth_is_swept_by_the_next_run(strace: str, tmp_path: Path) -> None:
    out = tmp_path / "d"
    killed_at(strace, "rename", 20, segkit("synth", "cloud38", "--out", out, "--patch-size", P), tmp_path)
    left = temporaries(tmp_path)
    assert left and not out.exists()  # a half-written dataset, never in place
    res = subprocess.run(segkit("synth", "cloud38", "--out", out, "--patch-size", P), capture_output=True,
                         text=True, env=ENV, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert temporaries(tmp_path) == [] and (out / ".segkit_synth.json").is_file()


def test_kill_during_prepare_is_swept_by_the_next_run(strace: str, data: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert main(prepare_args(data, cache, "--split", "test")) == 0
    before = snapshot(cache)
    killed_at(strace, "fallocate", 1, segkit(*prepare_args(data, cache, "--split", "train")), tmp_path)
    assert [p.name.split(".segkit-")[0] for p in cache.iterdir() if TEMP.search(p.name)] == [f".cloud38-train-{P}x{P}"]
    assert {k: v for k, v in snapshot(cache).items() if not TEMP.search(k)} == before  # the test cache intact
    res = subprocess.run(segkit(*prepare_args(data, cache, "--split", "train")), capture_output=True, text=True,
                         env=ENV, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert temporaries(cache) == []
    assert sorted(p.name for p in cache.iterdir()) == [f"cloud38-test-{P}x{P}", f"cloud38-train-{P}x{P}"]
    assert len(Cache.open(cache / f"cloud38-train-{P}x{P}")) > 0


def test_kill_while_writing_a_file_keeps_the_old_one(strace: str, data: Path, submission: Path,
                                                     tmp_path: Path) -> None:
    """An atomic_write killed before its rename (as predict writing submission.csv would be)."""
    out = tmp_path / "eval"
    assert main(evaluate_args(data, submission, out)) == 0
    before = snapshot(out)
    killed_at(strace, "rename", 1, segkit(*evaluate_args(data, submission, out)), tmp_path)
    left = temporaries(out)
    assert len(left) == 1 and left[0].parent == out / "previews"
    assert {k: v for k, v in snapshot(out).items() if not TEMP.search(k)} == before
    res = subprocess.run(segkit(*evaluate_args(data, submission, out)), capture_output=True, text=True, env=ENV)
    assert res.returncode == 0, res.stderr
    assert temporaries(out) == [] and snapshot(out) == before


def test_sweep_spares_live_writers(tmp_path: Path) -> None:
    """Only temporaries whose writer is gone are swept: this process's own current ones stay."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = tmp_path / f"{temp_prefix('a.csv')}abc.tmp"
    mine.write_text("being written")
    gone = tmp_path / f".b.csv.segkit-{dead.pid}-xyz.tmp"
    gone.write_text("left by a killed writer")
    gone_dir = tmp_path / f".cache.segkit-{dead.pid}-xyz.tmp"
    gone_dir.mkdir()
    (gone_dir / "images.npy").write_bytes(b"\0" * 10)
    other = tmp_path / ".b.csv.abc123.tmp"  # not ours: never touched
    other.write_text("x")
    assert sorted(sweep_stale(tmp_path)) == sorted([gone, gone_dir])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other.name])
    with atomic_write(tmp_path / "a.csv") as fh:
        fh.write("done\n")
    assert (tmp_path / "a.csv").read_text() == "done\n"


# --- damaged caches are rebuilt with a note ------------------------------------------------------------------

def _truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 100)


def _wrong_header(path: Path) -> None:
    arr = np.load(path)
    np.save(path, arr[:, :, :, :2])  # a complete .npy, but not the shape meta.json records


@pytest.mark.parametrize("damage, says", [
    (_truncate, "truncated or torn"),
    (Path.unlink, "images.npy missing"),
    (_wrong_header, "holds shape"),
    (lambda p: p.write_bytes(b"garbage" * 100), "not a readable .npy"),
])
def test_damaged_cache_is_rebuilt_with_a_note(data: Path, tmp_path: Path, capsys, damage, says: str) -> None:
    cache = tmp_path / "cache"
    args = prepare_args(data, cache, "--split", "train")
    assert main(args) == 0
    folder = cache / f"cloud38-train-{P}x{P}"
    good = np.load(folder / "images.npy").copy()
    damage(folder / "images.npy")
    capsys.readouterr()
    with pytest.raises(DataError, match=says) as info:
        Cache.open(folder)
    assert "segkit prepare" in str(info.value)
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"cache {folder} unusable" in err and says in err and "rebuilding" in err and "Traceback" not in err
    np.testing.assert_array_equal(Cache.open(folder).images, good)
    assert temporaries(cache) == []


# --- a file rewritten in place with its size and mtime restored ----------------------------------------------

def test_touch_r_on_a_rewritten_source_does_not_keep_a_stale_cache(data: Path, tmp_path: Path) -> None:
    import tifffile

    from segkit.data.competitions.base import make_adapter
    from segkit.data.cache import prepare

    root = tmp_path / "data"
    shutil.copytree(data, root)
    adapter = make_adapter("cloud38", root, {"stratify": False})
    samples = adapter.train_samples()[:4]
    red = Path(samples[0].image[0])
    rng = np.random.default_rng(0)
    tifffile.imwrite(red, rng.integers(1, 60000, (P, P), dtype=np.uint16))  # uncompressed: size fixed by shape
    first = prepare(adapter, samples, (P, P), tmp_path / "cache", "t", quiet=True)
    st, old_signature = red.stat(), file_signature(str(red))
    new = rng.integers(1, 60000, (P, P), dtype=np.uint16)
    tifffile.imwrite(red, new)
    os.utime(red, ns=(st.st_atime_ns, st.st_mtime_ns))  # `touch -r`: same size, same mtime, other content
    assert red.stat().st_size == st.st_size and red.stat().st_mtime_ns == st.st_mtime_ns
    signature = file_signature(str(red))
    assert signature[:2] == old_signature[:2] and signature[2] != old_signature[2]
    second = prepare(adapter, samples, (P, P), tmp_path / "cache", "t", quiet=True)
    assert second.meta["fingerprint"] != first.meta["fingerprint"]
    np.testing.assert_array_equal(second.images[0][..., 0], new)
    assert fingerprint(samples, (P, P), True, "Cloud38") == fingerprint(samples, (P, P), True, "Cloud38")


# --- evaluate needs the patch size --------------------------------------------------------------------------

def test_evaluate_without_test_red_asks_for_patch_size(data: Path, submission: Path, tmp_path: Path,
                                                       capsys) -> None:
    gts = tmp_path / "38-Cloud_test" / "Entire_scene_gts"
    shutil.copytree(data / "38-Cloud_test" / "Entire_scene_gts", gts)
    shutil.copy(data / "38-Cloud_test" / "test_patches_38-Cloud.csv", gts.parent)
    args = ["evaluate", "cloud38", "--submission", str(submission), "--gt-dir", str(gts), "--no-previews"]
    assert main(args) == 1
    one_error_line(capsys.readouterr().err, gts.parent, "--patch-size")
    assert main([*args, "--patch-size", str(P)]) == 0


# --- readable output ----------------------------------------------------------------------------------------

def test_tensorflow_starts_quietly_and_the_cpu_is_named_once(tmp_path: Path) -> None:
    """TensorFlow's C++ start-up lines (absl, CUDA probing, oneDNN) do not reach stderr; segkit says once that
    there is no GPU; other stderr output still comes through."""
    code = ("import sys\n"
            "from segkit.cli.console import note_device, quiet_tensorflow\n"
            "quiet_tensorflow(); note_device('training'); note_device('training')\n"
            "import tensorflow as tf\n"
            "tf.constant(1.0) + 1.0\n"
            "print('still heard', file=sys.stderr)\n")
    env = {k: v for k, v in ENV.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # segkit's own default
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "still heard\n"
    assert res.stdout == "segkit: no GPU found; training on CPU\n"


def test_synth_shows_progress_unless_quiet(tmp_path: Path, capsys) -> None:
    assert main(["synth", "cloud38", "--out", str(tmp_path / "a"), "--patch-size", str(P)]) == 0
    err = capsys.readouterr().err
    assert "synth cloud38 train" in err and "scene" in err
    assert main(["-q", "synth", "cloud38", "--out", str(tmp_path / "b"), "--patch-size", str(P)]) == 0
    assert capsys.readouterr().err == ""


# --- predict writing submission.csv (slow: trains a tiny run first) -----------------------------------------

@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory) -> Path:
    """A tiny trained run (one U-Net, 2 folds, 1 epoch on 16-px patches); returns its config file."""
    folder = tmp_path_factory.mktemp("run")
    config = folder / "tiny.yaml"
    config.write_text(
        "name: faults\nseed: 1\n"
        f"data: {{competition: cloud38, root: {data}, image_size: {P}, cache_dir: {folder / 'cache'}}}\n"
        "models: [{name: unet, tag: unet, depth: 2, base_filters: 4, dropout: 0.0}]\n"
        "train: {folds: 2, epochs: 1, batch_size: 16, workers: 1, verbose: 0}\n"
        "postprocess: {threshold_grid: [0.5], min_area_grid: [0]}\n"
        "predict: {tta: [identity], batch_size: 32}\n"
        f"output: {{runs_dir: {folder / 'runs'}, submissions_dir: {folder / 'subs'}}}\n")
    assert main(["-q", "train", str(config)]) == 0
    return config


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_predict_on_a_full_or_read_only_disk(namespaces, trained: Path, tmp_path: Path, fault: str) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    setup = {"full": f"mount -t tmpfs -o size=8k tmpfs {mnt} && echo old > {mnt}/submission.csv"
                     f" && head -c 4096 /dev/zero > {mnt}/filler || exit 99",
             "read-only": f"mount -t tmpfs -o size=1m tmpfs {mnt} && echo old > {mnt}/submission.csv"
                          f" && mount -o remount,ro {mnt} || exit 99"}[fault]
    res = in_namespace(mnt, setup, segkit("predict", trained, "--out", mnt / "submission.csv"),
                       tmp_path / "after.txt", f"cp {mnt}/submission.csv {tmp_path}/old.csv")
    reason = {"full": "no space left on device", "read-only": "read-only file system"}[fault]
    one_error_line(res.stderr, mnt / "submission.csv", reason)
    assert not TEMP.search((tmp_path / "after.txt").read_text())
    assert (tmp_path / "old.csv").read_text() == "old\n"


@pytest.mark.slow
def test_kill_during_predict_keeps_the_old_submission_and_is_swept(strace: str, trained: Path,
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "subs" / "submission.csv"
    first = subprocess.run(segkit("predict", trained, "--out", out), capture_output=True, text=True, env=ENV)
    assert first.returncode == 0, first.stderr
    before = out.read_bytes()
    killed_at(strace, "rename", 1, segkit("predict", trained, "--out", out), tmp_path)  # the submission's rename
    assert [p.name.split(".segkit-")[0] for p in temporaries(out.parent)] == [".submission.csv"]
    assert out.read_bytes() == before
    again = subprocess.run(segkit("predict", trained, "--out", out), capture_output=True, text=True, env=ENV)
    assert again.returncode == 0, again.stderr
    assert temporaries(out.parent) == [] and out.read_bytes() == before
