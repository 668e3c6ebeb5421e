"""The chunk kernel: what each Dask task runs on one chunk (with its halo) of a
(time, band, y, x) cube, and the steps it shares with :mod:`xcloud.engine.tile_once`.

A chunk's way through :func:`predict_block`: :func:`normalized_block` (no-data mask, checks of
the input, the model's normalisation), the model on the model grid (resampled, in tiles on the
scene's lattice), :func:`upsample_core` back to the input grid and :func:`finish_block`
(classes or probabilities, no data where the input had none or the output is not finite).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np

from ..models.classes import ClassScheme
from ..models.protocol import CloudModel, ModelInfo, classifies_by_argmax
from .cache import ModelSpec, get_model
from .checks import check_input, count_nonfinite, invalid_pixels, nonfinite_pixels
from .device import limit_torch_threads, threads_per_task
from .geometry import ChunkGrid, Window, to_model, whole_factor
from .tiling import TileLattice

__all__ = ["BlockTask", "classes_of", "empty_output", "finish_block", "loaded_model",
           "normalized_block", "predict_block", "scheme_classes", "upsample_core",
           "upsampled_output"]


@dataclass(frozen=True)
class BlockTask:
    """Everything a chunk task needs besides its data; small and picklable (no model inside).

    ``info`` is the model as ``predict`` resolved it (its bands, its class scheme); the loaded
    model brings only what its weights decide (its normalisation and its ``classify``).
    ``grid`` locates the chunks, their halo and the model grid (its ``zoom``); ``tiles`` is the
    tile lattice (``None`` for pixel models); ``shared`` whether the tiles are shared between
    chunks (:mod:`xcloud.engine.tile_once`) rather than run per chunk.
    """

    spec: ModelSpec
    info: ModelInfo
    grid: ChunkGrid
    tiles: TileLattice | None
    output: str
    batch_size: int
    nodata: float | None
    invalid: str
    shared: bool = False
    strict: bool = False
    token: str = ""

    @property
    def n_out(self) -> int:
        """Channels of the output block: 1 for classes, one per class for probabilities."""
        return len(self.info.scheme.classes) if self.output == "proba" else 1


def predict_block(block: np.ndarray, task: BlockTask,
                  block_info: dict | None = None) -> np.ndarray:
    """The chunk kernel: classes (t, 1, y, x) uint8 or probabilities (t, classes, y, x)
    float32 of one chunk with its halo.

    ``block_info`` (given by Dask) locates the chunk, so that tiles follow the scene lattice.
    """
    origin, core = (0, 0), None
    if block_info and None in block_info:
        _, _, row, column = block_info[None]["chunk-location"]
        origin, core = task.grid.block_origin(row, column), task.grid.core(row, column)
    return np.stack([_predict_image(image, task, origin, core) for image in block])


def _predict_image(image: np.ndarray, task: BlockTask, origin: tuple[int, int],
                   core: Window | None = None) -> np.ndarray:
    """The block's output; only the core (what survives the trim) is computed."""
    output = empty_output(image.shape[-2:], task)
    inside = _core_slices(core, image.shape[-2:])
    normalized, empty = normalized_block(image, task, inside)
    if normalized is None:  # no data at all: the model is not run
        return output
    model = loaded_model(task)
    shape = image.shape[-2:]
    if task.tiles is None:  # pixel models: classify the whole block, so that spatial
        proba = upsample_core(_model_probabilities(model, normalized, task, origin, None),
                              None, task.grid.zoom, shape)  # post-processing sees the halo
        return finish_block(proba, empty, task, inside)  # (the trim removes it)
    proba = _model_probabilities(model, normalized, task, origin, core)
    output[(slice(None), *inside)] = upsampled_output(proba, core, task.grid.zoom, shape,
                                                      empty[inside], task)
    return output


def _core_slices(core: Window | None, shape: tuple[int, int]) -> tuple[slice, slice]:
    if core is None:
        return slice(0, shape[0]), slice(0, shape[1])
    return slice(*core[0]), slice(*core[1])


def _model_probabilities(model: CloudModel, image: np.ndarray, task: BlockTask,
                         origin: tuple[int, int], core: Window | None) -> np.ndarray:
    """Probabilities (classes, rows, columns) on the model grid, of the chunk's core and
    the model pixels around it that :func:`upsample_core` needs (of the whole block without
    ``core``).

    The block is resampled as a whole: its size and origin on the model grid are rounded to
    the nearest model pixel.
    """
    zoom = task.grid.zoom
    height, width = image.shape[-2:]
    resampled = _resize(image, (max(1, round(height * zoom)), max(1, round(width * zoom))))
    if task.tiles is None:  # pixel models take the whole block at once
        proba = model.predict_proba(resampled[None])[0]
    else:
        proba = task.tiles.predict(
            model, resampled, batch_size=task.batch_size,
            origin=(round(origin[0] * zoom), round(origin[1] * zoom)),
            region=None if core is None else _model_region(core, zoom),
            scene=task.grid.model_shape)
    return proba


def _model_region(core: Window, zoom: float) -> Window:
    """The core in model pixels, one pixel wider for the resampling back to the input grid."""
    rows, columns = (to_model(span, zoom, margin=1) for span in core)
    return rows, columns


def upsample_core(proba: np.ndarray, core: Window | None, zoom: float,
                  shape: tuple[int, int], *, classes: bool = False) -> np.ndarray:
    """Probabilities on the input grid, for the chunk's core only when the zoom allows it;
    with ``classes``, the index of the most probable channel instead (rows, columns) uint8,
    :data:`~xcloud.data.resample.NO_CLASS` where not finite, without the probabilities on
    the input grid ever being stored."""
    resize = _argmax_resized if classes else _resize
    crops = None if core is None else _model_crops(core, proba.shape[-2:], zoom)
    if core is None or crops is None:
        full = resize(proba, shape)
        return full[(Ellipsis, *_core_slices(core, shape))]
    factor = cast(int, whole_factor(zoom))
    window = resize(proba[(slice(None), *crops)],
                    (factor * (crops[0].stop - crops[0].start),
                     factor * (crops[1].stop - crops[1].start)))
    rows, cols = (slice(start - crop.start * factor, stop - crop.start * factor)
                  for crop, (start, stop) in zip(crops, core, strict=True))
    return window[..., rows, cols]


def upsampled_output(proba: np.ndarray, core: Window | None, zoom: float,
                     shape: tuple[int, int], core_empty: np.ndarray,
                     task: BlockTask) -> np.ndarray:
    """``finish_block(upsample_core(proba, core, zoom, shape), core_empty, task)``; classes
    of a model that classifies by argmax are made in one pass from the model grid's
    probabilities (the same classes: :func:`~xcloud.data.resample.upsample_bilinear_argmax`)."""
    model = loaded_model(task)
    if task.output != "class" or not classifies_by_argmax(model):
        return finish_block(upsample_core(proba, core, zoom, shape), core_empty, task)
    from ..data.resample import NO_CLASS

    index = upsample_core(proba, core, zoom, shape, classes=True)
    broken = count_nonfinite(index == NO_CLASS, core_empty, strict=task.strict,
                             token=task.token)
    classes = scheme_classes(index, task.info.scheme)
    classes[core_empty | broken] = task.info.scheme.nodata.value
    return classes[None]


def scheme_classes(index: np.ndarray, scheme: ClassScheme) -> np.ndarray:
    """The scheme's class values (uint8) of channel indices, its no-data value for
    :data:`~xcloud.data.resample.NO_CLASS`."""
    from ..data.resample import NO_CLASS

    values = np.full(NO_CLASS + 1, scheme.nodata.value, np.uint8)
    values[:len(scheme.values)] = scheme.values
    return values[index]


def _argmax_resized(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``argmax`` over channels of :func:`_resize`'s result (NO_CLASS where not finite);
    whole upsampling factors in one pass."""
    from ..data.resample import NO_CLASS, upsample_bilinear_argmax

    height, width = array.shape[-2:]
    up = shape[0] // height
    if up >= 1 and (height * up, width * up) == tuple(shape):
        return upsample_bilinear_argmax(array, up)
    resized = _resize(array, shape)
    broken = ~np.isfinite(resized).all(axis=0)
    index = np.argmax(np.where(broken, 0.0, resized), axis=0).astype(np.uint8)
    index[broken] = NO_CLASS
    return index


def _model_crops(core: Window, size: tuple[int, ...], zoom: float
                 ) -> tuple[slice, slice] | None:
    """The model pixels (inside the model grid of ``size``) that the upsampling of ``core``
    needs; ``None`` unless the zoom is a whole factor and the model grid reaches the core's
    end (a block that is not a whole number of model pixels does not)."""
    if whole_factor(zoom) is None:
        return None
    crops = []
    for (low, high), length in zip(_model_region(core, zoom), size[-2:], strict=True):
        if length < high - 1:  # high - 1: the model pixel edge at or after the core's end
            return None
        crops.append(slice(max(0, low), min(length, high)))
    return crops[0], crops[1]


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
    if shape[0] < height:
        out = F.interpolate(tensor, size=shape, mode="area")
    else:
        out = F.interpolate(tensor, size=shape, mode="bilinear", align_corners=False)
    return out[0].numpy()


# The steps both paths run on a chunk (see also upsample_core)


def empty_output(shape: tuple[int, int], task: BlockTask) -> np.ndarray:
    """An output block (channels, rows, columns) of no data."""
    if task.output == "proba":
        return np.full((len(task.info.scheme.classes), *shape), np.nan, np.float32)
    return np.full((1, *shape), task.info.scheme.nodata.value, np.uint8)


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


def _nodata_mask(image: np.ndarray, task: BlockTask,
                 region: tuple[slice, slice] | None = None) -> np.ndarray:
    """No data (y, x): all bands NaN (or ``task.nodata``), and the pixels that cannot be valid
    (:func:`~xcloud.engine.checks.invalid_pixels`); raises where the chunk cannot be
    reflectance (:func:`~xcloud.engine.checks.check_input`)."""
    empty = np.isnan(image).all(axis=0)
    if task.nodata is not None:
        empty |= (image == np.float32(task.nodata)).all(axis=0)
    finite = np.isfinite(image).all(axis=0)
    bands = task.info.bands
    check_input(image, ~empty & finite, bands)
    return empty | invalid_pixels(image, empty, invalid=task.invalid, token=task.token,
                                  region=region, bands=bands, finite=finite)


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
    broken = nonfinite_pixels(proba, core_empty, strict=task.strict, token=task.token,
                              region=region)
    if task.output == "proba":
        proba = proba.astype(np.float32, copy=False)
        proba[:, core_empty | broken] = np.nan
        return proba
    return classes_of(proba, spec=task.spec, scheme=task.info.scheme, nonfinite=broken,
                      nodata=core_empty | broken)[None]


def classes_of(proba: np.ndarray, *, spec: ModelSpec, scheme: ClassScheme,
               nonfinite: np.ndarray, nodata: np.ndarray) -> np.ndarray:
    """The scheme's class values (rows, columns) of probabilities (channels, rows, columns).

    Parameters
    ----------
    proba
        The model's probabilities.
    spec, scheme
        The model (its ``classify``, loaded once per process) and its class scheme.
    nonfinite
        Pixels whose probabilities are not finite: classified from zeros, never from NaN.
    nodata
        Pixels that get the scheme's no-data value.

    Returns
    -------
    numpy.ndarray
        uint8 class values.
    """
    classes = np.asarray(scheme.values, np.uint8)[
        get_model(spec).classify(np.where(nonfinite, 0.0, proba))]
    classes[nodata] = scheme.nodata.value
    return classes
