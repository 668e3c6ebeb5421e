"""Chunk geometry: where each chunk lies in the scene, with its halo, and on the model's grid.

A :class:`ChunkGrid` is built once per ``predict`` from the input's chunks (odc-stac's
``GeoboxTiles`` is the model) and travels in every chunk task. It answers "where is chunk
(i, j), its halo, its window on the model grid" for both of the engine's paths; along each
axis a :class:`ChunkAxis` does the arithmetic.

Input pixels and model pixels: ``zoom`` is the size of an input pixel in model pixels (input
resolution / model resolution). Every conversion of a pixel edge from the input grid to the
model grid goes through :func:`model_floor` or :func:`model_ceil`: integer division where a
model pixel is a whole number of input pixels (:func:`whole_factor`), else the product with a
1e-9 tolerance.

:class:`GridWindow` holds values summed on a window of a grid, which add up where windows
overlap: a chunk's pixels summed per model pixel, and the blended probabilities of tiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ChunkAxis",
    "ChunkGrid",
    "GridWindow",
    "Span",
    "Window",
    "model_ceil",
    "model_floor",
    "origin_shape",
    "overlap_slices",
    "resampling_margin",
    "to_model",
    "whole_factor",
]

Span = tuple[int, int]
"""``[start, stop)`` along one axis."""
Window = tuple[Span, Span]
"""(rows, columns) spans."""

_TOLERANCE = 1e-9


def whole_factor(zoom: float) -> int | None:
    """Input pixels per model pixel when that is a whole number (1, 2, 3, ...), else ``None``."""
    factor = round(1 / zoom)
    return factor if factor >= 1 and math.isclose(factor * zoom, 1.0) else None


def model_floor(pixels: int, zoom: float) -> int:
    """The model pixel edge at or before input pixel edge ``pixels``."""
    factor = whole_factor(zoom)
    if factor is not None:
        return pixels // factor
    return math.floor(pixels * zoom + _TOLERANCE)


def model_ceil(pixels: int, zoom: float) -> int:
    """The model pixel edge at or after input pixel edge ``pixels``."""
    factor = whole_factor(zoom)
    if factor is not None:
        return -(-pixels // factor)
    return math.ceil(pixels * zoom - _TOLERANCE)


def to_model(span: Span, zoom: float, *, margin: int = 0) -> Span:
    """The model pixels that cover the input pixels ``span``, and ``margin`` more each side."""
    return model_floor(span[0], zoom) - margin, model_ceil(span[1], zoom) + margin


def resampling_margin(zoom: float) -> int:
    """Model pixels an output needs beyond its core for the resampling back to the input grid
    (none when the grids are the same)."""
    return 0 if whole_factor(zoom) == 1 else 1


def _clip(span: Span, low: int, high: int) -> Span:
    return max(low, span[0]), min(high, span[1])


def _shifted(span: Span, by: int) -> Span:
    return span[0] - by, span[1] - by


@dataclass(frozen=True)
class ChunkAxis:
    """The chunks along one axis of the scene (input pixels ``[starts[i], stops[i])``), the
    ``halo`` each borrows from its neighbours, whether the scene's edges are padded by it too
    (``halo_at_edges``: any boundary but ``"none"``) and the ``zoom`` to the model grid."""

    starts: tuple[int, ...]
    stops: tuple[int, ...]
    halo: int = 0
    halo_at_edges: bool = True
    zoom: float = 1.0

    @classmethod
    def from_sizes(cls, sizes: Sequence[int], *, halo: int = 0, halo_at_edges: bool = True,
                   zoom: float = 1.0) -> ChunkAxis:
        """The axis of Dask chunk ``sizes``."""
        stops = tuple(int(stop) for stop in np.cumsum(sizes))
        return cls((0, *stops[:-1]), stops, halo, halo_at_edges, zoom)

    @property
    def length(self) -> int:
        """The scene's length in input pixels."""
        return self.stops[-1]

    @property
    def pad(self) -> int:
        """Input pixels added at each edge of the scene (the halo, or 0 with no boundary)."""
        return self.halo if self.halo_at_edges else 0

    @property
    def model_length(self) -> int:
        """The scene's length in model pixels (a last, partial model pixel included)."""
        return model_ceil(self.length, self.zoom)

    def chunk(self, index: int) -> Span:
        """Input pixels of chunk ``index`` (without its halo)."""
        return self.starts[index], self.stops[index]

    def block_start(self, index: int) -> int:
        """Scene pixel of the first pixel of chunk ``index`` with its halo."""
        has_halo = index > 0 or self.halo_at_edges
        return self.starts[index] - (self.halo if has_halo else 0)

    def core(self, index: int) -> Span:
        """Chunk ``index`` itself in the pixels of its block (chunk with halo)."""
        return _shifted(self.chunk(index), self.block_start(index))

    def core_in(self, index: int, model_start: int) -> Span:
        """Chunk ``index`` in the input pixels of a model-grid window from ``model_start``
        (whole factors)."""
        factor = whole_factor(self.zoom)
        assert factor is not None, "a model window in input pixels needs a whole factor"
        return _shifted(self.chunk(index), model_start * factor)

    def inside(self, start: int, size: int) -> slice:
        """The part of ``size`` pixels from scene pixel ``start`` (of the scene padded at its
        edges) that lies inside the scene."""
        return slice(max(0, -start), max(0, min(size, self.length - start)))

    # The shared-tile path (:mod:`xcloud.engine.tile_once`): whole factors only.

    @property
    def margin(self) -> int:
        """See :func:`resampling_margin`."""
        return resampling_margin(self.zoom)

    @property
    def model_extent(self) -> Span:
        """The model pixels wholly inside the padded scene (the scene and its edge padding)."""
        return model_ceil(-self.pad, self.zoom), model_floor(self.length + self.pad, self.zoom)

    def owned(self, index: int, tile: int) -> Span:
        """Model-grid stretch in which chunk ``index`` owns the starts of the lattice's tiles
        (of ``tile`` model pixels). The first and last chunks own the tiles that reach into
        the scene past its edges."""
        low = model_ceil(self.starts[index], self.zoom) + self.margin if index else 1 - tile
        if index == len(self.stops) - 1:
            return low, self.model_length
        return low, model_ceil(self.stops[index], self.zoom) + self.margin

    def tiles_window(self, index: int, tile: int) -> Span:
        """Model-grid stretch that the tiles chunk ``index`` owns cover, inside the padded
        scene (tiles reaching past it see it mirrored)."""
        low, high = self.owned(index, tile)
        return _clip((low, high + tile), *self.model_extent)

    def output_window(self, index: int) -> Span:
        """Model-grid stretch the output of chunk ``index`` needs: its core, widened by the
        resampling margin (inside the scene: at its edges the resampling repeats the edge)."""
        return _clip(to_model(self.chunk(index), self.zoom, margin=self.margin),
                     0, self.model_length)


@dataclass(frozen=True)
class ChunkGrid:
    """The chunks of a scene along its rows and columns; answers for chunk (row, column)."""

    rows: ChunkAxis
    columns: ChunkAxis

    @classmethod
    def from_chunks(cls, chunks: Sequence[Sequence[int]], *, halo: tuple[int, int] = (0, 0),
                    halo_at_edges: bool = True, zoom: float = 1.0) -> ChunkGrid:
        """The grid of Dask's (rows, columns) chunk sizes, ``halo`` input pixels per axis."""
        rows, columns = (ChunkAxis.from_sizes(sizes, halo=depth, halo_at_edges=halo_at_edges,
                                              zoom=zoom)
                         for sizes, depth in zip(chunks, halo, strict=True))
        return cls(rows, columns)

    @property
    def axes(self) -> tuple[ChunkAxis, ChunkAxis]:
        """(rows, columns)."""
        return self.rows, self.columns

    @property
    def zoom(self) -> float:
        """Size of an input pixel in model pixels."""
        return self.rows.zoom

    @property
    def halo(self) -> tuple[int, int]:
        """Input pixels each chunk borrows from its neighbours, per axis."""
        return self.rows.halo, self.columns.halo

    @property
    def model_shape(self) -> tuple[int, int]:
        """The scene's size in model pixels (a last, partial one included)."""
        return self.rows.model_length, self.columns.model_length

    @property
    def model_extent(self) -> Window:
        """The model pixels wholly inside the padded scene, see :attr:`ChunkAxis.model_extent`."""
        return self.rows.model_extent, self.columns.model_extent

    def chunk(self, row: int, column: int) -> Window:
        """Input pixels of chunk (row, column), without its halo."""
        return self.rows.chunk(row), self.columns.chunk(column)

    def block_origin(self, row: int, column: int) -> tuple[int, int]:
        """Scene pixel of the first pixel of chunk (row, column) with its halo."""
        return self.rows.block_start(row), self.columns.block_start(column)

    def core(self, row: int, column: int) -> Window:
        """The chunk itself in the pixels of its block (chunk with halo)."""
        return self.rows.core(row), self.columns.core(column)

    def core_in(self, row: int, column: int, model_origin: tuple[int, int]) -> Window:
        """The chunk in the input pixels of a model-grid window at ``model_origin``."""
        return (self.rows.core_in(row, model_origin[0]),
                self.columns.core_in(column, model_origin[1]))

    def tiles_window(self, row: int, column: int, tile: int) -> Window:
        """See :meth:`ChunkAxis.tiles_window`."""
        return self.rows.tiles_window(row, tile), self.columns.tiles_window(column, tile)

    def output_window(self, row: int, column: int) -> Window:
        """See :meth:`ChunkAxis.output_window`."""
        return self.rows.output_window(row), self.columns.output_window(column)


def origin_shape(window: Window) -> tuple[tuple[int, int], tuple[int, int]]:
    """Origin and shape of a window."""
    (top, bottom), (left, right) = window
    return (top, left), (bottom - top, right - left)


def overlap_slices(origin: tuple[int, int], shape: tuple[int, ...], target_origin: tuple[int, int],
                   target_shape: tuple[int, ...]
                   ) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Where two windows of one grid (origin and shape of the last two axes) overlap: slices
    into the first and into the second, or ``None`` when they do not."""
    source, target = [], []
    for mine, theirs, mine_size, theirs_size in zip(
            origin, target_origin, shape[-2:], target_shape[-2:], strict=True):
        start, stop = max(mine, theirs), min(mine + mine_size, theirs + theirs_size)
        if stop <= start:
            return None
        source.append(slice(start - mine, stop - mine))
        target.append(slice(start - theirs, stop - theirs))
    return (source[0], source[1]), (target[0], target[1])


@dataclass
class GridWindow:
    """Values summed on a window of a grid: ``values`` (channels, h, w) and their ``weight``
    (h, w), element ``[0, 0]`` at ``origin`` (row, column) of the grid.

    Windows of neighbouring chunks add up: a chunk's normalised pixels summed per model pixel
    (``weight``: the model pixels it gives data to; a model pixel that a chunk border cuts holds
    this chunk's share), or tiles' blend-weighted probabilities (``weight``: the blending
    weights). Sums are float64 (float32 for pixels on the input grid itself), so that different
    groupings of the same terms agree to far below float32 precision.
    """

    origin: tuple[int, int]
    values: np.ndarray
    weight: np.ndarray

    def crop(self, window: Window) -> GridWindow | None:
        """A copy of the part inside ``window`` (``None``: no weight there)."""
        slices = overlap_slices(self.origin, self.weight.shape, *origin_shape(window))
        if slices is None or not self.weight[slices[0]].any():
            return None
        source, _ = slices
        start = (self.origin[0] + source[0].start, self.origin[1] + source[1].start)
        return GridWindow(start, self.values[(slice(None), *source)].copy(),
                          self.weight[source].copy())

    def add_to(self, values: np.ndarray, origin: tuple[int, int],
               weight: np.ndarray | None = None) -> None:
        """Add these values (and weights, with ``weight``) to ``values`` (channels, h, w) and
        ``weight`` (h, w) placed at ``origin`` of the grid."""
        slices = overlap_slices(self.origin, self.weight.shape, origin, values.shape)
        if slices is None:
            return
        source, target = slices
        values[(slice(None), *target)] += self.values[(slice(None), *source)]
        if weight is not None:
            weight[target] += self.weight[source]
