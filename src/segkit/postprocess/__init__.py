"""Post-processing: the chain threshold → min area → gate → triplet, tuned per class on OOF predictions.

- `chain`: the steps as pure functions over probability arrays, `apply_chain` (what predict and the notebook
  API binarise with) and reading the tuned parameters (`load_chain`, `load_postprocess`);
- `search`: the per-image statistics and the search beside each step;
- `crossval`: each step judged out of sample (tuned on the other folds, scored on the held-out one; kept only
  when its cross-validated gain is > 0 and > 1 SE);
- `tune`: tuning every class on the ensemble's OOF and writing postprocess.json v2 with the score per step and
  the evidence for each decision.
"""
from segkit.postprocess.chain import (ChainParams, ClassParams, Postprocess, apply, apply_chain, load_chain,
                                      load_postprocess, remove_small)
from segkit.postprocess.tuning import OofClass, format_steps, load_oof_class, tune

__all__ = ["ChainParams", "ClassParams", "OofClass", "Postprocess", "apply", "apply_chain", "format_steps",
           "load_chain", "load_oof_class", "load_postprocess", "remove_small", "tune"]
