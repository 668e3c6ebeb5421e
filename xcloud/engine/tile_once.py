"""Each lattice tile runs once: chunks sum the tiles they own, outputs add their neighbours' sums.

With overlapping tiles on a scene-wide lattice, the tiles that straddle a chunk border cover
pixels of both chunks. Instead of running them in both, the tiles are shared out: along each
axis a chunk *owns* the tiles whose start lies in its own stretch of the model grid and returns
their blend-weighted probability sums (:class:`~xcloud.engine.tiling.TileSums`, which spill
past the chunk's far edge). An output chunk then adds its own sums and those of the chunks
before it along each axis (left, above and above-left), blends, resamples to the input grid and
classifies. The result is the same weighted mean of the same tiles as a whole-image run (sums
in float64), so chunked masks still equal whole-image masks, at the model cost of the unique
tiles only.

The tiles' input is made once per pixel, too: each chunk of the scene (padded at the scene's
edges by the halo, as ``dask.array.overlap`` pads) is checked for no data, normalised and
summed on the scene's model grid by :func:`prepare`; a chunk's tiles are cut from the sums of
the chunks under them. Between chunks (and workers) only model-grid sums travel: with a 30 m
model on 10 m input, a ninth of the pixels of a 10 m halo.

Used for tiled models whose grid is the input grid or an integer coarsening of it, with the
default halo (or a wider one). Other cases run :func:`xcloud.engine.blocks.predict_block` under
:func:`dask.array.map_overlap`."""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from .blocks import (
    BlockTask,
    Window,
    empty_output,
    finish_block,
    loaded_model,
    normalized_block,
    upsample_core,
)
from .tiling import TileSums, blended, overlap_slices, sum_tiles, tile_starts

__all__ = ["map_tile_once", "min_chunk", "supports"]

Span = tuple[int, int]


def _factor(zoom: float) -> int | None:
    """Input pixels per model pixel when that is a whole number, else ``None``."""
    factor = round(1 / zoom)
    return factor if factor >= 1 and math.isclose(factor * zoom, 1.0) else None


def _grid(zoom: float) -> tuple[int, int]:
    """Input pixels per model pixel, and the model pixels an output needs beyond its core for
    the resampling back to the input grid (none when the grids are the same)."""
    factor = _factor(zoom)
    assert factor is not None, "shared tiles need an integer zoom (see supports)"
    return factor, 0 if factor == 1 else 1


def supports(tile_size: int | None, zoom: float, depth: int, default_depth: int, *,
             padded: Sequence[Span]) -> bool:
    """Whether tiles can be shared: a tiled model, an integer zoom, the default halo (or a wider
    one), and a padded scene (input-pixel ``padded`` extents per axis) that holds a model
    pixel along each axis."""
    factor = _factor(zoom)
    if tile_size is None or factor is None or depth < default_depth:
        return False
    return all(-(-start // factor) < stop // factor for start, stop in padded)


def min_chunk(tile_size: int, zoom: float) -> int:
    """Smallest chunk (input pixels) for which only the previous chunk's tiles reach a core."""
    factor, margin = _grid(zoom)
    return (tile_size + 2 * margin + 2) * factor


def _model_length(task: BlockTask, axis: int) -> int:
    """The scene's length in model pixels (a last, partial model pixel included)."""
    return -(-task.chunk_stops[axis][-1] // _grid(task.zoom)[0])


def _owned_span(task: BlockTask, axis: int, index: int) -> Span:
    """Model-grid stretch ``[start, stop)`` in which chunk ``index`` owns the tiles' starts.

    The first and last chunks own the tiles that reach into the scene past its edges.
    """
    factor, margin = _grid(task.zoom)
    assert task.tile_size is not None
    starts, stops = task.chunk_starts[axis], task.chunk_stops[axis]
    low = -(-starts[index] // factor) + margin if index else 1 - task.tile_size
    if index == len(stops) - 1:
        return low, _model_length(task, axis)
    return low, -(-stops[index] // factor) + margin


def _output_window(task: BlockTask, axis: int, index: int) -> tuple[int, int]:
    """Model-grid stretch an output chunk needs: its core, widened by the resampling margin
    (inside the scene: at its edges the resampling repeats the edge pixel)."""
    factor, margin = _grid(task.zoom)
    start, stop = task.chunk_starts[axis][index], task.chunk_stops[axis][index]
    return (max(0, start // factor - margin),
            min(_model_length(task, axis), -(-stop // factor) + margin))


def _owned(starts: list[int], origin: int, span: Span) -> list[int]:
    return [start for start in starts if span[0] <= start + origin < span[1]]


def _model_extent(task: BlockTask, axis: int) -> Span:
    """The model pixels wholly inside the padded scene (the scene and its edge padding)."""
    factor, _ = _grid(task.zoom)
    pad = task.depth[axis] if task.halo_at_edges else 0
    return -(pad // factor), (task.chunk_stops[axis][-1] + pad) // factor


def _tiles_window(task: BlockTask, axis: int, index: int) -> Span:
    """Model-grid stretch that the tiles chunk ``index`` owns cover, inside the padded scene
    (tiles reaching past it see it mirrored)."""
    assert task.tile_size is not None
    low, high = _owned_span(task, axis, index)
    first, last = _model_extent(task, axis)
    return max(low, first), min(high + task.tile_size, last)


@dataclass
class GridPart:
    """Sums of a chunk's normalised pixels per pixel of the scene's model grid.

    ``sums`` (bands, h, w) starts at model pixel ``origin``; model pixels that a chunk border
    cuts hold the sum of this chunk's share, so the parts of neighbouring chunks add up to
    the sums of whole model pixels (exactly, in float64; float32 on the input grid itself).
    ``valid`` (h, w) marks the model pixels to which the chunk gives data.
    """

    origin: tuple[int, int]
    sums: np.ndarray
    valid: np.ndarray

    def crop(self, origin: tuple[int, int], shape: tuple[int, int]) -> GridPart | None:
        """A copy of the part inside the window at ``origin`` of ``shape`` (``None``: no data
        there)."""
        slices = overlap_slices(self.origin, self.sums.shape, origin, shape)
        if slices is None or not self.valid[slices[0]].any():
            return None
        source, _ = slices
        start = (self.origin[0] + source[0].start, self.origin[1] + source[1].start)
        return GridPart(start, self.sums[(slice(None), *source)].copy(),
                        self.valid[source].copy())

    def add_to(self, total: np.ndarray, origin: tuple[int, int]) -> None:
        """Add these sums to ``total`` (bands, h, w) placed at model pixel ``origin``."""
        slices = overlap_slices(self.origin, self.sums.shape, origin, total.shape)
        if slices is not None:
            source, target = slices
            total[(slice(None), *target)] += self.sums[(slice(None), *source)]


def _window(spans: tuple[Span, Span]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Origin and shape of a window given as (rows, columns) spans."""
    (top, bottom), (left, right) = spans
    return (top, left), (bottom - top, right - left)


def _inside_scene(shape: tuple[int, ...], origin: tuple[int, int],
                  task: BlockTask) -> tuple[slice, slice]:
    """The part of a padded-scene block that is the scene itself (not edge padding)."""
    rows, cols = (slice(max(0, -start), max(0, min(size, task.chunk_stops[axis][-1] - start)))
                  for axis, (start, size) in enumerate(zip(origin, shape, strict=True)))
    return rows, cols


def prepare(block: np.ndarray, task: BlockTask,
            origin: tuple[int, int]) -> tuple[GridPart | None, np.ndarray]:
    """A chunk of the padded scene at input pixel ``origin``: its normalised pixels summed on
    the model grid (``None`` when it holds no data) and its no-data mask.

    Runs once per chunk, so each pixel is checked, normalised and averaged once, and only
    model-grid sums (``factor**2`` times fewer values) travel to the neighbours that need them.
    """
    inside = _inside_scene(block.shape[-2:], origin, task)
    normalized, empty = normalized_block(block[0], task, inside)
    if normalized is None:
        return None, empty
    from ..data.resample import block_sums  # numba kernels load on first use

    factor, _ = _grid(task.zoom)
    if factor == 1:
        sums, valid = normalized, ~empty
    else:
        offset = (origin[0] % factor, origin[1] % factor)
        sums = block_sums(normalized, factor, offset)
        valid = block_sums(~empty, factor, offset) > 0
    part = GridPart((origin[0] // factor, origin[1] // factor), sums, valid)
    return part.crop(*_window((_model_extent(task, 0), _model_extent(task, 1)))), empty


def _part_in(prepared: tuple[GridPart | None, np.ndarray],
             spans: tuple[Span, Span]) -> GridPart | None:
    part = prepared[0]
    return None if part is None else part.crop(*_window(spans))


def _sums_in(sums: TileSums | None, spans: tuple[Span, Span]) -> TileSums | None:
    return None if sums is None else sums.crop(*_window(spans))


def _assembled(parts: list[GridPart], spans: tuple[Span, Span], task: BlockTask) -> np.ndarray:
    """The normalised image (float32) on the model grid over ``spans``, from chunks' parts."""
    origin, shape = _window(spans)
    factor, _ = _grid(task.zoom)
    exact = np.float32 if factor == 1 else np.float64  # at factor 1 no model pixel is cut
    total = np.zeros((parts[0].sums.shape[0], *shape), exact)
    for part in parts:
        part.add_to(total, origin)
    return total if factor == 1 else (total / (factor * factor)).astype(np.float32)


def tile_sums(task: BlockTask, row: int, column: int,
              parts: Sequence[GridPart | None]) -> TileSums | None:
    """Sums of the tiles chunk (row, column) owns, run on the model-grid image that the
    ``parts`` of the chunks under them make up (``None`` when those hold no data)."""
    present = [part for part in parts if part is not None]
    spans = (_tiles_window(task, 0, row), _tiles_window(task, 1, column))
    if not present or any(stop <= start for start, stop in spans):
        return None
    assert task.tile_size is not None
    stride = task.tile_size - task.tile_overlap
    anchor = -task.tile_overlap if task.tile_anchor is None else task.tile_anchor
    owned = [
        _owned(tile_starts(stop - start, task.tile_size, stride, anchor, start,
                           scene=_model_length(task, axis), blend=task.tile_blend), start,
               _owned_span(task, axis, index))
        for axis, ((start, stop), index) in enumerate(zip(spans, (row, column), strict=True))
    ]
    if not owned[0] or not owned[1]:
        return None
    image = _assembled(present, spans, task)
    sums = sum_tiles(loaded_model(task), image, rows=owned[0], cols=owned[1],
                     tile_size=task.tile_size, overlap=task.tile_overlap,
                     batch_size=task.batch_size, blend=task.tile_blend)
    sums.origin = (sums.origin[0] + spans[0][0], sums.origin[1] + spans[1][0])
    return sums


def combine(task: BlockTask, row: int, column: int, empty: np.ndarray,
            pieces: Sequence[TileSums | None]) -> np.ndarray:
    """Output block of chunk (row, column): (1, classes, rows, columns) probabilities or
    (1, rows, columns) classes, from its no-data mask and the pieces of its own and earlier
    chunks' :func:`tile_sums` that reach it."""
    present = [sums for sums in pieces if sums is not None]
    if empty.all() or not present:
        return _output_block(empty_output(empty.shape, task), task)
    spans = (_output_window(task, 0, row), _output_window(task, 1, column))
    origin, shape = _window(spans)
    total = np.zeros((present[0].total.shape[0], *shape), np.float64)
    weight = np.zeros(shape, np.float64)
    for sums in present:
        sums.add_to(total, weight, origin)
    proba = blended(total, weight)
    factor, _ = _grid(task.zoom)
    if factor > 1:
        core: Window = tuple(  # type: ignore[assignment]
            (task.chunk_starts[axis][index] - start * factor,
             task.chunk_stops[axis][index] - start * factor)
            for axis, (index, start) in enumerate(zip((row, column), origin, strict=True)))
        proba = upsample_core(proba, core, task.zoom, (shape[0] * factor, shape[1] * factor))
    return _output_block(finish_block(proba, empty, task), task)


def _output_block(values: np.ndarray, task: BlockTask) -> np.ndarray:
    """A time step's block of the output: (1, classes, rows, columns) of probabilities, or
    (1, rows, columns) of classes."""
    return values if task.output == "class" else values[None]


def _padded_spans(chunks: tuple[int, ...], pad: int) -> list[Span]:
    """Input-pixel spans (scene coordinates) of the padded scene's chunks along one axis."""
    stops = np.cumsum(chunks) - pad
    return [(int(stop - size), int(stop)) for stop, size in zip(stops, chunks, strict=True)]


def _under(spans: list[Span], window: Span, factor: int) -> list[int]:
    """Indices of the chunks (input spans) that hold part of a model-grid window."""
    return [index for index, (start, stop) in enumerate(spans)
            if start // factor < window[1] and -(-stop // factor) > window[0]]


def map_tile_once(array: da.Array, task: BlockTask, boundary: str) -> da.Array:
    """The lazy output of ``array`` (time, band, y, x), tiles run once: (time, class, y, x)
    probabilities or (time, y, x) classes.

    Per time step and chunk: ``prepare`` (each chunk of the scene padded at its edges),
    crops of its model-grid sums for the tile windows that need them, ``tile_sums``, crops of
    those for the output chunks they reach, and ``combine``. The crops run where their input
    lies, so only what a neighbour needs moves between workers.
    """
    kinds = {0: "none", 1: "none", 2: boundary, 3: boundary}
    padded = da.overlap.boundaries(array, {0: 0, 1: 0, 2: task.depth[0], 3: task.depth[1]},
                                   kinds)
    pads = [task.depth[axis] if task.halo_at_edges else 0 for axis in (0, 1)]
    spans = [_padded_spans(padded.chunks[2 + axis], pads[axis]) for axis in (0, 1)]
    first = [next(i for i, (start, _) in enumerate(spans[axis]) if start == 0) for axis in (0, 1)]
    token = tokenize(padded.name, task)
    names = {stage: f"xcloud-{stage}-{token}"
             for stage in ("prepare", "part", "tile-sums", "piece", "nodata")}
    out_name = f"xcloud-{task.spec.name}-{task.output}-{token}"
    factor, _ = _grid(task.zoom)
    rows, columns = (len(chunks) for chunks in array.chunks[-2:])
    classes = task.output == "class"  # (time, y, x) blocks; probabilities have a class axis
    class_axis: tuple[tuple[int, ...], ...] = () if classes else ((task.n_out,),)
    graph: dict = {}
    for t in range(array.numblocks[0]):
        for p, q in itertools.product(*(range(len(axis)) for axis in spans)):
            inner = 0 <= p - first[0] < rows and 0 <= q - first[1] < columns
            block = ((array.name, t, 0, p - first[0], q - first[1]) if inner  # not padded
                     else (padded.name, t, 0, p, q))
            graph[(names["prepare"], t, p, q)] = (
                prepare, block, task, (spans[0][p][0], spans[1][q][0]))
        for i, j in itertools.product(range(rows), range(columns)):
            window = (_tiles_window(task, 0, i), _tiles_window(task, 1, j))
            parts = []
            for p, q in itertools.product(*(_under(spans[axis], window[axis], factor)
                                            for axis in (0, 1))):
                parts.append((names["part"], t, i, j, p, q))
                graph[parts[-1]] = (_part_in, (names["prepare"], t, p, q), window)
            graph[(names["tile-sums"], t, i, j)] = (tile_sums, task, i, j, parts)
        for i, j in itertools.product(range(rows), range(columns)):
            window = (_output_window(task, 0, i), _output_window(task, 1, j))
            pieces = []
            for a, b in itertools.product((i - 1, i), (j - 1, j)):
                if a >= 0 and b >= 0:
                    pieces.append((names["piece"], t, i, j, a, b))
                    graph[pieces[-1]] = (_sums_in, (names["tile-sums"], t, a, b), window)
            nodata = (names["nodata"], t, i, j)
            graph[nodata] = (operator.getitem,
                             (names["prepare"], t, i + first[0], j + first[1]), 1)
            graph[(out_name, t, *(0,) * len(class_axis), i, j)] = (
                combine, task, i, j, nodata, pieces)
    # dask's Array does not match its own DaskCollection protocol (__dask_scheduler__)
    layers = HighLevelGraph.from_collections(
        out_name, graph, dependencies=[padded, array])  # type: ignore[list-item]
    dtype = np.uint8 if classes else np.float32
    chunks = (array.chunks[0], *class_axis, *array.chunks[-2:])
    return da.Array(layers, out_name, chunks=chunks, dtype=dtype,
                    meta=np.empty((0,) * len(chunks), dtype))
