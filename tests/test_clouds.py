"""Understanding Clouds adapter and generator: the real image and CSV rows, four labels, 350x525 submissions."""
import numpy as np
import pandas as pd
import pytest

from segkit import rle
from segkit.data.competitions.base import make_adapter
from segkit.data.synth import generate
from segkit.errors import DataError
from segkit.data.competitions.base import validate_submission
from segkit.submission import write_rows

LABELS = ("Fish", "Flower", "Gravel", "Sugar")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate("clouds", tmp_path_factory.mktemp("clouds") / "data", seed=2, image_size=(32, 48), n_train=10,
                    n_test=3)


@pytest.fixture()
def real_root(fixtures_dir, tmp_path):
    """The real image and its real train.csv rows in the competition's layout (links, no copies)."""
    (tmp_path / "train_images").mkdir()
    (tmp_path / "train_images" / "0011165.jpg").symlink_to(fixtures_dir / "understanding_clouds" / "0011165.jpg")
    (tmp_path / "train.csv").symlink_to(fixtures_dir / "understanding_clouds" / "train_small.csv")
    return tmp_path


def test_real_rows_decode_at_1400x2100_column_major(real_root, fixtures_dir):
    adapter = make_adapter("clouds", real_root)
    (sample,) = adapter.train_samples()
    assert sample.id == "0011165.jpg" and sample.stratum == 0b0011  # Fish and Flower present
    mask = adapter.read_mask(sample)
    assert mask.shape == (1400, 2100, 4) and mask.dtype == np.uint8
    raw = pd.read_csv(fixtures_dir / "understanding_clouds" / "train_small.csv")
    for c, text in enumerate(raw["EncodedPixels"]):
        if isinstance(text, str):
            assert rle.encode(mask[..., c], "F") == text.strip()
        else:
            assert not mask[..., c].any()
    # the black no-data band is outside every label
    black = adapter.read_image(sample).mean(axis=2) <= 5
    assert mask[black].sum() < 0.001 * black.sum() * 4


def test_synthetic_layout_and_labels(root):
    assert (root / "train.csv").read_text().startswith("Image_Label,EncodedPixels\n")
    adapter = make_adapter("clouds", root)
    samples = adapter.train_samples()
    assert len(samples) == 10 and adapter.classes == LABELS
    table = pd.read_csv(root / "train.csv", keep_default_na=False)
    assert len(table) == 40 and list(table["Image_Label"][:4]) == [f"{samples[0].id}_{lab}" for lab in LABELS]
    covered = np.zeros(4)
    for s in samples:
        image, mask = adapter.read_image(s), adapter.read_mask(s)
        assert image.shape == (32, 48, 3) and mask.shape == (32, 48, 4)
        assert s.stratum == sum(1 << c for c in range(4) if mask[..., c].any())
        covered += mask.reshape(-1, 4).any(axis=0)
        grey = image.mean(axis=2)
        if mask.any():
            assert grey[mask.any(axis=2)].mean() - grey[~mask.any(axis=2)].mean() > 50  # learnable contrast
    assert (covered > 0).all()  # every label occurs


def test_submission_rows_at_350x525(root, tmp_path):
    adapter = make_adapter("clouds", root)
    samples = adapter.test_samples()
    assert len(samples) == 3 and adapter.submission_size(samples[0]) == (350, 525)
    rng = np.random.default_rng(0)
    masks = [np.zeros((350, 525, 4), np.uint8) for _ in samples]
    masks[0][100:200, 50:300, 1] = 1
    masks[1][..., 3] = rng.random((350, 525)) < 0.2
    rows = [r for s, m in zip(samples, masks) for r in adapter.submission_rows(s, m)]
    assert [r[0] for r in rows[:4]] == [f"{samples[0].id}_{lab}" for lab in LABELS]
    sample_csv = root / "sample_submission.csv"
    sample_ids = list(pd.read_csv(sample_csv)["Image_Label"])
    path = tmp_path / "sub.csv"
    write_rows(path, adapter.submission_header, reversed(rows), sample_ids=sample_ids)
    assert validate_submission(path, "clouds", sample_csv) == []
    sub = pd.read_csv(path, keep_default_na=False)
    assert list(sub["Image_Label"]) == sample_ids
    for (_, row), (s, m, c) in zip(sub.iterrows(), [(s, m, c) for s, m in zip(samples, masks) for c in range(4)]):
        np.testing.assert_array_equal(rle.decode(row["EncodedPixels"], (350, 525), "F"), m[..., c])
        assert (row["EncodedPixels"] == "") == (not m[..., c].any())


def test_bad_label_and_bad_rle_are_named(real_root):
    (real_root / "train.csv").unlink()
    (real_root / "train.csv").write_text("Image_Label,EncodedPixels\n0011165.jpg_Cirrus,1 1\n")
    with pytest.raises(DataError, match="'0011165.jpg_Cirrus' is not <image>_<label>"):
        make_adapter("clouds", real_root).train_samples()
    (real_root / "train.csv").write_text("Image_Label,EncodedPixels\n0011165.jpg_Fish,2939999 5\n")
    (sample,) = make_adapter("clouds", real_root).train_samples()
    with pytest.raises(DataError, match="0011165.jpg_Fish: RLE pair 1 .* past the image's 2940000 pixels"):
        make_adapter("clouds", real_root).read_mask(sample)
    (real_root / "train.csv").write_text("Image,Pixels\n")
    with pytest.raises(DataError, match="lacks column\\(s\\) Image_Label, EncodedPixels"):
        make_adapter("clouds", real_root).train_samples()
