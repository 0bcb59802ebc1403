"""examples/kaggle_notebook.py (a notebook in percent format) runs end to end as a script, on the tiny
synthetic 38-Cloud it writes when DATA_ROOT is not found, in an empty folder."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "kaggle_notebook.py"


def test_notebook_runs_end_to_end_on_synthetic_data(tmp_path):
    source = NOTEBOOK.read_text()
    assert source.count("# %%") >= 8 and "# %% [markdown]" in source and "\nDATA_ROOT = " in source
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               SEGKIT_DATA_ROOT=str(tmp_path / "no-real-data"))
    env.pop("KAGGLE_USERNAME", None)
    proc = subprocess.run([sys.executable, str(NOTEBOOK)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert "data: synthetic" in out
    assert "folds done: {'unet': [0, 1]}" in out
    assert "images (4, 32, 32, 4) uint16" in out
    assert "probabilities (4, 32, 32, 1) float32" in out and "masks (4, 32, 32, 1) uint8" in out
    assert "one image (32, 32, 1)" in out
    assert "submissions/cloud38/submission.csv valid" in out
    sub = pd.read_csv(tmp_path / "submissions" / "cloud38" / "submission.csv", keep_default_na=False)
    assert list(sub.columns) == ["id", "EncodedPixels"] and len(sub) > 4
    assert (tmp_path / "runs" / "cloud38" / "postprocess.json").is_file()
    kernels = sorted(p.name for p in (tmp_path / "kaggle_kernels").iterdir())
    assert kernels == ["segkit-cloud38-fold0", "segkit-cloud38-fold1", "segkit-cloud38-infer"]
