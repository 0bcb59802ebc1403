"""`segkit validate`: prints each problem and exits 1, or prints a one-line summary and exits 0."""
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
    assert out[0].startswith("row 3 (line 4), id 't.jpg': RLE value 'x' is not a whole number")
    assert out[1] == "row 2, id 's.jpg': its mask overlaps the mask of row 1; masks of one image must not overlap"
    assert out[2] == f"{sub}: INVALID for airbus (2 problem line(s) above)"


def test_validate_user_errors_exit_one_without_traceback(tmp_path, capsys):
    assert main(["validate", "-c", "clouds", str(tmp_path / "missing.csv")]) == 1
    err = capsys.readouterr().err
    assert "missing.csv: submission not found" in err and "Traceback" not in err
    sub = tmp_path / "s.csv"
    sub.write_text("img,rle_mask\n")
    assert main(["validate", "-c", "carvanna", str(sub)]) == 1
    assert "unknown competition 'carvanna'; did you mean 'carvana'?" in capsys.readouterr().err
