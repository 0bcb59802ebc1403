"""SIIM-ACR Pneumothorax: the DICOM reader (JPEG-baseline pixels through pydicom + Pillow, damaged files), the
adapter on the real layout (nested folders, stage-1 CSV quirks, several rows per image unioned), one relative-RLE
row per image with `-1` for an empty mask, the validator, and synth -> train -> tune -> predict -> validate by CLI."""
import numpy as np
import pandas as pd
import pydicom
import pytest

from segkit import rle
from segkit.cli import main
from segkit.data.competitions.base import make_adapter
from segkit.data.dicom import JPEG_BASELINE, dicom_size, read_dicom, write_dicom_jpeg
from segkit.data.synth import generate
from segkit.errors import DataError
from segkit.data.competitions.base import check_submission, validate_submission
from segkit.submission import write_rows

STAGE1_ID = "1.2.276.0.7230010.3.1.4.8323329.12743.1517875241.599591"  # the real id quoted in formats.md


def radiograph(h=40, w=48, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    return np.clip(60 + 2 * xx + yy + rng.normal(0, 2, (h, w)), 0, 255).astype(np.uint8)


def test_dicom_reader_on_a_generated_jpeg_baseline_file(tmp_path):
    pixels = radiograph()
    path = tmp_path / "a.dcm"
    write_dicom_jpeg(path, pixels, {"SOPInstanceUID": STAGE1_ID, "PatientID": "17"})
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == JPEG_BASELINE
    assert (ds.Rows, ds.Columns, ds.PhotometricInterpretation) == (40, 48, "MONOCHROME2")
    assert (ds.BitsAllocated, ds.BitsStored, ds.SamplesPerPixel) == (8, 8, 1)
    assert ds.SOPInstanceUID == STAGE1_ID and ds.PatientID == "17"
    assert ds["PixelData"].is_undefined_length and b"\xff\xd8\xff" in ds.PixelData[:64]  # an encapsulated JPEG
    out = read_dicom(path)
    assert out.dtype == np.uint8 and out.shape == (40, 48)
    assert np.abs(out.astype(int) - pixels).mean() < 2 and np.abs(out.astype(int) - pixels).max() < 20  # lossy
    assert dicom_size(path) == (40, 48)


def test_damaged_dicom_files_give_one_line_errors(tmp_path):
    good = tmp_path / "good.dcm"
    write_dicom_jpeg(good, radiograph())
    data = good.read_bytes()

    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"this is not a DICOM file" * 20)
    with pytest.raises(DataError, match=r"garbage\.dcm: not a readable DICOM file") as exc:
        read_dicom(garbage)
    assert "\n" not in str(exc.value) and "force=True" not in str(exc.value)  # pydicom's advice, not a user's

    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[:-60])  # ends inside the JPEG
    with pytest.raises(DataError, match=r"truncated\.dcm: .*damaged"):
        read_dicom(truncated)

    broken = bytearray(data)
    start = broken.find(b"\xff\xda")  # the JPEG scan: overwrite it
    broken[start + 20:start + 120] = b"\xff" * 100
    damaged = tmp_path / "damaged.dcm"
    damaged.write_bytes(bytes(broken))
    with pytest.raises(DataError, match=r"damaged\.dcm: its JPEG Baseline .* damaged .*Pillow") as exc:
        read_dicom(damaged)
    assert "\n" not in str(exc.value)

    # a compression no installed handler decodes (JPEG-LS): the error says what to install
    ds = pydicom.dcmread(good)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.80"
    jpegls = tmp_path / "jpegls.dcm"
    ds.save_as(jpegls)
    with pytest.raises(DataError, match=r"jpegls\.dcm: cannot decode its JPEG-LS .*install pylibjpeg") as exc:
        read_dicom(jpegls)
    assert "\n" not in str(exc.value)
    with pytest.raises(DataError, match="file not found"):
        read_dicom(tmp_path / "missing.dcm")


def hand_dataset(root, rows, train_ids, test_ids=("ID_00000000a",), size=(40, 48)):
    """A SIIM layout written by hand: nested folders, the stage-1 CSV form (header and values with a space)."""
    for split, ids in (("train", train_ids), ("test", test_ids)):
        for k, image_id in enumerate(ids):
            folder = root / f"dicom-images-{split}" / f"study{k}" / f"series{k}"
            folder.mkdir(parents=True)
            write_dicom_jpeg(folder / f"{image_id}.dcm", radiograph(*size, seed=k))
    lines = ["ImageId, EncodedPixels"] + [f"{i}, {t}" for i, t in rows]
    (root / "train-rle.csv").write_text("\n".join(lines) + "\n")
    (root / "stage_2_sample_submission.csv").write_text(
        "ImageId,EncodedPixels\n" + "".join(f"{i},-1\n" for i in test_ids))
    return root


def test_several_rows_of_an_image_are_unioned(tmp_path):
    h, w = 40, 48
    a = np.zeros((h, w), np.uint8)
    a[5:15, 3:9] = 1
    b = np.zeros((h, w), np.uint8)
    b[10:20, 6:12] = 1  # overlaps a
    c = np.zeros((h, w), np.uint8)
    c[30:35, 40:46] = 1
    rows = [(STAGE1_ID, rle.encode(a, "F", "relative")), ("1.2.3.4", "-1"),
            (STAGE1_ID, rle.encode(b, "F", "relative")), (STAGE1_ID, rle.encode(c, "F", "relative"))]
    root = hand_dataset(tmp_path, rows, [STAGE1_ID, "1.2.3.4"])
    adapter = make_adapter("siim", root)
    samples = {s.id: s for s in adapter.train_samples()}
    assert list(samples) == [STAGE1_ID, "1.2.3.4"]
    assert samples[STAGE1_ID].stratum == 2 and samples["1.2.3.4"].stratum == 0
    assert samples["1.2.3.4"].meta["rle"] == ()
    mask = adapter.read_mask(samples[STAGE1_ID])
    assert mask.shape == (h, w, 1) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask[..., 0], a | b | c)
    assert not adapter.read_mask(samples["1.2.3.4"]).any()
    assert adapter.read_image(samples[STAGE1_ID]).shape == (h, w, 1)
    assert make_adapter("siim", root, {"empty_fraction": 0.0}).train_samples()[0].id == STAGE1_ID
    assert len(make_adapter("siim", root, {"empty_fraction": 0.0}).train_samples()) == 1
    tests = adapter.test_samples()
    assert [s.id for s in tests] == ["ID_00000000a"] and adapter.stored_size(tests[0]) == (h, w)


def test_bad_layouts_are_named(tmp_path):
    good = rle.encode(np.eye(40, 48, dtype=np.uint8), "F", "relative")
    root = hand_dataset(tmp_path / "a", [(STAGE1_ID, good), ("9.9.9", "-1")], [STAGE1_ID])
    with pytest.raises(DataError, match=r"dicom-images-train: no training image file 9\.9\.9\.dcm"):
        make_adapter("siim", root).train_samples()
    root = hand_dataset(tmp_path / "b", [(STAGE1_ID, "5 10 2000 3")], [STAGE1_ID])
    sample = make_adapter("siim", root).train_samples()[0]
    with pytest.raises(DataError, match=r"train-rle\.csv: .*row 1 .*past the image's 1920 pixels"):
        make_adapter("siim", root).read_mask(sample)
    root = hand_dataset(tmp_path / "c", [(STAGE1_ID, "-1")], [STAGE1_ID], test_ids=("ID_1", "ID_1b"))
    (root / "dicom-images-test" / "study1" / "series1" / "ID_1b.dcm").rename(
        root / "dicom-images-test" / "study1" / "series1" / "ID_1.dcm")
    with pytest.raises(DataError, match="ID_1 is also at"):
        make_adapter("siim", root).test_samples()
    (root / "train-rle.csv").unlink()
    with pytest.raises(DataError, match=r"train-rle\.csv: training RLE list not found \(nor stage_2_train\.csv\)"):
        make_adapter("siim", root).train_samples()


def test_submission_one_relative_row_per_image_and_the_validator(tmp_path, capsys):
    root = generate("siim", tmp_path / "data", seed=3, image_size=32, n_train=4, n_test=3, quiet=True)
    adapter = make_adapter("siim", root)
    tests = adapter.test_samples()
    assert all(s.id.startswith("ID_") and len(s.id) == 12 for s in tests)
    one = np.zeros((1024, 1024, 1), np.uint8)
    one[600:620, 791, 0] = one[599:621, 792, 0] = one[598:623, 793, 0] = 1  # formats.md's real runs
    two = np.zeros_like(one)
    two[10:20, 10:20] = two[900:950, 100:140] = 1  # two pneumothoraces: still one row
    masks = [one, np.zeros_like(one), two]
    rows = [r for s, m in zip(tests, masks) for r in adapter.submission_rows(s, m)]
    assert [r[0] for r in rows] == [s.id for s in tests]
    assert rows[0][1] == "810584 20 1003 22 1001 25" and rows[1][1] == "-1"
    np.testing.assert_array_equal(rle.decode(rows[2][1], (1024, 1024), "F", "relative"), two[..., 0])
    sample = root / "stage_2_sample_submission.csv"
    path = tmp_path / "sub.csv"
    write_rows(path, adapter.submission_format, rows, sample_ids=[s.id for s in tests])
    assert pd.read_csv(path, dtype=str).iloc[1, 1] == "-1"
    assert validate_submission(path, "siim", sample) == []
    assert main(["validate", "--competition", "siim", str(path), "--sample", str(sample)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"ids and order match {sample}")
    # a stage-1 style sample (space after the comma in the header, stage-1 ids) is accepted too
    stage1 = tmp_path / "stage1_sample.csv"
    stage1.write_text(f"ImageId, EncodedPixels\n{STAGE1_ID}, -1\n")
    ok = tmp_path / "stage1_sub.csv"
    ok.write_text(f"ImageId,EncodedPixels\n{STAGE1_ID},-1\n")
    assert validate_submission(ok, "siim", stage1) == [] and validate_submission(ok, "siim") == []

    # what goes wrong: a blank field, NaN, -1 with runs, the standard scheme's absolute starts, a run past 1024^2
    bad = tmp_path / "bad.csv"
    standard = rle.encode(two[..., 0], "F")  # valid standard RLE, but its starts add up past the image
    bad.write_text("ImageId,EncodedPixels\n" + "\n".join(
        [f"{tests[0].id},", f"{tests[1].id},nan", f"{tests[2].id},-1 3 4", f"ID_00000000b,{standard}",
         "ID_00000000c,1048570 7", "ID_00000000d.dcm,-1"]) + "\n")
    problems = check_submission(bad, "siim").problems
    assert len(problems) == 6, problems
    assert "id 'ID_00000000d.dcm': siim ids are image ids matching" in problems[5]
    assert "blank field; siim writes an empty mask as '-1'" in problems[0]
    assert "'nan' written for an empty mask; write '-1'" in problems[1]
    assert "mixes '-1'" in problems[2]
    assert "past the image's 1048576 pixels (image 1024x1024, column-major, relative starts)" in problems[3]
    assert "ends at pixel 1048577" in problems[4]
    assert main(["validate", "--competition", "siim", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "INVALID for siim" in out and f"{bad}, line 2 (row 1), id '{tests[0].id}'" in out


def test_synthetic_layout_is_the_real_one(tmp_path):
    root = generate("siim", tmp_path / "data", seed=0, image_size=48, n_train=10, n_test=3, quiet=True)
    header = (root / "train-rle.csv").read_text().splitlines()[0]
    assert header == "ImageId, EncodedPixels"
    table = pd.read_csv(root / "train-rle.csv", dtype=str, skipinitialspace=False)
    assert all(v.startswith(" ") for v in table[" EncodedPixels"])
    assert (table[" EncodedPixels"] == " -1").any() and table["ImageId"].duplicated().any()
    assert all(i.startswith("1.2.276.0.7230010.3.1.4.8323329.") for i in table["ImageId"])
    files = sorted((root / "dicom-images-train").rglob("*.dcm"))
    assert len(files) == 10 and all(len(f.relative_to(root).parts) == 4 for f in files)  # train/study/series/file
    ds = pydicom.dcmread(files[0])
    assert ds.file_meta.TransferSyntaxUID == JPEG_BASELINE and ds.SOPInstanceUID == files[0].stem
    assert ds.file_meta.MediaStorageSOPInstanceUID == files[0].stem
    adapter = make_adapter("siim", root)
    samples = adapter.train_samples()
    assert len(samples) == 10 and {s.stratum for s in samples} == {0, 1, 2}
    for s in samples:
        image, mask = adapter.read_image(s), adapter.read_mask(s)
        assert image.shape == (48, 48, 1) and mask.shape == (48, 48, 1)
        if mask.any():  # the pneumothorax is dark and featureless
            assert image[mask > 0].mean() < 40 < image[mask == 0].mean()
            assert image[mask > 0].std() < 8
    sample = pd.read_csv(root / "stage_2_sample_submission.csv", dtype=str)
    assert list(sample.columns) == ["ImageId", "EncodedPixels"] and (sample["EncodedPixels"] == "-1").all()
    assert [s.id for s in adapter.test_samples()] == list(sample["ImageId"])


def test_synth_train_tune_predict_validate_by_cli(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["synth", "siim", "--out", str(data), "--seed", "1", "--patch-size", "32", "--n-train", "12",
                 "--n-test", "3"]) == 0
    settings = [
        f"data.root={data}", "data.image_size=[32,32]", f"data.cache_dir={tmp_path / 'cache'}",
        f"output.runs_dir={tmp_path / 'runs'}", f"output.submissions_dir={tmp_path / 'subs'}",
        "train.folds=2", "train.epochs=1", "train.batch_size=8", "train.workers=1", "train.verbose=0",
        "predict.batch_size=8", "models=[{name: unet, tag: unet, depth: 2, base_filters: 4}]",
    ]
    assert main(["train", "siim", *settings]) == 0
    log = capsys.readouterr().out
    assert "val images" in log and "patches" not in log  # SIIM's samples are whole radiographs
    assert main(["--quiet", "tune", "siim", *settings]) == 0
    assert main(["--quiet", "predict", "siim", *settings]) == 0
    capsys.readouterr()
    path = tmp_path / "subs" / "siim" / "submission.csv"
    sample = data / "stage_2_sample_submission.csv"
    assert main(["validate", "--competition", "siim", str(path), "--sample", str(sample)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"ids and order match {sample}")
    sub = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(sub.columns) == ["ImageId", "EncodedPixels"] and len(sub) == 3
    assert list(sub["ImageId"]) == list(pd.read_csv(sample, dtype=str)["ImageId"])
    for text in sub["EncodedPixels"]:
        assert text  # never blank: '-1' or runs
        assert rle.decode(text, (1024, 1024), "F", scheme="relative").shape == (1024, 1024)


def test_a_corrupt_test_dicom_stops_prepare_with_one_line(tmp_path, capsys):
    root = generate("siim", tmp_path / "data", seed=2, image_size=32, n_train=4, n_test=2, quiet=True)
    victim = sorted((root / "dicom-images-test").rglob("*.dcm"))[1]
    victim.write_bytes(victim.read_bytes()[:200])
    args = ["--quiet", "prepare", "siim", f"data.root={root}", "data.image_size=[32,32]", f"data.cache_dir={tmp_path / 'c'}"]
    assert main([*args, "--split", "train"]) == 0
    capsys.readouterr()
    assert main([*args, "--split", "test"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"segkit: error: {victim}: ") and "damaged" in err
