"""Generated Sentinel-2-like scenes for demos and tests (no download needed).

The scene is a smooth surface (vegetation and soil spectra) under bright, spectrally flat
clouds with darker, offset shadows. It looks like a scene to a cloud masker; it is not one.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import ndimage

from .data.bands import SENTINEL2_BANDS

__all__ = ["SPECTRA", "SPECTRAL_BANDS", "smooth_field", "synthetic_scene"]

SPECTRA = {
    "vegetation": [0.12, 0.09, 0.08, 0.05, 0.10, 0.22, 0.27, 0.30, 0.31, 0.10, 0.002, 0.16, 0.08],
    "soil": [0.13, 0.11, 0.12, 0.14, 0.17, 0.20, 0.22, 0.24, 0.25, 0.09, 0.003, 0.30, 0.24],
    "cloud": [0.45, 0.45, 0.46, 0.47, 0.50, 0.52, 0.53, 0.53, 0.54, 0.20, 0.05, 0.38, 0.26],
}
"""Typical top-of-atmosphere reflectance of vegetation, bare soil and thick cloud in the 13
bands of :data:`SPECTRAL_BANDS` (B01 .. B12 with B8A and B10)."""

SPECTRAL_BANDS = [b for b in SENTINEL2_BANDS.values() if b.wavelength_min is not None]
"""The 13 Sentinel-2 spectral bands, in the order of :data:`SPECTRA`."""


def smooth_field(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """A ``size`` x ``size`` Gaussian random field (smoothed over ``sigma`` pixels, periodic),
    standardised to mean 0 and standard deviation 1."""
    noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return (noise - noise.mean()) / (noise.std() + 1e-12)


def synthetic_scene(size: int = 512, *, seed: int = 0, cloud_cover: float = 0.3,
                    resolution: float = 10.0, epsg: int = 32633) -> xr.Dataset:
    """A (y, x) Dataset of all 13 bands in reflectance, with x/y coordinates and ``spatial_ref``."""
    rng = np.random.default_rng(seed)
    soil = 1 / (1 + np.exp(-2 * smooth_field(rng, size, size / 16)))
    cloud_field = smooth_field(rng, size, size / 20)
    cloud = np.clip((cloud_field - np.quantile(cloud_field, 1 - cloud_cover)) * 3, 0, 1)
    shift = max(1, size // 25)
    shadow = np.roll(cloud, (shift, shift), axis=(0, 1)) * (1 - cloud)
    x = 500000.0 + resolution * (np.arange(size) + 0.5)
    y = 5800000.0 - resolution * (np.arange(size) + 0.5)
    variables = {}
    for index, band in enumerate(SPECTRAL_BANDS):
        surface = (1 - soil) * SPECTRA["vegetation"][index] + soil * SPECTRA["soil"][index]
        surface = surface * (1 - 0.7 * shadow)
        value = (1 - cloud) * surface + cloud * SPECTRA["cloud"][index]
        value = value + rng.normal(0, 0.003, value.shape)
        variables[band.name] = (("y", "x"), value.astype(np.float32))
    scene = xr.Dataset(variables, coords={"y": y, "x": x})
    try:
        import rioxarray  # noqa: F401
    except ImportError:
        return scene
    return scene.rio.write_crs(epsg)
