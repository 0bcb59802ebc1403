# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Cloud segmentation on 38-Cloud with segkit
#
# A notebook in percent format (open it with Jupytext, VS Code or PyCharm, or paste the cells into a Kaggle
# notebook). It trains a K-fold U-Net ensemble, tunes the post-processing on the out-of-fold predictions,
# predicts numpy images with the fold × TTA ensemble and writes a validated submission.
#
# Set `DATA_ROOT` to the unpacked 38-Cloud dataset (on Kaggle: add the dataset
# `sorour/38cloud-cloud-segmentation-in-satellite-images` as an input). When it is not there, the notebook
# writes a tiny synthetic 38-Cloud in the real file layout and runs on that, so it runs anywhere in a minute.

# %%
import os
from pathlib import Path

import numpy as np

import segkit as sk

DATA_ROOT = os.environ.get("SEGKIT_DATA_ROOT", "/kaggle/input/38cloud-cloud-segmentation-in-satellite-images")
EPOCHS = int(os.environ.get("SEGKIT_EPOCHS", "0")) or None  # None: the config's (60 on real data, 1 synthetic)
PUSH_TO_KAGGLE = False  # True: push the fold kernels and the inference kernel (needs Kaggle credentials)

REAL_DATA = Path(DATA_ROOT).is_dir()
print("segkit", sk.__version__, "| data:", DATA_ROOT if REAL_DATA else "synthetic (DATA_ROOT not found)")

# %% [markdown]
# ## Data
# Without the real dataset, write a small synthetic one: 32×32 patches of 4-band uint16 scenes (red, green,
# blue, near-infrared), the training ground truth and the test patch list, exactly as 38-Cloud lays them out.

# %%
if REAL_DATA:
    data_root = Path(DATA_ROOT)
else:
    data_root = sk.synth("cloud38", "synthetic-38cloud", seed=0, patch_size=32, n_train_scenes=4,
                         n_test_scenes=1, scene_patches=(2, 3), quiet=True)
print(sorted(p.name for p in data_root.iterdir()))

# %% [markdown]
# ## Configure
# `kaggle_example` is the built-in 38-Cloud config with a `kaggle:` section (one kernel per fold). Keyword
# overrides merge into it section by section; a wrong key fails with "did you mean ...".

# %%
settings = {"data": {"root": str(data_root), "cache_dir": "cache"}}
if not REAL_DATA:  # a tiny model for a CPU minute
    settings.update(
        data={"root": str(data_root), "cache_dir": "cache", "image_size": 32, "options": {"stratify": False}},
        models=[{"name": "unet", "tag": "unet", "depth": 2, "base_filters": 4}],
        train={"folds": 2, "epochs": 1, "batch_size": 8, "workers": 1, "mixed_precision": None, "verbose": 0},
        predict={"tta": ["identity", "hflip"], "batch_size": 8},
    )
if EPOCHS:
    settings["train.epochs"] = EPOCHS
cfg = sk.load_config("kaggle_example", **settings)
print(cfg.name, cfg.data.image_size, cfg.models, f"{cfg.train.folds} folds × {cfg.train.epochs} epochs")

# %% [markdown]
# ## Train
# `fit` trains every fold of every model into `runs/<name>/`. It resumes: run the cell again (or after a
# restarted session) and finished folds are skipped, an interrupted one continues from its last epoch.
# `fit(folds=[0])` trains one fold; once every fold is done the post-processing is tuned.

# %%
run = sk.Run(cfg, quiet=True)
run.fit()
print(run)
print("folds done:", run.folds_done)

# %% [markdown]
# ## Tune the post-processing
# Per class, the threshold and minimum area that maximise the competition metric on the out-of-fold
# predictions (saved as `runs/<name>/postprocess.json`).

# %%
tuned = run.tune()
for c in tuned["classes"]:
    print(f"{c['name']}: threshold {c['threshold']}, min_area {c['min_area']}, "
          f"OOF {c['oof_score_default']:.4f} -> {c['oof_score_tuned']:.4f}")

# %% [markdown]
# ## Predict numpy images
# The ensemble averages every fold checkpoint over the test-time augmentations. It takes raw images in the
# dataset's dtype (uint16 here) at any size — one (H, W, bands) or a batch (N, H, W, bands) — and returns
# float32 probabilities (…, H, W, classes) at the images' own size.

# %%
ensemble = run.ensemble(tta=["identity", "hflip"])
print(ensemble)
ids, images = zip(*run.iter_images("test", limit=4))
images = np.stack(images)
probs = ensemble.predict(images)
masks = ensemble.predict_masks(images)
print("images", images.shape, images.dtype)
print("probabilities", probs.shape, probs.dtype, f"range [{probs.min():.3f}, {probs.max():.3f}]")
print("masks", masks.shape, masks.dtype, "cloud fraction", [round(float(m.mean()), 3) for m in masks])
print("one image", ensemble.predict(images[0]).shape)

# %% [markdown]
# ## Submission
# The same ensemble over the whole test set, post-processed and run-length encoded; the written file is
# validated against the competition's declared format and its test patch list.

# %%
submission = run.write_submission()
problems = run.validate()
print(submission, "valid" if not problems else problems)
print(submission.read_text().splitlines()[:3])

# %% [markdown]
# ## On Kaggle GPUs
# One training kernel per fold (they run in parallel), then an inference kernel that ensembles their
# checkpoints. Building the kernels needs no network; pushing needs your Kaggle credentials.

# %%
built = sk.kaggle.build_kernels(cfg, "kaggle_kernels", owner=os.environ.get("KAGGLE_USERNAME") or "me")
print([b.folder.name for b in built])
if PUSH_TO_KAGGLE:
    pushed = sk.kaggle.push_folds(cfg)  # waits for the fold kernels, then pushes the inference kernel
    # For a competition (kaggle.competition set), submit the file or the inference kernel:
    # sk.kaggle.submit(cfg, submission, message="segkit fold ensemble")
