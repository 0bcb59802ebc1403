"""TGS Salt adapter: the real training set read as-is (every train.csv row decodes column-major to its PNG and
re-encodes to the same string), hand-made files from the format's facts, malformed input named, the metric."""
import cv2
import numpy as np
import pandas as pd
import pytest

from segkit import rle
from segkit.cli import main
from segkit.data.competitions.base import make_adapter
from segkit.errors import DataError
from segkit.evaluate import tgs_iou_from_counts, tgs_score
from segkit.data.competitions.base import validate_submission
from segkit.submission import write_rows


@pytest.fixture(scope="module")
def real(fixtures_dir):
    return fixtures_dir / "tgs"


def test_real_training_set_read_as_is_and_every_row_round_trips(real):
    """All 3,001 real rows: the PNG mask (16-bit {0, 65535} or 8-bit zeros) equals the column-major decode of
    train.csv, which re-encodes to the exact same string; row-major would match only symmetric masks."""
    png = make_adapter("tgs", real)
    csv = make_adapter("tgs", real, {"masks": "csv"})
    samples, from_csv = png.train_samples(), csv.train_samples()
    table = pd.read_csv(real / "train.csv", keep_default_na=False, dtype=str)
    assert [s.id for s in samples] == list(table["id"]) and len(samples) == 3001
    assert samples[0].mask[0].endswith(".png") and from_csv[0].mask[0].endswith("train.csv")
    row_major_fails = 0
    for s, c, text in zip(samples, from_csv, table["rle_mask"]):
        mask = png.read_mask(s)
        assert mask.shape == (101, 101, 1) and mask.dtype == np.uint8
        np.testing.assert_array_equal(csv.read_mask(c), mask, err_msg=s.id)
        assert rle.encode(mask[..., 0], "F") == text, s.id
        assert (s.stratum == 0) == (text == "")
        row_major_fails += not np.array_equal(rle.decode(text, (101, 101), "C"), mask[..., 0])
    assert row_major_fails > 1000
    empty = sum(t == "" for t in table["rle_mask"])
    assert 0.35 < empty / 3001 < 0.45  # about 40 % of the masks are empty
    image = png.read_image(samples[0])
    assert image.shape == (101, 101, 3) and image.dtype == np.uint8
    assert (image[..., :1] == image).all()  # three equal channels
    assert all(isinstance(s.meta["z"], float) for s in samples[:20])


def write_hand_made(root, rows, masks, image_size=(101, 101)):
    """A TGS dataset of hand-made files: images, 16-bit (or 8-bit empty) masks, train.csv, depths.csv."""
    for sub in ("train/images", "train/masks", "test/images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for (i, _), mask in zip(rows, masks):
        cv2.imwrite(str(root / "train/images" / f"{i}.png"), np.full((*image_size, 3), 90, np.uint8))
        data = mask.astype(np.uint16) * 65535 if mask.any() else np.zeros(mask.shape, np.uint8)
        cv2.imwrite(str(root / "train/masks" / f"{i}.png"), data)
    (root / "train.csv").write_text("id,rle_mask\n" + "".join(f"{i},{t}\n" for i, t in rows))
    (root / "depths.csv").write_text("id,z\n" + "".join(f"{i},{100 + k}\n" for k, (i, _) in enumerate(rows)))
    return root


def salt_columns_50_to_100():
    mask = np.zeros((101, 101), np.uint8)
    mask[:, 50:] = 1
    return mask


def test_hand_made_rows_from_the_facts(tmp_path):
    """`575d24d81d,` is empty; `a266a2a9df,5051 5151` is columns 50-100 all salt, ending on pixel 10,201."""
    first_column = np.zeros((101, 101), np.uint8)
    first_column[:, 0] = 1
    rows = [("575d24d81d", ""), ("a266a2a9df", "5051 5151"), ("0123456789", "1 101")]
    root = write_hand_made(tmp_path, rows, [np.zeros((101, 101), np.uint8), salt_columns_50_to_100(), first_column])
    assert (root / "train.csv").read_text().startswith("id,rle_mask\n575d24d81d,\n")
    for mode in ("png", "csv"):
        adapter = make_adapter("tgs", root, {"masks": mode})
        samples = adapter.train_samples()
        assert [s.id for s in samples] == [r[0] for r in rows]
        assert [s.meta["z"] for s in samples] == [100.0, 101.0, 102.0]
        masks = [adapter.read_mask(s)[..., 0] for s in samples]
        assert not masks[0].any()
        np.testing.assert_array_equal(masks[1], salt_columns_50_to_100())
        np.testing.assert_array_equal(masks[2], first_column)  # column-major: start 1 runs down column 0
        for s, m, (_, text) in zip(samples, masks, rows):
            assert list(adapter.submission_rows(s, m[..., None])) == [(s.id, text)]
    assert [s.stratum for s in make_adapter("tgs", root).train_samples()] == [0, 3, 1]  # 50 % coverage, 1 %


def test_submission_at_101_and_the_validator(tmp_path, capsys):
    ids = ["00a1b2c3d4", "ffee001122"]
    (tmp_path / "sample_submission.csv").write_text("id,rle_mask\n" + "".join(f"{i},1 1\n" for i in ids))
    rows = [(ids[0], "5051 5151"), (ids[1], "")]
    sub = tmp_path / "sub.csv"
    write_rows(sub, ("id", "rle_mask"), reversed(rows), sample_ids=ids)
    assert sub.read_text() == "id,rle_mask\n00a1b2c3d4,5051 5151\nffee001122,\n"
    assert validate_submission(sub, "tgs", tmp_path / "sample_submission.csv") == []
    assert main(["validate", "--competition", "tgs", str(sub), "--sample", str(tmp_path / "sample_submission.csv")]) == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("id,rle_mask\n00a1b2c3d4,10201 2\nFFEE001122,\n00a1b2c3d,\n00a1b2c3d4,\n")
    problems = validate_submission(bad, "tgs")
    assert any("line 2" in p and "past the image's 10201 pixels" in p for p in problems)
    assert any("'FFEE001122'" in p and "[0-9a-f]{10}" in p for p in problems)
    assert any("'00a1b2c3d'" in p and "[0-9a-f]{10}" in p for p in problems)
    assert any("duplicate id" in p for p in problems)
    short = tmp_path / "short.csv"
    short.write_text("id,rle_mask\n00a1b2c3d4,\n")
    assert any("'ffee001122': this id of the sample has no row" in p
               for p in validate_submission(short, "tgs", tmp_path / "sample_submission.csv"))
    assert main(["validate", "--competition", "tgs", str(bad)]) == 1
    assert "INVALID for tgs" in capsys.readouterr().out


def test_malformed_input_is_named(tmp_path):
    root = write_hand_made(tmp_path, [("a266a2a9df", "5051 5151"), ("575d24d81d", "")],
                           [salt_columns_50_to_100(), np.zeros((101, 101), np.uint8)])
    (root / "train.csv").write_text("id,mask\na266a2a9df,5051 5151\n")
    with pytest.raises(DataError, match=r"train.csv: training mask list lacks column\(s\) rle_mask"):
        make_adapter("tgs", root).train_samples()
    (root / "train.csv").write_text("id,rle_mask\na266a2a9df,5051 5152\n")
    with pytest.raises(DataError, match="train.csv: id a266a2a9df: RLE pair 1 .* past the image's 10201 pixels"):
        make_adapter("tgs", root).train_samples()
    (root / "train.csv").write_text("id,rle_mask\na266a2a9df,5051 5151\nbbbbbbbbbb,\n")
    with pytest.raises(DataError, match=r"train/images: training image \(listed in train.csv\) bbbbbbbbbb.png not found"):
        make_adapter("tgs", root).train_samples()
    (root / "train.csv").write_text("id,rle_mask\na266a2a9df,5051 5151\n575d24d81d,\n")
    cv2.imwrite(str(root / "train/masks/575d24d81d.png"), np.zeros((100, 101), np.uint8))
    adapter = make_adapter("tgs", root)
    samples = adapter.train_samples()
    with pytest.raises(DataError, match="575d24d81d.png: mask is 100x101 but image .* is 101x101"):
        adapter.read_mask(samples[1])
    cv2.imwrite(str(root / "train/images/575d24d81d.png"), np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(DataError, match="575d24d81d.png: image is 100x100, but a266a2a9df.png is 101x101"):
        adapter.read_image(samples[1])
    (root / "depths.csv").write_text("id,depth\n")
    with pytest.raises(DataError, match=r"depths.csv: depth list lacks column\(s\) z"):
        make_adapter("tgs", root).train_samples()
    (root / "depths.csv").write_text("id,z\na266a2a9df,deep\n")
    with pytest.raises(DataError, match="depths.csv: depth 'deep' is not a number"):
        make_adapter("tgs", root).train_samples()
    (root / "depths.csv").unlink()
    with pytest.raises(DataError, match="sample_submission.csv: sample submission not found"):
        make_adapter("tgs", root).test_samples()


def test_metric_by_hand(tmp_path):
    truth = np.zeros((3, 10, 10), np.uint8)
    pred = np.zeros_like(truth)
    truth[0, :5] = 1
    pred[0, :4] = 1  # IoU 0.8: passes 0.50-0.75 (6 of 10 thresholds)
    truth[1, 0, 0] = 1  # truth only: 0
    # image 2: both empty: 1
    adapter = make_adapter("tgs", write_hand_made(tmp_path, [("a266a2a9df", "")], [np.zeros((101, 101), np.uint8)]))
    expected = (0.6 + 0 + 1) / 3
    assert adapter.score_class(truth, pred) == pytest.approx(expected)
    assert tgs_score(truth, pred) == pytest.approx(expected)
    t, p = truth.reshape(3, -1).astype(bool), pred.reshape(3, -1).astype(bool)
    counts = ((t & p).sum(1), p.sum(1), t.sum(1))
    assert adapter.score_counts(*counts) == pytest.approx(expected) == tgs_iou_from_counts(*counts)


def test_metric_thresholds_are_the_rounded_hundredths():
    from segkit.evaluate import IOU_THRESHOLDS

    assert tuple(IOU_THRESHOLDS) == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


@pytest.mark.parametrize("k, passed", [  # IoU k/20 counts where IoU > t: t = 0.50 … 0.95 below k/20 only
    (9, 0), (10, 0), (11, 1), (12, 2), (13, 3), (14, 4), (15, 5), (16, 6), (17, 7), (18, 8), (19, 9), (20, 10)])
def test_metric_at_iou_exactly_on_each_threshold(k, passed):
    """IoU exactly 0.45, 0.50, …, 1.0: a threshold equal to the IoU is not passed (IoU > t, as the competition)."""
    # a) truth 20 pixels, prediction the first k of them: inter k, union 20
    truth = np.zeros((1, 8, 8), np.uint8)
    truth.reshape(-1)[:20] = 1
    pred = np.zeros_like(truth)
    pred.reshape(-1)[:k] = 1
    assert tgs_score(truth, pred) == passed / 10
    # b) the prediction larger than the truth: truth 2k pixels, prediction those and 40 - 2k others: inter 2k,
    # union 40
    truth = np.zeros((1, 8, 8), np.uint8)
    truth.reshape(-1)[:2 * k] = 1
    pred = np.zeros_like(truth)
    pred.reshape(-1)[:40] = 1
    inter, union = 2 * k, 40
    assert np.count_nonzero(truth & pred) == inter and np.count_nonzero(truth | pred) == union
    assert tgs_score(truth, pred) == passed / 10
    assert tgs_iou_from_counts([inter], [40], [2 * k]) == passed / 10


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`mask` moved by (dy, dx) pixels, what moves out dropped, zeros moved in."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = mask[max(-dy, 0):h - max(dy, 0),
                                                                     max(-dx, 0):w - max(dx, 0)]
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    """4-neighbour erosion in plain numpy (outside the image counts as background)."""
    return mask & _shift(mask, 1, 0) & _shift(mask, -1, 0) & _shift(mask, 0, 1) & _shift(mask, 0, -1)


def test_metric_on_real_masks_against_moved_and_eroded_ones(real):
    """Real salt masks scored against themselves moved by a few pixels or eroded; the expected score counted
    exactly in integers: a threshold k/20 is passed when 20·inter > k·union."""
    truths, preds = [], []
    for path in sorted((real / "train" / "masks").glob("*.png")):
        m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) > 0
        if 200 < m.sum() < m.size - 200:  # salt, and not everywhere
            truths.append(m)
        if len(truths) == 12:
            break
    assert len(truths) == 12
    moves = [(1, 0), (0, 2), (3, 3), (-5, 0), (0, -8), (12, 1)]
    for i, t in enumerate(truths):
        preds.append(_shift(t, *moves[i]) if i < len(moves) else _erode(t) if i % 2 else _erode(_erode(t)))
    preds.append(np.zeros_like(truths[0]))  # one of them empty: 0
    truths.append(truths[0])
    expected = []
    for t, p in zip(truths, preds):
        inter, union = int(np.count_nonzero(t & p)), int(np.count_nonzero(t | p))
        expected.append(sum(20 * inter > k * union for k in range(10, 20)) / 10)
    assert len(set(expected)) >= 4 and 0 < np.mean(expected) < 1  # the cases spread over the thresholds
    assert tgs_score(np.stack(truths), np.stack(preds)) == pytest.approx(np.mean(expected), abs=1e-12)
