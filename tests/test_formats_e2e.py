"""End to end on each synthetic competition format (and a folder dataset): synth -> train (tiny: 2 folds,
1 epoch, tiny U-Net, tiny images) -> tune -> predict -> submission.csv -> `segkit validate` passes."""
import json

import cv2
import numpy as np
import pandas as pd
import pytest

from segkit import rle
from segkit.cli import main
from segkit.config import load_config
from segkit.data.synth import generate

TINY_MODEL = "models=[{name: unet, tag: unet, depth: 2, base_filters: 4}]"


def tiny_config(name, root, tmp_path, size):
    return load_config(name, [
        f"data.root={root}", f"data.image_size={size}", f"data.cache_dir={tmp_path / 'cache'}",
        f"output.runs_dir={tmp_path / 'runs'}", f"output.submissions_dir={tmp_path / 'subs'}",
        "train.folds=2", "train.epochs=1", "train.batch_size=8", "train.workers=1", "train.verbose=0",
        "predict.batch_size=8", TINY_MODEL,
    ])


def run_pipeline(cfg):
    from segkit.postprocess import tune
    from segkit.predict import predict
    from segkit.train import train

    run_dir = train(cfg, quiet=True)
    tuned = tune(cfg, quiet=True)
    saved = json.loads((run_dir / "postprocess.json").read_text())
    assert saved["classes"] == tuned["classes"]
    assert all(c["oof_score_tuned"] >= c["oof_score_default"] - 1e-9 for c in tuned["classes"])
    return tuned, predict(cfg, quiet=True)


def validate_cli(competition, path, sample, capsys):
    args = ["validate", "--competition", competition, str(path)] + (["--sample", str(sample)] if sample else [])
    code = main(args)
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.strip().endswith("ids and order match " + str(sample)) if sample else "valid" in out


@pytest.mark.parametrize("competition, size", [("carvana", "[32,48]"), ("clouds", "[32,48]"), ("airbus", "[32,32]")])
def test_synthetic_competition_end_to_end(competition, size, tmp_path, capsys):
    root = generate(competition, tmp_path / "data", seed=0)
    cfg = tiny_config(competition, root, tmp_path, size)
    tuned, path = run_pipeline(cfg)
    sample = {"carvana": root / "sample_submission.csv", "clouds": root / "sample_submission.csv",
              "airbus": root / "sample_submission_v2.csv"}[competition]
    validate_cli(competition, path, sample, capsys)

    sub = pd.read_csv(path, keep_default_na=False, dtype=str)
    expected = pd.read_csv(sample, dtype=str).iloc[:, 0]
    if competition == "airbus":
        assert list(dict.fromkeys(sub["ImageId"])) == list(expected)
        for image_id, rows in sub.groupby("ImageId"):
            ships = [rle.decode(t, (768, 768), "F") for t in rows["EncodedPixels"]]
            assert np.sum(ships, axis=0).max() <= 1, image_id
    else:
        assert list(sub.iloc[:, 0]) == list(expected)
        shape = (1280, 1918) if competition == "carvana" else (350, 525)
        order = "C" if competition == "carvana" else "F"
        for text in sub.iloc[:, 1]:
            assert rle.decode(text, shape, order).shape == shape
    assert len(tuned["classes"]) == (4 if competition == "clouds" else 1)


def test_folder_dataset_end_to_end(tmp_path, capsys):
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for sub in ("images", "masks", "test"):
        (root / sub).mkdir(parents=True)
    for i in range(10):
        image = rng.integers(20, 60, (32, 32, 3)).astype(np.uint8)
        mask = np.zeros((32, 32), np.uint8)
        y, x = rng.integers(2, 18, size=2)
        mask[y:y + 12, x:x + 12] = 1  # class 1: a bright square
        cy, cx = rng.integers(6, 26, size=2)
        cv2.circle(mask, (int(cx), int(cy)), 4, 2, -1)  # class 2: a dark-red disc
        image[mask == 1] = (220, 220, 220)
        image[mask == 2] = (40, 40, 200)
        folder = "test" if i >= 8 else "images"
        cv2.imwrite(str(root / folder / f"pic{i}.png"), image)
        if folder == "images":
            cv2.imwrite(str(root / "masks" / f"pic{i}.png"), mask)
    cfg = tiny_config("folder", root, tmp_path, "[32,32]")
    tuned, path = run_pipeline(cfg)
    assert [c["name"] for c in tuned["classes"]] == ["class_1", "class_2"]
    validate_cli("folder", path, None, capsys)
    sub = pd.read_csv(path, keep_default_na=False, dtype=str)
    assert list(sub["id"]) == ["pic8_class_1", "pic8_class_2", "pic9_class_1", "pic9_class_2"]
    for text in sub["EncodedPixels"]:
        assert rle.decode(text, (32, 32), "F").shape == (32, 32)


# (competition, synthetic image size, training size, submission (H, W), rows per test image)
NEW_FORMATS = [("severstal", (32, 200), "[32,192]", (256, 1600), 4), ("tgs", 101, "[32,32]", (101, 101), 1)]


@pytest.mark.parametrize("competition, synth_size, size, shape, per_image", NEW_FORMATS)
def test_severstal_and_tgs_end_to_end(competition, synth_size, size, shape, per_image, tmp_path, capsys):
    """synth -> train -> tune -> predict through the CLI; the submission follows the sample and validates."""
    root = tmp_path / "data"
    if competition == "tgs":
        assert main(["-q", "synth", "tgs", "--out", str(root), "--seed", "3", "--n-train", "12", "--n-test", "3",
                     "--patch-size", str(synth_size)]) == 0
    else:  # a non-square size, which the CLI's --patch-size cannot give
        generate(competition, root, seed=3, image_size=synth_size, n_train=12, n_test=3, quiet=True)
    cfg = tiny_config(competition, root, tmp_path, size)
    tuned, path = run_pipeline(cfg)
    assert len(tuned["classes"]) == per_image
    sample = root / "sample_submission.csv"
    validate_cli(competition, path, sample, capsys)
    sub = pd.read_csv(path, keep_default_na=False, dtype=str)
    expected = pd.read_csv(sample, dtype=str)
    assert list(sub.columns) == list(expected.columns) and list(sub.iloc[:, 0]) == list(expected.iloc[:, 0])
    assert len(sub) == 3 * per_image
    for text in sub.iloc[:, 1]:
        assert rle.decode(text, shape, "F").shape == shape
