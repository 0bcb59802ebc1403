"""segkit's default `tgs` recipe against the plain public Keras kernel, on real TGS Salt images, at equal time.

A fixed, coverage-stratified quarter of the 3,001 real training images in ../shared/fixtures/tgs is held out
(seed 2018): nothing trains, validates or tunes on it — the bench's private leaderboard. Both recipes train on the
other three quarters in the same process, one after the other, and both predict the held-out quarter with hflip
TTA at threshold 0.5 (the kernel also with its own threshold chosen on its validation split), scored at 101x101
with the competition metric (segkit.evaluate.tgs_score) next to the all-empty submission.

- plain kernel: written here as the most-copied public TGS kernels train it — a Keras U-Net (same depth, base
  filters and image size as segkit's run, no batch norm), BCE, Adam 1e-3, batch 32, random horizontal flips, a
  10 % validation split for the best epoch and the threshold;
- segkit: the built-in `tgs` recipe through the notebook API (segkit.Run(...).fit(), then Run.ensemble), with
  overrides only for the image size, U-Net depth and base filters, and the CPU-sized folds / epochs (or,
  with `--budget R`, train.time_budget = R × the kernel's measured training time instead of the epochs). Its time is the whole of `fit` (training, OOF, tuning) after its image cache is built (the kernel's
  images are read before its clock starts too); CPU seconds of both are printed beside the wall-clock ones.

    nice -n 5 .venv/bin/python bench/real_tgs.py [--limit 0] [--image-size 96] [--depth 4] [--base 8]
        [--epochs 8] [--folds 2] [--budget RATIO] [--set train.key=value ...] [--workdir DIR]

`--limit N` keeps N images (stratified) for quick runs; `--set` adds a segkit override (an experiment: it is
printed, and the figures are then not the default recipe's). Wall-clock on a shared machine is indicative only;
both times come from the same run.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TGS = ROOT.parent / "shared" / "fixtures" / "tgs"
HOLDOUT_SEED = 2018
SUBMISSION = (101, 101)


# --- data ------------------------------------------------------------------------------------------------

def split_holdout(strata: np.ndarray, share: float = 0.25, seed: int = HOLDOUT_SEED) -> np.ndarray:
    """Boolean mask of the held-out images: `share` of every coverage stratum, drawn with a fixed seed."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(strata), bool)
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        held[rng.permutation(idx)[: int(round(share * len(idx)))]] = True
    return held


@dataclass
class Holdout:
    """The bench's split of the fixture: the images trained on, the held-out ones, and the TGS folder (`root`)
    that lists the former as its training set and the latter as its test set."""

    adapter: Any
    samples: list
    train: list
    held: list
    root: Path

    @property
    def held_ids(self) -> list[str]:
        return [s.id for s in self.held]

    def held_rows(self) -> list[dict]:
        """`id,rle_mask` rows of the held-out images (their true masks)."""
        return [{"id": s.id, "rle_mask": s.meta["rle"]} for s in self.held]


def make_holdout(limit: int, workdir: Path, src: Path = TGS) -> Holdout:
    """The fixed held-out quarter of the fixture (of `limit` images kept stratified when `limit`), and the TGS
    folder of the rest under `workdir`."""
    from segkit.data.competitions.base import make_adapter

    adapter = make_adapter("tgs", str(src), {})
    samples = adapter.train_samples()
    strata = np.array([s.stratum for s in samples])
    if limit:
        keep = np.sort(np.flatnonzero(split_holdout(strata, limit / len(samples), seed=7)))
        samples, strata = [samples[i] for i in keep], strata[keep]
    held = split_holdout(strata)
    train_s = [s for s, h in zip(samples, held) if not h]
    held_s = [s for s, h in zip(samples, held) if h]
    workdir.mkdir(parents=True, exist_ok=True)
    root = subset_root(workdir, [{"id": s.id, "rle_mask": s.meta["rle"]} for s in train_s],
                       [s.id for s in held_s], src)
    return Holdout(adapter, samples, train_s, held_s, root)


def describe(split: Holdout, y_ho: np.ndarray) -> str:
    """One line on the split: images, trained on, held out, salt-free share of the held-out ones."""
    salt_free = np.mean(~y_ho.reshape(len(y_ho), -1).any(1))
    return (f"real TGS {TGS}: {len(split.samples)} images, training on {len(split.train)}, held out "
            f"{len(split.held)} (coverage-stratified, seed {HOLDOUT_SEED}; salt-free {salt_free:.1%})")


def subset_root(workdir: Path, rows: list[dict], test_ids: list[str], src: Path = TGS) -> Path:
    """A TGS folder listing only `rows` in train.csv and `test_ids` (the held-out images) as its test set in
    sample_submission.csv; images, masks and depths are links to the fixture's."""
    root = workdir / "tgs_train"
    if root.exists():
        shutil.rmtree(root)
    (root / "train").mkdir(parents=True)
    (root / "test" / "images").mkdir(parents=True)
    for name in ("images", "masks"):
        (root / "train" / name).symlink_to(src / "train" / name)
    for i in test_ids:
        (root / "test" / "images" / f"{i}.png").symlink_to(src / "train" / "images" / f"{i}.png")
    if (src / "depths.csv").is_file():
        (root / "depths.csv").symlink_to(src / "depths.csv")
    write_rows(root / "train.csv", rows)
    write_rows(root / "sample_submission.csv", [{"id": i, "rle_mask": "1 1"} for i in test_ids])
    return root


def heldout_root(workdir: Path, rows: list[dict], src: Path = TGS) -> Path:
    """A TGS folder whose train.csv lists only the held-out images (for bench/playbook.py's per-step check)."""
    root = workdir / "tgs_heldout"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / "train").symlink_to(src / "train")
    if (src / "depths.csv").is_file():
        (root / "depths.csv").symlink_to(src / "depths.csv")
    write_rows(root / "train.csv", rows)
    return root


def write_rows(path: Path, rows: list[dict]) -> None:
    """An `id,rle_mask` CSV of `rows`."""
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["id", "rle_mask"])
        w.writeheader()
        w.writerows(rows)


def read_submission(path: Path, ids: list[str]) -> np.ndarray:
    """The masks of a TGS submission CSV (column-major RLE at 101x101) in the order of `ids`, (N, 101, 101)."""
    from segkit.rle import decode

    with open(path, newline="") as fh:
        rles = {row["id"]: row["rle_mask"] for row in csv.DictReader(fh)}
    return np.stack([decode(rles[i], SUBMISSION, order="F") for i in ids])


def read_set(adapter, samples) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 101, 101, 3), masks uint8 (N, 101, 101))."""
    return (np.stack([adapter.read_image(s) for s in samples]),
            np.stack([adapter.read_mask(s)[..., 0] for s in samples]))


def resize(batch: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (N, H, W[, C]) float images to (N, *size[, C])."""
    import cv2

    out = [cv2.resize(np.asarray(x, np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for x in batch]
    return np.stack(out)


# --- the plain public kernel ---------------------------------------------------------------------------

def plain_unet(size: int, depth: int, base: int):
    """The public kernels' U-Net: two 3x3 ReLU convs per level, max-pool down, transposed conv up, no batch norm."""
    import keras
    from keras import layers

    x = inp = keras.Input((size, size, 1))
    skips = []
    for level in range(depth):
        f = base * 2 ** level
        x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
        skips.append(x)
        x = layers.MaxPooling2D()(x)
    f = base * 2 ** depth
    x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
    x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
    for level in reversed(range(depth)):
        f = base * 2 ** level
        x = layers.Conv2DTranspose(f, 3, strides=2, padding="same")(x)
        x = layers.concatenate([x, skips[level]])
        x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
    out = layers.Conv2D(1, 1, activation="sigmoid")(x)
    return keras.Model(inp, out)


class _Flips:
    """Batches of (x, y) with a random horizontal flip per image, reshuffled every epoch (keras PyDataset)."""

    def __new__(cls, x, y, batch, seed):
        import keras

        class Feed(keras.utils.PyDataset):
            def __init__(self):
                super().__init__()
                self.rng = np.random.default_rng(seed)
                self.order = self.rng.permutation(len(x))

            def __len__(self):
                return int(np.ceil(len(x) / batch))

            def __getitem__(self, i):
                idx = self.order[i * batch:(i + 1) * batch]
                xb, yb = x[idx].copy(), y[idx].copy()
                flip = self.rng.random(len(idx)) < 0.5
                xb[flip], yb[flip] = xb[flip][:, :, ::-1], yb[flip][:, :, ::-1]
                return xb, yb

            def on_epoch_end(self):
                self.order = self.rng.permutation(len(x))

        return Feed()


def predict_hflip(model, x: np.ndarray) -> np.ndarray:
    """Mean of the model's probabilities on x and on x flipped left-right (flipped back), (N, H, W)."""
    p = model.predict(x, batch_size=64, verbose=0)[..., 0]
    q = model.predict(x[:, :, ::-1], batch_size=64, verbose=0)[..., 0][:, :, ::-1]
    return (p + q) / 2


def train_plain(images: np.ndarray, masks: np.ndarray, size: int, depth: int, base: int, epochs: int,
                seed: int = 0):
    """The plain kernel's training: (model with the best-epoch weights, threshold chosen on its val split)."""
    import keras

    from segkit.evaluate import tgs_score

    keras.utils.set_random_seed(seed)
    x = resize(images[..., :1].astype(np.float32) / 255.0, (size, size))[..., None]
    y = (resize(masks.astype(np.float32), (size, size)) > 0.5).astype(np.float32)[..., None]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_val = len(x) // 10
    val, tr = order[:n_val], order[n_val:]
    model = plain_unet(size, depth, base)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    best = keras.callbacks.ModelCheckpoint(str(_tmp_weights()), monitor="val_loss", save_best_only=True,
                                           save_weights_only=True)
    model.fit(_Flips(x[tr], y[tr], 32, seed), validation_data=(x[val], y[val]), epochs=epochs, callbacks=[best],
              verbose=0)
    model.load_weights(str(_tmp_weights()))
    p = resize(predict_hflip(model, x[val]), SUBMISSION)
    grid = np.round(np.linspace(0.3, 0.7, 9), 2)
    scores = [tgs_score(masks[val], p > t) for t in grid]
    return model, float(grid[int(np.argmax(scores))])


def _tmp_weights() -> Path:
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"segkit_real_tgs_plain_{os.getpid()}.weights.h5"


# --- segkit ----------------------------------------------------------------------------------------------

def recipe_model(args) -> dict:
    """The `tgs` recipe's U-Net spec at `--depth` / `--base`, with `--model`'s extra settings."""
    import segkit as sk

    model = dict(sk.load_config("tgs").models[0], depth=args.depth, base_filters=args.base)
    if args.model:
        import yaml

        model.update(yaml.safe_load("{" + args.model + "}"))
    return model


def train_segkit(root: Path, args, workdir: Path, budget: float | None = None, model: dict | None = None,
                 name: str = "real_tgs"):
    """The built-in `tgs` recipe on `root` through segkit.Run, with `model` (default: the recipe's, see
    recipe_model) as its one architecture: (run, wall seconds of fit, CPU seconds of fit). Runs of one workdir
    share the image cache; `name` keeps their run folders apart."""
    import segkit as sk
    from segkit.runs import open_run_data

    settings = {
        "name": name,
        "data": {"root": str(root), "image_size": [args.image_size] * 2, "cache_dir": str(workdir / "cache")},
        "models": [model or recipe_model(args)],
        "train": {"folds": args.folds, "verbose": 0, **({} if budget else {"epochs": args.seg_epochs or args.epochs})},
        "output": {"runs_dir": str(workdir / "runs"), "submissions_dir": str(workdir / "submissions")},
    }
    if budget:  # the recipe's train.epochs stays the cap
        settings["train"]["time_budget"] = round(budget, 1)
    run = sk.Run("tgs", list(args.set), quiet=not args.verbose, **settings)
    open_run_data(run.config, quiet=True)  # the image cache, built before the clock starts: the kernel's images
    start, cpu = time.perf_counter(), time.process_time()  # are read before its clock starts too
    run.fit(restart=True)
    return run, time.perf_counter() - start, time.process_time() - cpu


def read_plan(run) -> dict | None:
    """The run's time-budget plan (plan.json: the plan and the seconds spent), None without a budget."""
    saved = run.dir / "plan.json"
    return json.loads(saved.read_text()) if saved.is_file() else None


def score_segkit(run, x_ho: np.ndarray, y_ho: np.ndarray, held_ids: list[str], path: Path) -> tuple[float, float]:
    """Held-out TGS metric of a fitted run: its hflip-TTA ensemble at threshold 0.5, and the submission CSV it
    writes to `path` with its cross-validated chain (what `segkit predict` submits)."""
    from segkit.evaluate import tgs_score

    p = run.ensemble(tta=["identity", "hflip"]).predict(x_ho)[..., 0]
    written = run.write_submission(path)
    return tgs_score(y_ho, p > 0.5), tgs_score(y_ho, read_submission(written, held_ids))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=0, help="keep N images, stratified (0: all 3,001)")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--depth", type=int, default=4, help="U-Net depth (the recipe's is 5)")
    ap.add_argument("--base", type=int, default=8, help="U-Net base filters (the recipe's is 16)")
    ap.add_argument("--epochs", type=int, default=8, help="epochs of both recipes (segkit: per fold)")
    ap.add_argument("--seg-epochs", type=int, default=0, help="segkit's epochs per fold (0: --epochs)")
    ap.add_argument("--folds", type=int, default=2, help="segkit's folds")
    ap.add_argument("--budget", type=float, default=0.0,
                    help="segkit's train.time_budget as a multiple of the kernel's measured training time (0: off: "
                         "--folds x --epochs)")
    ap.add_argument("--set", action="append", default=[], help="an extra segkit override key=value (experiments)")
    ap.add_argument("--model", default="", help="extra U-Net settings for segkit, e.g. 'batch_norm: true' "
                                                 "(experiments)")
    ap.add_argument("--no-steps", dest="steps", action="store_false",
                    help="skip the per-step held-out check of the post-processing chain")
    ap.add_argument("--skip-plain", action="store_true", help="train segkit only (development; no time ratio)")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "segkit_real_tgs")
    ap.add_argument("--verbose", action="store_true", help="segkit's own progress output")
    args = ap.parse_args()
    if not (TGS / "train.csv").is_file():
        sys.exit(f"{TGS}: the real TGS fixture is not there (clone the repo with ../shared beside it)")
    from segkit.cli.console import quiet_tensorflow

    quiet_tensorflow()
    from segkit.evaluate import tgs_score

    split = make_holdout(args.limit, args.workdir)
    x_tr, y_tr = read_set(split.adapter, split.train)
    x_ho, y_ho = read_set(split.adapter, split.held)
    print(f"{describe(split, y_ho)}; U-Net depth {args.depth} base {args.base} at {args.image_size} px; "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    plain_s = None
    if not args.skip_plain:
        start, cpu = time.perf_counter(), time.process_time()
        model, thr = train_plain(x_tr, y_tr, args.image_size, args.depth, args.base, args.epochs)
        plain_s, plain_cpu = time.perf_counter() - start, time.process_time() - cpu
        x = resize(x_ho[..., :1].astype(np.float32) / 255.0, (args.image_size,) * 2)[..., None]
        p = resize(predict_hflip(model, x), SUBMISSION)
        rows.append(("plain kernel, threshold 0.5", tgs_score(y_ho, p > 0.5), plain_s))
        rows.append((f"plain kernel, its threshold {thr:.2f}", tgs_score(y_ho, p > thr), plain_s))
        print(f"plain kernel trained in {plain_s:.0f} s ({plain_cpu:.0f} CPU s), load {os.getloadavg()[0]:.1f}",
              flush=True)
    budget = args.budget * plain_s if args.budget and plain_s else None
    run, seg_s, seg_cpu = train_segkit(split.root, args, args.workdir, budget)
    print(f"segkit trained in {seg_s:.0f} s ({seg_cpu:.0f} CPU s), load {os.getloadavg()[0]:.1f}", flush=True)
    tc = run.config.train
    planned = read_plan(run)
    epochs = f"{planned['plan']['epochs']} epochs of a {tc.time_budget:.0f} s budget" if planned \
        else f"{tc.epochs} epochs"
    extra = " ".join([*args.set, *([args.model] if args.model else [])])
    name = f"segkit tgs ({tc.folds} folds x {epochs}{', ' + extra if extra else ''})"
    if planned:
        print(f"segkit: training loop {planned['spent_s']:.0f} s of the {seg_s:.0f} s fit (then OOF and tuning)")
    at_half, submitted = score_segkit(run, x_ho, y_ho, split.held_ids, args.workdir / "submission.csv")
    rows.append((name + ", threshold 0.5", at_half, seg_s))
    rows.append((name + ", its tuned chain (segkit predict)", submitted, seg_s))
    rows.append(("all-empty", tgs_score(y_ho, np.zeros_like(y_ho)), None))
    print(f"\nheld-out quarter ({len(split.held)} images), TGS metric at 101x101, hflip TTA:")
    for what, score, secs in rows:
        print(f"  {what:<60s} {score:.4f}   " + (f"train {secs:.0f} s" if secs else ""))
    if args.steps:  # per post-processing step: OOF-tuned gain, CV gain ± SE, decision, held-out gain
        sys.path.insert(0, str(ROOT / "bench"))
        from playbook import heldout_check

        from segkit.runs import model_tags

        heldout_check("real_tgs", run, heldout_root(args.workdir, split.held_rows()), model_tags(run.config))
    if plain_s:
        best_plain = max(rows[0][1], rows[1][1])
        seg = rows[-2][1]  # what segkit submits
        print(f"segkit − best plain: {seg - best_plain:+.4f} (target ≥ +0.03); time ratio {seg_s / plain_s:.2f} "
              f"(target ≤ 1.25), CPU time ratio {seg_cpu / plain_cpu:.2f} (on a loaded machine the wall-clock ratio "
              "follows the load; CPU seconds of all the process's threads do not)")


if __name__ == "__main__":
    main()
