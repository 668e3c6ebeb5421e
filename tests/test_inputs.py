import numpy as np
import pytest
import xarray as xr

from xcloud.data.inputs import band_cube, check_regular_grid, pixel_size, to_reflectance
from xcloud.errors import BandError, GridError, InputDtypeError, XcloudWarning


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


# -- issue 18: geometry and per-band dtype ------------------------------------------------------

def _two_band_scene(x, y):
    values = np.full((2, len(y), len(x)), 0.2, np.float32)
    return xr.Dataset({"B02": (("y", "x"), values[0]), "B03": (("y", "x"), values[1])},
                      coords={"x": x, "y": y})


def test_uneven_x_coordinates_are_refused():
    x = np.cumsum(np.r_[0, np.full(20, 10.0), np.full(20, 11.0)])
    y = 5000 - 10.0 * np.arange(41)
    with pytest.raises(GridError, match="x coordinates are not evenly spaced"):
        band_cube(_two_band_scene(x, y), ("B02", "B03")).pipe(check_regular_grid)


def test_pixels_that_are_not_square_are_refused():
    x = 300000 + 10.0 * np.arange(30)
    y = 5000 - 30.0 * np.arange(30)
    with pytest.raises(GridError, match="not square: x steps 10, y steps 30"):
        check_regular_grid(band_cube(_two_band_scene(x, y), ("B02", "B03")))
    scene = _two_band_scene(x, 5000 - 10.0 * np.arange(30))
    check_regular_grid(band_cube(scene, ("B02", "B03")))  # square, even: fine


def test_one_integer_band_among_float_bands_is_refused():
    scene = _two_band_scene(np.arange(8.0) * 10, np.arange(8.0) * -10)
    scene["B03"] = (scene["B03"] * 10000).astype(np.uint16)
    with pytest.raises(InputDtypeError, match="bands B03 are integers"):
        band_cube(scene, ("B02", "B03"))
