"""The ablation report (`segkit report`). One tiny run (synthetic Understanding Clouds, 4 labels at 32x48, depth-2
U-Net, 2 folds × 1 epoch) is trained once through the CLI; each test reads it or a copy of it: the page parses,
every image is an embedded PNG, the table's numbers are postprocess.json's and the OOF recomputed here; a version 1
postprocess.json still reports; EMA/SWA and pseudo-label records show; an untrained run is one line."""
import base64
import contextlib
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from segkit.cli import main

TINY_MODEL = "models=[{name: unet, tag: unet, depth: 2, base_filters: 4}]"
PNG = b"\x89PNG\r\n\x1a\n"


def overrides(base: Path, runs: Path, *extra: str) -> list[str]:
    return [
        f"data.root={base / 'data'}", "data.image_size=[32,48]", f"data.cache_dir={base / 'cache'}",
        f"output.runs_dir={runs}", f"output.submissions_dir={runs.parent / 'subs'}",
        "train.folds=2", "train.epochs=1", "train.batch_size=8", "train.workers=1", "train.verbose=0",
        "train.early_stopping_patience=50", "predict.tta=[identity]", "postprocess.threshold_grid=[0.3,0.5,0.7]",
        "postprocess.min_area_grid=[0,2000]", TINY_MODEL, *extra,
    ]


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(base folder, training log): data, cache and a finished run under base/runs/clouds."""
    from segkit.data.synth import generate

    base = tmp_path_factory.mktemp("report")
    generate("clouds", base / "data", seed=2, image_size=(32, 48), n_train=12, n_test=2, quiet=True)
    code, out, err = cli("train", "clouds", *overrides(base, base / "runs"))
    assert code == 0, out[-3000:] + err[-3000:]
    return base, out


@pytest.fixture
def run(trained, tmp_path):
    """A private copy of the trained run: (base, runs folder, run folder)."""
    base, _ = trained
    shutil.copytree(base / "runs", tmp_path / "runs", symlinks=True)
    return base, tmp_path / "runs", tmp_path / "runs" / "clouds"


class Page(HTMLParser):
    """The report's images and table rows (cell texts)."""

    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.links: list[str] = []
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.imgs.append(attrs.get("src") or "")
        elif "href" in attrs or ("src" in attrs and tag != "img"):
            self.links.append(attrs.get("href") or attrs.get("src"))
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def table_rows(text: str) -> dict[str, list[str]]:
    """Printed table rows by stage label: [score, per class ...] (labels hold single spaces, columns two)."""
    out = {}
    for line in text.splitlines():
        if line.startswith("  ") and "  " in line.strip():
            cells = [c.strip() for c in line.strip().split("  ") if c.strip()]
            out[cells[0]] = cells[1:]
    return out


def dice_per_image_mean(truth: np.ndarray, pred: np.ndarray) -> float:
    t = truth.reshape(len(truth), -1).astype(bool)
    p = pred.reshape(len(pred), -1).astype(bool)
    total = t.sum(1) + p.sum(1)
    return float(np.where(total == 0, 1.0, 2.0 * (t & p).sum(1) / np.maximum(total, 1)).mean())


def test_train_ends_with_the_ablation_table(trained):
    base, log = trained
    pp = json.loads((base / "runs" / "clouds" / "postprocess.json").read_text())
    tail = log[log.index("[report] clouds: OOF score per stage"):]
    rows = table_rows(tail)
    assert {"unet fold 0", "unet fold 1", "unet (all folds)", "ensemble (0.5)"} <= set(rows)
    assert "+ plain (0.5)" not in rows  # the ensemble row at 0.5 says it (the report used to repeat it)
    for step in pp["steps"][1:]:
        assert rows[f"+ {step['step']}"][0] == f"{step['oof_score']:.4f}"
    assert not (base / "runs" / "clouds" / "report.html").exists()  # the page only with `segkit report`


def test_report_renders_self_contained_with_the_runs_numbers(run):
    from segkit.config import load_config
    from segkit.runs import open_run_data

    base, runs, rd = run
    code, out, err = cli("report", "--worst", "3", "clouds", *overrides(base, runs))
    assert code == 0, err
    page_path = rd / "report.html"
    assert f"report: {page_path}" in out
    page = parse(page_path)
    assert len(page.imgs) == 2 and not page.links  # curves and gallery, nothing outside the page
    for src in page.imgs:
        head, _, data = src.partition(",")
        assert head == "data:image/png;base64"
        assert base64.b64decode(data, validate=True).startswith(PNG)
    assert "The 3 worst OOF images" in page_path.read_text()

    pp = json.loads((rd / "postprocess.json").read_text())
    assert pp["version"] == 2
    html_rows = {r[0]: r[1:] for r in page.rows if r}
    printed = table_rows(out)
    classes = [c["name"] for c in pp["classes"]]
    assert html_rows["stage"][:len(classes) + 1] == ["score", *classes]
    for step in pp["steps"][1:]:  # "plain (0.5)" is the ensemble row
        want = [f"{step['oof_score']:.4f}", *(f"{v:.4f}" for v in step["per_class"])]
        assert html_rows[f"+ {step['step']}"][:len(want)] == want
        assert printed[f"+ {step['step']}"][:len(want)] == want
        if step.get("cv_gain") is not None:
            cv = f"{step['cv_gain']:+.4f} ± {step['cv_se']:.4f}"
            assert cv in html_rows[f"+ {step['step']}"] and f"{step['oof_gain']:+.4f}" in html_rows[f"+ {step['step']}"]
    assert html_rows["all empty (trivial baseline)"][0] == f"{pp['baseline']['oof_score']:.4f}"
    for c in pp["classes"]:  # tuned parameters per class
        assert html_rows[c["name"]][:2] == [f"{c['threshold']:g}", str(c["min_area"])]
    assert "chain re-applied" not in out  # the chain applied again to the OOF gives postprocess.json's score

    # folds, model and ensemble at 0.5, recomputed here from the fold files with the Clouds metric (mean Dice)
    cfg = load_config("clouds", overrides(base, runs))
    masks = np.asarray(open_run_data(cfg, quiet=True).cache.masks)
    whole = np.zeros(masks.shape, np.float32)
    for k in range(2):
        fold = rd / "unet" / f"fold_{k}"
        probs, index = np.load(fold / "oof.npy").astype(np.float32), np.load(fold / "oof_index.npy")
        whole[index] = probs
        per = [dice_per_image_mean(masks[index][..., c], probs[..., c] > 0.5) for c in range(len(classes))]
        want = [f"{np.mean(per):.4f}", *(f"{v:.4f}" for v in per)]
        assert html_rows[f"unet fold {k}"][:len(want)] == want
        assert printed[f"unet fold {k}"][:len(want)] == want
    per = [dice_per_image_mean(masks[..., c], whole[..., c] > 0.5) for c in range(len(classes))]
    want = [f"{np.mean(per):.4f}", *(f"{v:.4f}" for v in per)]
    assert html_rows["unet (all folds)"][:len(want)] == want
    assert html_rows["ensemble (0.5)"][:len(want)] == want
    assert f"{pp['steps'][0]['oof_score']:.4f}" == want[0] and "+ plain (0.5)" not in html_rows


def test_report_from_a_version_1_postprocess_file(run):
    base, runs, rd = run
    v2 = json.loads((rd / "postprocess.json").read_text())
    v1 = {"classes": [{k: c[k] for k in ("name", "threshold", "min_area", "oof_score_default", "oof_score_tuned")}
                      for c in v2["classes"]],
          "oof_score_default": 0.25, "oof_score_tuned": 0.5, "metric": v2["metric"]}
    v1["classes"][0]["oof_score_tuned"] = 0.75
    (rd / "postprocess.json").write_text(json.dumps(v1))
    code, out, err = cli("report", "--worst", "0", "clouds", *overrides(base, runs))
    assert code == 0, err
    rows = table_rows(out)
    assert rows["+ plain (0.5)"][0] == "0.2500"
    assert rows["+ threshold + min area (tuned)"][:2] == ["0.5000", "0.7500"]
    assert not any(k.startswith("+ gate") for k in rows)
    page = parse(rd / "report.html")
    assert len(page.imgs) == 1  # curves; --worst 0: no gallery


def test_weight_averaging_and_pseudo_label_rows(run):
    from segkit.runs import RunDir

    base, runs, rd = run
    done_path = rd / "unet" / "fold_1" / "done.json"
    done = json.loads(done_path.read_text())
    done["averaging"] = {"kind": "ema", "momentum": 0.99, "monitor": "val_dice", "val_raw": 0.25,
                         "val_averaged": 0.3125}
    done_path.write_text(json.dumps(done))
    old_path = rd / "unet" / "fold_0" / "done.json"  # an older record: no monitor, no averaged value
    old = json.loads(old_path.read_text())
    old["averaging"] = {"kind": "swa", "last": 3, "val_raw": 0.5}
    old_path.write_text(json.dumps(old))
    rnd = RunDir(rd).pseudo_round(1)
    rnd.path.mkdir(parents=True)
    rnd.write_report({"round": 1, "run": "clouds", "n_test": 2, "n_kept": 1, "digest": "abc",
                      "classes": [{"name": "Fish", "kept_nonempty": 1, "kept_empty": 0, "confident": 1}]})
    code, out, err = cli("report", "--worst", "0", "clouds", *overrides(base, runs))
    assert code == 0, err
    rows = table_rows(out)
    assert "EMA unet fold 1" in rows and "EMA unet fold 0" not in rows
    assert "val_dice: raw 0.2500 -> averaged 0.3125 (+0.0625); momentum 0.99" in " ".join(rows["EMA unet fold 1"])
    assert f"{old['monitor']}: raw 0.5000 -> averaged -; last 3" in " ".join(rows["SWA unet fold 0"])
    assert "kept 1 of 2 test images (non-empty: Fish 1)" in " ".join(rows["pseudo-label round 1 written"])
    assert "EMA unet fold 1" in (rd / "report.html").read_text()

    # a run trained on that round (train.pseudo=clouds/1 in its saved config): its score, and the source run's
    shutil.copytree(rd, runs / "clouds_p1", ignore=shutil.ignore_patterns("pseudo"))
    p1 = RunDir(runs / "clouds_p1")
    cfg = p1.read_config()
    cfg.train.pseudo = "clouds/1"
    p1.write_config(cfg)
    pp = json.loads(p1.postprocess.read_text())
    pp["oof_score_tuned"] += 0.125
    p1.postprocess.write_text(json.dumps(pp))
    code, out, err = cli("report", "--worst", "0", "clouds", *overrides(base, runs, "name=clouds_p1"))
    assert code == 0, err
    row = table_rows(out)["+ pseudo-label round 1"]
    assert row[0] == f"{pp['oof_score_tuned']:.4f}"
    assert f"without it (run clouds): {pp['oof_score_tuned'] - 0.125:.4f} (+0.1250)" in row[-1]


def test_a_run_not_trained_is_one_line(run, tmp_path):
    base, runs, rd = run
    code, out, err = cli("report", "clouds", *overrides(base, runs, "name=nothing"))
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "not trained" in err and "segkit train" in err
    (rd / "unet" / "fold_1" / "done.json").unlink()
    code, out, err = cli("report", "clouds", *overrides(base, runs))
    assert code == 1 and err.count("\n") == 1, err
    assert "unet/fold_1" in err and "segkit train" in err
    code, _, err = cli("report", "--worst", "-1", "clouds", *overrides(base, runs))
    assert code == 1 and "--worst" in err


def test_notebook_api_writes_the_report(run):
    import segkit as sk

    base, runs, rd = run
    path = sk.Run("clouds", overrides(base, runs), quiet=True).report(worst=1)
    assert path == rd / "report.html" and "The 1 worst OOF images" in path.read_text()


def test_pixel_counts_match_brute_force():
    from segkit.report import pixel_counts

    rng = np.random.default_rng(0)
    thresholds = [0.1, 0.3, 0.5, 0.7, 0.9]
    probs = rng.random((5, 6, 7)).astype(np.float32)
    probs[0, 0, :5] = np.asarray(thresholds, np.float32)  # exactly on a threshold: not above it
    truth = rng.random((5, 6, 7)) > 0.6
    tp, pos, true_n = pixel_counts(truth, probs, thresholds, chunk=2)
    for j, t in enumerate(thresholds):
        pred = probs > np.float32(t)
        assert np.array_equal(pos[:, j], pred.reshape(5, -1).sum(1))
        assert np.array_equal(tp[:, j], (pred & truth).reshape(5, -1).sum(1))
    assert np.array_equal(true_n, truth.reshape(5, -1).sum(1))


@pytest.mark.parametrize("competition", ["carvana", "cloud38", "airbus"])
def test_threshold_sweep_equals_the_metric_at_each_threshold(competition):
    """Count-based metrics (Dice per image, pooled Jaccard) come from one histogram pass over a fine grid; Airbus'
    object-matched F2 is called per threshold of the coarse grid. Either way: the metric at each threshold."""
    from segkit.data.competitions.base import make_adapter
    from segkit.report import COARSE_THRESHOLDS, FINE_THRESHOLDS, threshold_sweep

    adapter = make_adapter(competition, ".")
    rng = np.random.default_rng(1)
    truth = np.zeros((4, 8, 8), np.uint8)
    truth[1, 2:6, 2:6] = 1
    truth[2, :, :4] = 1
    probs = np.clip(truth * 0.6 + rng.random(truth.shape) * 0.5, 0, 1).astype(np.float32)
    grid, scores, vectorised = threshold_sweep(adapter, truth, probs)
    assert vectorised == (competition != "airbus")
    assert grid == list(FINE_THRESHOLDS if vectorised else COARSE_THRESHOLDS) and len(scores) == len(grid)
    for t, s in zip(grid, scores):
        assert s == pytest.approx(adapter.score_class(truth, (probs > np.float32(t)).astype(np.uint8)), abs=1e-12)


def test_the_chain_is_re_applied_to_the_oof_and_a_stale_file_is_named(run):
    """postprocess.json edited so that one step of the chain empties each class (a top-k gate, an area gate, a
    minimum area, a top threshold) after a threshold of 0: the report re-applies the chain to the OOF, finds the score of empty
    predictions (the share of images whose truth is empty, per class) and says it differs from the file's."""
    from segkit.config import load_config
    from segkit.runs import open_run_data

    base, runs, rd = run
    pp = json.loads((rd / "postprocess.json").read_text())
    rows = pp["classes"]
    for row in rows:
        row["threshold"] = 0.0  # every pixel above it: only the step under test can empty the class
    rows[0].update(gate={"kind": "topk", "k": 50, "cut": 1.5})
    rows[1].update(gate={"kind": "area", "k": None, "cut": 1e9})
    rows[2].update(gate=None, min_area=10 ** 9)
    rows[3].update(gate=None, top_threshold=1.0, top_k=1)
    pp["oof_score_tuned"] = -1.0  # the file no longer matches its chain
    (rd / "postprocess.json").write_text(json.dumps(pp))
    code, out, err = cli("report", "--worst", "2", "clouds", *overrides(base, runs))
    assert code == 0, err
    masks = np.asarray(open_run_data(load_config("clouds", overrides(base, runs)), quiet=True).cache.masks)
    empty_share = (masks.reshape(len(masks), -1, masks.shape[-1]).sum(1) == 0).mean(0)
    assert f"the chain re-applied to today's OOF scores {empty_share.mean():.4f}, postprocess.json records " \
           "-1.0000" in out
