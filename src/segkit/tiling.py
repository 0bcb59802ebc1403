"""Tiled inference: an image (or a 38-Cloud scene stitched from its patches) larger than the model's input is
predicted with overlapping square windows whose probabilities are blended with a weight that falls off toward
the window edges, then cut back into the samples the submission is made of.

Pure numpy. The model call is injected (`segkit.predict.predict_tiled` passes `predict_ensemble`, so TTA, folds,
models, weights and scales apply per window). Windows are visited row band by row band and the accumulators
(float32) hold one band of windows: memory is bounded by a band of tiles and the parts of the output still open,
not by the whole canvas. The blend weight of a window is separable (w(y) · w(x)), so the normaliser of every
pixel is the outer product of two 1-D sums and needs no accumulator of its own.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from segkit.errors import ConfigError, DataError, unknown_name

BLENDS = ("gaussian", "uniform")
GAUSSIAN_SIGMA = 1 / 8  # of the tile (MONAI's sliding-window default sigma_scale 0.125)
KEY = "predict.tiling"


# --- layout and weights --------------------------------------------------------------------------------------

def check_tiling(tile: int, overlap: float, blend: str, step: int = 1, where: str = KEY) -> None:
    """ConfigError naming the key when `tile` is not a multiple of (and ≥) the models' size step `step`,
    `overlap` is outside [0, 1) or `blend` is not one of BLENDS."""
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < max(1, step) or tile % step:
        near = max(step, int(round(tile / step)) * step) if isinstance(tile, (int, float)) and step > 1 else None
        hint = f"; use {near}" if near and near != tile else ""
        want = (f"an integer ≥ the models' size step {step} and a multiple of it" if step > 1
                else "a positive integer (the window side in pixels)")
        raise ConfigError(f"{where}.tile: must be {want}, got {tile!r}{hint}")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0 <= overlap < 1:
        raise ConfigError(f"{where}.overlap: must be a fraction of the tile in [0, 1) (0.25: windows overlap by a "
                          f"quarter), got {overlap!r}")
    if blend not in BLENDS:
        raise unknown_name(f"{where}.blend", "blend", str(blend), BLENDS)


_NOTED: set[tuple[int, int, int]] = set()  # (tile, H, W) said already in this process


def note_tile_size(tile: int, trained: tuple[int | None, int | None], stream=None) -> None:
    """Warn once (stderr) when the tile is larger than the size the models were trained at: each window then shows
    them more context, at the stored resolution, than any training image did (README: Tiled inference)."""
    import sys

    h, w = trained
    if h is None or w is None or (tile <= h and tile <= w) or (tile, h, w) in _NOTED:
        return
    _NOTED.add((tile, h, w))
    print(f"segkit: warning: {KEY}.tile {tile} is larger than the {h}x{w} the models were trained at; windows are "
          f"cut at the images' stored resolution, so use a tile ≤ the training size with models trained at that "
          "resolution", file=stream or sys.stderr, flush=True)


def window_starts(size: int, tile: int, overlap: float) -> np.ndarray:
    """First pixel of each window along one axis of `size` pixels: evenly spaced from 0 to size - tile, with
    neighbours overlapping by at least `overlap` of the tile, so the last window ends on the last pixel (sizes
    that are not a multiple of the stride included). One window at 0 when the axis is no longer than a tile."""
    if size <= tile:
        return np.zeros(1, np.int64)
    stride = max(1, int(math.floor(tile * (1 - overlap))))
    n = math.ceil((size - tile) / stride) + 1
    return np.round(np.linspace(0, size - tile, n)).astype(np.int64)


def blend_weights(tile: int, blend: str) -> np.ndarray:
    """1-D blend weight (float64, peak 1) across a window: a Gaussian of sigma tile/8 centred on the window
    ("gaussian"), or ones ("uniform"). A window's 2-D weight is its outer product with itself."""
    if blend not in BLENDS:
        raise unknown_name(f"{KEY}.blend", "blend", str(blend), BLENDS)
    if blend == "uniform":
        return np.ones(tile)
    centre = (tile - 1) / 2
    sigma = max(tile * GAUSSIAN_SIGMA, 1e-6)
    return np.exp(-0.5 * ((np.arange(tile) - centre) / sigma) ** 2)


class Layout:
    """The windows over a (height, width) canvas: `ys` × `xs` starts of `tile`-pixel windows (row-major). A side
    shorter than the tile is padded (by reflection) to one tile, and the output cropped back."""

    def __init__(self, shape: tuple[int, int], tile: int, overlap: float, blend: str = "gaussian") -> None:
        self.height, self.width = int(shape[0]), int(shape[1])
        if self.height < 1 or self.width < 1:
            raise ValueError(f"tiling: empty canvas {shape}")
        self.tile = int(tile)
        self.ys = window_starts(self.height, self.tile, overlap)
        self.xs = window_starts(self.width, self.tile, overlap)
        w = blend_weights(self.tile, blend)
        # one window on an axis: weight 1 there, so a canvas of exactly one tile is the plain prediction
        self.wy = w if len(self.ys) > 1 else np.ones(self.tile)
        self.wx = w if len(self.xs) > 1 else np.ones(self.tile)
        self.padded = (max(self.height, self.tile), max(self.width, self.tile))
        self.norm_y = _coverage(self.wy, self.ys, self.padded[0])
        self.norm_x = _coverage(self.wx, self.xs, self.padded[1])

    @property
    def n_windows(self) -> int:
        return len(self.ys) * len(self.xs)

    def windows(self) -> Iterator[tuple[int, int]]:
        """(y, x) of each window's top-left pixel, band by band (row-major)."""
        for y in self.ys:
            for x in self.xs:
                yield int(y), int(x)

    def weight(self) -> np.ndarray:
        """The 2-D blend weight of a window, float32 (tile, tile, 1)."""
        return np.outer(self.wy, self.wx).astype(np.float32)[..., None]


def _coverage(w: np.ndarray, starts: np.ndarray, size: int) -> np.ndarray:
    total = np.zeros(size)
    for s in starts:
        total[s:s + len(w)] += w
    return total


# --- blending ------------------------------------------------------------------------------------------------

class Band(NamedTuple):
    """Final blended rows [y0, y1) of a canvas: one float32 (y1 - y0, width, C) array per blended output."""

    y0: int
    y1: int
    arrays: tuple[np.ndarray, ...]


class Blender:
    """Accumulates the windows of one canvas, band by band, into `n` blended outputs (e.g. the ensemble's
    probabilities and its gate's), and hands back each run of rows as soon as no later window touches it."""

    def __init__(self, layout: Layout, n: int = 1) -> None:
        self.layout = layout
        self.n = n
        self._w = layout.weight()
        self._acc: list[np.ndarray] | None = None
        self._row = 0  # the window row (band) being filled
        self._col = 0

    def add(self, *windows: np.ndarray) -> list[Band]:
        """Add the next window's outputs (each (tile, tile, C)), in `Layout.windows` order; returns the bands it
        completes (none until the last window of a band row)."""
        lay = self.layout
        t = lay.tile
        if len(windows) != self.n:
            raise ValueError(f"tiling: {len(windows)} outputs for a blender of {self.n}")
        if self._acc is None:
            self._acc = [np.zeros((t, lay.padded[1], w.shape[-1]), np.float32) for w in windows]
        x = int(lay.xs[self._col])
        for acc, win in zip(self._acc, windows):
            if win.shape[:2] != (t, t):
                raise ValueError(f"tiling: a window output is {win.shape[:2]}, expected {t}x{t}")
            acc[:, x:x + t] += win * self._w
        self._col += 1
        if self._col < len(lay.xs):
            return []
        self._col = 0
        return self._finish_row()

    def _finish_row(self) -> list[Band]:
        lay = self.layout
        r = self._row
        self._row += 1
        top = int(lay.ys[r])
        last = self._row == len(lay.ys)
        bottom = lay.padded[0] if last else int(lay.ys[self._row])  # rows [top, bottom) are final
        d = bottom - top
        y1 = min(bottom, lay.height)
        out: list[Band] = []
        if y1 > top:
            norm = np.outer(lay.norm_y[top:y1].astype(np.float32), lay.norm_x[:lay.width].astype(np.float32))[..., None]
            assert self._acc is not None
            out.append(Band(top, y1, tuple(acc[:y1 - top, :lay.width] / norm for acc in self._acc)))
        if not last:
            assert self._acc is not None
            for acc in self._acc:
                acc[:lay.tile - d] = acc[d:]  # numpy copies overlapping ranges safely
                acc[lay.tile - d:] = 0
        return out


def blend_windows(layout: Layout, windows: Iterable[np.ndarray | tuple[np.ndarray, ...]], n: int = 1
                  ) -> Iterator[Band]:
    """The blended canvas as final row bands from per-window outputs given in `Layout.windows` order (an array,
    or a tuple of `n` arrays, per window)."""
    blender = Blender(layout, n)
    for win in windows:
        yield from blender.add(*(win if isinstance(win, tuple) else (win,)))


# --- canvases: what is predicted whole, and which samples lie on it ---------------------------------------

class Part(NamedTuple):
    """Sample `index` (the caller's numbering) occupies rows [y, y + h) and columns [x, x + w) of its canvas."""

    index: int
    y: int
    x: int
    h: int
    w: int


class Canvas:
    """An image predicted whole by tiled inference: its (H, W), the parts (samples) it is cut into afterwards,
    and its raw pixels by rows. Subclasses implement `rows`; `release` drops what they hold."""

    def __init__(self, shape: tuple[int, int], parts: Sequence[Part], name: str = "") -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.parts = list(parts)
        self.name = name

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """Raw pixels of rows [y0, y1), (y1 - y0, W, bands) in the stored dtype."""
        raise NotImplementedError

    def release(self) -> None:
        """Forget any pixels held (called once every window of the canvas has been read)."""


class ImageCanvas(Canvas):
    """One sample's image: in memory (`image`) or read on first use by `read()` and held until released."""

    def __init__(self, index: int, shape: tuple[int, int] | None = None, read: Callable[[], np.ndarray] | None = None,
                 image: np.ndarray | None = None, name: str = "") -> None:
        if image is None and (read is None or shape is None):
            raise ValueError("tiling: an ImageCanvas needs an image, or its shape and a reader")
        shape = tuple(image.shape[:2]) if image is not None else shape
        super().__init__(shape, [Part(index, 0, 0, shape[0], shape[1])], name)  # type: ignore[arg-type]
        self._read, self._image = read, image

    def rows(self, y0: int, y1: int) -> np.ndarray:
        if self._image is None:
            assert self._read is not None
            image = np.asarray(self._read())
            if tuple(image.shape[:2]) != self.shape:
                raise DataError(f"{self.name or 'image'}: is {image.shape[0]}x{image.shape[1]}, its header said "
                                f"{self.shape[0]}x{self.shape[1]}")
            self._image = image[..., None] if image.ndim == 2 else image
        return self._image[y0:y1]

    def release(self) -> None:
        if self._read is not None:
            self._image = None


class GridCanvas(Canvas):
    """Equal square cells (e.g. 38-Cloud's 384-px patches) placed on a grid: cell (row, col), 0-based, covers
    rows row·size.. and columns col·size..; a position without a cell reads as zeros. Cells are read by
    `read(index)` one cell row at a time and dropped once the windows have passed them."""

    def __init__(self, cells: dict[tuple[int, int], int], n_rows: int, n_cols: int, size: int,
                 read: Callable[[int], np.ndarray], name: str = "") -> None:
        parts = [Part(i, r * size, c * size, size, size) for (r, c), i in sorted(cells.items())]
        super().__init__((n_rows * size, n_cols * size), parts, name)
        self.cells, self.n_cols, self.size, self._read = dict(cells), n_cols, size, read
        self._held: dict[int, np.ndarray] = {}  # cell row -> (size, W, bands)

    def _cell(self, index: int, r: int, c: int) -> np.ndarray:
        cell = np.asarray(self._read(index))
        cell = cell[..., None] if cell.ndim == 2 else cell
        if cell.shape[:2] != (self.size, self.size):
            raise DataError(f"{self.name}: the cell at row {r + 1}, col {c + 1} is {cell.shape[0]}x{cell.shape[1]}, "
                            f"expected {self.size}x{self.size} like the others")
        return cell

    def _cell_row(self, r: int) -> np.ndarray:
        if r not in self._held:
            s = self.size
            found = {c: self.cells[(r, c)] for c in range(self.n_cols) if (r, c) in self.cells}
            if not found:  # a row without cells: zeros shaped like any cell
                (rr, cc), index = next(iter(self.cells.items()))
                like = self._cell(index, rr, cc)
                self._held[r] = np.zeros((s, self.n_cols * s, like.shape[2]), like.dtype)
                return self._held[r]
            band = None
            for c, index in found.items():
                cell = self._cell(index, r, c)
                if band is None:
                    band = np.zeros((s, self.n_cols * s, cell.shape[2]), cell.dtype)
                band[:, c * s:(c + 1) * s] = cell
            self._held[r] = band
        return self._held[r]

    def rows(self, y0: int, y1: int) -> np.ndarray:
        s = self.size
        first, last = y0 // s, (y1 - 1) // s
        for r in [r for r in self._held if r < first]:
            del self._held[r]
        bands = [self._cell_row(r) for r in range(first, last + 1)]
        joined = bands[0] if len(bands) == 1 else np.concatenate(bands)
        return joined[y0 - first * s: y1 - first * s]

    def release(self) -> None:
        self._held.clear()


class _Windows:
    """The windows of a sequence of canvases as one flat, lazily read sequence (`images[i]` is window i), what
    `predict_ensemble` reads a cache from; windows must be asked for in order (as it does, batch by batch)."""

    def __init__(self, canvases: Sequence[Canvas], layouts: Sequence[Layout]) -> None:
        self.canvases, self.layouts = canvases, layouts
        self.order = [(k, y, x) for k, lay in enumerate(layouts) for y, x in lay.windows()]
        self._band: tuple[int, int, np.ndarray] | None = None  # canvas, y, its padded band of rows
        self._current = -1

    @property
    def images(self) -> "_Windows":
        return self

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> np.ndarray:
        k, y, x = self.order[int(i)]
        if k != self._current:
            if 0 <= self._current < len(self.canvases):
                self.canvases[self._current].release()
            self._current, self._band = k, None
        lay, t = self.layouts[k], self.layouts[k].tile
        if self._band is None or self._band[:2] != (k, y):
            band = self.canvases[k].rows(y, min(y + t, lay.height))
            if band.shape[0] < t or band.shape[1] < t:  # a canvas side shorter than a tile
                band = _pad_to(band, t)
            self._band = (k, y, band)
        return self._band[2][:, x:x + t]

    def close(self) -> None:
        if 0 <= self._current < len(self.canvases):
            self.canvases[self._current].release()
        self._band = None


def _pad_to(band: np.ndarray, tile: int) -> np.ndarray:
    """Rows and columns padded at the bottom/right to at least `tile`, by reflection (edge for 1-pixel sides)."""
    ph, pw = max(0, tile - band.shape[0]), max(0, tile - band.shape[1])
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (band.ndim - 2)
    mode = "reflect" if min(band.shape[:2]) > 1 else "edge"
    return np.pad(band, pad, mode=mode)


# --- the whole loop ------------------------------------------------------------------------------------------

class PartPrediction(NamedTuple):
    """The blended output of one part (sample): `probs` float32 (h, w, C); `gate_probs` the same array as
    `probs` unless the ensemble's gate differs; `label` (C,) the largest head output over the windows that
    touch the part (a class is present when any window sees it), or None without heads."""

    index: int
    probs: np.ndarray
    gate_probs: np.ndarray
    label: np.ndarray | None


# (window source with `.images`, window indices) -> batches with .probs, .gate_probs, .label (EnsembleBatch)
RunWindows = Callable[[object, np.ndarray], Iterator]


def predict_canvases(canvases: Sequence[Canvas], tile: int, overlap: float, blend: str,
                     run: RunWindows) -> Iterator[PartPrediction]:
    """Tiled inference over `canvases`: every window of every canvas goes through one `run(source, indices)`
    call (the ensemble, batch by batch); the windows' outputs are blended band by band and each part of a
    canvas is yielded as soon as its rows are final (canvas by canvas, parts in row order)."""
    check_tiling(tile, overlap, blend)
    layouts = [Layout(c.shape, tile, overlap, blend) for c in canvases]
    source = _Windows(canvases, layouts)
    outputs = _per_window(run(source, np.arange(len(source))))
    try:
        for canvas, lay in zip(canvases, layouts):
            yield from _one_canvas(canvas, lay, outputs)
    finally:
        source.close()


def _per_window(batches: Iterable) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
    for batch in batches:
        same = batch.gate_probs is batch.probs
        for b in range(len(batch.probs)):
            yield (batch.probs[b], None if same else batch.gate_probs[b],
                   None if batch.label is None else batch.label[b])


def _one_canvas(canvas: Canvas, lay: Layout, outputs: Iterator) -> Iterator[PartPrediction]:
    cutter = _Cutter(canvas.parts)
    blender: Blender | None = None
    for y, x in lay.windows():
        probs, gate, label = next(outputs)
        if blender is None:
            blender = Blender(lay, 1 if gate is None else 2)
        cutter.label(y, x, lay.tile, label)
        for band in blender.add(*((probs,) if gate is None else (probs, gate))):
            yield from cutter.add(band)


class _Cutter:
    """Copies final bands into the parts they overlap; yields a part once its last row is in."""

    def __init__(self, parts: Sequence[Part]) -> None:
        self.parts = sorted(parts, key=lambda p: (p.y + p.h, p.y, p.x))
        self._box = np.array([(p.y, p.x, p.y + p.h, p.x + p.w) for p in self.parts]).reshape(-1, 4)
        self._labels: list[np.ndarray | None] = [None] * len(self.parts)
        self._open: dict[int, list[np.ndarray]] = {}
        self._next = 0  # parts before it are yielded

    def label(self, y: int, x: int, t: int, label: np.ndarray | None) -> None:
        if label is None or not len(self.parts):
            return
        b = self._box
        hit = np.flatnonzero((b[:, 0] < y + t) & (b[:, 2] > y) & (b[:, 1] < x + t) & (b[:, 3] > x))
        for j in hit:
            old = self._labels[j]
            self._labels[j] = np.array(label, np.float32) if old is None else np.maximum(old, label)

    def add(self, band: Band) -> Iterator[PartPrediction]:
        for j in range(self._next, len(self.parts)):
            p = self.parts[j]
            if p.y >= band.y1:
                continue
            lo, hi = max(p.y, band.y0), min(p.y + p.h, band.y1)
            if lo >= hi:
                continue
            if j not in self._open:
                self._open[j] = [np.empty((p.h, p.w, a.shape[-1]), np.float32) for a in band.arrays]
            for out, a in zip(self._open[j], band.arrays):
                out[lo - p.y:hi - p.y] = a[lo - band.y0:hi - band.y0, p.x:p.x + p.w]
        while self._next < len(self.parts) and self.parts[self._next].y + self.parts[self._next].h <= band.y1:
            p = self.parts[self._next]
            arrays = self._open.pop(self._next)
            label = self._labels[self._next]
            self._next += 1
            yield PartPrediction(p.index, arrays[0], arrays[1] if len(arrays) > 1 else arrays[0], label)
