"""The leaderboard playbook on this machine (issue 10's benchmark): the OOF competition metric of a plain
fold ensemble and after each post-processing step (threshold → min area → gate → triplet), on

  1. synthetic Airbus (≥ 60 % ship-free images, half the ships small and faint, half the images with sea clutter —
     whitecaps, cloud veils, coasts with buildings; F2 over IoU 0.5-0.95),
  2. synthetic Understanding Clouds (images without any label, faint regions; mean Dice per image and label),
  3. the real TGS Salt training set in ../shared/fixtures/tgs (3,001 101×101 images, ~40 % empty masks) through
     the TGS adapter (its metric: mean over images of the share of IoU thresholds 0.50-0.95 passed),

with tiny U-Nets (depth 3, base 8) — one plain, one with the classification head (`classifier: true`), one
trained on non-empty masks only (`positive_only: true`) — 3 folds. The OOF is tuned four ways — the plain and the head model alone, both averaged, and the cascade
(positive-only masks gated by the head model's ensemble) — and the step scores are read from postprocess.json v2 (`steps`); the report's ablation table of the ensemble follows. Then the triplet tuning is
timed on Understanding Clouds-sized OOF (5,546 images × 4 labels at 350×525, synthetic structured
probabilities, one class in memory at a time) through the postprocess package's own tune_class.

Held-out check (issue 18): each section keeps an untouched held-out split that nothing trains or tunes on — a
second synthetic set from the same generator (a quarter of all images) for Airbus and Clouds, a fixed
coverage-stratified quarter of the TGS fixture — and prints per step, for the seg+head ensemble, the OOF-tuned
gain, the cross-validated gain ± SE (segkit's rule keeps a step only when it is > 0 and > 1 SE) and the gain
of that step on the held-out images, then the held-out scores of all-empty, plain 0.5, the chain segkit keeps
and the chain tuned on all OOF without the rule (`postprocess.crossval: false`).

Targets (PASS/MISS): gate + triplet beat the tuned single threshold on both synthetic sets; Airbus F2 gain
≥ +0.03; the 5,546 × 4 tuning ≤ 5 minutes; the cross-validated gains agree in sign with the held-out gains.
Wall-clock figures on a shared machine are indicative.

    nice -n 10 .venv/bin/python bench/playbook.py [--quick] [--only airbus,clouds,tgs,speed] [--workdir DIR]
        [--n-train N] [--epochs E]   (a reduced size: N training images per section, E full epochs)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TGS = ROOT.parent / "shared" / "fixtures" / "tgs"
SECTIONS = ("airbus", "clouds", "tgs", "speed")
STEPS = ("plain (0.5)", "threshold", "min area", "gate", "triplet")

# (full, --quick) sizes: training images, epochs, steps per epoch (None: the whole training side each epoch)
SIZES = {
    "airbus": {"full": dict(n_train=600, epochs=12, steps=None), "quick": dict(n_train=60, epochs=1, steps=3)},
    "clouds": {"full": dict(n_train=600, epochs=12, steps=None), "quick": dict(n_train=60, epochs=1, steps=3)},
    "tgs": {"full": dict(n_train=1200, epochs=10, steps=None), "quick": dict(n_train=90, epochs=1, steps=3)},
    "speed": {"full": dict(n=5546, h=350, w=525, classes=4), "quick": dict(n=300, h=350, w=525, classes=2)},
}


def log(msg: str) -> None:
    print(msg, flush=True)


def models(depth: int = 3, base: int = 8) -> list[dict]:
    """The three tiny U-Nets: plain, with the classification head, and one trained on non-empty masks only
    (the cascade's mask model: it never learns to predict nothing, the ensemble's gate decides emptiness)."""
    return [{"name": "unet", "tag": "seg", "depth": depth, "base_filters": base},
            {"name": "unet", "tag": "head", "depth": depth, "base_filters": base, "classifier": True},
            {"name": "unet", "tag": "pos", "depth": depth, "base_filters": base, "positive_only": True}]


# tuned variants: each model alone, the plain ensemble, and the cascade (positive-only masks, gated by the head)
# (seg+head last: its postprocess.json is the one the run keeps and the report reads)
VARIANTS = (("seg", ["seg"]), ("head", ["head"]), ("pos+head", ["pos", "head"]), ("seg+head", ["seg", "head"]))


def run_benchmark(name: str, config: str, settings: dict, quiet: bool, heldout: Path | None = None) -> dict:
    """Train (or resume) the run, tune the chain on each model's OOF and on both, print the tables; returns
    {variant: postprocess.json result} plus timings."""
    import segkit as sk
    from segkit.postprocess import format_steps
    from segkit.report import build_report

    run = sk.Run(config, quiet=quiet, **settings)
    start = time.perf_counter()
    run.fit()
    trained = time.perf_counter() - start
    log(f"[{name}] trained {len(run.config.models)} models × {run.config.train.folds} folds in {trained:.0f} s "
        f"(run folder {run.dir})")
    results = {}
    for variant, tags in VARIANTS:
        t = time.perf_counter()
        results[variant] = sk.Run(run.config, quiet=True, predict={"models": tags}).tune()
        results[variant]["_tune_s"] = time.perf_counter() - t
    print_steps(name, results)
    log(f"[{name}] the ensemble (seg+head) as tuned, parameters per class:")
    log(format_steps(results["seg+head"]))
    log(f"[{name}] segkit report's ablation table (postprocess.json of seg+head):")
    log(build_report(run.config, curves=False, worst=0).table())
    out = {"results": results, "train_s": trained}
    if heldout is not None:
        out["heldout"] = heldout_check(name, run, heldout, ["seg", "head"])
    return out


def heldout_data(cfg, root: Path, work: Path):
    """The held-out images and masks at the training size, through the same adapter and cache as training
    (their own cache and run folder: nothing of the benchmark's run sees them)."""
    import copy

    from segkit.runs import open_run_data

    ho = copy.deepcopy(cfg)
    ho.name = f"{cfg.name}_heldout"
    ho.data.root = str(root)
    ho.data.cache_dir = str(work / "cache_heldout")
    ho.data.max_train_samples = None
    ho.output.runs_dir = str(work / "heldout_runs")
    return open_run_data(ho, quiet=True)


def heldout_check(name: str, run, root: Path, tags: list[str]) -> dict:
    """Per step of the chain: OOF-tuned gain, cross-validated gain ± SE and decision (segkit's rule), and the
    gain of the step (tuned on all OOF, on top of the steps kept before it) on held-out images; the held-out
    scores of all-empty, plain 0.5, the kept chain and the chain every OOF gain would keep. Mean over classes."""
    import segkit as sk
    from segkit.oof import OofClass, load_oof_class
    from segkit.postprocess.crossval import State, chain_score, choose_folds, crossval_chain, in_sample_rule
    from segkit.postprocess.tuning import class_tables
    from segkit.runs import open_run_data

    t0 = time.perf_counter()
    cfg = sk.Run(run.config, quiet=True, predict={"models": tags}).config
    data = open_run_data(cfg, quiet=True)
    ho = heldout_data(cfg, root, Path(cfg.output.runs_dir).parent)
    ens = sk.Run(cfg, quiet=True).ensemble(models=tags)
    images = np.asarray(ho.cache.images)
    parts = list(ens._iter_ensemble(iter(images)))  # (probs, gate_probs, label) per image, at the training size
    hp = np.stack([p for p, _, _ in parts]).astype(np.float32)
    hg = np.stack([g for _, g, _ in parts]).astype(np.float32)
    hl = None if parts[0][2] is None else np.stack([np.asarray(lab).reshape(-1) for _, _, lab in parts])
    n, m = len(data.samples), len(images)
    sub_h, sub_w = data.adapter.submission_size(data.samples[0])
    masks = data.cache.masks
    area_scale = masks.shape[1] * masks.shape[2] / float(sub_h * sub_w)
    folds, source = choose_folds(np.asarray(data.folds), n, cfg.seed)
    per_class = []
    for c in range(len(data.adapter.classes)):
        oof = load_oof_class(cfg, n, c)
        probs = np.concatenate([oof.probs, hp[..., c]])
        gate = probs if oof.gate_probs is oof.probs else np.concatenate([oof.gate_probs, hg[..., c]])
        label = None if oof.label is None or hl is None else np.concatenate([oof.label, hl[:, c]])
        truth = np.concatenate([np.asarray(masks[..., c]), np.asarray(ho.cache.masks[..., c])])
        tab, ctx, _ = class_tables(data.adapter, truth, OofClass(probs, gate, label), cfg, area_scale, sub_h * sub_w)
        oofv, hov = tab.subset(np.arange(n)), tab.subset(np.arange(n, n + m))
        rows = {}
        for rule, keep_rule in (("cv", None), ("oof", in_sample_rule)):
            cv = crossval_chain(oofv, folds, ctx, source, keep_rule)
            before, steps = State(), []
            for rec in cv.records:
                gain = 0.0 if rec.candidate is None else chain_score(hov, rec.candidate) - chain_score(hov, before)
                steps.append({"step": rec.step, "oof_gain": rec.oof_gain, "fold_gains": rec.fold_gains,
                              "kept": rec.kept, "heldout_gain": gain, "searched": rec.candidate is not None})
                before = rec.state
            rows[rule] = {"steps": steps, "final": chain_score(hov, cv.state)}
        rows["plain"] = chain_score(hov, State())
        rows["empty"] = float(hov.scorer.reduce(hov.scorer.empty))
        per_class.append(rows)
        del oof, probs, gate, truth, tab
    out = summarise_heldout(name, per_class, n, m, source, tags)
    out["heldout_s"] = time.perf_counter() - t0
    return out


def summarise_heldout(name: str, per_class: list[dict], n: int, m: int, source: str, tags: list[str]) -> dict:
    """Print the held-out table (means over classes; SE over folds of the class-mean gains) → the figures."""
    from segkit.postprocess.crossval import standard_error

    mean = lambda xs: float(np.mean(xs))  # noqa: E731
    log(f"[{name}] held-out check ({'+'.join(tags)}): tuned on the OOF of {n} images cross-validated over {source}; "
        f"scored on {m} held-out images nothing trained or tuned on")
    log(f"[{name}] {'step':<10} {'OOF-tuned gain':>14} {'CV gain ± SE':>18} {'kept':>5} {'held-out gain':>13}   "
        f"| without the rule: {'OOF gain':>8} {'held-out gain':>13}")
    steps, agree, judged, decided = [], 0, 0, 0
    for j, step in enumerate(s["step"] for s in per_class[0]["cv"]["steps"]):
        cv = [pc["cv"]["steps"][j] for pc in per_class]
        oof = [pc["oof"]["steps"][j] for pc in per_class]
        row = {"step": step, "oof_gain": mean([r["oof_gain"] for r in cv]),
               "heldout_gain": mean([r["heldout_gain"] for r in cv]), "kept": sum(r["kept"] for r in cv),
               "naive_oof_gain": mean([r["oof_gain"] for r in oof]),
               "naive_heldout_gain": mean([r["heldout_gain"] for r in oof])}
        if all(r["fold_gains"] for r in cv):
            per_fold = np.mean([r["fold_gains"] for r in cv], axis=0)
            row["cv_gain"], row["cv_se"] = float(per_fold.mean()), standard_error(per_fold)
            judged += 1
            same = (abs(row["cv_gain"]) < 1e-9 and abs(row["heldout_gain"]) < 1e-9) or \
                np.sign(row["cv_gain"]) == np.sign(row["heldout_gain"])
            agree += bool(same)
            decided += bool((row["kept"] > 0) == (row["heldout_gain"] > 1e-9))
            cv_text = f"{row['cv_gain']:+.4f} ± {row['cv_se']:.4f}"
        else:
            cv_text = "not searched"
        log(f"[{name}] {step:<10} {row['oof_gain']:>+14.4f} {cv_text:>18} {row['kept']:>3}/{len(cv)} "
            f"{row['heldout_gain']:>+13.4f}   | {'':>18}{row['naive_oof_gain']:>+8.4f} {row['naive_heldout_gain']:>+13.4f}")
        steps.append(row)
    final = {"empty": mean([pc["empty"] for pc in per_class]), "plain": mean([pc["plain"] for pc in per_class]),
             "cv_chain": mean([pc["cv"]["final"] for pc in per_class]),
             "oof_chain": mean([pc["oof"]["final"] for pc in per_class])}
    log(f"[{name}] held-out score: all-empty {final['empty']:.4f}, plain 0.5 {final['plain']:.4f}, chain kept by "
        f"the rule {final['cv_chain']:.4f} ({final['cv_chain'] - final['plain']:+.4f}), chain of every OOF gain "
        f"{final['oof_chain']:.4f} ({final['oof_chain'] - final['plain']:+.4f})")
    log(f"[{name}] the CV gain agrees in sign with the held-out gain for {agree} of {judged} searched steps; the "
        f"decision (kept ⇔ held-out gain > 0) for {decided} of {judged}")
    return {"steps": steps, "final": final, "agree": agree, "judged": judged, "decided": decided, "n_oof": n,
            "n_heldout": m}


def step_scores(result: dict) -> dict[str, float]:
    return {s["step"]: float(s["oof_score"]) for s in result["steps"]}


def print_steps(name: str, results: dict) -> None:
    """Rows: the steps; columns: the OOF score of each tuned variant, then the gain over the tuned threshold."""
    variants = list(results)
    head = f"{'step':<12}" + "".join(f"{v:>10}" for v in variants)
    log(f"[{name}] OOF metric after each step ({results[variants[0]]['metric']})")
    log(f"[{name}] {head}")
    table = {v: step_scores(r) for v, r in results.items()}
    for step in STEPS:
        log(f"[{name}] {step:<12}" + "".join(f"{table[v].get(step, float('nan')):>10.4f}" for v in variants))
    gains = "".join(f"{table[v]['triplet'] - table[v]['threshold']:>+10.4f}" for v in variants)
    log(f"[{name}] {'gain vs thr':<12}{gains}   (triplet step minus tuned single threshold)")
    log(f"[{name}] tuning took " + ", ".join(f"{v} {r['_tune_s']:.1f} s" for v, r in results.items()))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def common_settings(work: Path, name: str, size: dict, image_size: list[int], root: Path, extra: dict) -> dict:
    train = {"folds": 3, "epochs": size["epochs"], "batch_size": 16, "learning_rate": 3e-3,
             "early_stopping_patience": 4, "reduce_lr_patience": 2, "verbose": 0}
    if size["steps"]:
        train["steps_per_epoch"] = size["steps"]
    data = {"root": str(root), "image_size": image_size, "cache_dir": str(work / "cache")}
    data.update(extra.pop("data", {}))
    return {"name": name, "seed": 7, "data": data, "models": models(), "train": train,
            "output": {"runs_dir": str(work / "runs"), "submissions_dir": str(work / "submissions")}, **extra}


def bench_airbus(work: Path, size: dict, quiet: bool) -> dict:
    from segkit.data.competitions.base import make_adapter
    from segkit.data.synth import generate

    # ship_free is drawn per image: 0.7 puts the realised share of the 600 images above the 60 %
    root = generate("airbus", work / "data" / "airbus", seed=11, image_size=256, n_train=size["n_train"],
                    n_test=2, ship_free=0.7, faint=0.5, clutter=0.5, quiet=True)
    samples = make_adapter("airbus", root).train_samples()
    ship_free = float(np.mean([s.stratum == 0 for s in samples]))
    log(f"[airbus] {len(samples)} training images, {ship_free:.1%} of them ship-free")
    settings = common_settings(work, f"airbus_{size['n_train']}", size, [128, 128], root, {
        "data": {"options": {"empty_fraction": 1.0}},  # keep every ship-free image
        # areas in submission pixels (768×768; at 128×128 one pixel is 36 of them)
        "postprocess": {"min_area_grid": [0, 72, 144, 288, 576, 1152, 2304]},
    })
    heldout = generate("airbus", work / "data" / "airbus_heldout", seed=111, image_size=256,
                       n_train=max(8, size["n_train"] // 3), n_test=1, ship_free=0.7, faint=0.5, clutter=0.5,
                       quiet=True)
    out = run_benchmark("airbus", "airbus", settings, quiet, heldout)
    out["ship_free"] = ship_free
    return out


def bench_clouds(work: Path, size: dict, quiet: bool) -> dict:
    from segkit.data.synth import generate

    root = generate("clouds", work / "data" / "clouds", seed=12, image_size=(128, 192), n_train=size["n_train"],
                    n_test=2, empty_fraction=0.4, faint=0.4, quiet=True)
    settings = common_settings(work, f"clouds_{size['n_train']}", size, [64, 96], root, {
        # areas in submission pixels (350×525; at 64×96 one pixel is ~30 of them)
        "postprocess": {"min_area_grid": [0, 1000, 2500, 5000, 10000, 15000]},
    })
    heldout = generate("clouds", work / "data" / "clouds_heldout", seed=112, image_size=(128, 192),
                       n_train=max(8, size["n_train"] // 3), n_test=1, empty_fraction=0.4, faint=0.4, quiet=True)
    return run_benchmark("clouds", "clouds", settings, quiet, heldout)


def bench_tgs(work: Path, size: dict, quiet: bool) -> dict:
    """The real TGS Salt training set through the TGS adapter (train.csv, coverage-stratified folds; the fixture
    has no test images, which tuning does not need)."""
    if not (TGS / "train" / "images").is_dir():
        log(f"[tgs] skipped: {TGS} not found")
        return {}
    # TGS images are 101×101 and the submission is at that size: areas in those pixels
    extra = {"postprocess": {"min_area_grid": [0, 10, 20, 40, 80, 160]}, "data": {}}
    if size["n_train"]:
        extra["data"]["max_train_samples"] = size["n_train"]
    train_root, heldout = split_tgs(work / "data", size["n_train"] and max(8, size["n_train"] // 3))
    settings = common_settings(work, f"tgs_{size['n_train'] or 'all'}", size, [96, 96], train_root, extra)
    return run_benchmark("tgs", "tgs", settings, quiet, heldout)


def split_tgs(folder: Path, n_heldout: int | None = None) -> tuple[Path, Path]:
    """A fixed coverage-stratified quarter of the TGS fixture held out (every 4th image in order of salt
    coverage): two dataset folders, train.csv split, images and depths linked → (training root, held-out
    root); `n_heldout` keeps only that many held-out images (spread over the coverage order)."""
    import pandas as pd

    table = pd.read_csv(TGS / "train.csv", dtype={"id": str}, keep_default_na=False)
    coverage = [sum(int(v) for v in str(r).split()[1::2]) for r in table["rle_mask"]]
    order = np.argsort(np.asarray(coverage) + np.arange(len(table)) * 1e-9, kind="stable")
    held = np.zeros(len(table), bool)
    held[order[3::4]] = True
    if n_heldout:
        idx = np.flatnonzero(held)
        keep = idx[np.unique(np.linspace(0, len(idx) - 1, n_heldout).round().astype(int))]
        held[:] = False
        held[keep] = True
    roots = []
    for name, rows in (("tgs_train", ~held if not n_heldout else ~np.isin(np.arange(len(table)), order[3::4])),
                       ("tgs_heldout", held)):
        root = folder / name
        root.mkdir(parents=True, exist_ok=True)
        table[rows].to_csv(root / "train.csv", index=False)
        for link in ("train", "depths.csv"):
            if not (root / link).exists():
                (root / link).symlink_to(TGS / link)
        roots.append(root)
    return roots[0], roots[1]


def structured_class(n: int, h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """OOF-like float32 probabilities (smooth blobs, noise) and uint8 truth for one label; ~40 % empty."""
    import cv2

    rng = np.random.default_rng(seed)
    probs = np.empty((n, h, w), np.float32)
    truth = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        field = cv2.resize(rng.normal(size=(7, 10)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        empty = rng.random() < 0.4
        if not empty:
            truth[i] = field > 0.8
        noise = cv2.resize(rng.normal(size=(35, 52)).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        logit = (field - 0.8) * (0.5 if empty else 3.0) + 0.7 * noise - (1.5 if empty else 0.0)
        probs[i] = 1 / (1 + np.exp(-logit))
    return probs, truth


def bench_speed(size: dict) -> dict:
    """Time tune_class (threshold → min area → gate → triplet) per class; the triplet search timed apart."""
    from segkit.config import load_config
    from segkit.data.competitions.clouds import CloudsAdapter
    from segkit.postprocess import tuning
    from segkit.postprocess.tuning import OofClass, tune_class

    n, h, w, classes = size["n"], size["h"], size["w"], size["classes"]
    cfg = load_config("clouds")  # the recipe's grids: 9 thresholds, min areas 0-20000, gate auto, triplet
    adapter = CloudsAdapter.__new__(CloudsAdapter)  # only its metric is used
    timings = {"tables": 0.0, "triplet": 0.0}
    real_tables, real_triplet = tuning.ClassTables, tuning.search_triplet

    def timed_tables(*a, **k):
        t = time.perf_counter()
        out = real_tables(*a, **k)
        timings["tables"] += time.perf_counter() - t
        return out

    def timed_triplet(*a, **k):
        t = time.perf_counter()
        out = real_triplet(*a, **k)
        timings["triplet"] += time.perf_counter() - t
        return out

    tuning.ClassTables, tuning.search_triplet = timed_tables, timed_triplet
    total = cpu = make = 0.0
    try:
        for c in range(classes):
            t = time.perf_counter()
            probs, truth = structured_class(n, h, w, c)
            make += time.perf_counter() - t
            t, t_cpu = time.perf_counter(), time.process_time()
            row, steps = tune_class(adapter, truth, OofClass(probs, probs, None), cfg, 1.0, h * w)
            took, took_cpu = time.perf_counter() - t, time.process_time() - t_cpu
            total, cpu = total + took, cpu + took_cpu
            log(f"[speed] class {c}: chain tuned in {took:.1f} s wall ({took_cpu:.1f} s CPU): "
                + " → ".join(f"{s:.4f}" for s, _ in steps) + f"; bottom {row['threshold']}, min area "
                f"{row['min_area']}, top {row['top_threshold']}, gate {row['gate']}")
            del probs, truth
    finally:
        tuning.ClassTables, tuning.search_triplet = real_tables, real_triplet
    log(f"[speed] {n} images × {classes} labels at {h}×{w}: whole chain {total:.1f} s wall, {cpu:.1f} s CPU; of "
        f"which per-image statistics (one sorted pass) {timings['tables']:.1f} s, triplet search "
        f"{timings['triplet']:.1f} s; making the synthetic OOF {make:.1f} s (not counted); load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; search: coarse-to-fine over the bottom threshold "
        f"(see segkit.postprocess.search)")
    return {"total_s": total, "cpu_s": cpu, "triplet_s": timings["triplet"], "tables_s": timings["tables"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny subsets, one short epoch")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {', '.join(SECTIONS)}")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "segkit_playbook",
                    help="data, caches and run folders (reused: a finished run is not retrained)")
    ap.add_argument("--verbose", action="store_true", help="segkit's own progress output")
    ap.add_argument("--n-train", type=int, help="training images per section (overrides the mode's size)")
    ap.add_argument("--epochs", type=int, help="epochs (overrides the mode's size; every batch each epoch)")
    args = ap.parse_args()
    from segkit.cli.console import quiet_tensorflow

    quiet_tensorflow()  # TensorFlow's start-up lines, as the segkit command does
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        sys.exit(f"--only: unknown section(s) {', '.join(unknown)} (known: {', '.join(SECTIONS)})")
    mode = "quick" if args.quick else "full"
    work = args.workdir / (mode if not (args.n_train or args.epochs) else f"{mode}_n{args.n_train}_e{args.epochs}")
    work.mkdir(parents=True, exist_ok=True)
    log(f"playbook benchmark ({mode}) in {work}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    summary: dict[str, dict] = {}
    checks: list[tuple[str, bool, str]] = []
    for section in only:
        size = dict(SIZES[section][mode])
        if section != "speed" and (args.n_train or args.epochs):
            size.update({k: v for k, v in (("n_train", args.n_train), ("epochs", args.epochs)) if v})
            size["steps"] = None
        t = time.perf_counter()
        if section == "speed":
            summary[section] = bench_speed(size)
        else:
            summary[section] = {"airbus": bench_airbus, "clouds": bench_clouds, "tgs": bench_tgs}[section](
                work, size, quiet=not args.verbose)
        summary[section]["section_s"] = time.perf_counter() - t
        log(f"[{section}] section took {summary[section]['section_s']:.0f} s (sizes: {size})")
        if section in ("airbus", "clouds", "tgs") and summary[section].get("results"):
            best = summary[section]["results"]["seg+head"]
            s = step_scores(best)
            gain = s["triplet"] - s["threshold"]
            cascade = step_scores(summary[section]["results"]["pos+head"])
            c_gain = cascade["triplet"] - cascade["threshold"]
            if section != "tgs":
                checks.append((f"{section}: gate + triplet beat the tuned threshold (seg+head)", gain > 0,
                               f"{s['threshold']:.4f} → {s['triplet']:.4f} ({gain:+.4f})"))
                checks.append((f"{section}: gate + triplet beat the tuned threshold (cascade pos+head)", c_gain > 0,
                               f"{cascade['threshold']:.4f} → {cascade['triplet']:.4f} ({c_gain:+.4f}); final "
                               f"{cascade['triplet']:.4f} vs the plain ensemble's {s['triplet']:.4f}"))
            if section == "airbus":
                checks.append(("airbus: ≥ 60 % of the training images ship-free", summary[section]["ship_free"] >= 0.6,
                               f"{summary[section]['ship_free']:.1%}"))
                checks.append(("airbus: F2 gain ≥ +0.03 (seg+head)", gain >= 0.03, f"{gain:+.4f}"))
                checks.append(("airbus: F2 gain ≥ +0.03 (cascade pos+head)", c_gain >= 0.03, f"{c_gain:+.4f}"))
        if summary[section].get("heldout"):
            h = summary[section]["heldout"]
            checks.append((f"{section}: CV gains agree in sign with the held-out gains", h["agree"] == h["judged"],
                           f"{h['agree']}/{h['judged']} steps (decisions {h['decided']}/{h['judged']}); held-out: plain {h['final']['plain']:.4f}, kept chain "
                           f"{h['final']['cv_chain']:.4f}, chain of every OOF gain {h['final']['oof_chain']:.4f}, "
                           f"all-empty {h['final']['empty']:.4f}"))
        if section == "speed":
            ok = summary[section]["total_s"] <= 300
            checks.append((f"speed: chain incl. triplet for {size['n']} × {size['classes']} at "
                           f"{size['h']}×{size['w']} ≤ 5 min", ok, f"{summary[section]['total_s']:.0f} s wall"))
    log("")
    log("targets:")
    for what, ok, figure in checks:
        log(f"  {verdict(ok)}  {what}: {figure}")
    slim = {k: {kk: vv for kk, vv in v.items() if kk != "results"} for k, v in summary.items()}
    (work / "summary.json").write_text(json.dumps(slim, indent=1))


if __name__ == "__main__":
    main()
