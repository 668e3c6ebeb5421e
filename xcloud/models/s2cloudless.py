"""Sentinel Hub's s2cloudless: a LightGBM pixel classifier on 10 Level-1C bands.

The booster file ships in the ``s2cloudless`` package (CC-BY-SA-4.0 model, MIT code). The
probability of cloud is optionally averaged over a disk (``average_over`` pixels), thresholded
(``threshold``) and the cloud mask dilated with a disk (``dilation_size`` pixels), exactly as
``S2PixelCloudDetector`` does; the defaults are that class's defaults.

Two runtimes evaluate the trees, with identical probabilities: ``"numba"`` (the default,
``runtime="auto"``), xcloud's own evaluator of the booster file
(:mod:`xcloud.models._lightgbm`), and ``"lightgbm"``, the package's ``Booster``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import cast

import numpy as np
from scipy import ndimage

from ..errors import MissingWeightsError
from .classes import S2CLOUDLESS_SCHEME
from .protocol import BaseCloudModel, ModelInfo
from .registry import ModelEntry, register, verify_checksum

__all__ = ["RUNTIMES", "S2CloudlessModel", "disk"]

_BOOSTER = "pixel_s2_cloud_detector_lightGBM_v0.1.txt"
_SHA256 = "0f92b6822cc0ad42982f55bab9b1688329e119451ad9a9e0a56384b9f37bc61d"
RUNTIMES = ("auto", "numba", "lightgbm")


def disk(radius: int) -> np.ndarray:
    """Disk structuring element of ``radius`` (as ``cv2.circle`` filled / skimage's disk)."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)


def _booster_path() -> Path:
    """The booster file in the installed ``s2cloudless`` package, found without importing it
    (its import loads OpenCV and LightGBM, which the numba runtime does not need)."""
    spec = importlib.util.find_spec("s2cloudless")
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError(
            "the s2cloudless model ships in the 's2cloudless' package; install it with "
            "pip install 'xcloud[s2cloudless]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models" / _BOOSTER


class S2CloudlessModel(BaseCloudModel):
    """LightGBM cloud probability with s2cloudless' averaging, threshold and dilation.

    ``runtime``: ``"numba"`` (or ``"auto"``) evaluates the booster file with xcloud's numba
    kernels, ``"lightgbm"`` with ``lightgbm.Booster``; both give the same probabilities.
    """

    def __init__(self, info: ModelInfo, booster_file: Path, *, threshold: float = 0.4,
                 average_over: int = 1, dilation_size: int = 1, runtime: str = "auto") -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
        self.info = info
        self.runtime = "numba" if runtime == "auto" else runtime
        if self.runtime == "numba":
            from ._lightgbm import load_model

            self.trees = load_model(booster_file)
        else:
            from lightgbm import Booster

            self.booster = Booster(model_file=str(booster_file))
        self.threshold = threshold
        self.average_over = average_over
        self.dilation_size = dilation_size

    def cloud_probability(self, batch: np.ndarray) -> np.ndarray:
        """Raw per-pixel cloud probability (N, H, W) of reflectance (N, 10, H, W)."""
        n, bands, height, width = batch.shape
        if self.runtime == "numba":  # (pixels, bands) view of the band-major batch, no copy
            pixels = np.moveaxis(batch, 1, 0).reshape(bands, -1).T
            proba = self.trees.predict(pixels, threads=self._threads())
        else:
            pixels = np.moveaxis(batch, 1, -1).reshape(-1, bands)
            # an array for dense features (a list only for sparse contributions)
            proba = cast(np.ndarray, self.booster.predict(pixels, num_threads=self._threads()))
        return proba.reshape(n, height, width).astype(np.float32)

    @staticmethod
    def _threads() -> int:
        from .._threads import threads_per_task

        return threads_per_task()

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Averaged cloud probability as (N, 2, H, W): channel 0 clear, 1 cloud."""
        cloud = self.cloud_probability(batch)
        if self.average_over:
            kernel = disk(self.average_over).astype(np.float32)
            kernel /= kernel.sum()
            cloud = np.stack([ndimage.convolve(c, kernel, mode="reflect") for c in cloud])
        return np.stack([1.0 - cloud, cloud], axis=1)

    def classify(self, proba: np.ndarray) -> np.ndarray:
        """Threshold the cloud probability, then dilate the cloud mask."""
        cloud = proba[1] > self.threshold
        if self.dilation_size:
            cloud = ndimage.binary_dilation(cloud, structure=disk(self.dilation_size))
        return cloud.astype(np.uint8)


INFO = ModelInfo(
    name="s2cloudless",
    version="1.7.3 (lightGBM v0.1)",
    bands=("B01", "B02", "B04", "B05", "B08", "B8A", "B09", "B10", "B11", "B12"),
    resolution=10.0,
    scheme=S2CLOUDLESS_SCHEME,
    tile_size=None,
    tile_overlap=0,
    halo=4,
    level="L1C",
    licence="CC-BY-SA-4.0 (model), MIT (code)",
    weights_source=f"PyPI package s2cloudless ({_BOOSTER})",
    description="Sentinel Hub s2cloudless LightGBM pixel classifier",
    references=("Zupanc 2017, Sentinel Hub blog: Improving cloud detection with machine learning",),
)


def _load(*, weights: str | Path | None = None, device: str = "cpu",
          runtime: str = "auto") -> S2CloudlessModel:
    path = Path(weights) if weights is not None else _booster_path()
    if not path.is_file():
        raise MissingWeightsError(f"booster file {path} does not exist")
    if weights is None:
        verify_checksum(path, _SHA256)
    return S2CloudlessModel(INFO, path, runtime=runtime)


ENTRY = register(ModelEntry(info=INFO, loader=_load, sha256=_SHA256, weights_filename=_BOOSTER,
                            precision_note="s2cloudless evaluates its LightGBM trees as "
                                           "trained"),
                 overwrite=True)
