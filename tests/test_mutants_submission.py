"""segkit.submission where mutation testing found it unchecked (`make mutate`): a format's own checks, label
ids, per-object rows, the relative scheme's empty mask, id forms, the sample's ids, the writer's quoting and
ordering, the problem summary. Formats are declared here (as an adapter declares one), so the checks do not
depend on any competition's adapter."""
import numpy as np
import pytest

from segkit import rle
from segkit.data.competitions.base import check_submission, validate_submission
from segkit.errors import SubmissionError
from segkit.submission import MAX_PER_KIND, SubmissionFormat, read_sample, read_sample_ids, write_rows

PLAIN = SubmissionFormat(header=("id", "rle"), order="C", shape=(2, 3), competition="toy")
LABELS = SubmissionFormat(header=("Image_Label", "EncodedPixels"), shape=(2, 2), rows="label",
                          labels=("a", "b_c", "c"), id_suffix=".jpg", competition="toy")
OBJECTS = SubmissionFormat(header=("ImageId", "EncodedPixels"), shape=(3, 3), rows="object", competition="toy")
RELATIVE = SubmissionFormat(header=("ImageId", "EncodedPixels"), shape=(2, 2), scheme="relative",
                            id_pattern=r"[0-9a-f]{4}", competition="toy")


def csv(tmp_path, text, name="s.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("kwargs,words", [
    ({"header": ("a", "b", "c")}, r"header: expected two column names, got \('a', 'b', 'c'\)"),
    ({"header": ("a", "b"), "order": "X"}, r"order: expected 'C' or 'F', got 'X'"),
    ({"header": ("a", "b"), "scheme": "rel"}, r"scheme: expected one of standard, relative, got 'rel'"),
    ({"header": ("a", "b"), "scheme": "relative", "rows": "object"}, "object rows are written in the standard"),
    ({"header": ("a", "b"), "rows": "pixel"}, r"rows: expected one of image, label, object, got 'pixel'"),
    ({"header": ("a", "b"), "rows": "label"}, "give labels exactly when rows='label'"),
    ({"header": ("a", "b"), "labels": ("x",)}, "give labels exactly when rows='label'"),
    ({"header": ("a", "b"), "own_size": True}, "own_size: needs `shape`"),
])
def test_a_format_checks_its_declaration(kwargs, words):
    with pytest.raises(ValueError, match=words):
        SubmissionFormat(**kwargs)


def test_a_format_normalises_its_fields():
    fmt = SubmissionFormat(header=["a", "b"], rows="label", labels=["x"], shape=(np.int64(4), 5.0))
    assert fmt.header == ("a", "b") and fmt.labels == ("x",) and fmt.shape == (4, 5)
    assert type(fmt.shape[0]) is int and type(fmt.shape[1]) is int
    assert fmt.name == "this competition" and PLAIN.name == "toy"
    assert PLAIN.empty == "" and RELATIVE.empty == "-1"
    assert SubmissionFormat(header=("a", "b")).order == "F"  # Kaggle's usual column-major order by default


def test_label_ids_split_at_the_longest_declared_label():
    assert LABELS.split_label("img.jpg_b_c") == ("img.jpg", "b_c")
    assert LABELS.split_label("img.jpg_c") == ("img.jpg", "c")
    assert LABELS.split_label("x_b_c_a") == ("x_b_c", "a")
    assert LABELS.split_label("_c") is None  # no image before the label
    assert LABELS.split_label("x_c") == ("x", "c")  # a one-character image id
    assert LABELS.split_label("img.jpg_d") is None
    assert LABELS.split_label("img.jpgc") is None
    assert LABELS.image_of("img.jpg_b_c") == "img.jpg"
    assert LABELS.image_of("img.jpg_d") == "img.jpg_d"  # no declared label: the id itself
    assert PLAIN.image_of("p_a") == "p_a"  # image rows: ids are images


def test_rows_for_each_row_kind():
    mask = np.zeros((2, 2, 3), np.uint8)
    mask[0, 0, 0] = mask[1, 1, 2] = 1
    assert list(LABELS.rows_for("i.jpg", mask)) == [("i.jpg_a", "1 1"), ("i.jpg_b_c", ""), ("i.jpg_c", "4 1")]
    assert list(PLAIN.rows_for("p", np.ones((2, 3, 1), np.uint8))) == [("p", "1 6")]
    assert list(RELATIVE.rows_for("p", np.zeros((2, 2, 1), np.uint8))) == [("p", "-1")]
    ships = np.zeros((3, 3, 1), np.uint8)
    ships[0, 0] = ships[2, 1:] = 1
    assert list(OBJECTS.rows_for("s.jpg", ships)) == [("s.jpg", "1 1"), ("s.jpg", "6 1 9 1")]
    assert list(OBJECTS.rows_for("s.jpg", np.zeros((3, 3, 1), np.uint8))) == [("s.jpg", "")]


def test_label_rows_complete_and_the_id_form(tmp_path):
    path = csv(tmp_path, "Image_Label,EncodedPixels\nx.jpg_a,1 1\nx.jpg_c,\ny.jpg_a,\ny.jpg_b_c,\ny.jpg_c,\n"
                         "z.png_a,\nz.png_b_c,\nz.png_c,\nq.jpg_e,1 1\n")
    assert validate_submission(path, LABELS) == [
        f"{path}, line 7 (row 6), id 'z.png_a': toy ids are <image>.jpg_<label> (the test file name)",
        f"{path}, line 8 (row 7), id 'z.png_b_c': toy ids are <image>.jpg_<label> (the test file name)",
        f"{path}, line 9 (row 8), id 'z.png_c': toy ids are <image>.jpg_<label> (the test file name)",
        f"{path}, line 10 (row 9), id 'q.jpg_e': the id does not end in _<label> with a label of a, b_c, c",
        f"{path}, line 2 (row 1), id 'x.jpg': the image lacks rows for b_c",
    ]
    sample = csv(tmp_path, "Image_Label,EncodedPixels\nz.png_a,\nz.png_b_c,\nz.png_c,\n", "sample.csv")
    # with a sample, the sample says which ids exist: the id form is not checked
    assert validate_submission(csv(tmp_path, sample.read_text(), "z.csv"), LABELS, sample) == []


def test_image_id_pattern_and_the_relative_empty_mask(tmp_path):
    path = csv(tmp_path, "ImageId,EncodedPixels\nab12,-1\nAB12,0 1\nab123,-1\nab1x,-1\ncd34,\ncd35,nan\n"
                         "ef56,3 1 0 1\n")
    problems = validate_submission(path, RELATIVE)
    assert len(problems) == 6
    for problem, (line, row_id) in zip(problems, [(3, "AB12"), (4, "ab123"), (5, "ab1x")]):
        assert problem.startswith(f"{path}, line {line} (row {line - 1}), id '{row_id}': ")
        assert "[0-9a-f]{4}" in problem  # the id form it should have
    assert problems[3] == f"{path}, line 6 (row 5), id 'cd34': blank field; toy writes an empty mask as '-1'"
    assert problems[4] == f"{path}, line 7 (row 6), id 'cd35': 'nan' written for an empty mask; write '-1'"
    assert problems[5].startswith(f"{path}, line 8 (row 7), id 'ef56': RLE pair 2 (relative start 0 = pixel 5, length 1) "
                                  f"ends at pixel 5, past the image's 4 pixels (image 2x2, ")
    assert problems[5].endswith(", relative starts)")
    # with a sample, the sample says which ids exist: no id form is checked
    sample = csv(tmp_path, "ImageId,EncodedPixels\nAB12,-1\n", "sample.csv")
    assert validate_submission(csv(tmp_path, "ImageId,EncodedPixels\nAB12,0 1\n", "ok.csv"), RELATIVE, sample) == []


def test_sizes_per_image_bound_the_runs(tmp_path):
    free = SubmissionFormat(header=("id", "rle"), order="C")
    path = csv(tmp_path, "id,rle\na,1 6\nb,1 6\nc,99999 1\n")
    assert validate_submission(path, free) == []  # no size known: syntax only
    problems = validate_submission(path, free, shapes={"a": (2, 3), "b": (1, 5)})
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}, line 3 (row 2), id 'b': RLE pair 1 (start 1, length 6) ends at pixel 6, "
                                  f"past the image's 5 pixels (image 1x5, ")
    # an id without a size falls back to the format's shape
    assert validate_submission(csv(tmp_path, "id,rle\nz,6 1\n", "z.csv"), PLAIN, shapes={"q": (1, 1)}) == []


def test_object_rows(tmp_path):
    path = csv(tmp_path, "ImageId,EncodedPixels\ns,1 2\ns,\nt,\nt,\nu,\nu,5 1\nv,4 2\nv,6 1\nv,1 4\n")
    assert validate_submission(path, OBJECTS) == [
        f"{path}, line 3 (row 2), id 's': a blank row for an image that already has rows; an object-free image "
        f"gets exactly one blank row",
        f"{path}, line 5 (row 4), id 't': a blank row for an image that already has rows; an object-free image "
        f"gets exactly one blank row",
        f"{path}, line 7 (row 6), id 'u': an object row for an image written as object-free at line 6",
        f"{path}, line 10 (row 9), id 'v': its mask overlaps the mask of row 7 (line 8); masks of one image must "
        f"not overlap",
    ]
    # two rows of one image next to each other are fine; one run swallowing two of another row's is one clash
    ok = csv(tmp_path, "ImageId,EncodedPixels\nw,1 2\nw,3 2\nx,1 1 3 1 5 1\nx,2 1 4 1\n", "ok.csv")
    assert validate_submission(ok, OBJECTS) == []
    two = csv(tmp_path, "ImageId,EncodedPixels\ny,2 1 4 1\ny,1 5\ny,7 1\n", "two.csv")
    assert validate_submission(two, OBJECTS) == [
        f"{two}, line 3 (row 2), id 'y': its mask overlaps the mask of row 1 (line 2); masks of one image must "
        f"not overlap"]
    three = csv(tmp_path, "ImageId,EncodedPixels\nz,1 9\nz,2 1\nz,5 1\n", "three.csv")
    assert [p.split(": ")[1] for p in validate_submission(three, OBJECTS)] == [
        "its mask overlaps the mask of row 1 (line 2); masks of one image must not overlap"] * 2


def test_ids_with_line_breaks_and_spaces(tmp_path):
    path = csv(tmp_path, 'id,rle\n"a\nb",1 1\n c ,1 1\n')
    assert validate_submission(path, PLAIN) == [
        f"{path}, line 2 (row 1), id 'a\\nb': the id holds a line break (a quoted field over several lines); "
        f"Kaggle would not match it",
        f"{path}, line 4 (row 2), id ' c ': spaces around the id; Kaggle matches ids exactly (write 'c')",
    ]


def test_header_problems(tmp_path):
    spaced = csv(tmp_path, "id , rle\nx,1 1\n")
    assert validate_submission(spaced, PLAIN) == [
        f"{spaced}, line 1: spaces around the header name(s) 'id ', ' rle'; Kaggle matches column names exactly "
        f"(write id,rle)"]
    empty_header = csv(tmp_path, "\nx,1 1\n", "e.csv")
    assert validate_submission(empty_header, PLAIN) == [f"{empty_header}, line 1: header is (empty); toy expects id,rle"]
    report = check_submission(csv(tmp_path, "id,rle\nx,1 1\ny,\n", "ok.csv"), PLAIN)
    assert report.ok and report.rows == 2 and report.competition == "toy" and report.notes == []
    bad = check_submission(csv(tmp_path, "id,rle\nx,0 1\n", "bad.csv"), PLAIN)
    assert not bad.ok and bad.rows == 1


def test_summary_counts_each_kind_past_the_limit(tmp_path):
    rows = "".join(f"a{i},0 1\n" for i in range(MAX_PER_KIND + 2)) + "".join(f"b{i},nan\n" for i in range(MAX_PER_KIND))
    problems = validate_submission(csv(tmp_path, "id,rle\n" + rows), PLAIN)
    assert len(problems) == MAX_PER_KIND + 1
    assert problems[-1].endswith("... and 22 more problems of the kind 'rle'")
    exactly = "".join(f"a{i},0 1\n" for i in range(MAX_PER_KIND))
    assert len(validate_submission(csv(tmp_path, "id,rle\n" + exactly, "x.csv"), PLAIN)) == MAX_PER_KIND


def test_sample_ids_read_once_in_order(tmp_path):
    sample = csv(tmp_path, "ImageId,EncodedPixels\nb,1 1\na,\nb,3 1\n\nc,\n", "sample.csv")
    assert read_sample_ids(sample) == (["ImageId", "EncodedPixels"], ["b", "a", "c"])
    got = read_sample(sample)
    assert got.lines == {"b": 2, "a": 3, "c": 6} and not got.is_list and got.problems == []
    listed = SubmissionFormat(header=("id", "rle"), id_list="name")
    plain = csv(tmp_path, "p1\np2\n", "list.csv")
    assert read_sample(plain, listed).ids == ["p1", "p2"] and read_sample(plain, listed).is_list
    named = csv(tmp_path, "Name\np1\np2\n", "named.csv")
    assert read_sample(named, listed).ids == ["p1", "p2"]
    assert read_sample(named).ids == ["p1", "p2"] and read_sample(named).header == ("Name",)
    with pytest.raises(SubmissionError, match="the sample submission is empty"):
        read_sample(csv(tmp_path, "", "empty.csv"))
    with pytest.raises(SubmissionError, match="sample submission not found"):
        read_sample(tmp_path / "nope.csv")


def test_against_a_sample(tmp_path):
    sample = csv(tmp_path, "id,rle\na,\nb,\nc,\n", "sample.csv")
    sub = csv(tmp_path, "id,rle\nb,\nx,\na,\n")
    assert validate_submission(sub, PLAIN, sample) == [
        f"{sample}, line 4, id 'c': this id of the sample has no row in {sub}",
        f"{sub}, line 3 (row 2), id 'x': not in the sample {sample}",
    ]
    report = check_submission(sub, PLAIN, sample)
    assert report.notes == [f"{sub}, line 2 (row 1), id 'b': rows are in another order than the sample {sample} (it "
                            f"has 'a' there); fine, Kaggle matches rows by id"]
    spaced = csv(tmp_path, " id , rle \na,\n", "spaced.csv")
    assert validate_submission(csv(tmp_path, "id,rle\na,\n", "a.csv"), PLAIN, spaced) == []
    broken = csv(tmp_path, 'id,rle\na,\n"b,\n', "broken.csv")
    problems = validate_submission(csv(tmp_path, "id,rle\na,\n", "a2.csv"), PLAIN, broken)
    assert problems[0] == (f"{broken}, line 3: a quoted field opened on this line is never closed; pandas cannot "
                           f"read the file (close the quote)")


def test_a_row_the_csv_reader_cannot_read_is_named_and_counted(tmp_path):
    path = csv(tmp_path, 'id,rle\na,1 1\nb,"1 1"x\nc,2 1\n')
    report = check_submission(path, PLAIN)
    assert report.problems == [f"{path}, line 3: not valid CSV (',' expected after '\"'); pandas would misread "
                               f"this row"]
    assert report.rows == 3


def test_writer_quotes_only_what_needs_it_and_orders_by_the_sample(tmp_path):
    path = tmp_path / "w.csv"
    n = write_rows(path, PLAIN, [("c", "1 1"), ("a,b", None), ('q"', float("nan")), ("b", "")],
                   sample_ids=["c", "a,b", 'q"', "b"])
    assert n == 4
    assert path.read_bytes() == b'id,rle\nc,1 1\n"a,b",\n"q""",\nb,\n'  # LF line ends, quoted or not
    # out of order: spooled and written back in sample order, rows of one id together
    n = write_rows(path, PLAIN, [("c", ""), ("a", "2 1"), ("b", "1 1"), ("a", "4 1")], sample_ids=["a", "b", "c"])
    assert n == 4 and path.read_text() == "id,rle\na,2 1\na,4 1\nb,1 1\nc,\n"
    with pytest.raises(SubmissionError, match="the sample ids hold duplicates"):
        write_rows(path, PLAIN, [("a", "")], sample_ids=["a", "a"])
    with pytest.raises(SubmissionError, match=r"rows of 'a' arrived after rows of later ids had been written; give each id's rows together"):
        write_rows(path, PLAIN, [("a", ""), ("b", ""), ("a", "")], sample_ids=["a", "b"])
    with pytest.raises(SubmissionError, match=r"2 sample ids got no row \(first: b, c\)"):
        write_rows(path, PLAIN, [("a", "")], sample_ids=["a", "b", "c"])
    with pytest.raises(SubmissionError, match=r"7 sample ids got no row \(first: b, c, d, e, f\)$"):
        write_rows(path, PLAIN, [("a", "")], sample_ids=list("abcdefgh"))
    assert path.read_text() == "id,rle\na,2 1\na,4 1\nb,1 1\nc,\n"  # failures leave the last good file


WIDE = SubmissionFormat(header=("ImageId", "EncodedPixels"), shape=(1, 100), rows="object", competition="toy")


def test_each_overlapping_pair_is_named_once_with_the_row_it_overlaps(tmp_path):
    # row 1 covers pixels 0-9; row 2 covers 2-4 and ends where row 3 starts: row 3 clashes with row 1 only
    path = csv(tmp_path, "ImageId,EncodedPixels\nv,1 10\nv,3 3\nv,6 1\n")
    assert validate_submission(path, WIDE) == [
        f"{path}, line 3 (row 2), id 'v': its mask overlaps the mask of row 1 (line 2); masks of one image must "
        f"not overlap",
        f"{path}, line 4 (row 3), id 'v': its mask overlaps the mask of row 1 (line 2); masks of one image must "
        f"not overlap"]
    # row 2 clashes with row 1 twice (named once), then row 3 with row 1
    path = csv(tmp_path, "ImageId,EncodedPixels\nv,1 10\nv,3 1 5 1\nv,7 1\n", "twice.csv")
    assert [p.split(", id")[0] for p in validate_submission(path, WIDE)] == [
        f"{path}, line 3 (row 2)", f"{path}, line 4 (row 3)"]


def test_many_overlaps_are_summarised_under_their_kind(tmp_path):
    rows = "".join(f"w,{k} 1\n" for k in range(1, MAX_PER_KIND + 3))
    problems = validate_submission(csv(tmp_path, "ImageId,EncodedPixels\nw,1 100\n" + rows), WIDE)
    assert len(problems) == MAX_PER_KIND + 1
    assert problems[-1].endswith(": ... and 2 more problems of the kind 'overlap'")


def test_rows_for_passes_the_order_and_scheme_to_every_row_kind():
    mask = np.zeros((2, 3, 1), np.uint8)
    mask[0, 1:, 0] = 1  # row-major pixels 1-2; column-major pixels 2 and 4
    labelled = SubmissionFormat(header=("a", "b"), rows="label", labels=("x",), scheme="relative")
    assert list(labelled.rows_for("i", np.zeros((2, 2, 1), np.uint8))) == [("i_x", "-1")]
    assert list(labelled.rows_for("i", mask)) == [("i_x", "2 1 1 1")]  # F: 0-based start 2, gap 1
    row_major = SubmissionFormat(header=("a", "b"), order="C", rows="object")
    assert list(row_major.rows_for("i", mask)) == [("i", "2 2")]
    assert list(OBJECTS.rows_for("i", np.pad(mask, ((0, 1), (0, 0), (0, 0))))) == [("i", "4 1 7 1")]


def test_sample_problems_are_summarised_under_their_kind(tmp_path):
    bad_rows = "".join(f'"s{i}"x,\n' for i in range(MAX_PER_KIND + 1))  # text after a closing quote
    sample = csv(tmp_path, "ImageId,EncodedPixels\n" + bad_rows, "sample.csv")
    problems = validate_submission(csv(tmp_path, "id,rle\n"), PLAIN, sample)
    # 21 unreadable rows and the wrong header: 22 problems of the kind 'sample', 20 listed
    assert problems[0].startswith(f"{sample}, line 2: not valid CSV")
    assert problems[-1] == f"{tmp_path / 's.csv'}: ... and 2 more problems of the kind 'sample'"


def test_missing_and_unknown_ids_are_summarised_under_their_kinds(tmp_path):
    n = MAX_PER_KIND + 3
    sample = csv(tmp_path, "id,rle\n" + "".join(f"s{i},\n" for i in range(n)), "sample.csv")
    sub = csv(tmp_path, "id,rle\n" + "".join(f"u{i},\n" for i in range(n)))
    problems = validate_submission(sub, PLAIN, sample)
    assert len(problems) == 2 * MAX_PER_KIND + 2
    assert problems[MAX_PER_KIND - 1] == f"{sample}, line {MAX_PER_KIND + 1}, id 's{MAX_PER_KIND - 1}': this id of " \
                                         f"the sample has no row in {sub}"
    assert problems[-2:] == [f"{sub}: ... and 3 more problems of the kind 'missing id'",
                             f"{sub}: ... and 3 more problems of the kind 'unknown id'"]


def test_rows_out_of_sample_order_spool_beside_the_output(tmp_path, monkeypatch):
    """The out-of-order rows go to a temporary file in the output's folder (the disk the submission is written
    to, not a small /tmp), and come back in sample order."""
    import tempfile

    made = []
    real = tempfile.TemporaryFile

    def spy(*args, **kwargs):
        made.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", spy)
    out = tmp_path / "deep" / "sub.csv"
    out.parent.mkdir()
    write_rows(out, PLAIN, [("b", "1 1"), ("a", "")], sample_ids=["a", "b"])
    assert out.read_text() == "id,rle\na,\nb,1 1\n"
    assert len(made) == 1 and made[0].get("dir") == out.parent


SUFFIX = SubmissionFormat(header=("id", "rle"), shape=(2, 3), id_suffix=".png", competition="toy")
N = MAX_PER_KIND + 1  # one past the listed problems: the summary line names the kind


@pytest.mark.parametrize("fmt, body, kind", [
    (PLAIN, "".join(f'k{i},"1 1"x\n' for i in range(N)), "csv"),
    (PLAIN, "\n" * N, "blank line"),
    (PLAIN, "".join(f"k{i},1 1,2\n" for i in range(N)), "field count"),
    (PLAIN, ",1 1\n" * N, "empty id"),
    (PLAIN, "".join(f" k{i} ,\n" for i in range(N)), "spaces"),
    (PLAIN, "".join(f'"k{i}\nx",\n' for i in range(N)), "line break"),
    (PLAIN, "k,\n" * (N + 1), "duplicate"),
    (PLAIN, "".join(f"k{i},nan\n" for i in range(N)), "rle"),
    (PLAIN, "".join(f'k{i},"1 1\n3 1"\n' for i in range(N)), "line break"),
    (LABELS, "".join(f"i{i}.jpg_zz,\n" for i in range(N)), "label"),
    (LABELS, "".join(f"i{i}.jpg_a,\n" for i in range(N)), "label"),  # the image lacks rows for b_c, c
    (SUFFIX, "".join(f"i{i}.jpg,\n" for i in range(N)), "id form"),
    (RELATIVE, "".join(f"z{i:03d},-1\n" for i in range(N)), "id form"),
    (RELATIVE, "".join(f"{i:04x},\n" for i in range(N)), "rle"),
    (OBJECTS, "w,1 1\n" + "w,\n" * N, "object rows"),
    (WIDE, "v,\n" + "".join(f"v,{2 * k + 1} 1\n" for k in range(N)), "object rows"),
])
def test_every_kind_of_problem_is_listed_then_summarised_by_name(tmp_path, fmt, body, kind):
    """Every row is checked (a problem row does not end the check) and past MAX_PER_KIND problems of one kind
    the rest are counted under the kind's name."""
    header = ",".join(fmt.header)
    path = csv(tmp_path, f"{header}\n{body}")
    problems = validate_submission(path, fmt)
    assert problems[-1] == f"{path}: ... and 1 more problems of the kind '{kind}'"


def test_carriage_returns_inside_ids_and_rles_are_line_breaks(tmp_path):
    path = tmp_path / "cr.csv"
    path.write_bytes(b'id,rle\n"a\rb",\nc,"1 1\r3 1"\n')
    assert validate_submission(path, PLAIN) == [
        f"{path}, line 2 (row 1), id 'a\\rb': the id holds a line break (a quoted field over several lines); "
        "Kaggle would not match it",
        f"{path}, line 4 (row 2), id 'c': the RLE holds a line break (a quoted field over several lines); write each "
        "row on one line"]  # a lone CR ends a line, as pandas counts them: row 1 spans lines 2-3


def test_an_unreadable_header_line_is_named(tmp_path):
    path = csv(tmp_path, 'id,"rle\n')  # the header's quote never closes
    report = check_submission(path, PLAIN)
    assert report.problems == [
        f"{path}, line 1: a quoted field opened on this line is never closed; pandas cannot read the file (close "
        "the quote)", f"{path}: the file has a header but no rows"]
    assert report.rows == 0


def test_id_form_messages_for_image_and_label_rows(tmp_path):
    path = csv(tmp_path, "id,rle\nx.jpg,\n")
    assert validate_submission(path, SUFFIX) == [f"{path}, line 2 (row 1), id 'x.jpg': toy ids are <image>.png (the "
                                                 "test file name)"]
    path = csv(tmp_path, "ImageId,EncodedPixels\nzz,-1\n", "p.csv")
    assert validate_submission(path, RELATIVE) == [f"{path}, line 2 (row 1), id 'zz': toy ids are image ids matching "
                                                   "[0-9a-f]{4}"]
    labelled = SubmissionFormat(header=("Image_Label", "EncodedPixels"), rows="label", labels=("a",),
                                id_pattern="[0-9]+", competition="toy")
    path = csv(tmp_path, "Image_Label,EncodedPixels\nx_a,\n", "l.csv")
    assert validate_submission(path, labelled) == [f"{path}, line 2 (row 1), id 'x_a': toy ids are <image>_<label> "
                                                   "with <image> matching [0-9]+"]
    path = csv(tmp_path, "Image_Label,EncodedPixels\nx_a,\n", "l2.csv")
    assert validate_submission(path, LABELS) == [
        f"{path}, line 2 (row 1), id 'x_a': toy ids are <image>.jpg_<label> (the test file name)",
        f"{path}, line 2 (row 1), id 'x': the image lacks rows for b_c, c"]


def test_null_is_not_an_empty_mask(tmp_path):
    path = csv(tmp_path, "id,rle\na,null\nb, NULL \n")
    assert validate_submission(path, PLAIN) == [
        f"{path}, line 2 (row 1), id 'a': 'null' written for an empty mask; leave the field blank",
        f"{path}, line 3 (row 2), id 'b': 'NULL' written for an empty mask; leave the field blank"]


def test_sizes_per_image_fall_back_to_the_declared_size_and_any_size(tmp_path):
    path = csv(tmp_path, "id,rle\na,6 2\n")  # pixels 6-7 of a 2x3 image: past its 6 pixels
    problems = validate_submission(path, PLAIN, shapes={"other": (10, 10)})
    assert problems == [f"{path}, line 2 (row 1), id 'a': RLE pair 1 (start 6, length 2) ends at pixel 7, past the "
                        "image's 6 pixels (image 2x3, row-major)"]
    free = SubmissionFormat(header=("id", "rle"), competition="toy")
    path = csv(tmp_path, "id,rle\na,0 1\n", "free.csv")
    assert validate_submission(path, free) == [f"{path}, line 2 (row 1), id 'a': RLE pair 1 has start 0; starts and "
                                               "lengths must be >= 1 (image any size, column-major)"]


def test_an_empty_file_is_reported_with_its_competition(tmp_path):
    path = csv(tmp_path, "")
    report = check_submission(path, PLAIN)
    assert report.problems == [f"{path}: the file is empty; expected the header id,rle"]
    assert (report.competition, report.notes, report.rows) == ("toy", [], 0)


def test_test_image_messages_with_and_without_their_folder(tmp_path):
    from segkit.submission import validate

    path = csv(tmp_path, "id,rle\na,\nz,\n")
    assert validate(path, PLAIN, test_ids=["a", "b", "c"]).problems == [
        f"{path}: 2 of the 3 test images have no row (first: b); predict every test image",
        f"{path}: 1 ids are not test images (first: z)"]
    assert validate(path, PLAIN, test_ids=["a", "b"], test_root="data/test").problems == [
        f"{path}: 1 of the 2 test images under data/test have no row (first: b); predict every test image",
        f"{path}: 1 ids are not test images under data/test (first: z)"]


def test_a_long_rle_field_is_read_with_the_csv_modules_default_limit(tmp_path):
    import csv as csv_module

    runs = " ".join(f"{2 * k + 1} 1" for k in range(30000))  # ~300 KB, over csv's default 128 KB field limit
    path = csv(tmp_path, f"id,rle\na,{runs}\n")
    old = csv_module.field_size_limit(131072)
    try:
        report = check_submission(path, SubmissionFormat(header=("id", "rle"), shape=(1, 60000)))
    finally:
        csv_module.field_size_limit(old)
    assert report.ok and report.rows == 1


def test_a_file_that_cannot_be_opened_is_named(tmp_path, monkeypatch):
    from segkit import submission

    path = csv(tmp_path, "id,rle\n")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(submission, "open", denied, raising=False)
    with pytest.raises(SubmissionError) as info:
        check_submission(path, PLAIN)
    assert str(info.value) == f"{path}: cannot read the submission (Permission denied)"


@pytest.mark.parametrize("kwargs, message", [
    ({"scheme": "relative", "rows": "object"}, "SubmissionFormat.scheme: object rows are written in the standard "
                                               "scheme only"),
    ({"rows": "label"}, "SubmissionFormat.labels: give labels exactly when rows='label'"),
    ({"own_size": True}, "SubmissionFormat.own_size: needs `shape`, the size in the real data"),
])
def test_a_format_declaration_error_in_full(kwargs, message):
    with pytest.raises(ValueError) as info:
        SubmissionFormat(header=("a", "b"), **kwargs)
    assert str(info.value) == message
