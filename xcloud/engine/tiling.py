"""Inside one chunk: cut model-sized tiles with overlap, run them in batches, blend them.

Overlapping tiles are blended with a smooth window (a raised-cosine ramp across the overlap,
1 in the tile's interior), so tile borders leave no seams; the blended probabilities are a
weighted mean of the tiles that cover each pixel.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..models.protocol import CloudModel
from .geometry import GridWindow, Window, overlap_slices

__all__ = [
    "BLENDS",
    "TileLattice",
    "TileSums",
    "blend_window",
    "blended",
    "floored_edge",
    "overlap_slices",
    "predict_tiled",
    "sum_tiles",
    "tile_starts",
]

_MIN_WEIGHT = 1e-3
BLENDS = ("ramp", "mean")
"""How overlapping tiles are blended: ``"ramp"`` (a raised-cosine ramp across the overlap,
xcloud's default) or ``"mean"`` (every tile weighs the same over its whole extent, as the
released SEnSeI-v2 ``SlidingWindow`` averages its patches)."""

TileSums = GridWindow
"""Tiles' blend-weighted probabilities summed on a window of the grid (what :func:`sum_tiles`
returns; ``weight`` holds the summed blending weights)."""


def tile_starts(length: int, tile: int, stride: int, anchor: int, origin: int = 0, *,
                scene: int | None = None, blend: str = "ramp") -> list[int]:
    """Local starts of the scene-lattice tiles that intersect ``length`` pixels.

    Tiles sit on a lattice fixed to the whole scene (``anchor + k * stride``) and ``origin`` is
    where this array starts in the scene. Neighbouring chunks therefore cut the very same
    tiles where their halos overlap: these networks are not shift invariant (a one-pixel shift
    of the tile grid changes about 2 % of ukis-csmask's classes), so a fixed lattice is what
    keeps chunk borders seam-free. Starts may be negative or run past ``length``: the caller
    pads. With the ``scene`` length, the tiles that would reach into the scene only with the
    floor of their blending weights (:func:`floored_edge`) are left out: they would add
    nothing but that floor, for the cost of a whole tile.
    """
    first = math.floor((origin - anchor - tile) / stride) + 1
    last = math.ceil((origin + length - anchor) / stride) - 1
    if scene is not None:
        edge = floored_edge(tile, tile - stride, blend)
        first = max(first, math.floor((edge - anchor - tile) / stride) + 1)
        last = min(last, math.ceil((scene - edge - anchor) / stride) - 1)
    return [anchor + k * stride - origin for k in range(first, last + 1)]


def floored_edge(tile: int, overlap: int, blend: str = "ramp") -> int:
    """Pixels at each end of a tile whose blending weight is only the floor (``1e-3``).

    At most half the overlap, so every scene pixel keeps a tile with more than the floor;
    0 for the ``"mean"`` blend.
    """
    ramp = _ramp(tile, overlap, blend)
    return min(int(np.argmax(ramp > _MIN_WEIGHT)), max(0, overlap) // 2)


def _ramp(tile: int, overlap: int, blend: str = "ramp") -> np.ndarray:
    if blend not in BLENDS:
        raise ValueError(f"tile_blend must be one of {BLENDS}, got {blend!r}")
    ramp = np.ones(tile, np.float32)
    overlap = min(overlap, tile)
    if overlap > 0 and blend == "ramp":
        position = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        edge = 0.5 - 0.5 * np.cos(np.pi * position)
        ramp[:overlap] = edge
        ramp[tile - overlap:] = np.minimum(ramp[tile - overlap:], edge[::-1])
    return np.maximum(ramp, _MIN_WEIGHT)


def blend_window(height: int, width: int, overlap: int, blend: str = "ramp") -> np.ndarray:
    """2-D blending weights: a raised-cosine ramp over ``overlap`` pixels at each edge, or
    equal weights everywhere (``blend="mean"``)."""
    return np.outer(_ramp(height, overlap, blend), _ramp(width, overlap, blend))


@dataclass(frozen=True)
class TileLattice:
    """Tiles of ``size`` pixels overlapping by ``overlap`` on a lattice fixed to the whole
    scene: from ``anchor`` (by default ``-overlap``) every ``size - overlap`` pixels, blended
    with ``blend`` (one of :data:`BLENDS`)."""

    size: int
    overlap: int
    anchor: int | None = None
    blend: str = "ramp"

    @property
    def stride(self) -> int:
        """Pixels from one tile's start to the next."""
        return self.size - self.overlap

    def starts(self, length: int, origin: int = 0, *, scene: int | None = None) -> list[int]:
        """Local starts of the lattice's tiles that intersect ``length`` pixels from scene
        pixel ``origin`` (see :func:`tile_starts`)."""
        anchor = -self.overlap if self.anchor is None else self.anchor
        return tile_starts(length, self.size, self.stride, anchor, origin, scene=scene,
                           blend=self.blend)

    def predict(self, model: CloudModel, image: np.ndarray, *, batch_size: int,
                origin: tuple[int, int] = (0, 0), region: Window | None = None,
                scene: tuple[int, int] | None = None) -> np.ndarray:
        """Blended probabilities of ``image`` (see :func:`predict_tiled`)."""
        starts = [self.starts(image.shape[axis - 2], origin[axis],
                              scene=None if scene is None else scene[axis]) for axis in (0, 1)]
        if region is not None:
            starts = [_touching(axis, self.size, span)
                      for axis, span in zip(starts, region, strict=True)]
        sums = sum_tiles(model, image, rows=starts[0], cols=starts[1], tile_size=self.size,
                         overlap=self.overlap, batch_size=batch_size, blend=self.blend)
        total = np.zeros((sums.values.shape[0], *image.shape[-2:]), np.float64)
        weight = np.zeros(image.shape[-2:], np.float64)
        sums.add_to(total, (0, 0), weight)
        return blended(total, weight)


def _touching(starts: list[int], tile: int, span: tuple[int, int]) -> list[int]:
    kept = [start for start in starts if start < span[1] and start + tile > span[0]]
    return kept or starts[:1]


def _batches(items: list[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    for index in range(0, len(items), size):
        yield items[index:index + size]


def _tile_window(image: np.ndarray, rows: list[int], cols: list[int], tile: int) -> np.ndarray:
    """The pixels under the tiles' span, mirrored (symmetric) where it passes the image edge."""
    height, width = image.shape[-2:]
    top, bottom, left, right = rows[0], rows[-1] + tile, cols[0], cols[-1] + tile
    window = image[:, max(0, top):min(height, bottom), max(0, left):min(width, right)]
    pad = [(0, 0), (max(0, -top), max(0, bottom - height)), (max(0, -left), max(0, right - width))]
    if any(any(side) for side in pad):
        window = np.pad(window, pad, mode="symmetric")
    return window


def sum_tiles(model: CloudModel, image: np.ndarray, *, rows: list[int], cols: list[int],
              tile_size: int, overlap: int, batch_size: int, blend: str = "ramp") -> GridWindow:
    """Run the tiles at ``rows`` x ``cols`` (local starts, sorted) and sum their blended output.

    The returned sums (float64; ``weight``: the summed blending weights) cover the tiles'
    span; their origin is in the image's pixels.
    """
    window = _tile_window(image, rows, cols, tile_size)
    corners = [(y - rows[0], x - cols[0]) for y in rows for x in cols]
    weights = blend_window(tile_size, tile_size, overlap, blend)
    total: np.ndarray | None = None
    weight_sum = np.zeros(window.shape[-2:], np.float64)
    for batch in _batches(corners, batch_size):
        tiles = np.stack([window[:, y:y + tile_size, x:x + tile_size] for y, x in batch])
        proba = model.predict_proba(tiles)
        if total is None:
            total = np.zeros((proba.shape[1], *window.shape[-2:]), np.float64)
        for (y, x), tile_proba in zip(batch, proba, strict=True):
            total[:, y:y + tile_size, x:x + tile_size] += tile_proba * weights
            weight_sum[y:y + tile_size, x:x + tile_size] += weights
    assert total is not None
    return GridWindow((rows[0], cols[0]), total, weight_sum)


def blended(total: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Probabilities (float32) from summed weighted probabilities and weights."""
    return (total / np.maximum(weight, _MIN_WEIGHT)).astype(np.float32)


def predict_tiled(model: CloudModel, image: np.ndarray, *, tile_size: int | None,
                  overlap: int, batch_size: int, anchor: int | None = None,
                  origin: tuple[int, int] = (0, 0), region: Window | None = None,
                  scene: tuple[int, int] | None = None, blend: str = "ramp") -> np.ndarray:
    """Blended class probabilities (classes, H, W) of a normalised image (bands, H, W).

    ``origin`` is the (row, column) of the image's first pixel in the whole scene, in the
    same pixels, so that tiles follow the scene-wide lattice of :func:`tile_starts`; tiles
    that reach past the image see it mirrored (symmetric padding), as at a scene edge.
    ``region`` (``((row0, row1), (col0, col1))``) restricts the work to the tiles that touch
    it (a chunk's core inside its halo); probabilities outside it are then partial.
    ``scene`` (rows, columns), the whole scene's size, leaves out the tiles that would reach
    into it only with the floor of their weights (see :func:`tile_starts`). ``blend`` is one
    of :data:`BLENDS`.
    """
    if tile_size is None:  # pixel models take the whole chunk at once
        return model.predict_proba(image[None])[0]
    return TileLattice(tile_size, overlap, anchor, blend).predict(
        model, image, batch_size=batch_size, origin=origin, region=region, scene=scene)
