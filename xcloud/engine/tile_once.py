"""Each lattice tile runs once: chunks sum the tiles they own, outputs add their neighbours' sums.

With overlapping tiles on a scene-wide lattice, the tiles that straddle a chunk border cover
pixels of both chunks. Instead of running them in both, the tiles are shared out: along each
axis a chunk *owns* the tiles whose start lies in its own stretch of the model grid, runs them
on its block (chunk plus halo) and returns their blend-weighted probability sums
(:class:`~xcloud.engine.tiling.TileSums`, which spill past the chunk's far edge). An output
chunk then adds its own sums and those of the chunks before it along each axis (left, above and
above-left), blends, resamples to the input grid and classifies. The result is the same
weighted mean of the same tiles as a whole-image run (sums in float64), so chunked masks still
equal whole-image masks, at the model cost of the unique tiles only.

Used for tiled models whose grid is the input grid or an integer coarsening of it; the halo
must be the default one (it has to hold every owned tile). Other cases run
:func:`xcloud.engine.blocks.predict_block` under :func:`dask.array.map_overlap`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from .blocks import (
    BlockTask,
    Window,
    _chunk_origin,
    _core,
    _core_slices,
    _empty_output,
    _finish,
    _prepared,
    _resize,
    _upsample_core,
)
from .tiling import TileSums, blended, sum_tiles, tile_starts

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


def supports(tile_size: int | None, zoom: float, depth: int, default_depth: int) -> bool:
    """Whether tiles can be shared (a tiled model, an integer zoom and the default halo)."""
    return tile_size is not None and _factor(zoom) is not None and depth >= default_depth


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


def _on_model_grid(image: np.ndarray, origin: tuple[int, int],
                   task: BlockTask) -> tuple[np.ndarray, tuple[int, int]]:
    """The block on the scene's model grid (whole model pixels only) and its model origin."""
    factor, _ = _grid(task.zoom)
    if factor == 1:
        return image, origin
    windows = []
    for start, length in zip(origin, image.shape[-2:], strict=True):
        skip = -start % factor
        whole = (length - skip) // factor * factor
        # a block shorter than a model pixel (a tiny image) becomes one model pixel
        windows.append(slice(skip, skip + whole) if whole else slice(0, length))
    aligned = image[(slice(None), *windows)]
    shape = tuple(max(1, n // factor) for n in aligned.shape[-2:])
    model_origin = tuple((o + w.start) // factor for o, w in zip(origin, windows, strict=True))
    return _resize(aligned, shape), model_origin  # type: ignore[return-value]


def tile_sums(block: np.ndarray, task: BlockTask, row: int,
              column: int) -> tuple[TileSums | None, np.ndarray]:
    """Sums of the tiles chunk (row, column) owns (``None`` when its block holds no data) and
    the no-data mask of the chunk's own pixels."""
    image = block[0]
    origin = (_chunk_origin(task, 0, row), _chunk_origin(task, 1, column))
    core = (_core(task, 0, row, origin[0]), _core(task, 1, column, origin[1]))
    model, normalized, empty = _prepared(image, task)
    core_empty = empty[_core_slices(core, image.shape[-2:])]
    if model is None:
        return None, core_empty
    resampled, model_origin = _on_model_grid(normalized, origin, task)
    assert task.tile_size is not None
    stride = task.tile_size - task.tile_overlap
    anchor = -task.tile_overlap if task.tile_anchor is None else task.tile_anchor
    owned = [
        _owned(tile_starts(length, task.tile_size, stride, anchor, start), start,
               _owned_span(task, axis, index))
        for axis, (length, start, index) in enumerate(
            zip(resampled.shape[-2:], model_origin, (row, column), strict=True))
    ]
    if not owned[0] or not owned[1]:
        return None, core_empty
    sums = sum_tiles(model, resampled, rows=owned[0], cols=owned[1], tile_size=task.tile_size,
                     overlap=task.tile_overlap, batch_size=task.batch_size)
    sums.origin = (sums.origin[0] + model_origin[0], sums.origin[1] + model_origin[1])
    return sums, core_empty


def combine(task: BlockTask, row: int, column: int,
            chunks: Sequence[tuple[TileSums | None, np.ndarray]]) -> np.ndarray:
    """Output block (1, channels, rows, columns) of chunk (row, column); ``chunks`` holds what
    :func:`tile_sums` returned for it (last) and for the chunks before it."""
    empty = chunks[-1][1]
    present = [sums for sums, _ in chunks if sums is not None]
    if empty.all() or not present:
        return _empty_output(empty.shape, task)[None]
    window = (_output_window(task, 0, row), _output_window(task, 1, column))
    shape = (window[0][1] - window[0][0], window[1][1] - window[1][0])
    total = np.zeros((present[0].total.shape[0], *shape), np.float64)
    weight = np.zeros(shape, np.float64)
    for sums in present:
        sums.add_to(total, weight, (window[0][0], window[1][0]))
    proba = blended(total, weight)
    factor, _ = _grid(task.zoom)
    if factor > 1:
        core: Window = tuple(  # type: ignore[assignment]
            (task.chunk_starts[axis][index] - start * factor,
             task.chunk_stops[axis][index] - start * factor)
            for axis, (index, (start, _)) in enumerate(zip((row, column), window, strict=True)))
        proba = _upsample_core(proba, core, task.zoom, (shape[0] * factor, shape[1] * factor))
    return _finish(proba, empty, task)[None]


def _keys(name: str, times: int, rows: int, columns: int) -> list[tuple[str, int, int, int]]:
    return [(name, t, i, j) for t in range(times) for i in range(rows) for j in range(columns)]


def map_tile_once(array: da.Array, task: BlockTask, boundary: str) -> da.Array:
    """The lazy output (time, channels, y, x) of ``array`` (time, band, y, x), tiles run once."""
    halo = da.overlap.overlap(array, depth={0: 0, 1: 0, 2: task.depth[0], 3: task.depth[1]},
                              boundary={0: "none", 1: "none", 2: boundary, 3: boundary},
                              allow_rechunk=False)
    token = tokenize(halo.name, task)
    sums_name = f"xcloud-tile-sums-{token}"
    out_name = f"xcloud-{task.spec.name}-{task.output}-{token}"
    times, _, rows, columns = halo.numblocks
    graph: dict = {}
    for _, t, i, j in _keys(out_name, times, rows, columns):
        graph[(sums_name, t, i, j)] = (tile_sums, (halo.name, t, 0, i, j), task, i, j)
        parts = [(sums_name, t, a, b) for a in (i - 1, i) for b in (j - 1, j) if a >= 0 and b >= 0]
        graph[(out_name, t, 0, i, j)] = (combine, task, i, j, parts)
    layers = HighLevelGraph.from_collections(out_name, graph, dependencies=[halo])
    dtype = np.float32 if task.output == "proba" else np.uint8
    chunks = (array.chunks[0], (task.n_out,), *array.chunks[-2:])
    return da.Array(layers, out_name, chunks=chunks, dtype=dtype,
                    meta=np.empty((0, 0, 0, 0), dtype))
