"""38-Cloud / 95-Cloud adapter: the real fixture patch and CSV, the layout, and every bad-input case."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from segkit.cli import main
from segkit.data.competitions.base import make_adapter
from segkit.data.competitions.cloud38 import (
    BANDS,
    Cloud38Adapter,
    parse_patch_name,
    read_band,
    read_patch_list,
)
from segkit.data.sample import Sample
from segkit.data.io import write_tiff
from segkit.data.synth.cloud38 import generate
from segkit.errors import DataError

FIXTURE_PATCH = "patch_192_10_by_12_LC08_L1TP_002053_20160520_20170324_01_T1"


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("c38") / "data", seed=11, patch_size=32, n_train_scenes=3,
                    n_test_scenes=1, n_additional_scenes=1, scene_patches=(2.5, 3.5))


@pytest.fixture()
def real_layout(tmp_path: Path, fixtures_dir: Path) -> Path:
    """The real fixture patch placed in the official training layout (the fixture files are copied into
    tmp_path, never into the repo), with lists in Kaggle's places and letter case."""
    src = fixtures_dir / "38cloud"
    train = tmp_path / "38-Cloud_training"
    for b in BANDS + ("gt",):
        (train / f"train_{b}").mkdir(parents=True)
        shutil.copy(src / f"{b}_{FIXTURE_PATCH}.TIF", train / f"train_{b}" / f"{b}_{FIXTURE_PATCH}.TIF")
    (train / "training_patches_38-Cloud.csv").write_text(f"name\n{FIXTURE_PATCH}\n")
    # the official non-empty list in upper case, at the root, as Kaggle ships it: matched case-insensitively
    (tmp_path / "TRAINING_PATCHES_38-CLOUD_NONEMPTY.CSV").write_text(f"name\r\n{FIXTURE_PATCH.upper()}\r\n")
    return tmp_path


# --- the real files --------------------------------------------------------------------------

def test_real_patch_loads_with_right_shapes_dtypes_values(real_layout: Path) -> None:
    adapter = Cloud38Adapter(real_layout)
    (sample,) = adapter.train_samples()
    assert sample.id == FIXTURE_PATCH
    assert sample.group == "LC08_L1TP_002053_20160520_20170324_01_T1"
    assert sample.meta["k"] == 192 and sample.meta["row"] == 10 and sample.meta["col"] == 12
    image = adapter.read_image(sample)
    assert image.shape == (384, 384, 4) and image.dtype == np.uint16
    red = tifffile.imread(real_layout / "38-Cloud_training/train_red" / f"red_{FIXTURE_PATCH}.TIF")
    nir = tifffile.imread(real_layout / "38-Cloud_training/train_nir" / f"nir_{FIXTURE_PATCH}.TIF")
    np.testing.assert_array_equal(image[..., 0], red)
    np.testing.assert_array_equal(image[..., 3], nir)
    assert int(image[..., 0].min()) == 6442 and int(image[..., 0].max()) == 54402  # MANIFEST: red 6442-54402
    mask = adapter.read_mask(sample)
    assert mask.shape == (384, 384, 1) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    assert abs(mask.mean() - 0.307) < 0.001  # MANIFEST: cloud fraction 0.307
    gt = tifffile.imread(real_layout / "38-Cloud_training/train_gt" / f"gt_{FIXTURE_PATCH}.TIF")
    np.testing.assert_array_equal(mask[..., 0], (gt == 255).astype(np.uint8))
    assert sample.stratum == 1 + int(0.307 * 4)  # cover bin 2 of 4
    x = adapter.normalise(image)
    assert x.dtype == np.float32 and np.isclose(x[..., 0].max(), 54402 / 65535)
    assert adapter.submission_size(sample) == (384, 384)


def test_band_reader_matches_tifffile_on_every_real_band(fixtures_dir: Path) -> None:
    for b in BANDS + ("gt",):
        path = fixtures_dir / "38cloud" / f"{b}_{FIXTURE_PATCH}.TIF"
        np.testing.assert_array_equal(read_band(path), tifffile.imread(path))


def test_real_nonempty_csv_parses_consistently(fixtures_dir: Path) -> None:
    names = read_patch_list(fixtures_dir / "38cloud" / "training_patches_38-cloud_nonempty.csv")
    assert len(names) == 5155 and len(set(names)) == 5155
    parsed = [parse_patch_name(n) for n in names]
    scenes = {p.scene for p in parsed}
    assert len(scenes) == 18 and all(s.startswith("LC08_L1TP_") for s in scenes)
    for scene in scenes:
        rows = [p for p in parsed if p.scene == scene and p.row > 1]
        # k = (row - 1) * n_cols + col with one n_cols per scene
        n_cols = {(p.k - p.col) // (p.row - 1) for p in rows}
        assert len(n_cols) == 1, scene
        (nc,) = n_cols
        assert all(p.k == (p.row - 1) * nc + p.col and 1 <= p.col <= nc for p in parsed if p.scene == scene)
    assert parse_patch_name("red_" + FIXTURE_PATCH + ".TIF") == parse_patch_name(FIXTURE_PATCH)


@pytest.mark.parametrize("bad", ["patch_1_1_by_x_LC08_A", "gt_patch_1_1_LC08_A", "patch_1_1_by_1_LT05_A", ""])
def test_bad_patch_names_are_rejected(bad: str) -> None:
    with pytest.raises(DataError):
        parse_patch_name(bad)


# --- the layout on synthetic data ------------------------------------------------------------

def test_synthetic_train_and_test_lists(synth_root: Path) -> None:
    adapter = make_adapter("cloud38", synth_root)
    train, test = adapter.train_samples(), adapter.test_samples()
    nonempty = read_patch_list(synth_root / "training_patches_38-cloud_nonempty.csv")
    assert sorted(s.id for s in train) == sorted(nonempty)
    everything = make_adapter("cloud38", synth_root, {"nonempty_only": False}).train_samples()
    assert len(everything) > len(train)
    assert [s.id for s in test] == read_patch_list(synth_root / "38-Cloud_test/test_patches_38-Cloud.csv")
    assert all(not s.mask for s in test) and all(len(s.image) == 4 for s in test)
    for s in train:
        assert s.group == s.meta["scene"] and s.stratum == adapter.cover_stratum(adapter.read_mask(s).mean())
    assert {s.stratum for s in train} != {0}
    assert adapter.score_class(np.ones((2, 4, 4)), np.ones((2, 4, 4))) == 1.0
    truth = np.zeros((1, 4, 4)); truth[0, :2] = 1
    pred = np.zeros((1, 4, 4)); pred[0, 1:3] = 1
    assert adapter.score_class(truth, pred) == pytest.approx(4 / 12)  # pooled TP / (TP + FP + FN)


def test_cloud95_adds_the_extra_scenes(synth_root: Path) -> None:
    c38 = make_adapter("cloud38", synth_root).train_samples()
    c95 = make_adapter("cloud95", synth_root).train_samples()
    extra = read_patch_list(synth_root / "95-cloud_training_only_additional_to38-cloud"
                            / "training_patches_95-cloud_additional_to_38-cloud.csv")
    assert {s.id for s in c38} < {s.id for s in c95}
    new = [s for s in c95 if s.id in set(extra)]
    assert new and all("_additional_to38cloud" in s.image[0] for s in new)
    assert sorted(s.id for s in c95) == sorted(read_patch_list(synth_root / "training_patches_95-cloud_nonempty.csv"))


def test_per_band_standardisation_option(synth_root: Path) -> None:
    a = make_adapter("cloud38", synth_root, {"band_mean": [1, 2, 3, 4], "band_std": [2, 2, 2, 2], "stratify": False})
    x = a.normalise(np.full((2, 2, 4), 5, np.uint16))
    np.testing.assert_allclose(x[0, 0], [2, 1.5, 1, 0.5])


# --- bad input -------------------------------------------------------------------------------

def _copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    return dst


def test_missing_band_file_names_the_file(synth_root: Path, tmp_path: Path) -> None:
    root = _copy(synth_root, tmp_path)
    victim = make_adapter("cloud38", root, {"stratify": False}).train_samples()[0].image[2]
    Path(victim).unlink()
    with pytest.raises(DataError, match=Path(victim).name):
        make_adapter("cloud38", root).train_samples()


def test_corrupt_tiff_names_the_file(synth_root: Path, tmp_path: Path) -> None:
    root = _copy(synth_root, tmp_path)
    adapter = make_adapter("cloud38", root, {"stratify": False})
    sample = adapter.train_samples()[0]
    Path(sample.image[1]).write_bytes(b"II*\x00garbage, not a TIFF")
    with pytest.raises(DataError, match=Path(sample.image[1]).name):
        adapter.read_image(sample)
    data = Path(sample.mask[0]).read_bytes()
    Path(sample.mask[0]).write_bytes(data[: len(data) // 3])  # truncated
    with pytest.raises(DataError, match=Path(sample.mask[0]).name):
        adapter.read_mask(sample)


def test_gt_size_differs_from_bands(synth_root: Path, tmp_path: Path) -> None:
    root = _copy(synth_root, tmp_path)
    adapter = make_adapter("cloud38", root, {"stratify": False})
    sample = adapter.train_samples()[0]
    write_tiff(Path(sample.mask[0]), np.zeros((30, 32), np.uint8))
    with pytest.raises(DataError, match=r"30x32 but its bands are 32x32"):
        adapter.read_mask(sample)


def test_band_sizes_differ(synth_root: Path, tmp_path: Path) -> None:
    root = _copy(synth_root, tmp_path)
    adapter = make_adapter("cloud38", root, {"stratify": False})
    sample = adapter.train_samples()[0]
    write_tiff(Path(sample.image[3]), np.zeros((32, 31), np.uint16))
    with pytest.raises(DataError, match=Path(sample.image[3]).name):
        adapter.read_image(sample)


def test_empty_patch_list(synth_root: Path, tmp_path: Path) -> None:
    root = _copy(synth_root, tmp_path)
    (root / "38-Cloud_test/test_patches_38-Cloud.csv").write_text("name\n")
    with pytest.raises(DataError, match="test_patches_38-Cloud.csv: the patch list is empty"):
        make_adapter("cloud38", root).test_samples()


def test_nonexistent_paths(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere"):
        make_adapter("cloud38", tmp_path / "nowhere")
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(DataError, match="38-Cloud_training"):
        make_adapter("cloud38", tmp_path / "empty").train_samples()
    with pytest.raises(DataError, match="no ground truth"):
        Cloud38Adapter(tmp_path).read_mask(Sample("x", ("a",)))


def test_missing_nonempty_list_says_how_to_do_without(synth_root: Path, tmp_path: Path) -> None:
    root = _copy(synth_root, tmp_path)
    (root / "training_patches_38-cloud_nonempty.csv").unlink()
    with pytest.raises(DataError, match="nonempty_only=false"):
        make_adapter("cloud38", root).train_samples()
    assert make_adapter("cloud38", root, {"nonempty_only": False, "stratify": False}).train_samples()


def test_cli_prepare_reports_bad_input_without_traceback(synth_root: Path, tmp_path: Path, capsys) -> None:
    root = _copy(synth_root, tmp_path)
    victim = make_adapter("cloud38", root, {"stratify": False}).train_samples()[0].image[0]
    Path(victim).write_bytes(b"not a tiff at all")
    code = main(["prepare", "cloud38", f"data.root={root}", "data.image_size=32",
                 f"data.cache_dir={tmp_path / 'cache'}", "data.options.stratify=false"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and Path(victim).name in err
    code = main(["prepare", "cloud38", f"data.root={tmp_path / 'missing'}"])
    err = capsys.readouterr().err
    assert code == 1 and "missing: dataset folder not found" in err and "Traceback" not in err
    code = main(["prepare", "cloud38", f"data.root={root}", "data.options.nonempty=false"])
    err = capsys.readouterr().err
    assert code == 1 and "nonempty_only" in err  # unknown adapter option: the closest valid key
