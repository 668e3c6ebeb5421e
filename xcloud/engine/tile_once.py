"""Each lattice tile runs once: chunks sum the tiles they own, outputs add their neighbours' sums.

With overlapping tiles on a scene-wide lattice, the tiles that straddle a chunk border cover
pixels of both chunks. Instead of running them in both, the tiles are shared out: along each
axis a chunk *owns* the tiles whose start lies in its own stretch of the model grid and returns
their blend-weighted probability sums (a ``GridWindow`` of :mod:`xcloud.engine.tiling`'s
:func:`~xcloud.engine.tiling.sum_tiles`, which spills past the chunk's far edge). An output
chunk then adds its own sums and those of the chunks before it along each axis (left, above
and above-left), blends, resamples to the input grid and classifies. The result is the same
weighted mean of the same tiles as a whole-image run (sums in float64), so chunked masks still
equal whole-image masks, at the model cost of the unique tiles only.

The tiles' input is made once per pixel, too: each chunk of the scene (padded at the scene's
edges by the halo, as ``dask.array.overlap`` pads) is checked for no data, normalised and
summed on the scene's model grid by :func:`prepare`; a chunk's tiles are cut from the sums of
the chunks under them. Between chunks (and workers) only model-grid sums travel: with a 30 m
model on 10 m input, a ninth of the pixels of a 10 m halo.

Used for tiled models whose grid is the input grid or an integer coarsening of it, with the
default halo (or a wider one). Other cases run :func:`xcloud.engine.blocks.predict_block` under
:func:`dask.array.map_overlap`."""

from __future__ import annotations

import dataclasses
import itertools
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from .blocks import (
    BlockTask,
    empty_output,
    finish_block,
    loaded_model,
    normalized_block,
    upsampled_output,
)
from .geometry import (
    ChunkAxis,
    GridWindow,
    Span,
    Window,
    model_ceil,
    model_floor,
    origin_shape,
    resampling_margin,
    to_model,
    whole_factor,
)
from .tiling import TileLattice, blended, sum_tiles

__all__ = ["map_tile_once", "min_chunk", "supports"]


def supports(tile_size: int | None, zoom: float, depth: int, default_depth: int, *,
             padded: Sequence[Span]) -> bool:
    """Whether tiles can be shared: a tiled model, an integer zoom, the default halo (or a wider
    one), and a padded scene (input-pixel ``padded`` extents per axis) that holds a model
    pixel along each axis."""
    if tile_size is None or whole_factor(zoom) is None or depth < default_depth:
        return False
    return all(model_ceil(start, zoom) < model_floor(stop, zoom) for start, stop in padded)


def min_chunk(tile_size: int, zoom: float) -> int:
    """Smallest chunk (input pixels) for which only the previous chunk's tiles reach a core."""
    return (tile_size + 2 * resampling_margin(zoom) + 2) * _whole(zoom)


def _whole(zoom: float) -> int:
    """Input pixels per model pixel: a whole number on this path (see :func:`supports`)."""
    factor = whole_factor(zoom)
    assert factor is not None, "shared tiles need an integer zoom (see supports)"
    return factor


def _lattice(task: BlockTask) -> TileLattice:
    assert task.tiles is not None, "shared tiles need a tiled model (see supports)"
    return task.tiles


# The three kinds of task, per chunk: prepare, tile_sums, combine


def prepare(block: np.ndarray, task: BlockTask,
            origin: tuple[int, int]) -> tuple[GridWindow | None, np.ndarray]:
    """A chunk of the padded scene at input pixel ``origin``: its normalised pixels summed on
    the model grid (``None`` when it holds no data) and its no-data mask.

    Runs once per chunk, so each pixel is checked, normalised and averaged once, and only
    model-grid sums (``factor**2`` times fewer values) travel to the neighbours that need them.
    """
    grid = task.grid
    inside = (grid.rows.inside(origin[0], block.shape[-2]),
              grid.columns.inside(origin[1], block.shape[-1]))
    normalized, empty = normalized_block(block[0], task, inside)
    if normalized is None:
        return None, empty
    return _model_sums(normalized, empty, origin, grid.zoom).crop(grid.model_extent), empty


def _model_sums(normalized: np.ndarray, empty: np.ndarray, origin: tuple[int, int],
                zoom: float) -> GridWindow:
    """Normalised pixels (from input pixel ``origin``) summed per model pixel; a model pixel
    that the block's edge cuts holds the sum of the block's share. The weight marks the model
    pixels to which the block gives data."""
    factor = _whole(zoom)
    if factor == 1:
        return GridWindow(origin, normalized, ~empty)
    from ..data.resample import block_sums  # numba kernels load on first use

    offset = (origin[0] % factor, origin[1] % factor)
    return GridWindow((model_floor(origin[0], zoom), model_floor(origin[1], zoom)),
                      block_sums(normalized, factor, offset),
                      block_sums(~empty, factor, offset) > 0)


def tile_sums(task: BlockTask, row: int, column: int,
              parts: Sequence[GridWindow | None]) -> GridWindow | None:
    """Sums of the tiles chunk (row, column) owns, run on the model-grid image that the
    ``parts`` of the chunks under them make up (``None`` when those hold no data)."""
    present = [part for part in parts if part is not None]
    lattice = _lattice(task)
    window = task.grid.tiles_window(row, column, lattice.size)
    if not present or any(stop <= start for start, stop in window):
        return None
    rows, cols = (_owned_starts(axis, index, span, lattice) for axis, index, span
                  in zip(task.grid.axes, (row, column), window, strict=True))
    if not rows or not cols:
        return None
    image = _assembled(present, window, _whole(task.grid.zoom))
    sums = sum_tiles(loaded_model(task), image, rows=rows, cols=cols, tile_size=lattice.size,
                     overlap=lattice.overlap, batch_size=task.batch_size, blend=lattice.blend)
    origin = (sums.origin[0] + window[0][0], sums.origin[1] + window[1][0])
    return dataclasses.replace(sums, origin=origin)


def _owned_starts(axis: ChunkAxis, index: int, span: Span, lattice: TileLattice) -> list[int]:
    """Starts (from ``span[0]``) of the lattice's tiles in the model-grid ``span`` whose
    start chunk ``index`` owns along ``axis``."""
    low, high = axis.owned(index, lattice.size)
    starts = lattice.starts(span[1] - span[0], span[0], scene=axis.model_length)
    return [start for start in starts if low <= start + span[0] < high]


def _assembled(parts: list[GridWindow], window: Window, factor: int) -> np.ndarray:
    """The normalised image (float32) on the model grid over ``window``, from chunks' parts."""
    origin, shape = origin_shape(window)
    exact = np.float32 if factor == 1 else np.float64  # at factor 1 no model pixel is cut
    total = np.zeros((parts[0].values.shape[0], *shape), exact)
    for part in parts:
        part.add_to(total, origin)
    return total if factor == 1 else (total / (factor * factor)).astype(np.float32)


def combine(task: BlockTask, row: int, column: int, empty: np.ndarray,
            pieces: Sequence[GridWindow | None]) -> np.ndarray:
    """Output block of chunk (row, column): (1, classes, rows, columns) probabilities or
    (1, rows, columns) classes, from its no-data mask and the pieces of its own and earlier
    chunks' :func:`tile_sums` that reach it."""
    present = [sums for sums in pieces if sums is not None]
    if empty.all() or not present:
        return _output_block(empty_output(empty.shape, task), task)
    origin, shape = origin_shape(task.grid.output_window(row, column))
    total = np.zeros((present[0].values.shape[0], *shape), np.float64)
    weight = np.zeros(shape, np.float64)
    for sums in present:
        sums.add_to(total, origin, weight)
    proba = blended(total, weight)
    factor = _whole(task.grid.zoom)
    if factor > 1:
        return _output_block(upsampled_output(
            proba, task.grid.core_in(row, column, origin), task.grid.zoom,
            (shape[0] * factor, shape[1] * factor), empty, task), task)
    return _output_block(finish_block(proba, empty, task), task)


def _output_block(values: np.ndarray, task: BlockTask) -> np.ndarray:
    """A time step's block of the output: (1, classes, rows, columns) of probabilities, or
    (1, rows, columns) of classes."""
    return values if task.output == "class" else values[None]


def _crop(window: GridWindow | None, spans: Window) -> GridWindow | None:
    return None if window is None else window.crop(spans)


def _crop_prepared(prepared: tuple[GridWindow | None, np.ndarray],
                   spans: Window) -> GridWindow | None:
    return _crop(prepared[0], spans)


# The graph


def map_tile_once(array: da.Array, task: BlockTask, boundary: str) -> da.Array:
    """The lazy output of ``array`` (time, band, y, x), tiles run once: (time, class, y, x)
    probabilities or (time, y, x) classes.

    Per time step and chunk: ``prepare`` (each chunk of the scene padded at its edges),
    crops of its model-grid sums for the tile windows that need them, ``tile_sums``, crops of
    those for the output chunks they reach, and ``combine``. The crops run where their input
    lies, so only what a neighbour needs moves between workers.
    """
    halo = task.grid.halo
    padded = da.overlap.boundaries(array, {0: 0, 1: 0, 2: halo[0], 3: halo[1]},
                                   {0: "none", 1: "none", 2: boundary, 3: boundary})
    graph = _Graph.of(array, padded, task)
    for t in range(array.numblocks[0]):
        graph.add_prepare(t)
        graph.add_tile_sums(t)
        graph.add_outputs(t)
    # dask's Array does not match its own DaskCollection protocol (__dask_scheduler__)
    layers = HighLevelGraph.from_collections(
        graph.out_name, graph.tasks, dependencies=[padded, array])  # type: ignore[list-item]
    dtype = np.uint8 if graph.classes else np.float32
    chunks = (array.chunks[0], *graph.class_axis, *array.chunks[-2:])
    return da.Array(layers, graph.out_name, chunks=chunks, dtype=dtype,
                    meta=np.empty((0,) * len(chunks), dtype))


@dataclass
class _Graph:
    """The tasks of :func:`map_tile_once`, added one time step at a time.

    ``spans`` are the input-pixel spans (scene coordinates) of the padded scene's chunks along
    each axis, ``first`` the index of the first of them in the scene itself.
    """

    task: BlockTask
    source: str
    padded: str
    spans: tuple[list[Span], list[Span]]
    first: tuple[int, int]
    chunks: tuple[int, int]
    token: str
    tasks: dict = field(default_factory=dict)

    @classmethod
    def of(cls, array: da.Array, padded: da.Array, task: BlockTask) -> _Graph:
        spans = (_padded_spans(padded.chunks[2], task.grid.rows.pad),
                 _padded_spans(padded.chunks[3], task.grid.columns.pad))
        first = (_scene_start(spans[0]), _scene_start(spans[1]))
        rows, columns = (len(chunks) for chunks in array.chunks[-2:])
        return cls(task, array.name, padded.name, spans, first, (rows, columns),
                   tokenize(padded.name, task))

    @property
    def classes(self) -> bool:
        """Class outputs are (time, y, x) blocks; probabilities have a class axis."""
        return self.task.output == "class"

    @property
    def class_axis(self) -> tuple[tuple[int, ...], ...]:
        return () if self.classes else ((self.task.n_out,),)

    @property
    def out_name(self) -> str:
        return f"xcloud-{self.task.spec.name}-{self.task.output}-{self.token}"

    def name(self, stage: str) -> str:
        return f"xcloud-{stage}-{self.token}"

    def add_prepare(self, t: int) -> None:
        """``prepare`` of each chunk of the padded scene; inside the scene from the input's
        own chunk (no pass-through task)."""
        for p, q in itertools.product(*(range(len(axis)) for axis in self.spans)):
            i, j = p - self.first[0], q - self.first[1]
            inner = 0 <= i < self.chunks[0] and 0 <= j < self.chunks[1]
            block = (self.source, t, 0, i, j) if inner else (self.padded, t, 0, p, q)
            self.tasks[(self.name("prepare"), t, p, q)] = (
                prepare, block, self.task, (self.spans[0][p][0], self.spans[1][q][0]))

    def add_tile_sums(self, t: int) -> None:
        """``tile_sums`` of each chunk, from crops of the prepared chunks under its tiles."""
        tile = _lattice(self.task).size
        for i, j in self._scene_chunks():
            window = self.task.grid.tiles_window(i, j, tile)
            parts = []
            for p, q in itertools.product(*(_under(spans, span, self.task.grid.zoom)
                                            for spans, span in zip(self.spans, window,
                                                                   strict=True))):
                parts.append((self.name("part"), t, i, j, p, q))
                self.tasks[parts[-1]] = (_crop_prepared, (self.name("prepare"), t, p, q), window)
            self.tasks[(self.name("tile-sums"), t, i, j)] = (tile_sums, self.task, i, j, parts)

    def add_outputs(self, t: int) -> None:
        """``combine`` of each chunk, from crops of its own and earlier chunks' tile sums."""
        for i, j in self._scene_chunks():
            window = self.task.grid.output_window(i, j)
            pieces = []
            for a, b in itertools.product((i - 1, i), (j - 1, j)):
                if a >= 0 and b >= 0:
                    pieces.append((self.name("piece"), t, i, j, a, b))
                    self.tasks[pieces[-1]] = (_crop, (self.name("tile-sums"), t, a, b), window)
            nodata = (self.name("nodata"), t, i, j)
            self.tasks[nodata] = (operator.getitem, (self.name("prepare"), t,
                                                     i + self.first[0], j + self.first[1]), 1)
            self.tasks[(self.out_name, t, *(0,) * len(self.class_axis), i, j)] = (
                combine, self.task, i, j, nodata, pieces)

    def _scene_chunks(self) -> itertools.product[tuple[int, int]]:
        return itertools.product(range(self.chunks[0]), range(self.chunks[1]))


def _padded_spans(chunks: tuple[int, ...], pad: int) -> list[Span]:
    """Input-pixel spans (scene coordinates) of the padded scene's chunks along one axis."""
    stops = np.cumsum(chunks) - pad
    return [(int(stop - size), int(stop)) for stop, size in zip(stops, chunks, strict=True)]


def _scene_start(spans: list[Span]) -> int:
    """The index of the first chunk of the scene itself among the padded scene's."""
    return next(index for index, (start, _) in enumerate(spans) if start == 0)


def _under(spans: list[Span], window: Span, zoom: float) -> list[int]:
    """Indices of the chunks (input spans) that hold part of a model-grid window."""
    return [index for index, span in enumerate(spans)
            if _overlap(to_model(span, zoom), window)]


def _overlap(first: Span, second: Span) -> bool:
    return first[0] < second[1] and first[1] > second[0]
