"""Inside one chunk: cut model-sized tiles with overlap, run them in batches, blend them.

Overlapping tiles are blended with a smooth window (a raised-cosine ramp across the overlap,
1 in the tile's interior), so tile borders leave no seams; the blended probabilities are a
weighted mean of the tiles that cover each pixel.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from ..models.protocol import CloudModel

__all__ = ["blend_window", "predict_tiled", "tile_starts"]

_MIN_WEIGHT = 1e-3


def tile_starts(length: int, tile: int, stride: int, anchor: int, origin: int = 0) -> list[int]:
    """Local starts of the scene-lattice tiles that intersect ``length`` pixels.

    Tiles sit on a lattice fixed to the whole scene (``anchor + k * stride``) and ``origin`` is
    where this array starts in the scene. Neighbouring chunks therefore cut the very same
    tiles where their halos overlap: these networks are not shift invariant (a one-pixel shift
    of the tile grid changes about 2 % of ukis-csmask's classes), so a fixed lattice is what
    keeps chunk borders seam-free. Starts may be negative or run past ``length``: the caller
    pads.
    """
    first = math.floor((origin - anchor - tile) / stride) + 1
    last = math.ceil((origin + length - anchor) / stride) - 1
    return [anchor + k * stride - origin for k in range(first, last + 1)]


def _ramp(tile: int, overlap: int) -> np.ndarray:
    ramp = np.ones(tile, np.float32)
    overlap = min(overlap, tile)
    if overlap > 0:
        position = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        edge = 0.5 - 0.5 * np.cos(np.pi * position)
        ramp[:overlap] = edge
        ramp[tile - overlap:] = np.minimum(ramp[tile - overlap:], edge[::-1])
    return np.maximum(ramp, _MIN_WEIGHT)


def blend_window(height: int, width: int, overlap: int) -> np.ndarray:
    """2-D blending weights: a raised-cosine ramp over ``overlap`` pixels at each edge."""
    return np.outer(_ramp(height, overlap), _ramp(width, overlap))


def _touching(starts: list[int], tile: int, span: tuple[int, int]) -> list[int]:
    kept = [start for start in starts if start < span[1] and start + tile > span[0]]
    return kept or starts[:1]


def _batches(items: list[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    for index in range(0, len(items), size):
        yield items[index:index + size]


def predict_tiled(model: CloudModel, image: np.ndarray, *, tile_size: int | None,
                  overlap: int, batch_size: int, anchor: int | None = None,
                  origin: tuple[int, int] = (0, 0),
                  region: tuple[tuple[int, int], tuple[int, int]] | None = None) -> np.ndarray:
    """Blended class probabilities (classes, H, W) of a normalised image (bands, H, W).

    ``origin`` is the (row, column) of the image's first pixel in the whole scene, in the
    same pixels, so that tiles follow the scene-wide lattice of :func:`tile_starts`; tiles
    that reach past the image see it mirrored (symmetric padding), as at a scene edge.
    ``region`` (``((row0, row1), (col0, col1))``) restricts the work to the tiles that touch
    it (a chunk's core inside its halo); probabilities outside it are then partial.
    """
    if tile_size is None:  # pixel models take the whole chunk at once
        return model.predict_proba(image[None])[0]
    stride = tile_size - overlap
    anchor = -overlap if anchor is None else anchor
    rows = tile_starts(image.shape[-2], tile_size, stride, anchor, origin[0])
    cols = tile_starts(image.shape[-1], tile_size, stride, anchor, origin[1])
    if region is not None:
        rows = _touching(rows, tile_size, region[0])
        cols = _touching(cols, tile_size, region[1])
    before = (max(0, -rows[0]), max(0, -cols[0]))
    after = (max(0, rows[-1] + tile_size - image.shape[-2]),
             max(0, cols[-1] + tile_size - image.shape[-1]))
    padded = np.pad(image, [(0, 0), (before[0], after[0]), (before[1], after[1])],
                    mode="symmetric")
    corners = [(y + before[0], x + before[1]) for y in rows for x in cols]
    weights = blend_window(tile_size, tile_size, overlap)
    total: np.ndarray | None = None
    weight_sum = np.zeros(padded.shape[-2:], np.float32)
    for batch in _batches(corners, batch_size):
        tiles = np.stack([padded[:, y:y + tile_size, x:x + tile_size] for y, x in batch])
        proba = model.predict_proba(tiles)
        if total is None:
            total = np.zeros((proba.shape[1], *padded.shape[-2:]), np.float32)
        for (y, x), tile_proba in zip(batch, proba, strict=True):
            total[:, y:y + tile_size, x:x + tile_size] += tile_proba * weights
            weight_sum[y:y + tile_size, x:x + tile_size] += weights
    assert total is not None
    core = (slice(None), slice(before[0], before[0] + image.shape[-2]),
            slice(before[1], before[1] + image.shape[-1]))
    covered = np.maximum(weight_sum[core[1:]], _MIN_WEIGHT)
    return total[core] / covered
