"""s2cloudless through the engine gives what S2PixelCloudDetector gives."""

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("s2cloudless", reason="needs: pip install 'xcloud[s2cloudless]'")

from s2cloudless import S2PixelCloudDetector

from xcloud.models.s2cloudless import disk

from .conftest import need_data

NAMES = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


@pytest.fixture(scope="module")
def reference_scenes():
    scenes = np.load(need_data("imagery/eolearn_reference_scenes/REFERENCE_SCENES.npy"))
    dataset = xr.Dataset(
        {n: (("time", "y", "x"), scenes[..., i]) for i, n in enumerate(NAMES)},
        coords={"y": 5.8e6 - 10 * np.arange(scenes.shape[1]),
                "x": 5e5 + 10 * np.arange(scenes.shape[2])},
    )
    return scenes, dataset


def test_disk_matches_opencv():
    from s2cloudless.utils import cv2_disk

    for radius in (1, 2, 4, 11):
        np.testing.assert_array_equal(disk(radius), cv2_disk(radius))


def test_mask_and_probability_equal_the_detector(reference_scenes):
    scenes, dataset = reference_scenes
    detector = S2PixelCloudDetector(all_bands=True)
    mask = dataset.cloudmask.predict(model="s2cloudless")
    np.testing.assert_array_equal(mask.values, detector.get_cloud_masks(scenes))
    raw = S2PixelCloudDetector(all_bands=True).get_cloud_probability_maps(scenes)
    proba = dataset.cloudmask.predict(model="s2cloudless", output="proba", halo=0)
    assert proba.dims == ("time", "class", "y", "x")
    # averaging over a disk of radius 1 smooths the raw probability, it keeps its mean
    assert abs(float(proba.sel({"class": "cloud"}).mean()) - float(raw.mean())) < 0.01


def test_chunked_equals_whole(reference_scenes):
    _, dataset = reference_scenes
    whole = dataset.cloudmask.predict(model="s2cloudless")
    for size in (40, 23):  # dilation and averaging near chunk borders see the halo
        chunked = dataset.chunk({"y": size, "x": size}).cloudmask.predict(model="s2cloudless")
        np.testing.assert_array_equal(chunked.values, whole.values)
