"""The small protocol every xcloud model follows, and the metadata that describes it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from ..data.bands import Band, band
from .classes import ClassScheme

__all__ = ["BaseCloudModel", "CloudModel", "ModelInfo", "Normalization", "classifies_by_argmax"]


@dataclass(frozen=True)
class Normalization:
    """Per-band input normalisation applied to reflectance before the network.

    ``kind`` is ``"standard"`` ((x - offset) / scale, offset = mean, scale = std),
    ``"minmax"`` ((x - offset) / scale, offset = min, scale = max - min, then clipped to [0, 1]),
    ``"minmax_floor"`` (the same, then values below 0 set to 0 and no upper clip: KappaMask's
    DataGenerator) or ``"none"``.
    """

    kind: str = "none"
    offset: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Normalise ``x`` of shape (..., bands, y, x) in float32."""
        x = np.asarray(x, dtype=np.float32)
        if self.kind == "none":
            return x
        shape = (-1, 1, 1)
        offset = np.asarray(self.offset, np.float32).reshape(shape)
        scale = np.asarray(self.scale, np.float32).reshape(shape)
        out = (x - offset) / scale
        if self.kind == "minmax_floor":
            return np.maximum(out, 0.0)
        return np.clip(out, 0.0, 1.0) if self.kind == "minmax" else out


@dataclass(frozen=True)
class ModelInfo:
    """What the engine and users need to know about a model without loading it.

    ``resolution`` is the ground sampling distance (m) the model was trained at; ``tile_size``
    is its preferred tile in model pixels (``None`` for pixel models, which take any size);
    ``tile_overlap`` the overlap between tiles and ``tile_anchor`` where the scene-wide tile
    lattice starts (default ``-tile_overlap``); ``tile_blend`` how overlapping tiles are
    blended (``"ramp"``, a raised-cosine ramp across the overlap, or ``"mean"``, equal weights
    as a plain sliding-window average); ``halo`` is the context (model pixels) each
    chunk borrows from its neighbours, by default (``None``) the tile size plus 2: every tile
    that touches a chunk then lies inside the chunk's halo, so chunked results equal
    whole-image results exactly.
    """

    name: str
    version: str
    bands: tuple[str, ...]
    resolution: float
    scheme: ClassScheme
    normalization: Normalization = Normalization()
    tile_size: int | None = 256
    tile_overlap: int = 32
    halo: int | None = None
    tile_anchor: int | None = None
    tile_blend: str = "ramp"
    level: str = "L1C"
    licence: str = ""
    weights_source: str = ""
    needs_weights_file: bool = False
    description: str = ""
    references: tuple[str, ...] = field(default_factory=tuple)

    @property
    def context(self) -> int:
        """Halo in model pixels: ``halo`` or, by default, what makes chunking exact."""
        if self.halo is not None:
            return self.halo
        return self.tile_size + 2 if self.tile_size else 0

    @property
    def band_info(self) -> tuple[Band, ...]:
        """Full :class:`Band` records (wavelengths, native resolutions) of :attr:`bands`."""
        return tuple(band(b) for b in self.bands)


@runtime_checkable
class CloudModel(Protocol):
    """A loaded model: metadata, and float32 batches to class probabilities."""

    info: ModelInfo

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Map normalised input (N, bands, H, W) float32 to probabilities (N, classes, H, W)."""
        ...

    def classify(self, proba: np.ndarray) -> np.ndarray:
        """Map blended probabilities (classes, H, W) of one chunk to channel indices (H, W)."""
        ...


class BaseCloudModel:
    """Convenience base class: argmax classification."""

    info: ModelInfo

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """Class probabilities ``(N, C, H, W)`` of a batch ``(N, B, H, W)`` of reflectance."""
        raise NotImplementedError

    def classify(self, proba: np.ndarray) -> np.ndarray:
        """Most probable channel per pixel."""
        return np.argmax(proba, axis=0).astype(np.uint8)


def classifies_by_argmax(model: object) -> bool:
    """Whether ``model`` classifies as :class:`BaseCloudModel` does: the most probable
    channel, the first of equal ones (``numpy.argmax``), pixel by pixel.

    The engine then classifies upsampled probabilities without storing them
    (:func:`xcloud.data.resample.upsample_bilinear_argmax`); a model with its own ``classify``
    (a threshold, a dilation) is given the probabilities.
    """
    return getattr(type(model), "classify", None) is BaseCloudModel.classify
