"""Folder adapter: grey-value masks (Pet-trimap style), one sub-folder per class, binary {0,255} masks."""
import cv2
import numpy as np
import pytest

from segkit import rle
from segkit.data.competitions.base import make_adapter
from segkit.errors import ConfigError, DataError
from segkit.data.competitions.base import validate_submission
from segkit.submission import write_rows


def make_folder(root, n=3, size=(24, 32), values=(1, 2, 3), grey_image=False):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    truth = {}
    for i in range(n):
        mask = rng.choice(values, size=size).astype(np.uint8)
        image = rng.integers(0, 255, size + (() if grey_image else (3,)), dtype=np.uint8)
        cv2.imwrite(str(root / "images" / f"img{i}.jpg"), image)
        cv2.imwrite(str(root / "masks" / f"img{i}.png"), mask)
        truth[f"img{i}"] = mask
    return truth


def test_grey_value_masks_like_pet_trimaps(tmp_path):
    truth = make_folder(tmp_path)
    adapter = make_adapter("folder", tmp_path, {"values": [1, 3], "classes": ["pet", "border"]})
    assert adapter.classes == ("pet", "border") and adapter.bands == 3
    samples = adapter.train_samples()
    assert [s.id for s in samples] == ["img0", "img1", "img2"]
    mask = adapter.read_mask(samples[1])
    assert mask.shape == (24, 32, 2) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask[..., 0], truth["img1"] == 1)
    np.testing.assert_array_equal(mask[..., 1], truth["img1"] == 3)
    assert adapter.read_image(samples[1]).shape == (24, 32, 3)


def test_values_found_when_not_given(tmp_path):
    make_folder(tmp_path, values=(0, 255), grey_image=True)
    adapter = make_adapter("folder", tmp_path)
    assert adapter.classes == ("foreground",) and adapter.values == (255,) and adapter.bands == 1
    (s,) = adapter.train_samples()[:1]
    assert adapter.read_image(s).shape == (24, 32, 1)
    other = tmp_path / "other"
    make_folder(other, values=(0, 7, 9))
    assert make_adapter("folder", other).classes == ("class_7", "class_9")


def test_one_sub_folder_per_class(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "images").mkdir()
    truth = {}
    for cls in ("road", "building"):
        (tmp_path / "masks" / cls).mkdir(parents=True)
    for i in range(2):
        cv2.imwrite(str(tmp_path / "images" / f"t{i}.png"), rng.integers(0, 255, (16, 20, 3), dtype=np.uint8))
        for cls in ("road", "building"):
            m = (rng.random((16, 20)) < 0.3).astype(np.uint8) * 255
            cv2.imwrite(str(tmp_path / "masks" / cls / f"t{i}.png"), m)
            truth[(i, cls)] = m > 0
    adapter = make_adapter("folder", tmp_path, {"classes": ["road", "building"]})
    assert adapter.classes == ("road", "building") and adapter.layout == "folders"
    mask = adapter.read_mask(adapter.train_samples()[1])
    np.testing.assert_array_equal(mask[..., 0], truth[(1, "road")])
    np.testing.assert_array_equal(mask[..., 1], truth[(1, "building")])
    assert make_adapter("folder", tmp_path).classes == ("building", "road")  # default: sorted
    with pytest.raises(ConfigError, match="no mask sub-folder water"):
        make_adapter("folder", tmp_path, {"classes": ["water"]})


def test_test_folder_and_submission(tmp_path):
    make_folder(tmp_path, values=(0, 1, 2))
    (tmp_path / "test").mkdir()
    cv2.imwrite(str(tmp_path / "test" / "q.jpg"), np.zeros((30, 40, 3), np.uint8))
    adapter = make_adapter("folder", tmp_path, {"rle_order": "C"})
    (sample,) = adapter.test_samples()
    assert adapter.submission_size(sample) == (30, 40)
    mask = np.zeros((30, 40, 2), np.uint8)
    mask[0, :3, 1] = 1
    rows = list(adapter.submission_rows(sample, mask))
    assert rows == [("q_class_1", ""), ("q_class_2", "1 3")]  # row-major as configured
    path = tmp_path / "sub.csv"
    write_rows(path, adapter.submission_header, rows)
    assert validate_submission(path, "folder") == []
    assert rle.decode(rows[1][1], (30, 40), "C")[0, :3].all()


def test_problems_are_named(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "masks" / "img2.png").unlink()
    with pytest.raises(DataError, match="no mask for image img2.jpg"):
        make_adapter("folder", tmp_path, {"values": [1]}).train_samples()
    cv2.imwrite(str(tmp_path / "masks" / "img2.png"), np.ones((5, 5), np.uint8))
    adapter = make_adapter("folder", tmp_path, {"values": [1]})
    with pytest.raises(DataError, match="mask is 5x5 but image .*img2.jpg is 24x32"):
        adapter.read_mask(adapter.train_samples()[2])
    with pytest.raises(ConfigError, match="2 names for 1 grey values"):
        make_adapter("folder", tmp_path, {"values": [1], "classes": ["a", "b"]})
    with pytest.raises(ConfigError, match="rle_order"):
        make_adapter("folder", tmp_path, {"rle_order": "X"})
    with pytest.raises(DataError, match="images folder not found"):
        make_adapter("folder", tmp_path / "none")
    colour = tmp_path / "colour"
    make_folder(colour)
    cv2.imwrite(str(colour / "masks" / "img0.png"), np.dstack([np.zeros((24, 32)), np.ones((24, 32)), np.zeros((24, 32))]))
    with pytest.raises(DataError, match="colour mask"):
        make_adapter("folder", colour)


def test_tgs_iou_metric_by_hand_and_real_tgs_masks(tmp_path, fixtures_dir):
    """data.options.metric: tgs_iou on hand-made masks; the real TGS masks (16-bit {0, 65535}, empty ones 8-bit
    zeros) read through the folder adapter."""
    tgs = fixtures_dir / "tgs" / "train"
    ids = [p.stem for p in sorted((tgs / "masks").glob("*.png"))[:40]]
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
        for i in ids:
            (tmp_path / sub / f"{i}.png").symlink_to(tgs / sub / f"{i}.png")
    adapter = make_adapter("folder", tmp_path, {"metric": "tgs_iou"})
    assert adapter.values == (65535,) and adapter.bands == 3
    depths = {cv2.imread(str(tgs / "masks" / f"{i}.png"), cv2.IMREAD_UNCHANGED).dtype for i in ids}
    assert depths == {np.dtype(np.uint16), np.dtype(np.uint8)}  # both kinds among the first 40
    masks = np.stack([adapter.read_mask(s) for s in adapter.train_samples()])[..., 0]
    assert masks.shape == (40, 101, 101) and set(np.unique(masks)) == {0, 1}
    assert adapter.score_class(masks, masks) == 1.0

    truth = np.zeros((4, 10, 10), np.uint8)
    pred = np.zeros_like(truth)
    truth[0] = 1
    pred[0].flat[:78] = 1  # IoU 0.78 passes 0.50 ... 0.75: 6 of 10 thresholds
    pred[2, 0, 0] = 1  # a prediction on an empty truth: 0
    truth[3, :2] = 1  # a missed mask: 0; image 1 empty/empty: 1
    assert adapter.score_class(truth, pred) == pytest.approx((0.6 + 1 + 0 + 0) / 4)
    assert make_adapter("folder", tmp_path).score_class(truth, pred) == pytest.approx((2 * 78 / 178 + 1) / 4)
    with pytest.raises(ConfigError, match="data.options.metric: unknown metric 'tgs'; did you mean 'tgs_iou'"):
        make_adapter("folder", tmp_path, {"metric": "tgs"})
