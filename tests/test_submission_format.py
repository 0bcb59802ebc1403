"""Each competition declares its submission format once (SubmissionFormat on its adapter); the writer, the
validator and predict's size all read that declaration. 38-Cloud declares its 384x384 patches and takes the
official patch list as `--sample`."""
import numpy as np
import pytest

from segkit import rle
from segkit.cli import main
from segkit.data.competitions.base import (
    adapter_class, check_submission, format_for, make_adapter, validate_submission,
)
from segkit.data.sample import Sample
from segkit.submission import SubmissionFormat, write_rows

COMPETITIONS = ("carvana", "clouds", "airbus", "cloud38", "cloud95", "folder")
REAL_PATCH_LIST = ("38cloud", "training_patches_38-cloud_nonempty.csv")  # the official list form: header `name`


def test_every_adapter_declares_its_format_once():
    expected = {
        "carvana": (("img", "rle_mask"), "C", (1280, 1918), "image"),
        "clouds": (("Image_Label", "EncodedPixels"), "F", (350, 525), "label"),
        "airbus": (("ImageId", "EncodedPixels"), "F", (768, 768), "object"),
        "cloud38": (("id", "EncodedPixels"), "F", (384, 384), "image"),
        "cloud95": (("id", "EncodedPixels"), "F", (384, 384), "image"),
        "folder": (("id", "EncodedPixels"), "F", None, "image"),
    }
    for name in COMPETITIONS:
        cls = adapter_class(name)
        fmt = cls.submission_format
        assert isinstance(fmt, SubmissionFormat) and fmt.competition == name and format_for(name) is fmt
        assert (fmt.header, fmt.order, fmt.shape, fmt.rows) == expected[name]
        # the loose attributes the declaration replaced are gone
        for old in ("submission_shape", "label_rows", "object_rows"):
            assert not hasattr(cls, old), (name, old)


def test_declaration_checks_itself():
    with pytest.raises(ValueError, match="order"):
        SubmissionFormat(header=("id", "EncodedPixels"), order="X")
    with pytest.raises(ValueError, match="labels"):
        SubmissionFormat(header=("id", "EncodedPixels"), rows="label")
    with pytest.raises(ValueError, match="own_size"):
        SubmissionFormat(header=("id", "EncodedPixels"), own_size=True)


def test_the_writer_follows_the_declared_rows():
    mask = np.zeros((350, 525, 4), np.uint8)
    mask[:2, :3, 1] = 1
    clouds = format_for("clouds")
    rows = list(clouds.rows_for("x.jpg", mask))
    assert rows == [("x.jpg_Fish", ""), ("x.jpg_Flower", "1 2 351 2 701 2"), ("x.jpg_Gravel", ""),
                    ("x.jpg_Sugar", "")]
    ships = np.zeros((768, 768, 1), np.uint8)
    ships[0:2, 0:2] = 1
    ships[10:12, 10:12] = 1
    airbus = format_for("airbus")
    assert [r[0] for r in airbus.rows_for("s.jpg", ships)] == ["s.jpg", "s.jpg"]
    assert list(airbus.rows_for("e.jpg", np.zeros((768, 768, 1), np.uint8))) == [("e.jpg", "")]
    car = np.zeros((1280, 1918, 1), np.uint8)
    car[0, :2] = 1  # row-major: pixels 1 and 2
    assert list(format_for("carvana").rows_for("a_01.jpg", car)) == [("a_01.jpg", "1 2")]


def test_predict_size_reads_the_declaration(tmp_path):
    sample = Sample("a_01.jpg", (str(tmp_path / "a_01.jpg"),))
    carvana = make_adapter("carvana", tmp_path)
    assert carvana.submission_size(sample) == (1280, 1918)  # fixed: no file is opened
    assert carvana.submission_header == ("img", "rle_mask") and carvana.rle_order == "C"


def test_folder_classes_with_underscores_round_trip(tmp_path):
    """Folder declares label rows per instance (its own classes, its own pixel order); names may hold '_'."""
    import cv2

    for sub in ("images", "test"):
        (tmp_path / sub).mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(2):
        cv2.imwrite(str(tmp_path / "images" / f"im_{i}.png"), np.full((6, 8, 3), 50 * i, np.uint8))
        m = np.zeros((6, 8), np.uint8)
        m[1:3, 1:4] = 1
        m[4:, 5:] = 3
        cv2.imwrite(str(tmp_path / "masks" / f"im_{i}.png"), m)
    cv2.imwrite(str(tmp_path / "test" / "q_1.png"), np.zeros((6, 8, 3), np.uint8))
    adapter = make_adapter("folder", tmp_path, {"rle_order": "C"})
    fmt = adapter.submission_format
    assert adapter.classes == ("class_1", "class_3") and fmt.rows == "label" and fmt.order == "C"
    assert type(adapter).submission_format.rows == "image"  # the class-level declaration is untouched
    (test,) = adapter.test_samples()
    mask = np.zeros((6, 8, 2), np.uint8)
    mask[0, :2, 0] = 1
    path = tmp_path / "sub.csv"
    write_rows(path, fmt, adapter.submission_rows(test, mask))
    assert path.read_text() == "id,EncodedPixels\nq_1_class_1,1 2\nq_1_class_3,\n"
    assert adapter.check_written(path, [test]).problems == []
    path.write_text("id,EncodedPixels\nq_1_class_1,47 3\nq_1_class_3,\n")  # runs past the 6x8 image
    (problem,) = adapter.check_written(path, [test]).problems
    assert problem.startswith(f"{path}, line 2 (row 1), id 'q_1_class_1': ") and "(image 6x8, row-major)" in problem
    path.write_text("id,EncodedPixels\nq_1_class_1,1 2\n")
    assert adapter.check_written(path, [test]).problems == [
        f"{path}, line 2 (row 1), id 'q_1': the image lacks rows for class_3"]


# --- 38-Cloud ------------------------------------------------------------------------------------------------

def test_cloud38_rejects_a_run_past_the_end_of_a_384_patch(tmp_path, capsys):
    last = np.zeros((384, 384), np.uint8)
    last[-3:, -1] = 1
    sub = tmp_path / "sub.csv"
    name = "patch_1_1_by_1_LC08_L1TP_002053_20160520_20170324_01_T1"
    sub.write_text(f"id,EncodedPixels\n{name},{rle.encode(last, 'F')}\n")
    assert rle.encode(last, "F") == "147454 3"
    assert main(["validate", "-c", "cloud38", str(sub)]) == 0
    sub.write_text(f"id,EncodedPixels\n{name},147454 4\n")
    assert main(["validate", "-c", "cloud38", str(sub)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-2] == (f"{sub}, line 2 (row 1), id '{name}': RLE pair 1 (start 147454, length 4) ends at pixel "
                       "147457, past the image's 147456 pixels (image 384x384, column-major)")


def test_cloud38_sample_is_the_official_patch_list(fixtures_dir, tmp_path, capsys):
    """The real list form (header `name`, 5,155 patch names, here the official non-empty list standing in for
    test_patches_38-Cloud.csv, which has the same form); also accepted without its header row."""
    listing = fixtures_dir.joinpath(*REAL_PATCH_LIST)
    names = listing.read_text().split()[1:]
    assert len(names) == 5155
    sub = tmp_path / "sub.csv"
    write_rows(sub, format_for("cloud38"), ((n, "") for n in names))
    assert main(["validate", "-c", "cloud38", str(sub), "--sample", str(listing)]) == 0
    assert capsys.readouterr().out.strip() == f"{sub}: valid cloud38 submission, 5155 rows, ids and order match {listing}"

    headerless = tmp_path / "test_patches_38-Cloud.csv"
    headerless.write_text("\n".join(names) + "\n")
    write_rows(sub, format_for("cloud38"), ((n, "") for n in names[1:] + ["patch_9_9_by_9_LC08_X"]))
    report = check_submission(sub, "cloud38", headerless)
    assert report.problems == [
        f"{headerless}, line 1, id '{names[0]}': this id of the sample has no row in {sub}",
        f"{sub}, line 5156 (row 5155), id 'patch_9_9_by_9_LC08_X': not in the sample {headerless}",
    ]
    assert report.rows == 5155 and report.notes == []


def test_cloud38_own_size_bounds_each_patch_by_its_own_size(tmp_path):
    """Synthetic or cut-down patches smaller than 384: predict's check bounds each one by its real size."""
    import tifffile

    red = tmp_path / "red_patch_1_1_by_1_LC08_a.TIF"
    tifffile.imwrite(red, np.zeros((64, 64), np.uint16))
    adapter = make_adapter("cloud38", tmp_path)
    patch = Sample("patch_1_1_by_1_LC08_a", (str(red),))
    assert adapter.submission_size(patch) == (64, 64)
    sub = tmp_path / "sub.csv"
    sub.write_text("id,EncodedPixels\npatch_1_1_by_1_LC08_a,4000 200\n")
    assert validate_submission(sub, "cloud38") == []  # within 384x384
    (problem,) = adapter.check_written(sub, [patch]).problems
    assert "past the image's 4096 pixels (image 64x64, column-major)" in problem


def test_short_rle_fast_path_agrees_with_the_full_parser():
    """Short RLEs (most rows of a real file) take a plain-Python path; padding a string with spaces past
    the threshold sends it through the numpy path, which must give the same runs or the same error."""
    from segkit.errors import RLEError

    rng = np.random.default_rng(0)
    texts = ["1 1", "5 2 1 2", "1 5 4 2", "0 5", "5 0", "1 2 3", "1 x", "3 2 5 1", "99 2", "100 1", "1 100",
             "١ 2", "1  2\t5 1", "12345678901234567890 1"]
    for _ in range(300):
        values = rng.integers(0, 40, rng.integers(1, 9))
        texts.append(" ".join(str(v) for v in np.cumsum(values) if rng.random() > 0.05))
    for text in texts:
        results = []
        for candidate in (text, text + " " * 300):
            try:
                starts, lengths = rle.parse_runs(candidate, 100)
                results.append((starts.tolist(), lengths.tolist()))
            except RLEError as exc:
                results.append(str(exc))
        assert results[0] == results[1], text


def test_validate_checks_the_test_ids_when_there_is_no_sample(tmp_path):
    """`submission.validate` with test_ids (what predict and Run.validate give without a sample file): each
    test image needs a row and every row must be a test image; an empty file lists its own problem only."""
    from segkit.submission import validate

    fmt = format_for("cloud38")
    sub = tmp_path / "sub.csv"
    write_rows(sub, fmt, [("patch_1", ""), ("stray", "")])
    check = validate(sub, fmt, test_ids=["patch_1", "patch_2"], test_root=tmp_path)
    assert check.problems == [
        f"{sub}: 1 of the 2 test images under {tmp_path} have no row (first: patch_2); predict every test image",
        f"{sub}: 1 ids are not test images under {tmp_path} (first: stray)"]
    assert validate(sub, fmt, test_ids=["patch_1", "stray"]).ok
    assert validate(sub, fmt).ok  # without test ids only the format is checked
    sub.write_text("")
    (problem,) = validate(sub, fmt, test_ids=["patch_1"]).problems
    assert "the file is empty" in problem
