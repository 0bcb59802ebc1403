"""The whole demo (about 3 minutes on 2 cores): `slow`, so run by `make test` and CI, not `make test-fast`."""
import json

import pytest

from segkit.demo import JACCARD_TARGET, run_demo


@pytest.mark.slow
def test_demo_reaches_its_jaccard_target(tmp_path):
    out = tmp_path / "demo"
    assert run_demo("demo", out, [f"output.submissions_dir={tmp_path / 'subs'}"], quiet=True) == 0
    metrics = json.loads((out / "runs" / "demo" / "metrics.json").read_text())
    assert metrics["test_scene_jaccard_macro"] >= JACCARD_TARGET
    assert {f["model"] for f in metrics["folds"]} == {"unet", "fractal"}
    assert (out / "runs" / "demo" / "plots" / "training_curves.png").stat().st_size > 0
