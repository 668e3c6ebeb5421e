import numpy as np
import pytest
import xarray as xr

from xcloud.data.inputs import band_cube, pixel_size, to_reflectance
from xcloud.errors import BandError, InputDtypeError, XcloudWarning


def test_dataset_bands_are_stacked_in_model_order(scene):
    cube = band_cube(scene, ["B11", "B02"])
    assert cube.dims == ("band", "y", "x")
    assert list(cube["band"].values) == ["B11", "B02"]
    np.testing.assert_array_equal(cube.sel(band="B02"), scene["B02"])
    assert "spatial_ref" in cube.coords


def test_dask_bands_are_stacked_by_one_task_per_chunk(scene):
    lazy = scene.chunk({"y": 64, "x": 96})
    lazy["B02"].attrs["units"] = "1"
    cube = band_cube(lazy, ["B11", "B02", "B04"])
    graph = cube.data.__dask_graph__()
    assert len(graph.layers[cube.data.name]) == cube.data.npartitions == 6
    assert graph.dependencies[cube.data.name] == {lazy[n].data.name
                                                  for n in ("B11", "B02", "B04")}
    assert cube.dims == ("band", "y", "x") and cube.data.chunks[0] == (3,)
    assert cube.attrs == scene["B11"].attrs and "spatial_ref" in cube.coords
    np.testing.assert_array_equal(cube.values, np.stack([scene[n].values
                                                         for n in ("B11", "B02", "B04")]))


def test_bands_with_other_chunks_are_stacked_too(scene):
    lazy = scene.chunk({"y": 64, "x": 96})
    lazy["B02"] = lazy["B02"].chunk({"y": 100})
    cube = band_cube(lazy, ["B11", "B02"])
    np.testing.assert_array_equal(cube.values, np.stack([scene["B11"], scene["B02"]]))


def test_dataarray_with_rioxarray_long_names():
    data = np.zeros((3, 4, 5), np.float32)
    array = xr.DataArray(data, dims=("band", "y", "x"), coords={"band": [1, 2, 3]},
                         attrs={"long_name": ("B04", "B03", "B02")})
    cube = band_cube(array, ["B02", "B03", "B04"])
    assert list(cube["band"].values) == ["B02", "B03", "B04"]


def test_dataarray_needs_a_band_dim():
    with pytest.raises(BandError, match="'band' dimension"):
        band_cube(xr.DataArray(np.zeros((4, 4)), dims=("y", "x")), ["B02"])


def test_time_dim_comes_first(scene):
    series = xr.concat([scene, scene], dim="time")
    cube = band_cube(series.transpose("y", "time", "x"), ["B02", "B03"])
    assert cube.dims == ("time", "band", "y", "x")


def test_integers_need_scale():
    cube = xr.DataArray(np.full((1, 2, 2), 1200, np.uint16), dims=("band", "y", "x"))
    with pytest.raises(InputDtypeError, match=r"scale=0\.0001"):
        to_reflectance(cube, scale=None, offset=None)
    out = to_reflectance(cube, scale=1e-4, offset=-0.1)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 0.02, atol=1e-6)


def test_pixel_size_from_coordinates(scene):
    assert pixel_size(scene["B02"], default=30) == pytest.approx(10)


def test_pixel_size_unknown_warns():
    with pytest.warns(XcloudWarning, match="resolution="):
        assert pixel_size(xr.DataArray(np.zeros((3, 3)), dims=("y", "x")), default=30) == 30
