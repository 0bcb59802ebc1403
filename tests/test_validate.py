"""`segkit validate`: prints each problem and exits 1, or prints a one-line summary and exits 0."""
import pytest

from segkit.cli import main


def test_validate_clean_file_exits_zero_with_summary(tmp_path, capsys):
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("img,rle_mask\na_01.jpg,1 1\na_02.jpg,1 1\n")
    sub = tmp_path / "sub.csv"
    sub.write_text("img,rle_mask\na_01.jpg,1919 5 3837 5\na_02.jpg,\n")
    assert main(["validate", "--competition", "carvana", str(sub), "--sample", str(sample)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"{sub}: valid carvana submission, 2 rows, ids and order match {sample}"]


def test_validate_prints_each_problem_and_exits_one(tmp_path, capsys):
    sub = tmp_path / "sub.csv"
    sub.write_text("ImageId,EncodedPixels\ns.jpg,1 10\ns.jpg,5 3\nt.jpg,7 x\n")
    assert main(["validate", "-c", "airbus", str(sub)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith(f"{sub}, line 4 (row 3), id 't.jpg': RLE value 'x' is not a whole number")
    assert out[1] == (f"{sub}, line 3 (row 2), id 's.jpg': its mask overlaps the mask of row 1 (line 2); "
                      "masks of one image must not overlap")
    assert out[2] == f"{sub}: INVALID for airbus (2 problem line(s) above)"


def test_validate_user_errors_exit_one_without_traceback(tmp_path, capsys):
    assert main(["validate", "-c", "clouds", str(tmp_path / "missing.csv")]) == 1
    err = capsys.readouterr().err
    assert "missing.csv: submission not found" in err and "Traceback" not in err
    sub = tmp_path / "s.csv"
    sub.write_text("img,rle_mask\n")
    assert main(["validate", "-c", "carvanna", str(sub)]) == 1
    assert "unknown competition 'carvanna'; did you mean 'carvana'?" in capsys.readouterr().err


# --- issue 9: each case through the CLI: one line per problem naming file, line and id; exit 1; no traceback ---

CLOUD_LABELS = ("Fish", "Flower", "Gravel", "Sugar")


def run(capsys, *args):
    code = main(["validate", *map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out.strip().splitlines()


def test_sample_with_a_utf8_bom_is_accepted(fixtures_dir, tmp_path, capsys):
    """The real Carvana sample, saved with a byte-order mark (as Excel or Notepad do)."""
    real = fixtures_dir / "carvana" / "sample_submission_head20.csv"
    sample = tmp_path / "sample_bom.csv"
    sample.write_bytes(b"\xef\xbb\xbf" + real.read_bytes())
    sub = tmp_path / "sub.csv"
    sub.write_bytes(b"\xef\xbb\xbf" + real.read_bytes().replace(b",1 1", b","))
    code, out = run(capsys, "-c", "carvana", sub, "--sample", sample)
    assert code == 0 and out == [f"{sub}: valid carvana submission, 20 rows, ids and order match {sample}"]


def test_lone_cr_line_ends_count_rows_correctly(tmp_path, capsys):
    sub = tmp_path / "sub.csv"
    sub.write_bytes(b"img,rle_mask\ra_01.jpg,1 1\ra_02.jpg,\ra_03.jpg,5 2\r")
    code, out = run(capsys, "-c", "carvana", sub)
    assert code == 0 and out == [f"{sub}: valid carvana submission, 3 rows"]


def test_quoted_field_over_two_lines_counts_as_one_row_and_is_a_problem(tmp_path, capsys):
    sub = tmp_path / "sub.csv"
    sub.write_text('img,rle_mask\na_01.jpg,"1 1\n5 2"\na_02.jpg,\n')
    code, out = run(capsys, "-c", "carvana", sub)
    assert code == 1
    assert out == [f"{sub}, line 2 (row 1), id 'a_01.jpg': the RLE holds a line break (a quoted field over several "
                   "lines); write each row on one line",
                   f"{sub}: INVALID for carvana (1 problem line(s) above)"]
    sub.write_text('img,rle_mask\n"a_01\n.jpg",1 1\na_02.jpg,\n')
    code, out = run(capsys, "-c", "carvana", sub)
    assert code == 1 and out[0] == (f"{sub}, line 2 (row 1), id 'a_01\\n.jpg': the id holds a line break (a quoted "
                                    "field over several lines); Kaggle would not match it")


def test_unterminated_quote_on_the_last_row_is_rejected(tmp_path, capsys):
    import pandas as pd

    sub = tmp_path / "sub.csv"
    sub.write_text('img,rle_mask\na_01.jpg,1 1\na_02.jpg,"5 2\n')
    with pytest.raises(pd.errors.ParserError):  # what Kaggle's reader would meet
        pd.read_csv(sub)
    code, out = run(capsys, "-c", "carvana", sub)
    assert code == 1
    assert out == [f"{sub}, line 3: a quoted field opened on this line is never closed; pandas cannot read the file "
                   "(close the quote)",
                   f"{sub}: INVALID for carvana (1 problem line(s) above)"]


def test_clouds_ids_without_jpg_are_rejected_without_a_sample(tmp_path, capsys):
    sub = tmp_path / "sub.csv"
    sub.write_text("Image_Label,EncodedPixels\n" + "".join(f"0011165_{lab},\n" for lab in CLOUD_LABELS))
    code, out = run(capsys, "-c", "clouds", sub)
    assert code == 1 and len(out) == 5
    assert out[0] == (f"{sub}, line 2 (row 1), id '0011165_Fish': clouds ids are <image>.jpg_<label> "
                      "(the test file name)")
    good = tmp_path / "good.csv"
    good.write_text("Image_Label,EncodedPixels\n" + "".join(f"0011165.jpg_{lab},\n" for lab in CLOUD_LABELS))
    assert run(capsys, "-c", "clouds", good)[0] == 0


def test_clouds_sample_with_crlf_line_ends(fixtures_dir, tmp_path, capsys):
    """The real train_small.csv (CRLF) as the sample: its four ids, any order, match."""
    sample = fixtures_dir / "understanding_clouds" / "train_small.csv"
    sub = tmp_path / "sub.csv"
    sub.write_text("Image_Label,EncodedPixels\n" + "".join(f"0011165.jpg_{lab},\n" for lab in CLOUD_LABELS))
    code, out = run(capsys, "-c", "clouds", sub, "--sample", sample)
    assert code == 0 and out == [f"{sub}: valid clouds submission, 4 rows, ids and order match {sample}"]


def test_airbus_sample_with_one_row_per_ship_gives_no_false_out_of_order(fixtures_dir, capsys):
    """The real per-ship CSV (29 rows, 10 images, repeated ids) checked against itself as the sample."""
    real = fixtures_dir / "airbus" / "train_ship_segmentations_v2_subset.csv"
    code, out = run(capsys, "-c", "airbus", real, "--sample", real)
    assert code == 0 and out == [f"{real}: valid airbus submission, 29 rows, ids and order match {real}"]


def test_spaces_around_ids_or_header_names_are_problems(tmp_path, capsys):
    sub = tmp_path / "sub.csv"
    sub.write_text("img, rle_mask\na_01.jpg,1 1\n a_02.jpg,\n")
    code, out = run(capsys, "-c", "carvana", sub)
    assert code == 1
    assert out == [
        f"{sub}, line 1: spaces around the header name(s) ' rle_mask'; Kaggle matches column names exactly "
        "(write img,rle_mask)",
        f"{sub}, line 3 (row 2), id ' a_02.jpg': spaces around the id; Kaggle matches ids exactly (write 'a_02.jpg')",
        f"{sub}: INVALID for carvana (2 problem line(s) above)",
    ]


def test_rows_in_another_order_than_the_sample_are_a_note(fixtures_dir, tmp_path, capsys):
    sample = fixtures_dir / "carvana" / "sample_submission_head20.csv"
    rows = sample.read_text().splitlines()
    sub = tmp_path / "sub.csv"
    sub.write_text("\n".join([rows[0]] + rows[1:][::-1]) + "\n")
    code, out = run(capsys, "-c", "carvana", sub, "--sample", sample)
    assert code == 0
    last_id = rows[-1].split(",")[0]
    assert out == [
        f"note: {sub}, line 2 (row 1), id '{last_id}': rows are in another order than the sample {sample} "
        f"(it has '{rows[1].split(',')[0]}' there); fine, Kaggle matches rows by id",
        f"{sub}: valid carvana submission, 20 rows, ids match {sample} (rows in another order)",
    ]
