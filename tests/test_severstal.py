"""Severstal adapter: hand-made files from the format's facts (both train.csv forms, 256x1600 column-major RLE,
ImageId_ClassId submissions with 4 rows per image), malformed input named, the validator's checks."""
import cv2
import numpy as np
import pandas as pd
import pytest

from segkit import rle
from segkit.cli import main
from segkit.data.competitions.base import make_adapter
from segkit.data.synth import generate
from segkit.errors import DataError
from segkit.data.competitions.base import validate_submission
from segkit.submission import write_rows

IDS = ("0002cc93b.jpg", "00031f466.jpg", "000418bfc.jpg")
# hand-computed column-major RLEs at 256x1600 (1-indexed; one column is 256 pixels)
FIRST_COLUMN = "1 256"  # x = 0, every row
TWO_REGIONS = "129 256 2561 10"  # rows 128-255 of column 0 and rows 0-127 of column 1; rows 0-9 of column 10
LAST_PIXELS = "409591 10"  # rows 246-255 of the last column, ending on pixel 409,600


def hand_masks():
    masks = {i: np.zeros((256, 1600, 4), np.uint8) for i in IDS}
    masks[IDS[0]][:, 0, 0] = 1
    masks[IDS[0]][128:, 0, 2] = 1
    masks[IDS[0]][:128, 1, 2] = 1
    masks[IDS[0]][:10, 10, 2] = 1
    masks[IDS[1]][246:, 1599, 3] = 1
    return masks  # IDS[2] is defect-free


PERIOD_ROWS = [(IDS[0], "1", FIRST_COLUMN), (IDS[0], "2", ""), (IDS[0], "3", TWO_REGIONS), (IDS[0], "4", ""),
               (IDS[1], "1", ""), (IDS[1], "2", ""), (IDS[1], "3", ""), (IDS[1], "4", LAST_PIXELS),
               (IDS[2], "1", ""), (IDS[2], "2", ""), (IDS[2], "3", ""), (IDS[2], "4", "")]


def write_dataset(root, form):
    """train_images/ (256x1600 JPEGs), test_images/, train.csv in `form`, the competition-period sample."""
    for sub in ("train_images", "test_images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in IDS:
        cv2.imwrite(str(root / "train_images" / i), np.full((256, 1600, 3), 120, np.uint8))
    if form == "period":
        text = "ImageId_ClassId,EncodedPixels\n" + "".join(f"{i}_{c},{t}\n" for i, c, t in PERIOD_ROWS)
    else:  # one row per image and present class; the defect-free image is absent
        text = "ImageId,ClassId,EncodedPixels\n" + "".join(f"{i},{c},{t}\n" for i, c, t in PERIOD_ROWS if t)
    (root / "train.csv").write_text(text)
    tests = ("ffe2d8a4b.jpg", "fff0295e1.jpg")
    for i in tests:
        cv2.imwrite(str(root / "test_images" / i), np.full((256, 1600, 3), 120, np.uint8))
    (root / "sample_submission.csv").write_text(
        "ImageId_ClassId,EncodedPixels\n" + "".join(f"{i}_{c},1 1\n" for i in tests for c in "1234"))
    return root


@pytest.fixture(params=["period", "long"])
def hand_root(request, tmp_path):
    return write_dataset(tmp_path, request.param)


def test_both_train_csv_forms_read_to_the_hand_made_masks(hand_root):
    adapter = make_adapter("severstal", hand_root)
    samples = adapter.train_samples()
    assert [s.id for s in samples] == list(IDS) and adapter.classes == ("1", "2", "3", "4")
    assert [s.stratum for s in samples] == [0b0101, 0b1000, 0]
    expected = hand_masks()
    for s in samples:
        mask = adapter.read_mask(s)
        assert mask.shape == (256, 1600, 4) and mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, expected[s.id], err_msg=s.id)
        # exact round trip through the submission rows: ids <image>_<ClassId>, the same RLE strings
        texts = {f"{i}_{c}": t for i, c, t in PERIOD_ROWS}
        assert list(adapter.submission_rows(s, mask)) == [(f"{s.id}_{c}", texts[f"{s.id}_{c}"]) for c in "1234"]


def test_synthetic_long_and_period_forms_read_to_identical_masks(tmp_path):
    roots = {form: generate("severstal", tmp_path / form, seed=5, image_size=(32, 200), n_train=12, n_test=2,
                            train_form=form, quiet=True) for form in ("long", "period")}
    assert (roots["long"] / "train.csv").read_text().startswith("ImageId,ClassId,EncodedPixels\n")
    assert (roots["period"] / "train.csv").read_text().startswith("ImageId_ClassId,EncodedPixels\n")
    long_rows = pd.read_csv(roots["long"] / "train.csv", dtype=str)
    period_rows = pd.read_csv(roots["period"] / "train.csv", dtype=str, keep_default_na=False)
    assert len(period_rows) == 4 * 12 and len(long_rows) == (period_rows["EncodedPixels"] != "").sum()
    a, b = (make_adapter("severstal", roots[f]) for f in ("long", "period"))
    sa, sb = a.train_samples(), b.train_samples()
    assert [s.id for s in sa] == [s.id for s in sb] and len(sa) == 12
    assert any(s.stratum == 0 for s in sa) and any(s.stratum for s in sa)  # defect-free and defective images
    for x, y in zip(sa, sb):
        np.testing.assert_array_equal(a.read_mask(x), b.read_mask(y))
        assert x.stratum == y.stratum
        mask, image = a.read_mask(x), a.read_image(x)
        assert image.shape == (32, 200, 3)
        if mask.any():  # defects stand out from the steel
            grey = image.mean(axis=2)
            assert abs(grey[mask.any(axis=2)].mean() - grey[~mask.any(axis=2)].mean()) > 30
        assert mask.sum(axis=2).max() <= 1  # classes never overlap


def test_submission_follows_the_sample_and_the_validator(hand_root, tmp_path, capsys):
    adapter = make_adapter("severstal", hand_root)
    tests = adapter.test_samples()
    assert [s.id for s in tests] == ["ffe2d8a4b.jpg", "fff0295e1.jpg"]
    assert adapter.submission_size(tests[0]) == (256, 1600)
    masks = hand_masks()
    rows = [r for s, m in zip(tests, (masks[IDS[0]], masks[IDS[2]])) for r in adapter.submission_rows(s, m)]
    sample = hand_root / "sample_submission.csv"
    sample_ids = list(pd.read_csv(sample)["ImageId_ClassId"])
    path = tmp_path / "sub.csv"
    write_rows(path, adapter.submission_format, reversed(rows), sample_ids=sample_ids)
    assert path.read_text().splitlines()[:3] == ["ImageId_ClassId,EncodedPixels", f"ffe2d8a4b.jpg_1,{FIRST_COLUMN}",
                                                 "ffe2d8a4b.jpg_2,"]
    assert validate_submission(path, "severstal", sample) == []
    assert main(["validate", "--competition", "severstal", str(path), "--sample", str(sample)]) == 0
    capsys.readouterr()
    bad = tmp_path / "bad.csv"
    bad.write_text("ImageId_ClassId,EncodedPixels\n"
                   "ffe2d8a4b.jpg_1,409600 2\nffe2d8a4b.jpg_2,\nffe2d8a4b.jpg_3,\n"  # past the end; no _4
                   "fff0295e1_1,\nfff0295e1_2,\nfff0295e1_3,\nfff0295e1_4,\n"  # no .jpg
                   "FFF0295E1.jpg_1,\nFFF0295E1.jpg_2,\nFFF0295E1.jpg_3,\nFFF0295E1.jpg_4,\n"  # not lower-case hex
                   "ffe2d8a4b.jpg_5,\n")  # ClassId 5
    problems = validate_submission(bad, "severstal")
    assert any("line 2" in p and "past the image's 409600 pixels" in p for p in problems)
    assert any("'ffe2d8a4b.jpg': the image lacks rows for 4" in p for p in problems)
    assert any("'fff0295e1_1'" in p and "<image>.jpg_<label>" in p for p in problems)
    assert any("'FFF0295E1.jpg_1'" in p and "[0-9a-f]{9}" in p for p in problems)
    assert any("'ffe2d8a4b.jpg_5'" in p and "does not end in _<label>" in p for p in problems)
    short = tmp_path / "short.csv"
    short.write_text("ImageId_ClassId,EncodedPixels\n" + "".join(f"ffe2d8a4b.jpg_{c},\n" for c in "1234"))
    assert sum("has no row" in p for p in validate_submission(short, "severstal", sample)) == 4
    assert main(["validate", "--competition", "severstal", str(bad)]) == 1
    assert "INVALID for severstal" in capsys.readouterr().out


def test_malformed_input_is_named(tmp_path):
    root = write_dataset(tmp_path, "period")
    csv_path = root / "train.csv"
    csv_path.write_text("ImageId,EncodedPixels\n0002cc93b.jpg,1 1\n")
    with pytest.raises(DataError, match="train.csv: header is ImageId,EncodedPixels; expected Severstal's "
                                        "ImageId_ClassId,EncodedPixels .* or ImageId,ClassId,EncodedPixels"):
        make_adapter("severstal", root).train_samples()
    csv_path.write_text("ImageId,ClassId,EncodedPixels\n0002cc93b.jpg,1,409600 2\n")
    (sample, *_) = make_adapter("severstal", root).train_samples()
    with pytest.raises(DataError, match="train.csv: 0002cc93b.jpg class 1: RLE pair 1 .* past the image's "
                                        "409600 pixels"):
        make_adapter("severstal", root).read_mask(sample)
    csv_path.write_text("ImageId,ClassId,EncodedPixels\n0002cc93b.jpg,5,1 1\n")
    with pytest.raises(DataError, match="train.csv, line 2: ClassId '5' of 0002cc93b.jpg"):
        make_adapter("severstal", root).train_samples()
    csv_path.write_text("ImageId,ClassId,EncodedPixels\n0002cc93b.jpg,1,1 1\n0002cc93b.jpg,1,5 1\n")
    with pytest.raises(DataError, match="train.csv, line 3: a second row for 0002cc93b.jpg class 1"):
        make_adapter("severstal", root).train_samples()
    csv_path.write_text("ImageId_ClassId,EncodedPixels\n0002cc93b.jpg_1,\n0002cc93b.jpg_2,\n")
    with pytest.raises(DataError, match="train.csv: 0002cc93b.jpg lacks rows for class\\(es\\) 3, 4"):
        make_adapter("severstal", root).train_samples()
    csv_path.write_text("ImageId,ClassId,EncodedPixels\n0aaaaaaaa.jpg,1,1 1\n")
    with pytest.raises(DataError, match=r"train_images: training image \(listed in train.csv\) 0aaaaaaaa.jpg not found"):
        make_adapter("severstal", root).train_samples()
    csv_path.write_text("ImageId,ClassId,EncodedPixels\n000418bfc.jpg,3,1 1\n")
    cv2.imwrite(str(root / "train_images" / IDS[2]), np.zeros((256, 1599, 3), np.uint8))
    adapter = make_adapter("severstal", root)
    wrong = adapter.train_samples()[2]
    with pytest.raises(DataError, match="000418bfc.jpg: image is 256x1599, but 0002cc93b.jpg is 256x1600"):
        adapter.read_mask(wrong)
    with pytest.raises(DataError, match="000418bfc.jpg: image is 256x1599"):
        adapter.read_image(wrong)
    (root / "sample_submission.csv").write_text("ImageId,EncodedPixels,ClassId\nffe2d8a4b.jpg,1 1,0\n")
    with pytest.raises(DataError, match="sample_submission.csv: header is ImageId,EncodedPixels,ClassId; segkit "
                                        "writes Severstal submissions as the competition-period sample"):
        adapter.test_samples()
    (root / "sample_submission.csv").unlink()
    with pytest.raises(DataError, match="sample_submission.csv: sample submission not found"):
        adapter.test_samples()


def test_kaggle_slugs_name_the_adapters():
    from segkit.kaggle.config import adapter_name_for

    assert adapter_name_for("severstal-steel-defect-detection") == "severstal"
    assert adapter_name_for("tgs-salt-identification-challenge") == "tgs"


def test_an_image_of_the_wrong_size_is_blamed_not_its_rle(tmp_path):
    """All images resized to 128x800: the RLE that fits 256x1600 was blamed ("past the image's 102400 pixels")."""
    root = write_dataset(tmp_path, "period")
    for i in IDS:
        cv2.imwrite(str(root / "train_images" / i), np.full((128, 800, 3), 120, np.uint8))
    adapter = make_adapter("severstal", root)
    sample = next(s for s in adapter.train_samples() if s.id == IDS[1])
    with pytest.raises(DataError, match=r"00031f466\.jpg: image is 128x800, not Severstal's 256x1600, so its "
                                        r"mask's RLE does not fit it"):
        adapter.read_mask(sample)
    (root / "train.csv").write_text((root / "train.csv").read_text().replace("409591 10", "409591 10 7"))
    sample = next(s for s in make_adapter("severstal", root).train_samples() if s.id == IDS[1])
    with pytest.raises(DataError, match=r"class 4: RLE has an odd number of values"):  # a bad RLE is still one
        make_adapter("severstal", root).read_mask(sample)
