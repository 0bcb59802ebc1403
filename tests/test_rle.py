"""segkit.rle: round trips (property tests), malformed input, and real competition files in both orders."""
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from segkit import rle
from segkit.data.io import read_image
from segkit.errors import RLEError


def kaggle_encode(img: np.ndarray) -> str:
    """The encoder of the public Kaggle kernels (row-major over whatever array it is given)."""
    pixels = np.concatenate([[0], img.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


# --- property tests ---------------------------------------------------------------------------

shapes = st.tuples(st.integers(1, 24), st.integers(1, 24))
masks = shapes.flatmap(lambda s: arrays(np.uint8, s, elements=st.integers(0, 1)))


@settings(max_examples=150, deadline=None)
@given(mask=masks, order=st.sampled_from(["C", "F"]))
def test_round_trip_random_masks(mask, order):
    text = rle.encode(mask, order)
    out = rle.decode(text, mask.shape, order)
    assert out.dtype == np.uint8 and out.shape == mask.shape
    np.testing.assert_array_equal(out, mask)
    ref = kaggle_encode(mask if order == "C" else mask.T)
    assert text == ref


@settings(max_examples=60, deadline=None)
@given(shape=shapes, order=st.sampled_from(["C", "F"]), fill=st.sampled_from(["zeros", "ones", "first", "last", "row", "col"]))
def test_round_trip_edge_masks(shape, order, fill):
    h, w = shape
    mask = np.zeros(shape, np.uint8)
    if fill == "ones":
        mask[:] = 1
    elif fill == "first":
        mask[0, 0] = 1
    elif fill == "last":
        mask[-1, -1] = 1
    elif fill == "row":
        mask[h // 2, :] = 1  # one-pixel-wide horizontal line
    elif fill == "col":
        mask[:, w // 2] = 1  # one-pixel-wide vertical line
    text = rle.encode(mask, order)
    np.testing.assert_array_equal(rle.decode(text, shape, order), mask)
    if fill == "zeros":
        assert text == ""
    if fill == "ones":
        assert text == f"1 {h * w}"
    if fill == "first":
        assert text == "1 1"
    if fill == "last":
        assert text == f"{h * w} 1"


def test_encode_accepts_bool_and_non_binary():
    mask = np.array([[0, 3], [255, 0]], np.uint8)
    assert rle.encode(mask, "C") == "2 2"
    assert rle.encode(mask.astype(bool), "F") == "2 2"
    assert rle.encode(mask, "F") == rle.encode(mask.T, "C")


def test_empty_fields_decode_to_empty_mask():
    for empty in ("", "  ", "\r", None, float("nan"), np.nan):
        out = rle.decode(empty, (3, 4))
        assert out.shape == (3, 4) and not out.any()


def test_adjacent_runs_are_valid():
    np.testing.assert_array_equal(rle.decode("1 2 3 1", (1, 4), "C"), [[1, 1, 1, 0]])


@pytest.mark.parametrize(
    "text, words",
    [
        ("1", "odd number"),
        ("1 2 3", "odd number"),
        ("1 x", "'x' is not a whole number"),
        ("1.5 2", "'1.5' is not a whole number"),
        ("-1 2", "'-1' is not a whole number"),
        ("0 2", "start 0"),
        ("1 0", "length 0"),
        ("5 2 1 2", "out of order"),
        ("1 5 3 2", "overlaps"),
        ("1 3 3 1", "overlaps"),
        ("11 3", "past the image's 12 pixels"),
        ("12 2", "past the image's 12 pixels"),
        ("1 nan", "not a whole number"),
        ("99999999999999999999999 1", "too large"),
        ("1 ٣", "not a whole number"),
    ],
)
def test_malformed_rle_is_rejected_with_reason(text, words):
    with pytest.raises(RLEError, match=words):
        rle.decode(text, (3, 4))


def test_bad_arguments_are_rejected():
    with pytest.raises(RLEError, match="order"):
        rle.decode("1 1", (2, 2), order="X")
    with pytest.raises(RLEError, match="shape"):
        rle.decode("1 1", (0, 2))
    with pytest.raises(RLEError, match="2-D"):
        rle.encode(np.zeros((2, 2, 1)))
    with pytest.raises(RLEError, match="string"):
        rle.decode(5, (2, 2))


@settings(max_examples=300, deadline=1000)
@given(text=st.text(alphabet=st.sampled_from(list("0123456789 -.\tx\n+e")), max_size=40))
def test_any_string_decodes_or_raises_rle_error(text):
    try:
        out = rle.decode(text, (5, 7), "F")
    except RLEError:
        return
    assert out.shape == (5, 7) and set(np.unique(out)) <= {0, 1}
    # whatever decoded must re-encode to the same runs (merging adjacent runs is the only change)
    np.testing.assert_array_equal(rle.decode(rle.encode(out, "F"), (5, 7), "F"), out)


@settings(max_examples=200, deadline=1000)
@given(values=st.lists(st.integers(-3, 40), max_size=12))
def test_integer_pairs_decode_or_raise(values):
    text = " ".join(map(str, values))
    try:
        out = rle.decode(text, (5, 7), "C")
    except RLEError:
        return
    assert int(out.sum()) == sum(values[1::2])


# --- real files ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clouds(fixtures_dir):
    df = pd.read_csv(fixtures_dir / "understanding_clouds" / "train_small.csv")
    image = read_image(fixtures_dir / "understanding_clouds" / "0011165.jpg")
    return df, image


def test_clouds_train_rows_round_trip_exactly(clouds):
    df, image = clouds
    assert image.shape == (1400, 2100, 3)
    for label, text in zip(df["Image_Label"], df["EncodedPixels"]):
        text = text.strip() if isinstance(text, str) else text
        mask = rle.decode(text, (1400, 2100), "F")
        if label.endswith(("_Gravel", "_Sugar")):
            assert rle.is_empty(text) and not mask.any() and rle.encode(mask, "F") == ""
        else:
            assert mask.mean() > 0.2
            assert rle.encode(mask, "F") == text


def test_clouds_wrong_order_is_detectable(clouds):
    """The black no-data band is outside every label: the right order puts almost no mask on it,
    the wrong order smears the mask into stripes across it."""
    df, image = clouds
    black = image.mean(axis=2) <= 5
    assert 0.03 < black.mean() < 0.06
    for text in df["EncodedPixels"].dropna().str.strip():
        right = rle.decode(text, (1400, 2100), "F").astype(bool)
        wrong = rle.decode(text, (1400, 2100), "C").astype(bool)
        assert black[right].mean() < 0.001
        assert black[wrong].mean() > 5 * black[right].mean()
        # real label masks are blobs: few vertical transitions in the right order, stripes in the wrong one
        assert np.abs(np.diff(wrong.astype(np.int8), axis=0)).sum() > 100 * np.abs(np.diff(right.astype(np.int8), axis=0)).sum()


@pytest.fixture(scope="module")
def airbus(fixtures_dir):
    return pd.read_csv(fixtures_dir / "airbus" / "train_ship_segmentations_v2_subset.csv")


def test_airbus_rows_round_trip_without_overlap(airbus):
    assert len(airbus) == 29 and airbus["ImageId"].nunique() == 10
    empty = sorted(airbus.loc[airbus["EncodedPixels"].isna(), "ImageId"])
    assert empty == ["0a00a69de.jpg", "0a0a623a0.jpg", "0a0ada7e3.jpg", "0a0aeea56.jpg"]
    for image_id, rows in airbus.groupby("ImageId"):
        total = np.zeros((768, 768), np.int32)
        for text in rows["EncodedPixels"]:
            mask = rle.decode(text, (768, 768), "F")
            total += mask
            if rle.is_empty(text):
                assert not mask.any() and len(rows) == 1
            else:
                assert rle.encode(mask, "F") == text
                assert ndimage.label(mask)[1] >= 1
        assert total.max() <= 1, f"{image_id}: ships overlap"
    assert (airbus["ImageId"] == "0a1a7f395.jpg").sum() == 14


def test_airbus_wrong_order_is_detectable(airbus, fixtures_dir):
    """Square images hide a transposed mask from shape checks; the image does not: a ship's outline
    lies on strong image edges only in the right order."""

    def edge_ratio(grey, mask):
        grad = np.hypot(ndimage.sobel(grey, 0), ndimage.sobel(grey, 1))
        border = mask ^ ndimage.binary_erosion(mask)
        return grad[border].mean() / grad.mean()

    checked = 0
    for image_id in ("0a0df8299.jpg", "0a1a58833.jpg", "0a1b7d6ec.jpg"):
        grey = read_image(fixtures_dir / "airbus" / image_id).mean(axis=2)
        for text in airbus.loc[airbus["ImageId"] == image_id, "EncodedPixels"]:
            right = rle.decode(text, (768, 768), "F").astype(bool)
            wrong = rle.decode(text, (768, 768), "C").astype(bool)
            assert edge_ratio(grey, right) > edge_ratio(grey, wrong) + 0.05
            checked += 1
    assert checked == 5


def test_carvana_rle_is_row_major(fixtures_dir):
    lines = (fixtures_dir / "carvana" / "train_masks_head_truncated.txt").read_text().splitlines()
    rows = [ln.split(",") for ln in lines if ln and not ln.startswith("#")][1:]
    assert len(rows) == 5
    width, height = 1918, 1280
    for _, text in rows:
        starts0, lengths = rle.parse_runs(text, width * height)
        assert starts0.size == 4
        # row-major: the runs of a car outline fall in consecutive rows (stride about one width)
        # and start within a few hundred columns of each other
        rows, cols = np.divmod(starts0, width)
        assert np.all(np.diff(rows) <= 1) and rows.max() - rows.min() <= 3
        assert cols.max() - cols.min() < 300
        # read column-major (the wrong order) the same runs would jump hundreds of rows apart
        wrong_rows = starts0 % height
        assert np.abs(np.diff(wrong_rows)).max() > 250
        right = rle.decode(text, (height, width), "C")
        assert right.sum() == lengths.sum() and np.nonzero(right)[0].max() - np.nonzero(right)[0].min() <= 3


def test_carvana_sample_submission_rows_decode(fixtures_dir):
    df = pd.read_csv(fixtures_dir / "carvana" / "sample_submission_head20.csv")
    assert list(df.columns) == ["img", "rle_mask"]
    for text in df["rle_mask"]:
        mask = rle.decode(text, (1280, 1918), "C")
        assert mask[0, 0] == 1 and mask.sum() == 1
    image = read_image(fixtures_dir / "carvana" / "29bb3ece3180_11.jpg")
    assert image.shape == (1280, 1918, 3)


@settings(max_examples=300, deadline=1000)
@given(text=st.text(max_size=30))
def test_any_unicode_text_decodes_or_raises_rle_error(text):
    try:
        out = rle.decode(text, (4, 6), "C")
    except RLEError as exc:
        assert str(exc)
        return
    assert out.shape == (4, 6)
