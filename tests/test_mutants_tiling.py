"""segkit.tiling where mutation testing found it unchecked (`make mutate`): the exact window starts and blend
weights (worked by hand from the definitions in the docstrings), the config messages in full, the one-time
warning, canvases read lazily and released, and the errors a broken model or reader gets. Pure numpy."""
import io

import numpy as np
import pytest

from segkit import tiling as tl
from segkit.errors import ConfigError, DataError


class Out:
    def __init__(self, probs, gate=None, label=None):
        self.probs, self.gate_probs, self.label = probs, probs if gate is None else gate, label


def identity(batch=3):
    def run(source, indices):
        for start in range(0, len(indices), batch):
            yield Out(np.stack([np.asarray(source.images[i], np.float32) for i in indices[start:start + batch]]))
    return run


@pytest.mark.parametrize("size, tile, overlap, starts", [
    # stride floor(32 * 0.75) = 24; ceil((100 - 32) / 24) + 1 = 4 windows evenly over 0..68: 0, 22.67, 45.33, 68
    (100, 32, 0.25, [0, 23, 45, 68]),
    (33, 32, 0.0, [0, 1]),             # stride 32: ceil(1 / 32) + 1 = 2
    (64, 32, 0.0, [0, 32]),            # exactly two tiles, no overlap
    (65, 32, 0.0, [0, 16, 33]),        # ceil(33 / 32) + 1 = 3 over 0..33: 0, 16.5 (to even: 16), 33
    (32, 32, 0.5, [0]), (5, 32, 0.5, [0]),
    (10, 4, 0.99, [0, 1, 2, 3, 4, 5, 6]),  # stride floor(0.04) -> at least 1
    (40, 8, 0.5, [0, 4, 8, 12, 16, 20, 24, 28, 32]),  # stride 4 divides 32: ceil(32 / 4) + 1 = 9
])
def test_window_starts_worked_by_hand(size, tile, overlap, starts):
    got = tl.window_starts(size, tile, overlap)
    assert got.tolist() == starts and got.dtype == np.int64


def test_blend_weights_are_the_gaussian_of_sigma_tile_over_8():
    w = tl.blend_weights(8, "gaussian")  # centre 3.5, sigma 1
    expected = [np.exp(-0.5 * d * d) for d in (3.5, 2.5, 1.5, 0.5, 0.5, 1.5, 2.5, 3.5)]
    np.testing.assert_allclose(w, expected, rtol=1e-12)
    w16 = tl.blend_weights(16, "gaussian")  # centre 7.5, sigma 2
    np.testing.assert_allclose(w16[[0, 7, 15]], [np.exp(-0.5 * 3.75 ** 2), np.exp(-0.5 * 0.25 ** 2)] +
                               [np.exp(-0.5 * 3.75 ** 2)], rtol=1e-12)
    assert tl.blend_weights(1, "gaussian").tolist() == [1.0]  # one pixel: the peak
    assert tl.blend_weights(3, "uniform").tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ConfigError) as info:
        tl.blend_weights(8, "gauss")
    assert str(info.value) == ("predict.tiling.blend: unknown blend 'gauss'; did you mean 'gaussian'? "
                               "(known: gaussian, uniform)")


@pytest.mark.parametrize("tile, step, message", [
    (0, 1, "must be a positive integer (the window side in pixels), got 0"),
    (True, 1, "must be a positive integer (the window side in pixels), got True"),
    (64.0, 1, "must be a positive integer (the window side in pixels), got 64.0"),
    (100, 32, "must be an integer ≥ the models' size step 32 and a multiple of it, got 100; use 96"),
    (112, 32, "must be an integer ≥ the models' size step 32 and a multiple of it, got 112; use 128"),
    (16, 32, "must be an integer ≥ the models' size step 32 and a multiple of it, got 16; use 32"),
    (64.0, 32, "must be an integer ≥ the models' size step 32 and a multiple of it, got 64.0"),
    ("64", 32, "must be an integer ≥ the models' size step 32 and a multiple of it, got '64'"),
])
def test_tile_messages_in_full(tile, step, message):
    with pytest.raises(ConfigError) as info:
        tl.check_tiling(tile, 0.25, "gaussian", step)
    assert str(info.value) == f"predict.tiling.tile: {message}"


def test_overlap_and_blend_messages_and_the_limits():
    for tile, step in ((1, 1), (32, 32), (64, 32), (np.int64(64), 32)):
        tl.check_tiling(tile, 0.25, "gaussian", step)  # no error
    for overlap in (0, 0.0, 0.999):
        tl.check_tiling(64, overlap, "uniform")
    for overlap in (1, 1.0, -0.01, True, "0.5", None):
        with pytest.raises(ConfigError) as info:
            tl.check_tiling(64, overlap, "gaussian", where="tiling")
        assert str(info.value) == ("tiling.overlap: must be a fraction of the tile in [0, 1) (0.25: windows overlap "
                                   f"by a quarter), got {overlap!r}")
    with pytest.raises(ConfigError, match=r"^tiling\.blend: unknown blend 'none'"):
        tl.check_tiling(64, 0.5, "none", where="tiling")


def test_a_tile_larger_than_training_is_warned_once_per_size(monkeypatch):
    monkeypatch.setattr(tl, "_NOTED", set())
    out = io.StringIO()
    for trained in ((None, 64), (64, None), (64, 64), (64, 128)):
        tl.note_tile_size(64, trained, out)
    assert out.getvalue() == ""  # unknown size, or a tile ≤ both sides
    tl.note_tile_size(65, (64, 128), out)
    tl.note_tile_size(65, (64, 128), out)  # said already
    tl.note_tile_size(96, (128, 64), out)  # wider than the width
    assert out.getvalue() == (
        "segkit: warning: predict.tiling.tile 65 is larger than the 64x128 the models were trained at; windows are "
        "cut at the images' stored resolution, so use a tile ≤ the training size with models trained at that "
        "resolution\n"
        "segkit: warning: predict.tiling.tile 96 is larger than the 128x64 the models were trained at; windows are "
        "cut at the images' stored resolution, so use a tile ≤ the training size with models trained at that "
        "resolution\n")


def test_layout_of_a_canvas_and_its_normaliser():
    lay = tl.Layout((40, 20), 16, 0.5, "uniform")  # stride 8: ceil(24 / 8) + 1 = 4 windows down
    assert lay.ys.tolist() == [0, 8, 16, 24] and lay.xs.tolist() == [0, 4]  # ceil(4 / 8) + 1 = 2 over 0..4
    assert lay.n_windows == 8 and list(lay.windows())[:3] == [(0, 0), (0, 4), (8, 0)]
    assert all(type(y) is int and type(x) is int for y, x in lay.windows())
    assert lay.padded == (40, 20)
    # uniform weights: the normaliser counts the windows over each pixel
    assert lay.norm_x.tolist() == [1] * 4 + [2] * 12 + [1] * 4
    assert lay.norm_y.tolist() == [1] * 8 + [2] * 24 + [1] * 8
    w = lay.weight()
    assert w.shape == (16, 16, 1) and w.dtype == np.float32 and (w == 1).all()
    short = tl.Layout((10, 40), 16, 0.25, "gaussian")  # one window down a side shorter than the tile
    assert short.padded == (16, 40) and short.ys.tolist() == [0]
    assert short.wy.tolist() == [1.0] * 16 and short.wx[0] < 0.01  # weight 1 where there is one window only
    np.testing.assert_allclose(short.weight()[:, :, 0], np.outer(short.wy, short.wx), rtol=1e-6)
    for shape in ((0, 5), (5, 0)):
        with pytest.raises(ValueError, match=rf"^tiling: empty canvas \({shape[0]}, {shape[1]}\)$"):
            tl.Layout(shape, 16, 0.25)


def test_a_blender_checks_what_it_is_given():
    lay = tl.Layout((16, 16), 16, 0.25)
    with pytest.raises(ValueError, match=r"^tiling: 1 outputs for a blender of 2$"):
        tl.Blender(lay, 2).add(np.zeros((16, 16, 1), np.float32))
    with pytest.raises(ValueError, match=r"^tiling: a window output is \(16, 8\), expected 16x16$"):
        tl.Blender(lay).add(np.zeros((16, 8, 1), np.float32))
    (band,) = tl.Blender(lay).add(np.full((16, 16, 1), 0.25, np.float32))
    assert (band.y0, band.y1) == (0, 16) and (band.arrays[0] == 0.25).all()


def test_two_outputs_blended_apart_band_by_band():
    """A blender of two outputs (probabilities and a gate) keeps them apart; with uniform weights and half
    overlaps every pixel is the mean of the windows over it, worked out below by counting."""
    lay = tl.Layout((32, 16), 16, 0.5, "uniform")  # ys 0, 8, 16
    blender = tl.Blender(lay, 2)
    bands = []
    for k, (y, x) in enumerate(lay.windows()):
        bands += blender.add(np.full((16, 16, 1), float(k), np.float32), np.full((16, 16, 2), 10.0 + k, np.float32))
    assert [(b.y0, b.y1) for b in bands] == [(0, 8), (8, 16), (16, 32)]
    probs = np.concatenate([b.arrays[0] for b in bands])[:, 0, 0]
    gate = np.concatenate([b.arrays[1] for b in bands])
    # rows 0-7: window 0 only; 8-15: windows 0 and 1; 16-23: windows 1 and 2; 24-31: window 2 only
    assert probs.tolist() == [0.0] * 8 + [0.5] * 8 + [1.5] * 8 + [2.0] * 8
    assert gate.shape == (32, 16, 2) and gate[:, 3, 1].tolist() == (probs + 10).tolist()


def test_image_canvas_reads_once_checks_the_size_and_releases():
    calls = []
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)

    def read():
        calls.append(1)
        return image

    canvas = tl.ImageCanvas(5, (3, 4), read, name="a.png")
    assert canvas.shape == (3, 4) and canvas.parts == [tl.Part(5, 0, 0, 3, 4)] and canvas.name == "a.png"
    assert canvas.rows(1, 3).tolist() == image[1:3, :, None].tolist()  # a 2-D image gets its band axis
    assert canvas.rows(0, 1).shape == (1, 4, 1) and len(calls) == 1
    canvas.release()
    canvas.rows(0, 1)
    assert len(calls) == 2
    held = tl.ImageCanvas(0, image=image[..., None])
    held.release()  # an image given in memory stays
    assert held.rows(0, 3).shape == (3, 4, 1)
    with pytest.raises(DataError) as info:
        tl.ImageCanvas(0, (4, 4), read, name="b.png").rows(0, 1)
    assert str(info.value) == "b.png: is 3x4, its header said 4x4"
    with pytest.raises(DataError, match=r"^image: is 3x4, its header said 3x5$"):
        tl.ImageCanvas(0, (3, 5), read).rows(0, 1)
    for bad in ({}, {"read": read}, {"shape": (3, 4)}):
        with pytest.raises(ValueError, match=r"^tiling: an ImageCanvas needs an image, or its shape and a reader$"):
            tl.ImageCanvas(0, **bad)


def test_grid_canvas_cells_read_by_row_checked_and_dropped():
    reads = []

    def read(i):
        reads.append(i)
        return np.full((4, 4), i, np.uint8) if i != 99 else np.zeros((4, 3), np.uint8)

    canvas = tl.GridCanvas({(0, 1): 1, (2, 0): 2}, 3, 2, 4, read, "scene")  # row 1 has no cell
    assert canvas.shape == (12, 8)
    assert canvas.parts == [tl.Part(1, 0, 4, 4, 4), tl.Part(2, 8, 0, 4, 4)]
    rows = canvas.rows(2, 10)  # cell rows 0, 1 and 2
    assert rows.shape == (8, 8, 1) and rows.dtype == np.uint8
    assert rows[:2, :4].max() == 0 and (rows[:2, 4:] == 1).all()  # row 0: only cell (0, 1)
    assert rows[2:6].max() == 0  # row 1: zeros
    assert (rows[6:, :4] == 2).all() and rows[6:, 4:].max() == 0
    assert sorted(canvas._held) == [0, 1, 2]
    canvas.rows(8, 12)
    assert sorted(canvas._held) == [2]  # rows above the window are dropped
    canvas.release()
    assert canvas._held == {}
    bad = tl.GridCanvas({(0, 0): 1, (1, 1): 99}, 2, 2, 4, read, "scene")
    with pytest.raises(DataError) as info:
        bad.rows(4, 8)
    assert str(info.value) == "scene: the cell at row 2, col 2 is 4x3, expected 4x4 like the others"


def test_windows_of_several_canvases_release_each_once_passed():
    released = []

    class Tracked(tl.ImageCanvas):
        def release(self):
            released.append(self.parts[0].index)

    a = Tracked(0, image=np.ones((20, 20, 1), np.float32))
    b = Tracked(1, image=np.full((8, 8, 1), 2, np.float32))  # shorter than a tile: padded to 16
    parts = list(tl.predict_canvases([a, b], 16, 0.5, "gaussian", identity()))
    assert [p.index for p in parts] == [0, 1] and parts[1].probs.shape == (8, 8, 1)
    np.testing.assert_allclose(parts[0].probs, 1, rtol=1e-6)
    np.testing.assert_allclose(parts[1].probs, 2, rtol=1e-6)
    assert released == [0, 1]  # a when b's first window is read, b when the loop closes


def test_short_sides_are_padded_by_reflection_or_edge():
    band = np.arange(6, dtype=np.float32).reshape(2, 3, 1)
    padded = tl._pad_to(band, 4)
    assert padded[:, :, 0].tolist() == [[0, 1, 2, 1], [3, 4, 5, 4], [0, 1, 2, 1], [3, 4, 5, 4]]
    one_row = np.array([[[1.0], [2.0]]], np.float32)  # 1 x 2: reflection needs 2 pixels, so the edge repeats
    assert tl._pad_to(one_row, 3)[:, :, 0].tolist() == [[1, 2, 2], [1, 2, 2], [1, 2, 2]]
    assert tl._pad_to(band, 2) is not None and tl._pad_to(band, 2).shape == (2, 3, 1)


def test_gate_and_labels_follow_each_part():
    """Two outputs per window (gate = 2 × probs) and head labels: each part gets the largest label over the
    windows touching it, none for a part no labelled window touches."""
    def run(source, indices):
        for i in indices:
            w = np.asarray(source.images[i], np.float32)
            yield Out(w[None], gate=2 * w[None], label=np.array([[float(w.max()), 1.0 - float(w.max())]]))

    scene = np.zeros((16, 32, 1), np.float32)
    scene[:, 16:] = 0.5
    canvas = tl.GridCanvas({(0, 0): 0, (0, 1): 1}, 1, 2, 16, lambda i: scene[:, 16 * i:16 * (i + 1)], "s")
    # windows at x 0, 8, 16 (half overlaps); the middle one sees both cells and touches both parts
    parts = list(tl.predict_canvases([canvas], 16, 0.5, "gaussian", run))
    assert [p.index for p in parts] == [0, 1]
    assert parts[0].label.tolist() == [0.5, 1.0] and parts[1].label.tolist() == [0.5, 0.5]
    np.testing.assert_array_equal(parts[1].gate_probs, 2 * parts[1].probs)
    assert parts[0].gate_probs is not parts[0].probs
    plain = list(tl.predict_canvases([canvas], 16, 0.0, "gaussian", identity()))
    assert plain[0].label is None and plain[1].gate_probs is plain[1].probs


def test_the_warning_is_flushed_at_once(monkeypatch):
    monkeypatch.setattr(tl, "_NOTED", set())

    class Stream:
        def __init__(self):
            self.text, self.flushes = "", 0

        def write(self, s):
            self.text += s

        def flush(self):
            self.flushes += 1

    stream = Stream()
    tl.note_tile_size(128, (64, 64), stream)
    assert stream.text.startswith("segkit: warning: predict.tiling.tile 128 ") and stream.flushes >= 1


def test_grid_rows_across_cell_rows_read_each_cell_row_once():
    reads = []
    scene = np.arange(12 * 4, dtype=np.float32).reshape(12, 4)

    def read(i):
        reads.append(i)
        return scene[4 * i:4 * i + 4]

    canvas = tl.GridCanvas({(0, 0): 0, (1, 0): 1, (2, 0): 2}, 3, 1, 4, read, "s")
    np.testing.assert_array_equal(canvas.rows(0, 5)[..., 0], scene[0:5])  # row 4 is the first of cell row 1
    np.testing.assert_array_equal(canvas.rows(3, 9)[..., 0], scene[3:9])
    np.testing.assert_array_equal(canvas.rows(8, 10)[..., 0], scene[8:10])  # inside cell row 2 only
    np.testing.assert_array_equal(canvas.rows(9, 12)[..., 0], scene[9:12])
    assert reads == [0, 1, 2]  # every cell row read once, then held until the windows pass it


def test_a_wrong_sized_cell_read_for_an_empty_row_is_named():
    def read(i):
        return np.zeros((4, 3), np.uint8)

    canvas = tl.GridCanvas({(1, 0): 7}, 2, 1, 4, read, "scene")  # row 0 has no cell: shaped like cell (1, 0)
    with pytest.raises(DataError) as info:
        canvas.rows(0, 4)
    assert str(info.value) == "scene: the cell at row 2, col 1 is 4x3, expected 4x4 like the others"


def test_blend_windows_of_two_outputs_and_the_default_step():
    lay = tl.Layout((4, 4), 4, 0.0)
    (band,) = tl.blend_windows(lay, [(np.ones((4, 4, 1), np.float32), np.full((4, 4, 2), 3.0, np.float32))], n=2)
    assert band.arrays[0].shape == (4, 4, 1) and (band.arrays[1] == 3.0).all()
    tl.check_tiling(33, 0.25, "gaussian")  # the default step 1: any positive tile
    with pytest.raises(ConfigError) as info:
        tl.check_tiling(5, 0.25, "gaussian", 2)
    assert str(info.value) == ("predict.tiling.tile: must be an integer ≥ the models' size step 2 and a multiple of it, "
                               "got 5; use 4")  # round(2.5) is 2: 2 x 2


def test_a_uniform_blend_through_the_whole_loop_is_the_mean_of_the_windows():
    def window_index(source, indices):
        for i in indices:
            yield Out(np.full((1, 4, 4, 1), float(i), np.float32))

    canvas = tl.ImageCanvas(0, image=np.zeros((4, 6, 1), np.float32))
    # windows at x 0 and 2 (stride 2): columns 0-1 see window 0, 2-3 both, 4-5 window 1
    (part,) = tl.predict_canvases([canvas], 4, 0.5, "uniform", window_index)
    assert part.probs[0, :, 0].tolist() == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    assert part.probs.dtype == np.float32


def test_parts_come_out_in_the_order_their_rows_are_final_whatever_their_index():
    scene = np.arange(8 * 4, dtype=np.float32).reshape(8, 4)
    cells = {(0, 0): 5, (1, 0): 2}  # the upper cell has the larger index
    canvas = tl.GridCanvas(cells, 2, 1, 4, lambda i: scene[:4] if i == 5 else scene[4:], "s")
    parts = list(tl.predict_canvases([canvas], 2, 0.0, "gaussian", identity()))  # 2-px tiles: 2 bands per cell
    assert [p.index for p in parts] == [5, 2]
    np.testing.assert_allclose(parts[0].probs[..., 0], scene[:4], rtol=1e-6)
    np.testing.assert_allclose(parts[1].probs[..., 0], scene[4:], rtol=1e-6)


def test_a_reader_giving_bands_and_a_lone_canvas_released_at_the_end():
    released = []

    class Tracked(tl.ImageCanvas):
        def release(self):
            released.append(self.parts[0].index)
            super().release()

    image = np.ones((5, 6, 2), np.float32)
    canvas = Tracked(3, (5, 6), lambda: image)
    assert canvas.rows(0, 5).shape == (5, 6, 2)
    (part,) = tl.predict_canvases([canvas], 4, 0.5, "gaussian", identity())
    assert part.probs.shape == (5, 6, 2) and released == [3]


def test_gaussian_blend_runs_down_the_rows_too():
    lay = tl.Layout((112, 64), 64, 0.5, "gaussian")  # ys 0, 24, 48; one window across
    assert lay.ys.tolist() == [0, 24, 48]
    outs = [np.full((64, 64, 1), float(y), np.float32) for y, _ in lay.windows()]
    column = np.concatenate([b.arrays[0] for b in tl.blend_windows(lay, outs)])[:, 0, 0]
    assert column[0] == 0 and column[-1] == 48 and (np.diff(column) >= -1e-4).all()
    assert np.abs(np.diff(column)).max() < 6  # a uniform blend would jump by 12 where a window starts


def test_a_canvas_one_pixel_wide():
    image = np.arange(5, dtype=np.float32).reshape(5, 1, 1)
    (part,) = tl.predict_canvases([tl.ImageCanvas(0, image=image)], 4, 0.25, "gaussian", identity())
    np.testing.assert_allclose(part.probs, image, atol=1e-6)


@pytest.mark.parametrize("values", [(0.1, 0.2, 0.3, 0.4), (0.4, 0.3, 0.2, 0.1)])
def test_a_window_that_only_touches_a_part_edge_does_not_label_it(values):
    """2 x 2 cells of 4 px and 4-px windows without overlap: each window is exactly one cell, so each part's
    label is its own cell's value, not a neighbour's (a window ending where a part begins does not touch it)."""
    def run(source, indices):
        for i in indices:
            w = np.asarray(source.images[i], np.float32)
            yield Out(w[None], label=np.array([[float(w.max())]]))

    cells = {(0, 0): 0, (0, 1): 1, (1, 0): 2, (1, 1): 3}
    canvas = tl.GridCanvas(cells, 2, 2, 4, lambda i: np.full((4, 4), values[i], np.float32), "s")
    parts = {p.index: p for p in tl.predict_canvases([canvas], 4, 0.0, "gaussian", run)}
    assert {i: float(p.label[0]) for i, p in parts.items()} == {i: pytest.approx(v) for i, v in enumerate(values)}
