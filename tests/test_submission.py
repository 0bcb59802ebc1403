"""segkit.submission: the streamed atomic writer, and the validator catching each kind of defect."""
import numpy as np
import pandas as pd
import pytest

from segkit import rle
from segkit.errors import SubmissionError
from segkit.data.competitions.base import format_for, validate_submission
from segkit.submission import MAX_PER_KIND, write_rows


def write(path, text):
    path.write_text(text)
    return path


def ship_rle(y0, y1, x0, x1, shape=(768, 768)):
    m = np.zeros(shape, np.uint8)
    m[y0:y1, x0:x1] = 1
    return rle.encode(m, "F")


# --- writer ---------------------------------------------------------------------------------------

def test_write_rows_blank_for_empty_and_reads_back(tmp_path):
    path = tmp_path / "sub.csv"
    n = write_rows(path, ("img", "rle_mask"), iter([("a.jpg", "1 3"), ("b.jpg", ""), ("c.jpg", None), ("d.jpg", float("nan"))]))
    assert n == 4
    assert path.read_text() == "img,rle_mask\na.jpg,1 3\nb.jpg,\nc.jpg,\nd.jpg,\n"
    df = pd.read_csv(path, keep_default_na=False)
    assert list(df["rle_mask"]) == ["1 3", "", "", ""]


def test_write_rows_follows_sample_order(tmp_path):
    path = tmp_path / "sub.csv"
    rows = [("c", "5 1"), ("a", "1 1"), ("b", ""), ("d", "2 2")]
    write_rows(path, ("id", "EncodedPixels"), iter(rows), sample_ids=["a", "b", "c", "d"])
    assert path.read_text().splitlines()[1:] == ["a,1 1", "b,", "c,5 1", "d,2 2"]


def test_write_rows_keeps_rows_of_one_id_together_in_sample_order(tmp_path):
    path = tmp_path / "sub.csv"
    rows = [("x.jpg", "1 1"), ("z.jpg", "9 1"), ("y.jpg", "3 1"), ("y.jpg", "7 1"), ("z.jpg", "11 1")]
    write_rows(path, ("ImageId", "EncodedPixels"), iter(rows), sample_ids=["x.jpg", "y.jpg", "z.jpg"])
    assert path.read_text().splitlines()[1:] == ["x.jpg,1 1", "y.jpg,3 1", "y.jpg,7 1", "z.jpg,9 1", "z.jpg,11 1"]


@pytest.mark.parametrize("rows, words", [
    ([("a", ""), ("q", "")], "'q' is not in the sample"),
    ([("a", ""), ("c", "")], "1 sample ids got no row \\(first: b\\)"),
])
def test_write_rows_refuses_ids_off_the_sample_and_keeps_old_file(tmp_path, rows, words):
    path = write(tmp_path / "sub.csv", "old contents\n")
    with pytest.raises(SubmissionError, match=words):
        write_rows(path, ("id", "EncodedPixels"), iter(rows), sample_ids=["a", "b", "c"])
    assert path.read_text() == "old contents\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]  # no temporary file left behind


def test_write_rows_is_atomic_when_rows_fail(tmp_path):
    path = write(tmp_path / "sub.csv", "old contents\n")

    def rows():
        yield "a", "1 1"
        raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError):
        write_rows(path, ("id", "EncodedPixels"), rows())
    assert path.read_text() == "old contents\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]


def test_write_rows_streams(tmp_path):
    """The rows are consumed one at a time: a generator seeing its 3rd row requested has given only 2."""
    given = []

    def rows():
        for i in range(5):
            given.append(i)
            assert len(given) == i + 1
            yield f"id{i}", f"{i + 1} 1"

    write_rows(tmp_path / "s.csv", ("id", "EncodedPixels"), rows())
    assert given == list(range(5))


# --- the declared formats --------------------------------------------------------------------------

def test_formats_come_from_the_adapters():
    carvana, clouds, airbus = format_for("carvana"), format_for("clouds"), format_for("airbus")
    assert carvana.header == ("img", "rle_mask") and carvana.order == "C" and carvana.shape == (1280, 1918)
    assert clouds.header == ("Image_Label", "EncodedPixels") and clouds.shape == (350, 525)
    assert clouds.labels == ("Fish", "Flower", "Gravel", "Sugar") and clouds.order == "F" and clouds.rows == "label"
    assert airbus.rows == "object" and airbus.shape == (768, 768) and airbus.order == "F"
    with pytest.raises(SubmissionError, match="did you mean 'airbus'"):
        format_for("airbs")


# --- validator: clean files ---------------------------------------------------------------------------

def test_clean_files_pass(tmp_path):
    rng = np.random.default_rng(0)
    car = (rng.random((1280, 1918)) < 0.001).astype(np.uint8)
    carvana = write(tmp_path / "carvana.csv", f"img,rle_mask\na_01.jpg,{rle.encode(car, 'C')}\na_02.jpg,\n")
    assert validate_submission(carvana, "carvana") == []
    cloud = np.zeros((350, 525), np.uint8)
    cloud[-10:, -10:] = 1  # reaches the last pixel
    lines = ["Image_Label,EncodedPixels"] + [f"x.jpg_{lab},{rle.encode(cloud, 'F') if lab == 'Sugar' else ''}"
                                              for lab in ("Fish", "Flower", "Gravel", "Sugar")]
    clouds = write(tmp_path / "clouds.csv", "\r\n".join(lines) + "\r\n")  # CRLF is fine too
    assert validate_submission(clouds, "clouds") == []
    airbus = write(tmp_path / "airbus.csv", "ImageId,EncodedPixels\n"
                   f"s.jpg,{ship_rle(0, 5, 0, 5)}\ns.jpg,{ship_rle(0, 5, 5, 9)}\ne.jpg,\n")
    assert validate_submission(airbus, "airbus") == []


# --- validator: one test per kind of defect ----------------------------------------------------------

def test_wrong_header(tmp_path):
    path = write(tmp_path / "s.csv", "id,EncodedPixels\na.jpg,1 1\n")
    assert validate_submission(path, "carvana") == [
        f"{path}, line 1: header is id,EncodedPixels; carvana expects img,rle_mask"]


def test_wrong_field_count(tmp_path):
    path = write(tmp_path / "s.csv", "img,rle_mask\na.jpg,1 1,extra\nb.jpg\n")
    problems = validate_submission(path, "carvana")
    assert problems == [f"{path}, line 2 (row 1), id 'a.jpg': 3 fields, expected 2 (img,rle_mask)",
                        f"{path}, line 3 (row 2), id 'b.jpg': 1 fields, expected 2 (img,rle_mask)"]


def test_blank_line_and_empty_id(tmp_path):
    path = write(tmp_path / "s.csv", "img,rle_mask\na.jpg,1 1\n\n,1 1\n")
    problems = validate_submission(path, "carvana")
    assert problems == [f"{path}, line 3: blank line (pandas skips it; remove it)",
                        f"{path}, line 4 (row 2): empty id"]


def test_duplicate_id(tmp_path):
    path = write(tmp_path / "s.csv", "img,rle_mask\na.jpg,1 1\nb.jpg,\na.jpg,5 1\n")
    assert validate_submission(path, "carvana") == [
        f"{path}, line 4 (row 3), id 'a.jpg': duplicate id (first at line 2)"]


@pytest.mark.parametrize("text, words", [
    ("1 2 3", "odd number"),
    ("0 5", "start 0"),
    ("5 0", "length 0"),
    ("10 5 3 1", "out of order"),
    ("1 5 4 2", "overlaps"),
    ("1 x", "not a whole number"),
    ("2455040 2", "past the image's 2455040 pixels"),
])
def test_malformed_rle(tmp_path, text, words):
    path = write(tmp_path / "s.csv", f"img,rle_mask\na.jpg,1 1\nb.jpg,{text}\n")
    problems = validate_submission(path, "carvana")
    assert len(problems) == 1 and problems[0].startswith(f"{path}, line 3 (row 2), id 'b.jpg': ")
    assert words in problems[0] and "(image 1280x1918, row-major)" in problems[0]


@pytest.mark.parametrize("text", ["nan", "NaN", "None"])
def test_nan_written_for_empty_mask(tmp_path, text):
    path = write(tmp_path / "s.csv", f"img,rle_mask\na.jpg,{text}\n")
    problems = validate_submission(path, "carvana")
    assert problems == [f"{path}, line 2 (row 1), id 'a.jpg': '{text}' written for an empty mask; leave the field blank"]


def test_rle_too_big_for_the_competition_image(tmp_path):
    """A Carvana-sized RLE in a Clouds file: valid syntax, but past the 350x525 submission image."""
    lines = ["Image_Label,EncodedPixels"] + [f"x.jpg_{lab},{'183000 752' if lab == 'Fish' else ''}"
                                              for lab in ("Fish", "Flower", "Gravel", "Sugar")]
    path = write(tmp_path / "s.csv", "\n".join(lines) + "\n")
    problems = validate_submission(path, "clouds")
    assert len(problems) == 1 and "past the image's 183750 pixels" in problems[0]
    assert problems[0].startswith(f"{path}, line 2 (row 1), id 'x.jpg_Fish': ")


def test_airbus_overlapping_ships(tmp_path):
    path = write(tmp_path / "s.csv", "ImageId,EncodedPixels\n"
                 f"s.jpg,{ship_rle(0, 5, 0, 5)}\nt.jpg,\ns.jpg,{ship_rle(10, 20, 10, 20)}\ns.jpg,{ship_rle(3, 8, 3, 8)}\n")
    problems = validate_submission(path, "airbus")
    assert problems == [f"{path}, line 5 (row 4), id 's.jpg': its mask overlaps the mask of row 1 (line 2); "
                        "masks of one image must not overlap"]


def test_airbus_blank_row_beside_ships(tmp_path):
    path = write(tmp_path / "s.csv", f"ImageId,EncodedPixels\ns.jpg,{ship_rle(0, 5, 0, 5)}\ns.jpg,\ne.jpg,\ne.jpg,\n")
    problems = validate_submission(path, "airbus")
    assert len(problems) == 2
    assert problems[0].startswith(f"{path}, line 3 (row 2), id 's.jpg': a blank row for an image that already has rows")
    assert problems[1].startswith(f"{path}, line 5 (row 4), id 'e.jpg': a blank row")


def test_clouds_labels_incomplete_or_unknown(tmp_path):
    path = write(tmp_path / "s.csv", "Image_Label,EncodedPixels\n"
                 "x.jpg_Fish,\nx.jpg_Flower,\nx.jpg_Sugar,\nx.jpg_Cirrus,\n")
    problems = validate_submission(path, "clouds")
    assert problems == [
        f"{path}, line 5 (row 4), id 'x.jpg_Cirrus': the id does not end in _<label> with a label of "
        "Fish, Flower, Gravel, Sugar",
        f"{path}, line 2 (row 1), id 'x.jpg': the image lacks rows for Gravel",
    ]


def test_ids_missing_and_unknown_against_sample(tmp_path):
    sample = write(tmp_path / "sample.csv", "img,rle_mask\na.jpg,1 1\nb.jpg,1 1\nc.jpg,1 1\nd.jpg,1 1\n")
    path = write(tmp_path / "s.csv", "img,rle_mask\na.jpg,\nc.jpg,\nb.jpg,\nz.jpg,\n")
    problems = validate_submission(path, "carvana", sample)
    assert problems == [
        f"{sample}, line 5, id 'd.jpg': this id of the sample has no row in {path}",
        f"{path}, line 5 (row 4), id 'z.jpg': not in the sample {sample}",
    ]
    good = write(tmp_path / "good.csv", "img,rle_mask\na.jpg,\nb.jpg,\nc.jpg,1 1\nd.jpg,\n")
    assert validate_submission(good, "carvana", sample) == []


def test_airbus_order_against_sample_uses_images(tmp_path):
    sample = write(tmp_path / "sample.csv", "ImageId,EncodedPixels\ns.jpg,1 2\ne.jpg,1 2\n")
    path = write(tmp_path / "s.csv", f"ImageId,EncodedPixels\ns.jpg,{ship_rle(0, 5, 0, 5)}\ns.jpg,{ship_rle(9, 12, 0, 5)}\ne.jpg,\n")
    assert validate_submission(path, "airbus", sample) == []


def test_sample_of_another_competition(tmp_path):
    sample = write(tmp_path / "sample.csv", "ImageId,EncodedPixels\na.jpg,1 2\n")
    path = write(tmp_path / "s.csv", "img,rle_mask\na.jpg,\n")
    problems = validate_submission(path, "carvana", sample)
    assert problems == [f"{sample}, line 1: the sample's header is ImageId,EncodedPixels, not the carvana "
                        "header img,rle_mask: is it the right sample?"]


def test_empty_file_and_header_only(tmp_path):
    assert validate_submission(write(tmp_path / "e.csv", ""), "carvana") == [
        f"{tmp_path / 'e.csv'}: the file is empty; expected the header img,rle_mask"]
    assert validate_submission(write(tmp_path / "h.csv", "img,rle_mask\n"), "carvana") == [
        f"{tmp_path / 'h.csv'}: the file has a header but no rows"]


def test_missing_or_unreadable_file_raises(tmp_path):
    with pytest.raises(SubmissionError, match="submission not found"):
        validate_submission(tmp_path / "nope.csv", "carvana")
    bad = tmp_path / "bin.csv"
    bad.write_bytes(b"img,rle_mask\n\xff\xfe,1 1\n")
    with pytest.raises(SubmissionError, match="not UTF-8"):
        validate_submission(bad, "carvana")


def test_many_problems_are_summarised(tmp_path):
    rows = "".join(f"a{i}.jpg,0 1\n" for i in range(MAX_PER_KIND + 7))
    path = write(tmp_path / "s.csv", "img,rle_mask\n" + rows)
    problems = validate_submission(path, "carvana")
    assert len(problems) == MAX_PER_KIND + 1
    assert problems[-1] == f"{path}: ... and 7 more problems of the kind 'rle'"


def test_megabyte_rle_field_is_read(tmp_path):
    """A noisy full-size Carvana prediction gives an RLE far beyond csv's default 128 KB field limit."""
    noisy = (np.random.default_rng(2).random((1280, 1918)) < 0.5).astype(np.uint8)
    path = tmp_path / "s.csv"
    write_rows(path, ("img", "rle_mask"), [("a.jpg", rle.encode(noisy, "C"))])
    assert path.stat().st_size > 5_000_000
    assert validate_submission(path, "carvana") == []
