"""The report's worst images are drawn at the submission size (what the RLE refers to), not the training size
(issue 17: a 101x101 TGS image trained at 64x64 was drawn at 64x64)."""
from types import SimpleNamespace

import numpy as np
from matplotlib.axes import Axes

from segkit import plots
from segkit.report import scoring

TRAIN = (64, 64)
SUBMISSION = (101, 101)


def drawn_shapes(monkeypatch, items, classes) -> list[tuple[int, ...]]:
    """The shapes of the arrays `plots.gallery` hands to imshow."""
    shapes = []
    real = Axes.imshow

    def imshow(self, x, *args, **kwargs):
        shapes.append(np.asarray(x).shape)
        return real(self, x, *args, **kwargs)

    monkeypatch.setattr(Axes, "imshow", imshow)
    assert plots.gallery(items, classes).startswith(b"\x89PNG")
    return shapes


def test_gallery_panels_are_drawn_at_the_submission_size(monkeypatch):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, TRAIN + (3,), dtype=np.uint8)
    truth = (rng.random(TRAIN + (1,)) > 0.5).astype(np.uint8)
    pred = (rng.random(TRAIN + (1,)) > 0.5).astype(np.uint8)
    sized = plots.at_submission_size(image, truth, pred, SUBMISSION)
    assert [a.shape for a in sized] == [SUBMISSION + (3,), SUBMISSION + (1,), SUBMISSION + (1,)]
    assert [a.dtype for a in sized] == [np.uint8, np.uint8, np.uint8]
    assert set(np.unique(sized[1])) <= {0, 1} and set(np.unique(sized[2])) <= {0, 1}  # masks stay binary
    shapes = drawn_shapes(monkeypatch, [("a266a2a9df", 0.25, *sized)], ["salt"])
    assert [s[:2] for s in shapes] == [SUBMISSION] * 3
    # already at the submission size (or 16-bit multi-band): unchanged sizes and dtypes
    bands = rng.integers(0, 60000, SUBMISSION + (4,), dtype=np.uint16)
    same = plots.at_submission_size(bands, sized[1], sized[2], SUBMISSION)
    assert same[0] is bands and same[0].dtype == np.uint16
    assert plots.at_submission_size(bands, sized[1], sized[2], TRAIN)[0].shape == TRAIN + (4,)


def test_report_gallery_items_are_at_the_submission_size(monkeypatch):
    n = 3
    samples = [SimpleNamespace(id=f"id{i}") for i in range(n)]
    run = SimpleNamespace(
        samples=samples,
        cache=SimpleNamespace(images=np.zeros((n,) + TRAIN + (3,), np.uint8), masks=np.zeros((n,) + TRAIN + (1,), np.uint8)),
        adapter=SimpleNamespace(classes=("salt",), submission_size=lambda sample: SUBMISSION))
    monkeypatch.setattr(scoring, "chained_masks", lambda cfg, run, chain, picks: np.zeros((len(picks),) + TRAIN + (1,), np.uint8))
    items = scoring.gallery(None, run, None, np.array([[0.5], [0.1], [0.9]]), 2)
    assert [g.id for g in items] == ["id1", "id0"]
    assert {g.image.shape[:2] for g in items} == {g.truth.shape[:2] for g in items} == {SUBMISSION}
    assert {g.pred.shape[:2] for g in items} == {SUBMISSION}
