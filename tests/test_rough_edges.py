"""Rough edges a new user hit (issue 17): each test reproduces one."""
import pytest

from segkit.cli import main
from segkit.config import load_config, save_config


@pytest.mark.parametrize("command", ["predict", "tune", "report"])
def test_later_stages_use_the_runs_saved_data_root(tmp_path, monkeypatch, capsys, fixtures_dir, command):
    """`segkit <stage> tgs` after `segkit train tgs data.root=...`: the saved root, not data/tgs."""
    monkeypatch.chdir(tmp_path)
    trained = load_config("tgs", [f"data.root={fixtures_dir / 'tgs'}", "output.runs_dir=runs"])
    save_config(trained, tmp_path / "runs" / trained.name / "config.yaml")
    code = main([command, "tgs", "output.runs_dir=runs"])
    out = capsys.readouterr()
    assert code == 1  # nothing is trained: the error is about the folds, not the data
    assert "dataset folder not found" not in out.err and "data/tgs" not in out.err
    assert f"data.root: {fixtures_dir / 'tgs'} (as the run was trained" in out.out
    code = main([command, "tgs", "output.runs_dir=runs", "data.root=elsewhere"])  # an override still wins
    assert code == 1 and "as the run was trained" not in capsys.readouterr().out


@pytest.mark.parametrize("name", ["airbus", "carvana", "cloud38", "cloud95", "clouds", "folder", "severstal", "siim",
                                  "tgs"])
def test_every_competition_names_its_metric(name):
    """Severstal and SIIM printed the base scorer's docstring ("The competition's metric for one class ...")."""
    from segkit.data.competitions.base import Adapter, adapter_class

    metric = adapter_class(name).metric_name()
    assert metric and metric != Adapter.metric_name() and "competition's metric" not in metric


def test_the_notebook_api_prints_no_tensorflow_start_up_lines_nor_retracing_warnings():
    """`import segkit as sk` then a model: TF/absl/oneDNN/CUDA lines were printed (twice), and retracing warnings."""
    import os
    import subprocess
    import sys

    code = ("import segkit as sk, numpy as np\n"
            "sk.models.unet((16, 16, 1), 1, depth=2, base_filters=4)\n"
            "import tensorflow as tf\n"
            "f = tf.function(lambda x: x * 2)\n"
            "for i in range(7):\n"
            "    f(tf.constant(np.zeros(i + 1)))\n"
            "print('done')\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr
    for noise in ("absl::InitializeLog", "oneDNN", "cuda", "cpu_feature_guard", "retracing"):
        assert noise not in out.stderr


def test_predict_progress_in_a_log_is_lines_not_carriage_returns(capsys, monkeypatch):
    """`predict` progress bars written to a log file put hundreds of '\\r' updates on one line."""
    from types import SimpleNamespace

    import numpy as np

    import segkit.progress
    from segkit.models import unet
    from segkit.predict import predict_ensemble

    monkeypatch.setattr(segkit.progress, "LOG_EVERY_S", 0.0)  # a line for every batch
    model = unet((16, 16, 1), 1, depth=2, base_filters=4)
    raw = np.random.default_rng(0).random((6, 16, 16, 1)).astype(np.float32)
    batches = list(predict_ensemble([model], SimpleNamespace(images=raw), np.arange(6), lambda im: im,
                                    ["identity"], batch_size=2))
    assert len(batches) == 3
    err = capsys.readouterr().err  # not a terminal, as a log file
    assert "\r" not in err
    assert err.splitlines() == ["predict: 1/3 batch", "predict: 2/3 batch", "predict: 3/3 batch",
                                "predict: 3/3 batch done"]


def test_a_rare_stratum_is_said_in_segkits_words_not_scikit_learns(capsys):
    """A raw scikit-learn "UserWarning: The least populated class in y has only 1 members" with its path."""
    import warnings

    from segkit.data.folds import assign_folds
    from segkit.data.sample import Sample

    samples = [Sample(f"s{i}", (f"s{i}.png",), (), stratum=int(i == 9)) for i in range(10)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folds = assign_folds(samples, 5, seed=0)
    assert sorted(set(folds.tolist())) == [0, 1, 2, 3, 4]
    assert not [w for w in caught if "least populated" in str(w.message)]
    assert "[folds] stratum 1 (1) has fewer samples than the 5 folds" in capsys.readouterr().out
    assign_folds(samples, 5, seed=0, quiet=True)
    assert capsys.readouterr().out == ""


def test_rle_messages_count_pixels_one_way_and_name_the_order_in_words(tmp_path):
    """SIIM's messages said "order F" and counted a run's end unlike the standard RLE messages; the TGS id rule
    read "tgs ids are the image id with the image id matching ..."."""
    from segkit import rle
    from segkit.data.competitions.base import check_submission

    n = 1024 * 1024
    for text, scheme in (("1048571 10", "standard"), ("1048570 10", "relative")):  # the same run, both ways
        with pytest.raises(rle.RLEError, match=r"1048571, length 10\) ends at pixel 1048580, past the image's "
                                               r"1048576 pixels"):
            rle.parse_runs(text, n, scheme)
    sub = tmp_path / "siim.csv"
    sub.write_text("ImageId,EncodedPixels\nID_00000000a,1048570 10\n")
    (problem,) = check_submission(sub, "siim").problems
    assert "(image 1024x1024, column-major, relative starts)" in problem and "order F" not in problem
    tgs = tmp_path / "tgs.csv"
    tgs.write_text("id,rle_mask\nFFEE001122,\n")
    (problem,) = check_submission(tgs, "tgs").problems
    assert problem.endswith("id 'FFEE001122': tgs ids are image ids matching [0-9a-f]{10}")


def test_validate_into_a_closed_pipe_ends_quietly(tmp_path):
    """`segkit validate ... | head` ended in "segkit: error: Broken pipe"."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    sub = tmp_path / "sub.csv"
    sub.write_text("id,rle_mask\n" + "".join(f"{i:010x},{i % 7 + 1} 1\n" for i in range(3000)))
    read, write = os.pipe()
    os.close(read)  # as `head` once it has its lines: every write to stdout now fails with EPIPE
    src = Path(__file__).resolve().parents[1] / "src"
    env = dict(os.environ, PYTHONPATH=str(src))
    try:
        out = subprocess.run([sys.executable, "-m", "segkit", "validate", "--competition", "tgs", str(sub)],
                             stdout=write, stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    finally:
        os.close(write)
    assert "Broken pipe" not in out.stderr and "BrokenPipeError" not in out.stderr, out.stderr
    assert out.stderr == "" and out.returncode == 141


def test_the_readme_notebook_snippet_defines_what_it_uses():
    """The README's notebook snippet used `images` without defining it, and did not say iter_images yields
    (id, image)."""
    import ast
    import builtins
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    snippet = next(b for b in blocks if "import segkit as sk" in b and "run.ensemble" in b)
    bound = set(dir(builtins))
    for node in ast.walk(ast.parse(snippet)):  # ast.walk visits a statement's targets before later statements
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
    unbound = []
    for stmt in ast.parse(snippet).body:
        loads = [n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]
        stores = {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        unbound += [name for name in loads if name not in bound and name not in stores]
        bound |= stores
    assert unbound == []
    assert "`iter_images(\"test\", limit)` (yields `(id, image)`" in readme


@pytest.mark.parametrize("shape", [(32, 200), (32, 32)])
def test_the_worst_image_gallery_fills_its_panels(shape):
    """Severstal's strips sat in mostly blank square panels of the report's gallery."""
    import cv2
    import numpy as np

    from segkit.plots import gallery

    rng = np.random.default_rng(0)
    h, w = shape
    items = [(f"img{i}", 0.5, rng.integers(1, 200, (h, w, 3), dtype=np.uint8), np.zeros((h, w, 4), np.uint8),
              np.zeros((h, w, 4), np.uint8)) for i in range(3)]
    png = cv2.imdecode(np.frombuffer(gallery(items, ["a", "b", "c", "d"]), np.uint8), cv2.IMREAD_GRAYSCALE)
    drawn = float((png < 250).mean())  # every panel is noise or black masks: the rest is blank page
    assert drawn > 0.5, drawn
