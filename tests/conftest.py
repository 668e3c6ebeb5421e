"""Shared fixtures: the real data folder (optional) and small generated scenes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import xcloud  # noqa: F401  (registers the accessor)
from xcloud.synthetic import synthetic_scene

UKIS_BANDS = ["blue", "green", "red", "nir", "swir16", "swir22"]


def data_dir() -> Path:
    """The real-data folder: $XCLOUD_TEST_DATA, else ../shared/data beside the repository."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    return Path(os.environ.get("XCLOUD_TEST_DATA", default))


def need_data(relative: str) -> Path:
    path = data_dir() / relative
    if not path.exists():
        pytest.skip(f"real test data {relative} not found under {data_dir()} "
                    "(set XCLOUD_TEST_DATA)")
    return path


@pytest.fixture(scope="session")
def labelled_patch() -> dict[str, np.ndarray]:
    """ukis-csmask's real labelled Sentinel-2 patch: img (512, 512, 6), msk (512, 512, 1)."""
    with np.load(need_data("labeled/ukis_csmask/sentinel2.npz")) as data:
        return {"img": data["img"], "msk": data["msk"]}


@pytest.fixture(scope="session")
def patch_array(labelled_patch) -> xr.DataArray:
    """The labelled patch as a (band, y, x) DataArray with Earth Search band names."""
    image = labelled_patch["img"].transpose(2, 0, 1)
    return xr.DataArray(image, dims=("band", "y", "x"), coords={"band": UKIS_BANDS})


@pytest.fixture(scope="session")
def reference_labels(labelled_patch) -> np.ndarray:
    """Labels mapped to the ukis scheme: 0 shadow, 1-3 clear, 4 cloud -> 2, 0, 0, 0, 1."""
    return np.array([2, 0, 0, 0, 1], np.uint8)[labelled_patch["msk"][..., 0]]


@pytest.fixture
def scene() -> xr.Dataset:
    """A generated 13-band 10 m scene (192 x 192 px) with CRS and coordinates."""
    return synthetic_scene(192, seed=1)
