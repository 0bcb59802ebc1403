"""Synthetic 38-Cloud: the real file format, names, padding, lists, scene GTs, determinism."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

from segkit.cli import main
from segkit.data.competitions.cloud38 import BANDS, parse_patch_name, read_patch_list
from segkit.data.synth.cloud38 import generate, pad_to_patches
from segkit.errors import DataError
from segkit.scene_eval import crop_centre, stitch

P = 32


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("syn") / "d", seed=5, patch_size=P, n_train_scenes=3,
                    n_test_scenes=2, scene_patches=(2.5, 3.5))


def test_files_are_stored_like_38cloud(root: Path) -> None:
    names = read_patch_list(root / "38-Cloud_training/training_patches_38-Cloud.csv")
    name = names[len(names) // 2]
    for b in BANDS:
        with tifffile.TiffFile(root / f"38-Cloud_training/train_{b}/{b}_{name}.TIF") as tf:
            page = tf.pages[0]
            assert page.shape == (P, P) and page.dtype == np.uint16 and page.compression == 32773  # PackBits
    gt = tifffile.imread(root / f"38-Cloud_training/train_gt/gt_{name}.TIF")
    assert gt.dtype == np.uint8 and set(np.unique(gt)) <= {0, 255}
    test_names = read_patch_list(root / "38-Cloud_test/test_patches_38-Cloud.csv")
    assert (root / f"38-Cloud_test/test_nir/nir_{test_names[0]}.TIF").is_file()
    assert not (root / "38-Cloud_test/test_gt").exists()


def test_names_grid_and_scene_ids(root: Path) -> None:
    names = read_patch_list(root / "38-Cloud_training/training_patches_38-Cloud.csv")
    scenes: dict[str, list] = {}
    for n in names:
        pn = parse_patch_name(n)
        assert re.fullmatch(r"LC08_L1TP_\d{6}_\d{8}_\d{8}_01_T1", pn.scene)
        scenes.setdefault(pn.scene, []).append(pn)
    assert len(scenes) == 3
    for patches in scenes.values():
        n_rows, n_cols = max(p.row for p in patches), max(p.col for p in patches)
        assert len(patches) == n_rows * n_cols  # the full list has every patch, margins included
        assert all(p.k == (p.row - 1) * n_cols + p.col for p in patches)


def test_nonempty_rule(root: Path) -> None:
    names = read_patch_list(root / "38-Cloud_training/training_patches_38-Cloud.csv")
    nonempty = set(read_patch_list(root / "training_patches_38-cloud_nonempty.csv"))
    assert 0 < len(nonempty) < len(names)
    for n in names:
        bands = np.stack([tifffile.imread(root / f"38-Cloud_training/train_{b}/{b}_{n}.TIF") for b in BANDS], -1)
        assert ((bands.max(-1) > 0).mean() > 0.8) == (n in nonempty), n


def test_scene_gt_is_unpadded_and_matches_patches_when_restitched(root: Path) -> None:
    """The test scene GT has the un-padded size; cutting it as the patches were cut and stitching back
    through the evaluation's crop returns it exactly, and its no-data margin is where the bands are 0."""
    names = read_patch_list(root / "38-Cloud_test/test_patches_38-Cloud.csv")
    by_scene: dict[str, list] = {}
    for n in names:
        by_scene.setdefault(parse_patch_name(n).scene, []).append(parse_patch_name(n))
    for scene, patches in by_scene.items():
        gt = tifffile.imread(root / f"38-Cloud_test/Entire_scene_gts/edited_corrected_gts_{scene}.TIF")
        n_rows, n_cols = max(p.row for p in patches), max(p.col for p in patches)
        assert math.ceil(gt.shape[0] / P) == n_rows and math.ceil(gt.shape[1] / P) == n_cols
        assert gt.shape[0] % P or gt.shape[1] % P  # really padded
        red = {(p.row, p.col): tifffile.imread(root / f"38-Cloud_test/test_red/red_{p.name}.TIF") for p in patches}
        red_scene = crop_centre(np.concatenate([np.concatenate([red[(r, c)] for c in range(1, n_cols + 1)], 1)
                                                for r in range(1, n_rows + 1)], 0), gt.shape)
        assert np.all(gt[red_scene == 0] == 0)  # no cloud in no-data margins
        assert (red_scene == 0).mean() > 0.05  # tilted footprint leaves margins
        padded = pad_to_patches(gt, P)[0]
        cut = {(p.row, p.col): padded[(p.row - 1) * P: p.row * P, (p.col - 1) * P: p.col * P] for p in patches}
        np.testing.assert_array_equal(crop_centre(stitch(cut, n_rows, n_cols, P), gt.shape), gt)


def test_clouds_are_bright_in_visible_and_nir(root: Path) -> None:
    names = read_patch_list(root / "training_patches_38-cloud_nonempty.csv")
    cloud, clear = [], []
    for n in names:
        gt = tifffile.imread(root / f"38-Cloud_training/train_gt/gt_{n}.TIF") > 0
        bands = np.stack([tifffile.imread(root / f"38-Cloud_training/train_{b}/{b}_{n}.TIF") for b in BANDS], -1)
        valid = bands.max(-1) > 0
        cloud.append(bands[gt & valid])
        clear.append(bands[~gt & valid])
    cloud, clear = np.concatenate(cloud), np.concatenate(clear)
    assert len(cloud) and len(clear)
    for b in range(4):
        assert np.median(cloud[:, b]) > 1.5 * np.median(clear[:, b])


def test_deterministic_and_rerun_is_a_noop(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", seed=3, patch_size=16, n_train_scenes=1, n_test_scenes=1, scene_patches=(2, 2.5))
    b = generate(tmp_path / "b", seed=3, patch_size=16, n_train_scenes=1, n_test_scenes=1, scene_patches=(2, 2.5))
    c = generate(tmp_path / "c", seed=4, patch_size=16, n_train_scenes=1, n_test_scenes=1, scene_patches=(2, 2.5))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "38-Cloud_test/test_patches_38-Cloud.csv").read_text() != (c / "38-Cloud_test/test_patches_38-Cloud.csv").read_text()
    stamp = (a / "38-Cloud_training/training_patches_38-Cloud.csv").stat().st_mtime_ns
    generate(tmp_path / "a", seed=3, patch_size=16, n_train_scenes=1, n_test_scenes=1, scene_patches=(2, 2.5))
    assert (a / "38-Cloud_training/training_patches_38-Cloud.csv").stat().st_mtime_ns == stamp


def test_refuses_to_overwrite_a_foreign_folder(tmp_path: Path, capsys) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a segkit synthetic dataset"):
        generate(tmp_path / "mine", seed=0, patch_size=16, n_train_scenes=1, n_test_scenes=1)
    assert (tmp_path / "mine/precious.txt").read_text() == "keep me"
    assert main(["synth", "cloud38", "--out", str(tmp_path / "mine"), "--seed", "1", "--patch-size", "16"]) == 1
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(__import__("segkit.data.synth", fromlist=["SYNTH_MODULES"]).SYNTH_MODULES))
def test_cli_synth_every_format(name: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / name
    assert main(["-q", "synth", name, "--out", str(out), "--seed", "1", "--patch-size", "32"]) == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix.lower() == ".csv" for p in files) and len(files) > 3
    if name == "cloud38":
        names = read_patch_list(out / "38-Cloud_training/training_patches_38-Cloud.csv")
        assert tifffile.imread(out / f"38-Cloud_training/train_red/red_{names[0]}.TIF").shape == (32, 32)
    assert main(["synth", name, "--out", str(tmp_path / "x"), "--patch-size", "2"]) == 1
    assert "Traceback" not in capsys.readouterr().err
