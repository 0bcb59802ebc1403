"""bench/decoders_tgs.py: every decoder's spec builds, the markdown table, and (slow) a tiny end-to-end run on the
real TGS fixture (figures not asserted: a 1-epoch model on 32 images)."""
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest
from conftest import load_bench

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench" / "decoders_tgs.py"


def bench_module():
    return load_bench("decoders_tgs")


def test_every_decoder_spec_builds_on_the_plain_encoder_of_real_tgs():
    from segkit.models.registry import build_model

    bench = bench_module()
    args = bench.parse_args(["--depth", "3", "--base", "4"])
    assert args.decoders == ["unet", "fpn", "unet_plus_plus", "deeplabv3_plus", "segformer"]
    for key in bench.DECODERS:
        spec = bench.decoder_spec(key, args)
        assert spec["tag"] == key
        if spec.get("backbone") == "plain" or spec["name"] == "unet":
            assert (spec["depth"], spec["base_filters"]) == (3, 4), spec
        model = build_model(spec, (64, 64, 3), 1)
        assert model.output_shape == (None, 64, 64, 1), key
        keras.backend.clear_session()


def test_markdown_rows():
    bench = bench_module()
    rows = [bench.Result("U-Net", 490_000, 0.215, [4, 4], 181.4, 170.2, 0.58, 0.6116),
            bench.Result("FPN", 380_000, 0.113, [5, 4], 60.0, None, 0.5, 0.6)]
    lines = bench.markdown(rows, 96, 0.3979)
    assert lines[0].startswith("| decoder | params (M) | GFLOPs 96² | epochs per fold |")
    assert lines[2] == "| U-Net | 0.49 | 0.21 | 4, 4 | 181 (170) | 0.5800 | 0.6116 |"
    assert lines[3] == "| FPN | 0.38 | 0.11 | 5, 4 | 60 | 0.5000 | 0.6000 |"
    assert lines[4] == "| all-empty | | | | | 0.3979 | 0.3979 |"


@pytest.mark.slow
def test_tiny_run_on_real_tgs(fixtures_dir, tmp_path):
    if not (fixtures_dir / "tgs" / "train.csv").is_file():
        pytest.skip("no real TGS fixture")
    proc = subprocess.run([sys.executable, str(BENCH), "--limit", "40", "--image-size", "32", "--time-budget", "1",
                           "--decoders", "fpn", "--workdir", str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = [line for line in proc.stdout.splitlines() if line.startswith("| FPN |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[1]) > 0 and cells[3] == "1, 1", row  # params; the 1 s budget: one epoch a fold
    assert 0 <= float(cells[5]) <= 1 and 0 <= float(cells[6]) <= 1, row
    assert any(line.startswith("| all-empty |") for line in proc.stdout.splitlines())
