"""The function each Dask task runs on one chunk (with its halo) of a (time, band, y, x) cube."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import numpy as np

from ..models.protocol import CloudModel
from ..models.registry import get
from .cache import ModelSpec, get_model
from .checks import check_input, invalid_pixels, nonfinite_pixels
from .device import limit_torch_threads, threads_per_task
from .tiling import predict_tiled

__all__ = ["BlockTask", "empty_output", "finish_block", "loaded_model", "normalized_block",
           "predict_block", "upsample_core"]


@dataclass(frozen=True)
class BlockTask:
    """Everything a chunk task needs besides its data; small and picklable (no model inside).

    ``zoom`` is the size of an input pixel in model pixels (input resolution / model resolution);
    ``depth`` the halo (rows, columns) in input pixels; ``shared`` whether the tiles are shared
    between chunks (:mod:`xcloud.engine.tile_once`) rather than run per chunk.
    """

    spec: ModelSpec
    output: str
    zoom: float
    batch_size: int
    tile_size: int | None
    tile_overlap: int
    tile_anchor: int | None
    nodata: float | None
    invalid: str
    chunk_starts: tuple[tuple[int, ...], tuple[int, ...]] = ((0,), (0,))
    chunk_stops: tuple[tuple[int, ...], tuple[int, ...]] = ((0,), (0,))
    depth: tuple[int, int] = (0, 0)
    halo_at_edges: bool = True
    shared: bool = False
    tile_blend: str = "ramp"
    strict: bool = False
    token: str = ""

    @property
    def n_out(self) -> int:
        """Channels of the output block: 1 for classes, one per class for probabilities."""
        return len(get(self.spec.name).info.scheme.classes) if self.output == "proba" else 1


def predict_block(block: np.ndarray, task: BlockTask,
                  block_info: dict | None = None) -> np.ndarray:
    """Classes (t, 1, y, x) uint8 or probabilities (t, classes, y, x) float32 for one chunk.

    ``block_info`` (given by Dask) locates the chunk, so that tiles follow the scene lattice.
    """
    origin, core = (0, 0), None
    if block_info and None in block_info:
        _, _, row, column = block_info[None]["chunk-location"]
        origin = (_chunk_origin(task, 0, row), _chunk_origin(task, 1, column))
        core = (_core(task, 0, row, origin[0]), _core(task, 1, column, origin[1]))
    return np.stack([_predict_image(image, task, origin, core) for image in block])


def _chunk_origin(task: BlockTask, axis: int, index: int) -> int:
    """Scene row/column of the first pixel of a chunk with its halo."""
    has_halo = index > 0 or task.halo_at_edges
    return task.chunk_starts[axis][index] - (task.depth[axis] if has_halo else 0)


def _core(task: BlockTask, axis: int, index: int, origin: int) -> tuple[int, int]:
    """Rows/columns of the chunk itself (without halo) in the block's pixels."""
    start = task.chunk_starts[axis][index]
    return start - origin, task.chunk_stops[axis][index] - origin


def _nodata_mask(image: np.ndarray, task: BlockTask,
                 region: tuple[slice, slice] | None = None) -> np.ndarray:
    """No data (y, x): all bands NaN (or ``task.nodata``), and the pixels that cannot be valid
    (:func:`~xcloud.engine.checks.invalid_pixels`); raises where the chunk cannot be
    reflectance (:func:`~xcloud.engine.checks.check_input`)."""
    empty = np.isnan(image).all(axis=0)
    if task.nodata is not None:
        empty |= (image == np.float32(task.nodata)).all(axis=0)
    finite = np.isfinite(image).all(axis=0)
    bands = _band_names(task)
    check_input(image, ~empty & finite, bands)
    return empty | invalid_pixels(image, empty, invalid=task.invalid, token=task.token,
                                  region=region, bands=bands, finite=finite)


def _band_names(task: BlockTask) -> tuple[str, ...]:
    return task.spec.bands or get(task.spec.name).info.bands


def empty_output(shape: tuple[int, int], task: BlockTask) -> np.ndarray:
    scheme = get(task.spec.name).info.scheme
    if task.output == "proba":
        return np.full((len(scheme.classes), *shape), np.nan, np.float32)
    return np.full((1, *shape), scheme.nodata.value, np.uint8)


def _resize(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area-average to a coarser grid, bilinear to a finer one (pixel centres, edges clamped).

    Integer factors use xcloud's numba kernels, other ratios torch's ``interpolate``.
    """
    height, width = array.shape[-2:]
    if (height, width) == tuple(shape):
        return array
    from ..data.resample import downsample_mean, upsample_bilinear

    down, up = height // shape[0], shape[0] // height
    if (shape[0] * down, shape[1] * down) == (height, width):
        return downsample_mean(array, down)
    if (height * up, width * up) == tuple(shape):
        return upsample_bilinear(array, up)
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    shrinking = shape[0] < array.shape[-2]
    if shrinking:
        out = F.interpolate(tensor, size=shape, mode="area")
    else:
        out = F.interpolate(tensor, size=shape, mode="bilinear", align_corners=False)
    return out[0].numpy()


def _model_region(core: Window | None, zoom: float) -> Window | None:
    """The core in model pixels, one pixel wider for the resampling back to the input grid."""
    if core is None:
        return None
    return cast(Window, tuple((math.floor(a * zoom) - 1, math.ceil(b * zoom) + 1) for a, b in core))


Window = tuple[tuple[int, int], tuple[int, int]]


def _core_slices(core: Window | None, shape: tuple[int, int]) -> tuple[slice, slice]:
    if core is None:
        return slice(0, shape[0]), slice(0, shape[1])
    return slice(*core[0]), slice(*core[1])


def upsample_core(proba: np.ndarray, core: Window | None, zoom: float,
                   shape: tuple[int, int]) -> np.ndarray:
    """Probabilities on the input grid, for the chunk's core only when the zoom allows it."""
    factor = round(1 / zoom)
    if core is None or not math.isclose(factor * zoom, 1.0):
        full = _resize(proba, shape)
        return full[(slice(None), *_core_slices(core, shape))]
    crops, offsets = [], []
    for (start, stop), size in zip(core, proba.shape[-2:], strict=True):
        first = max(0, start // factor - 1)
        crops.append(slice(first, min(size, -(-stop // factor) + 1)))
        offsets.append(start - first * factor)
        if factor * crops[-1].stop < stop:  # the model grid ends before the core (a block
            full = _resize(proba, shape)  # that is not a whole number of model pixels)
            return full[(slice(None), *_core_slices(core, shape))]
    window = _resize(proba[(slice(None), *crops)],
                     tuple(factor * (c.stop - c.start) for c in crops))
    rows, cols = (slice(o, o + b - a) for o, (a, b) in zip(offsets, core, strict=True))
    return window[:, rows, cols]


def _model_probabilities(model: CloudModel, image: np.ndarray, task: BlockTask,
                         origin: tuple[int, int], core: Window | None) -> np.ndarray:
    """Probabilities (classes, core rows, core columns) of the chunk's core."""
    height, width = image.shape[-2:]
    model_shape = (max(1, round(height * task.zoom)), max(1, round(width * task.zoom)))
    resampled = _resize(image, model_shape)
    proba = predict_tiled(
        model,
        resampled,
        tile_size=task.tile_size,
        overlap=task.tile_overlap,
        batch_size=task.batch_size,
        anchor=task.tile_anchor,
        origin=(round(origin[0] * task.zoom), round(origin[1] * task.zoom)),
        region=_model_region(core, task.zoom),
        scene=_model_scene(task),
        blend=task.tile_blend,
    )
    return upsample_core(proba, core, task.zoom, (height, width))


def _model_scene(task: BlockTask) -> tuple[int, int] | None:
    """The scene's size in model pixels (a last, partial one included); ``None``: unknown."""
    stops = (task.chunk_stops[0][-1], task.chunk_stops[1][-1])
    if not all(stops):
        return None
    return math.ceil(stops[0] * task.zoom - 1e-9), math.ceil(stops[1] * task.zoom - 1e-9)


def _prepared(image: np.ndarray, task: BlockTask, region: tuple[slice, slice]
              ) -> tuple[CloudModel | None, np.ndarray | None, np.ndarray]:
    """The model, the normalised image (no-data pixels 0) and the no-data mask of a block;
    model and image are ``None`` when the block holds no data at all (the model is not run).
    ``region`` is the chunk's own part of the block (where invalid pixels are counted)."""
    normalized, empty = normalized_block(image, task, region)
    return (None if normalized is None else loaded_model(task)), normalized, empty


def normalized_block(image: np.ndarray, task: BlockTask, region: tuple[slice, slice] | None = None
                ) -> tuple[np.ndarray | None, np.ndarray]:
    """The normalised image (no-data pixels 0; ``None`` when all are no data) and the no-data
    mask; invalid pixels inside ``region`` are counted."""
    empty = _nodata_mask(image, task, region)
    if empty.all():
        return None, empty
    # the loaded model's normalisation: a checkpoint may bring its own
    normalized = get_model(task.spec).info.normalization.apply(image)
    if np.may_share_memory(normalized, image):  # never write into the task's input
        normalized = normalized.copy()
    normalized[:, empty] = 0.0  # non-finite pixels are in `empty` (or raised) by now
    return normalized, empty


def loaded_model(task: BlockTask) -> CloudModel:
    """The task's model from this process's cache, with torch's threads set for one task."""
    model = get_model(task.spec)
    if task.spec.device == "cpu":
        limit_torch_threads(threads_per_task())
    return model


def finish_block(proba: np.ndarray, core_empty: np.ndarray, task: BlockTask,
            region: tuple[slice, slice] | None = None) -> np.ndarray:
    """The core's output (channels, rows, columns): probabilities, or classes; no data where
    ``core_empty`` or the probabilities are not finite (counted inside ``region``)."""
    model = get_model(task.spec)
    broken = nonfinite_pixels(proba, core_empty, strict=task.strict, token=task.token,
                              region=region)
    if task.output == "proba":
        proba = proba.astype(np.float32, copy=False)
        proba[:, core_empty | broken] = np.nan
        return proba
    values = np.asarray(model.info.scheme.values, np.uint8)
    classes = values[model.classify(np.where(broken, 0.0, proba))]
    classes[core_empty | broken] = model.info.scheme.nodata.value
    return classes[None]


def _predict_image(image: np.ndarray, task: BlockTask, origin: tuple[int, int],
                   core: Window | None = None) -> np.ndarray:
    """The block's output; only the core (what survives the trim) is computed."""
    output = empty_output(image.shape[-2:], task)
    inside = _core_slices(core, image.shape[-2:])
    model, normalized, empty = _prepared(image, task, inside)
    if model is None:
        return output
    assert normalized is not None
    if task.tile_size is None:  # pixel models: classify the whole block, so that spatial
        proba = _model_probabilities(model, normalized, task, origin, None)  # post-processing
        return finish_block(proba, empty, task, inside)  # sees the halo (the trim removes it)
    proba = _model_probabilities(model, normalized, task, origin, core)
    output[(slice(None), *inside)] = finish_block(proba, empty[inside], task)
    return output
