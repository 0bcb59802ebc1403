"""Carvana adapter and its synthetic generator: real layout, GIF and CSV masks, grouping by car, submission."""
import os

import numpy as np
import pytest
from PIL import Image

from segkit import rle
from segkit.data.competitions.base import make_adapter
from segkit.data.folds import assign_folds
from segkit.data.synth import generate
from segkit.errors import ConfigError, DataError
from segkit.data.competitions.base import validate_submission
from segkit.submission import write_rows


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate("carvana", tmp_path_factory.mktemp("carvana") / "data", seed=5, image_size=(32, 48),
                    n_train_cars=4, n_test_cars=2, views=(1, 5, 9))


def test_synthetic_layout_is_carvanas(root):
    names = sorted(os.listdir(root))
    assert names == [".segkit_synth.json", "metadata.csv", "sample_submission.csv", "test", "train", "train_masks",
                     "train_masks.csv"]
    assert (root / "train_masks.csv").read_text().startswith("img,rle_mask\n")
    assert (root / "sample_submission.csv").read_text().splitlines()[1].endswith(".jpg,1 1")
    gif = next((root / "train_masks").iterdir())
    assert gif.name.endswith("_mask.gif")
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.size == (48, 32)
    with Image.open(next((root / "train").iterdir())) as im:
        assert im.format == "JPEG" and im.size == (48, 32)


def test_gif_and_csv_masks_agree_row_major(root):
    gif = make_adapter("carvana", root, {"masks": "gif"})
    csv = make_adapter("carvana", root, {"masks": "csv"})
    a, b = gif.train_samples(), csv.train_samples()
    assert [s.id for s in a] == [s.id for s in b] and len(a) == 12
    for sa, sb in zip(a, b):
        ma, mb = gif.read_mask(sa), csv.read_mask(sb)
        assert ma.shape == (32, 48, 1) and ma.dtype == np.uint8
        np.testing.assert_array_equal(ma, mb)
        assert 0.03 < ma.mean() < 0.6
        # the CSV is row-major: decoding it column-major does not give the GIF back
        wrong = rle.decode(sb.meta["rle"], (32, 48), order="F")
        assert not np.array_equal(wrong, ma[..., 0])
    image = gif.read_image(a[0])
    assert image.shape == (32, 48, 3) and image.dtype == np.uint8


def test_car_contrast_is_learnable(root):
    adapter = make_adapter("carvana", root)
    for s in adapter.train_samples()[:4]:
        grey = adapter.read_image(s).mean(axis=2)
        m = adapter.read_mask(s)[..., 0] > 0
        assert grey[~m].mean() - grey[m].mean() > 50


def test_views_of_one_car_share_a_fold(root):
    samples = make_adapter("carvana", root).train_samples()
    assert {s.group for s in samples} == {s.id.split("_")[0] for s in samples}
    folds = assign_folds(samples, 2, seed=0)
    for car in {s.group for s in samples}:
        assert len({f for s, f in zip(samples, folds) if s.group == car}) == 1


def test_test_list_and_submission_rows(root, tmp_path):
    adapter = make_adapter("carvana", root)
    samples = adapter.test_samples()
    sample_ids = [line.split(",")[0] for line in (root / "sample_submission.csv").read_text().splitlines()[1:]]
    assert [s.id for s in samples] == sample_ids and len(samples) == 6
    assert adapter.default_tta == ("identity", "hflip")
    rng = np.random.default_rng(0)
    masks = {s.id: (rng.random((1280, 1918, 1)) < 0.01).astype(np.uint8) for s in samples}
    masks[samples[0].id][:] = 0
    rows = (row for s in samples for row in adapter.submission_rows(s, masks[s.id]))
    path = tmp_path / "sub.csv"
    write_rows(path, adapter.submission_header, rows, sample_ids=sample_ids)
    assert validate_submission(path, "carvana", root / "sample_submission.csv") == []
    lines = path.read_text().splitlines()
    assert lines[0] == "img,rle_mask" and lines[1] == f"{samples[0].id},"
    for line in lines[2:]:
        image_id, text = line.split(",")
        np.testing.assert_array_equal(rle.decode(text, (1280, 1918), "C"), masks[image_id][..., 0])


def test_real_test_image_and_sample_head(fixtures_dir, tmp_path):
    """The real test image and the real sample_submission head in a Carvana layout."""
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "29bb3ece3180_11.jpg").symlink_to(fixtures_dir / "carvana" / "29bb3ece3180_11.jpg")
    (tmp_path / "sample_submission.csv").write_text("img,rle_mask\n29bb3ece3180_11.jpg,1 1\n")
    adapter = make_adapter("carvana", tmp_path)
    (sample,) = adapter.test_samples()
    assert adapter.read_image(sample).shape == (1280, 1918, 3)
    assert adapter.submission_size(sample) == (1280, 1918) and sample.group == "29bb3ece3180"
    # the real head lists images this folder does not have: named in the error
    (tmp_path / "sample_submission.csv").unlink()
    (tmp_path / "sample_submission.csv").symlink_to(fixtures_dir / "carvana" / "sample_submission_head20.csv")
    with pytest.raises(DataError, match=r"test image 0004d4463b50_01.jpg, .* and 17 more not found"):
        adapter.test_samples()
    assert validate_submission(fixtures_dir / "carvana" / "sample_submission_head20.csv", "carvana") == []


def test_bad_inputs_are_named(root, tmp_path):
    with pytest.raises(ConfigError, match="data.options.masks"):
        make_adapter("carvana", root, {"masks": "png"})
    with pytest.raises(ConfigError, match="did you mean 'data.options.masks'"):
        make_adapter("carvana", root, {"mask": "gif"})
    with pytest.raises(DataError, match="dataset folder not found"):
        make_adapter("carvana", tmp_path / "nowhere")
    broken = tmp_path / "broken"
    (broken / "train").mkdir(parents=True)
    (broken / "train" / "abc_01.jpg").symlink_to(next((root / "train").iterdir()))
    (broken / "train_masks.csv").write_text("img,rle_mask\nabc_01.jpg,5 3 1 1\n")
    adapter = make_adapter("carvana", broken)
    (sample,) = adapter.train_samples()
    with pytest.raises(DataError, match=r"train_masks.csv: row abc_01.jpg: RLE pair 2 .* out of order"):
        adapter.read_mask(sample)
    (broken / "train_masks.csv").write_text("img,rle_mask\nother.jpg,1 1\n")
    with pytest.raises(DataError, match="no row for training image"):
        adapter.train_samples()
    (broken / "train_masks").mkdir()
    with pytest.raises(DataError, match="mask abc_01_mask.gif not found"):
        adapter.train_samples()
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").save(broken / "train_masks" / "abc_01_mask.gif")
    (sample,) = adapter.train_samples()
    with pytest.raises(DataError, match="mask is 10x10 but image .* is 32x48"):
        adapter.read_mask(sample)


def test_generator_is_deterministic_and_refuses_foreign_folders(root, tmp_path):
    again = generate("carvana", tmp_path / "again", seed=5, image_size=(32, 48), n_train_cars=4, n_test_cars=2,
                     views=(1, 5, 9))
    assert (again / "train_masks.csv").read_text() == (root / "train_masks.csv").read_text()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a segkit synthetic dataset"):
        generate("carvana", foreign, seed=0)
    assert (foreign / "notes.txt").read_text() == "keep me"
