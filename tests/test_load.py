"""``xcloud.load`` on every provider's real item layout, assets rewritten to local files."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from tests.test_radiometry import real_items
from xcloud.data.load import SOURCE_ITEMS_ATTR, load
from xcloud.errors import MissingBandError, NoItemsError

DN, AOT_DN, SCL_CLASS = 2500, 150, 4
SIZE_10M = 12  # pixels of a 10 m band in the local copies


def _asset_epsg(item: dict, asset: dict) -> int:
    for source in (asset, item["properties"]):
        if source.get("proj:epsg"):
            return int(source["proj:epsg"])
        if source.get("proj:code"):
            return int(str(source["proj:code"]).split(":")[1])
    raise AssertionError(f"no CRS in {item['id']}")


def _write_band(path, epsg: int, origin: tuple[float, float], resolution: float,
                value: int, dtype: str) -> list[float]:
    import rasterio
    from rasterio.transform import from_origin

    size = max(1, SIZE_10M * 10 // int(resolution))
    data = np.full((size, size), value, dtype)
    data[0, 0] = 0  # one no-data pixel
    transform = from_origin(origin[0], origin[1], resolution, resolution)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1,
                       dtype=dtype, crs=f"EPSG:{epsg}", transform=transform, nodata=0) as out:
        out.write(data, 1)
    return [size, size], list(transform)[:6]


def localize(document: dict, keys: dict[str, str], folder) -> dict:
    """The item with the assets ``keys`` (asset key -> kind) on small local GeoTIFFs."""
    item = copy.deepcopy(document)
    for key, kind in keys.items():
        asset = item["assets"][key]
        epsg = _asset_epsg(item, asset)
        transform = asset.get("proj:transform") or [10, 0, 300000.0, 0, -10, 5000040.0]
        resolution = abs(transform[0]) if asset.get("proj:transform") else \
            float(asset.get("gsd") or 10)
        value, dtype = {"dn": (DN, "uint16"), "aot": (AOT_DN, "uint16"),
                        "scl": (SCL_CLASS, "uint8")}[kind]
        path = folder / f"{item['id']}_{key}.tif"
        shape, local = _write_band(path, epsg, (transform[2], transform[5]), resolution,
                                   value, dtype)
        asset.update({"href": path.as_uri(), "proj:shape": shape, "proj:transform": local,
                      "proj:code": f"EPSG:{epsg}", "type": "image/tiff; application=geotiff"})
        asset.pop("proj:epsg", None)
        asset.pop("proj:bbox", None)
    return item


# provider layout -> asset keys, expected offset of reflectance bands
PROVIDERS = [
    ("stac/earth_search/earth-search__sentinel-2-l2a__itemcollection.json",
     {"red": "dn", "swir16": "dn", "aot": "aot", "scl": "scl"}, 0.0),
    ("stac/earth_search/earth-search__sentinel-2-c1-l2a__itemcollection.json",
     {"red": "dn", "swir16": "dn", "aot": "aot", "scl": "scl"}, -0.1),
    ("stac/earth_search/earth-search__sentinel-2-l1c__itemcollection.json",
     {"red": "dn", "swir16": "dn", "cirrus": "dn"}, -0.1),
    ("stac/planetary_computer/pc_2019_from_pystac_client_cassette.json",
     {"B04": "dn", "B11": "dn", "AOT": "aot", "SCL": "scl"}, 0.0),
    ("stac/planetary_computer/pc_2022_pb0400_item.json",
     {"B04": "dn", "B11": "dn", "AOT": "aot", "SCL": "scl"}, -0.1),
    ("stac/planetary_computer/pc_2024_pb0510_4items.json",
     {"B04": "dn", "B11": "dn", "AOT": "aot", "SCL": "scl"}, -0.1),
    ("stac/stactools_sentinel2/S2A_OPER_MSI_L1C_TL_SGS__20181231T203637_A018414_T10SDG.json",
     {"red": "dn", "swir16": "dn", "cirrus": "dn"}, 0.0),
    ("stac/stactools_sentinel2/S2A_OPER_MSI_L2A_TL_VGS1_20220401T110010_A035382_T34LBP.json",
     {"red": "dn", "swir16": "dn", "aot": "aot", "scl": "scl"}, -0.1),
    ("stac/stactools_sentinel2/S2A_T60CWS_20240109T203651_L2A.json",
     {"red": "dn", "swir16": "dn", "aot": "aot", "scl": "scl"}, -0.1),
]


@pytest.mark.parametrize(("relative", "keys", "offset"), PROVIDERS,
                         ids=[p[0].split("/")[-1][:36] for p in PROVIDERS])
def test_known_dn_loads_as_expected_reflectance(relative, keys, offset, tmp_path):
    document = localize(real_items(relative)[0], keys, tmp_path)
    bands = list(keys)  # provider spellings on purpose
    data = load([document], bands=bands, resolution=10, chunks=8)
    reflectance = {"B04", "B11", "B10"} & set(data.data_vars)
    assert data.sizes["time"] == 1 and data.sizes["y"] == SIZE_10M
    assert data.attrs[SOURCE_ITEMS_ATTR] == [document["id"]]
    computed = data.compute()
    for name in reflectance:
        values = computed[name].values[0]
        assert values.dtype == np.float32
        assert values[SIZE_10M - 1, SIZE_10M - 1] == pytest.approx(DN * 1e-4 + offset, abs=1e-6)
        assert np.isnan(values[0, 0])  # digital number 0 is no data
    if "AOT" in computed:
        assert computed["AOT"].values[0, -1, -1] == pytest.approx(AOT_DN / 1000, abs=1e-6)
    if "SCL" in computed:
        assert computed["SCL"].dtype == np.uint8
        assert computed["SCL"].values[0, -1, -1] == SCL_CLASS


def test_load_is_lazy_and_keeps_the_grid(tmp_path):
    pytest.importorskip("rioxarray")
    relative, keys, _ = PROVIDERS[4]
    document = localize(real_items(relative)[0], keys, tmp_path)
    data = load([document], bands=["B04", "B11"], resolution=10, chunks=8)
    assert data["B04"].chunks is not None
    assert data.rio.crs.to_epsg() == document["properties"]["proj:epsg"]
    transform = data.rio.transform()
    expected = document["assets"]["B04"]["proj:transform"]
    assert (transform.c, transform.f, transform.a) == (expected[2], expected[5], 10.0)


def test_missing_band_and_empty_items(tmp_path):
    relative, keys, _ = PROVIDERS[4]
    document = localize(real_items(relative)[0], keys, tmp_path)
    with pytest.raises(MissingBandError, match="B10"):
        load([document], bands=["cirrus"])
    with pytest.raises(NoItemsError, match="widen"):
        load([], bands=["B04"])


def test_network_read_settings_are_checked_before_anything_is_read(tmp_path):
    relative, keys, _ = PROVIDERS[4]
    document = localize(real_items(relative)[0], keys, tmp_path)
    with pytest.raises(ValueError, match="gdal="):
        load([document], bands=["B04"], gdal={"not an option": 1})
    with pytest.raises(ValueError, match="aws= does not take"):
        load([document], bands=["B04"], aws={"anonymous": True})
    with pytest.raises(ValueError, match="read_retries"):
        load([document], bands=["B04"], read_retries=-1)


def test_the_read_settings_travel_with_the_graph(tmp_path):
    """GDAL options and AWS session arguments are in every read task (so every worker reads
    with them), not only in the process that called load."""
    import pickle

    from xcloud.data.load import CLOUD_GDAL_OPTIONS

    relative, keys, _ = PROVIDERS[4]
    document = localize(real_items(relative)[0], keys, tmp_path)
    data = load([document], bands=["B04"], gdal={"GDAL_HTTP_MAX_RETRY": 9},
                aws={"requester_pays": True})
    graph = pickle.dumps(dict(data["B04"].data.__dask_graph__()))
    for key, value in {**CLOUD_GDAL_OPTIONS, "GDAL_HTTP_MAX_RETRY": "9"}.items():
        assert key.encode() in graph and value.encode() in graph
    assert b"requester_pays" in graph
    np.testing.assert_array_equal(data["B04"].values, load([document], bands=["B04"])["B04"].values)


@pytest.mark.parametrize(("relative", "keys", "offset"), PROVIDERS,
                         ids=[p[0].split("/")[-1][:36] for p in PROVIDERS])
def test_load_carries_the_processing_level_and_baseline(relative, keys, offset, tmp_path):
    """Every provider's real item says its level (product type, product name or collection)."""
    document = localize(real_items(relative)[0], keys, tmp_path)
    data = load([document], bands=list(keys)[:1], resolution=10, chunks=8)
    expected = "L1C" if ("l1c" in relative.lower() or "L1C" in relative) else "L2A"
    assert data.attrs["xcloud:processing_level"] == expected
    baselines = data.attrs.get("xcloud:processing_baselines", [])
    assert all(len(b) == 5 and b[2] == "." for b in baselines)
    assert (offset == -0.1) <= any(b >= "04.00" for b in baselines) or not baselines


def test_a_model_of_the_other_level_warns_or_raises_naming_the_right_models(tmp_path):
    import xcloud
    from xcloud.errors import ProcessingLevelError, ProcessingLevelWarning

    relative, keys, _ = PROVIDERS[2]  # Earth Search L1C
    keys = {"blue": "dn", "green": "dn", "red": "dn", "nir": "dn", "swir16": "dn",
            "swir22": "dn"}
    document = localize(real_items(relative)[0], keys, tmp_path)
    data = load([document], bands=list(keys), resolution=10, chunks=8)
    assert data.attrs["xcloud:processing_level"] == "L1C"
    with pytest.warns(ProcessingLevelWarning, match=r"data are L1C .*ukis-6b-l1c"):
        xcloud.predict(data, model="ukis-6b-l2a")
    with pytest.raises(ProcessingLevelError, match="trained on L2A"):
        xcloud.predict(data, model="ukis-6b-l2a", strict=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", ProcessingLevelWarning)
        xcloud.predict(data, model="ukis-6b-l1c")  # the right level: no warning


def test_load_keeps_a_recipe_to_read_the_items_again(tmp_path):
    """Selections keep it (the values are the loaded ones); anything that changes a value or
    assembles the data anew drops it (see xcloud.data.load.recipe_of)."""
    from xcloud.data.load import recipe_of

    relative, keys, _ = PROVIDERS[4]
    document = localize(real_items(relative)[0], keys, tmp_path)
    data = load([document], bands=["B04", "B11"], resolution=10, chunks=4)
    assert not any("recipe" in key for key in data.attrs)  # two loads stay identical
    recipe = recipe_of(data)
    assert recipe is not None and recipe.geobox == data.odc.geobox
    assert recipe.bands == ("B04", "B11") and len(recipe.hrefs("B04")) == 1
    window = recipe_of(data.isel(y=slice(2, 9), x=slice(3, 12)))
    assert window is not None and window.geobox == data.isel(y=slice(2, 9),
                                                             x=slice(3, 12)).odc.geobox
    for kept in (data[["B04"]], data.isel(time=0), data.sel(time=data.time[0]),
                 data.chunk({"x": 6})):
        assert recipe_of(kept) is not None
    for changed in (data * 2, data.where(data > 0), data.fillna(0), data.astype("float64"),
                    data.compute(), data.assign(B04=data.B11)):
        assert recipe_of(changed) is None
    assert recipe_of(data, ["B04"]) is not None
    assert recipe_of(data.assign(ndvi=data.B04 * 2), ["B04"]) is not None  # B04 is unchanged
    assert recipe_of(data.assign_coords(x=data.x + 1)) is None  # not the loaded grid


def test_decoding_threads_fill_the_cores_a_task_is_given(monkeypatch, tmp_path):
    """Local reads decode with the task's threads; network reads, and a number the user set,
    keep one (an error in a decoder thread is lost: wrong pixels)."""
    import dask
    import rasterio

    from xcloud.data.load import _decode_threads, _ReadPolicy, recipe_of

    monkeypatch.setenv("XCLOUD_NUM_THREADS", "3")
    with dask.config.set(scheduler="sync"), rasterio.Env(GDAL_NUM_THREADS="1"):
        with _decode_threads(_ReadPolicy(strict=False), network=False):
            assert rasterio.env.getenv()["GDAL_NUM_THREADS"] == "3"
        for policy, network in ((_ReadPolicy(strict=False), True),
                                (_ReadPolicy(strict=False, decode_threads=False), False)):
            with _decode_threads(policy, network=network):
                assert rasterio.env.getenv()["GDAL_NUM_THREADS"] == "1"
    relative, keys, _ = PROVIDERS[4]
    document = localize(real_items(relative)[0], keys, tmp_path)
    fixed = load([document], bands=["B04"], gdal={"GDAL_NUM_THREADS": 2})
    assert recipe_of(fixed).plan.driver._policy.decode_threads is False
    assert recipe_of(load([document], bands=["B04"])).plan.driver._policy.decode_threads
