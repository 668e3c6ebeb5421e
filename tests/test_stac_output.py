"""STAC items of masks: classes, projection, footprint, time, links and safe file names."""

from __future__ import annotations

import datetime as dt
import json

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import xcloud
from xcloud.errors import StacError
from xcloud.models.registry import get
from xcloud.outputs import cf, mask_item, to_zarr, write_item
from xcloud.outputs.stac import PROCESSING_EXTENSION, item_path, offline_schemas, validate_item
from xcloud.synthetic import synthetic_scene

pystac = pytest.importorskip("pystac")
pytest.importorskip("jsonschema")
pyproj = pytest.importorskip("pyproj")
shapely = pytest.importorskip("shapely.geometry")
pytest.importorskip("rioxarray")

T0 = np.datetime64("2024-06-01T10:00:00.123456", "ns")
T1 = np.datetime64("2024-06-11T10:00:00", "ns")
SOURCES = ["S2B_33UUU_20240601_0_L1C", "S2A_33UUU_20240611_0_L1C"]


@pytest.fixture(scope="module")
def mask() -> xr.DataArray:
    scene = synthetic_scene(64, seed=3).chunk({"y": 32, "x": 32})
    result = xcloud.predict(scene, model="ukis-6b-l1c").expand_dims(time=[T0])
    result.attrs["source_items"] = SOURCES[:1]
    return result


@pytest.fixture(scope="module")
def store(mask, tmp_path_factory):
    path = tmp_path_factory.mktemp("stac") / "T33UUU.zarr"
    to_zarr(mask, path)
    return path


def big_tile(x0: float = 450000.0, size: int = 10980) -> xr.DataArray:
    """A lazy 110 km UTM 33N tile with a mask's attributes (nothing is computed)."""
    data = da.zeros((size, size), dtype=np.uint8, chunks=2048)
    coords = {"y": 5800000.0 - 10.0 * (np.arange(size) + 0.5),
              "x": x0 + 10.0 * (np.arange(size) + 0.5), "time": T0}
    tile = xr.DataArray(data, dims=("y", "x"), coords=coords, name="cloudmask")
    tile = tile.rio.write_crs(32633)
    tile.attrs = cf.mask_attrs(get("ukis-6b-l1c").info)
    return tile


def test_classes_match_the_flag_attributes(store, mask):
    item = mask_item(store, href="https://data.example/T33UUU.zarr")
    classes = item.assets["zarr"].extra_fields["classification:classes"]
    attrs = mask.attrs
    assert [c["value"] for c in classes] == attrs["flag_values"] == [0, 1, 2, 255]
    assert " ".join(c["name"] for c in classes) == attrs["flag_meanings"]
    assert [f"#{c['color_hint']}".lower() for c in classes] == attrs["flag_colors"].split()
    assert [c.get("nodata", False) for c in classes] == [False, False, False, True]
    scheme = get("ukis-6b-l1c").info.scheme
    assert [c["description"] for c in classes] == [c.description for c in scheme.all_classes()]
    extensions = item.stac_extensions
    assert any("/classification/" in e for e in extensions)
    assert PROCESSING_EXTENSION in extensions
    assert item.properties["processing:software"] == {"xcloud": xcloud.__version__}
    assert item.properties["xcloud:model"] == "ukis-6b-l1c"
    assert item.properties["xcloud:model_version"] == attrs["model_version"]


def test_asset_points_to_the_store(store):
    item = mask_item(store, href="https://data.example/T33UUU.zarr")
    asset = item.assets["zarr"]
    assert asset.href == "https://data.example/T33UUU.zarr"
    assert asset.media_type == "application/vnd+zarr" and asset.roles == ["data"]
    assert item.id == "T33UUU"
    assert pystac.Item.from_dict(item.to_dict()).to_dict() == item.to_dict()


def test_projection_fields_match_crs_transform_and_shape(store, mask):
    item = mask_item(store, href="./T33UUU.zarr")
    projection = pystac.extensions.projection.ProjectionExtension.ext(item)
    assert projection.code == "EPSG:32633"
    assert projection.shape == [64, 64]
    assert projection.transform == list(mask.rio.transform())[:6]
    assert projection.bbox == [500000.0, 5800000.0 - 640.0, 500000.0 + 640.0, 5800000.0]
    assert item.properties["gsd"] == 10.0
    assert any("/projection/" in e for e in item.stac_extensions)


def test_footprint_is_the_area_in_lon_lat(store):
    item = mask_item(store, href="./T33UUU.zarr")
    to_lonlat = pyproj.Transformer.from_crs(32633, 4326, always_xy=True)
    corners = [to_lonlat.transform(x, y) for x in (500000.0, 500640.0)
               for y in (5799360.0, 5800000.0)]
    west, south, east, north = item.bbox
    footprint = shapely.shape(item.geometry)
    for lon, lat in corners:
        assert west - 1e-9 <= lon <= east + 1e-9 and south - 1e-9 <= lat <= north + 1e-9
        assert footprint.buffer(1e-9).contains(shapely.Point(lon, lat))
    assert 14.99 < west < east < 15.01 and 52.33 < south < north < 52.36


def test_footprint_edges_are_densified():
    item = mask_item(big_tile(), href="./tile.zarr")
    to_lonlat = pyproj.Transformer.from_crs(32633, 4326, always_xy=True)
    edges = (450000.0, 5690200.0, 559800.0, 5800000.0)
    corner_north = max(to_lonlat.transform(x, 5800000.0)[1] for x in (450000.0, 559800.0))
    expected = to_lonlat.transform_bounds(*edges, densify_pts=101)
    # the north edge bulges north of its corners where it crosses the central meridian
    assert item.bbox[3] > corner_north + 1e-3
    np.testing.assert_allclose(item.bbox, expected, atol=1e-6)
    assert item.datetime == dt.datetime(2024, 6, 1, 10, 0, 0, 123456, tzinfo=dt.timezone.utc)


def test_time_series_gets_start_and_end_datetime(mask):
    series = xr.concat([mask, mask.assign_coords(time=[T1])], dim="time")
    item = mask_item(series, href="./series.zarr")
    assert item.datetime is None
    assert item.properties["start_datetime"] == "2024-06-01T10:00:00.123456Z"
    assert item.properties["end_datetime"] == "2024-06-11T10:00:00Z"


def test_mask_without_time_needs_a_datetime():
    tile = big_tile().drop_vars("time")
    with pytest.raises(ValueError, match="datetime"):
        mask_item(tile, href="./tile.zarr")
    when = dt.datetime(2024, 7, 1, tzinfo=dt.timezone.utc)
    assert mask_item(tile, href="./tile.zarr", datetime=when).datetime == when


def test_mask_without_crs_is_refused():
    tile = big_tile().drop_vars("spatial_ref")
    with pytest.raises(ValueError, match="no CRS"):
        mask_item(tile, href="./tile.zarr")


def test_derived_from_links_use_self_hrefs_else_ids(store):
    with_href = pystac.Item(id=SOURCES[0], geometry=None, bbox=None,
                            datetime=dt.datetime(2024, 6, 1), properties={})
    with_href.set_self_href("https://stac.example/items/first.json")
    as_dict = {"id": "S2C_dict", "links": [{"rel": "self", "href": "https://stac.example/d.json"}]}
    item = mask_item(store, href="./T33UUU.zarr",
                     source_items=[with_href, as_dict, "S2C_only_an_id"])
    links = [(link.title, link.href) for link in item.get_links("derived_from")]
    # the store's own source_items (SOURCES[0]) is already linked through the Item: once
    assert links == [(SOURCES[0], "https://stac.example/items/first.json"),
                     ("S2C_dict", "https://stac.example/d.json"),
                     ("S2C_only_an_id", "S2C_only_an_id")]
    bare = mask_item(store, href="./T33UUU.zarr")
    assert [link.href for link in bare.get_links("derived_from")] == SOURCES[:1]


def test_probabilities_have_no_classes(tmp_path):
    scene = synthetic_scene(32, seed=4)
    proba = xcloud.predict(scene, model="s2cloudless", output="proba").expand_dims(time=[T0])
    item = mask_item(proba, href="./p.zarr")
    assert "classification:classes" not in item.assets["zarr"].extra_fields
    assert not any("/classification/" in e for e in item.stac_extensions)


def test_write_item_beside_the_store(store):
    path = write_item(store, source_items=SOURCES)
    assert path == store.parent / "T33UUU.json"
    written = json.loads(path.read_text())
    assert written["assets"]["zarr"]["href"] == "./T33UUU.zarr"
    item = pystac.Item.from_file(str(path))
    assert item.assets["zarr"].get_absolute_href() == str(store)
    assert [link.href for link in item.get_links("derived_from")] == SOURCES


def test_item_ids_cannot_escape_the_folder(store, tmp_path):
    path = write_item(store, item_id="../../etc/x")
    assert path.parent == store.parent and path.name == "etc_x.json"
    assert json.loads(path.read_text())["id"] == "../../etc/x"
    for unsafe in ("..", "/", "", "a/../../b", "..\\..\\c", "~/.ssh/id"):
        target = item_path(tmp_path, unsafe)
        assert target.parent == tmp_path.resolve()
        assert target.name not in (".json", "..json") and "/" not in target.name


# -- validation against the STAC JSON schemas, offline ---------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to resolve a host name or open a connection fails the test."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def _pystac_validator():
    """pystac's validator with the schemas xcloud ships in its cache (it needs no network)."""
    from pystac.validation import JsonSchemaSTACValidator

    validator = JsonSchemaSTACValidator()
    validator.schema_cache.update(offline_schemas())
    return validator


def test_written_item_validates_offline(store, no_network):
    from pystac.validation import JsonSchemaSTACValidator
    from pystac.validation.stac_validator import GetSchemaError

    path = write_item(store, source_items=SOURCES)
    validate_item(json.loads(path.read_text()))
    item = pystac.Item.from_file(str(path))
    validate_item(item)
    with pytest.raises(GetSchemaError):  # the network is blocked: pystac alone cannot fetch
        item.validate(validator=JsonSchemaSTACValidator())
    # pystac's own validator agrees once its schema cache holds the shipped schemas
    checked = item.validate(validator=_pystac_validator())
    assert set(checked) == {
        "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json",
        "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
        "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
        PROCESSING_EXTENSION,
    }


def test_item_names_xcloud_and_the_model_in_the_processing_fields(mask):
    item = mask_item(mask, href="./T33UUU.zarr")
    lineage = item.properties["processing:lineage"]
    assert mask.attrs["model"] in lineage and mask.attrs["model_version"] in lineage
    assert xcloud.__version__ in lineage
    classes = item.assets["zarr"].extra_fields["classification:classes"]
    for field in ("value", "name", "description", "color_hint"):
        assert all(field in c for c in classes), field


def _break_class_value(item):
    del item["assets"]["zarr"]["classification:classes"][0]["value"]


def _break_shape(item):
    item["properties"]["proj:shape"] = ["64", "64"]


def _break_color(item):
    item["assets"]["zarr"]["classification:classes"][1]["color_hint"] = "#FFFFFF"


def _break_software(item):
    item["properties"]["processing:software"] = {"xcloud": 1}


def _break_core(item):
    del item["properties"]["datetime"]


@pytest.mark.parametrize(("damage", "where"), [
    (_break_class_value, r"classification:classes'\]\[0\]: 'value' is a required property"),
    (_break_shape, r"proj:shape'\]\[0\]: '64' is not of type 'integer'"),
    (_break_color, r"color_hint: '#FFFFFF' does not match"),
    (_break_software, r"processing:software'\]\.xcloud: 1 is not of type 'string'"),
    (_break_core, r"item\.json: .*datetime"),
])
def test_broken_items_do_not_validate(store, no_network, damage, where):
    item = mask_item(store, href="./T33UUU.zarr").to_dict()
    validate_item(item)
    damage(item)
    with pytest.raises(StacError, match=where):
        validate_item(item)
    from pystac.errors import STACValidationError
    from pystac.validation import validate_dict

    with pytest.raises(STACValidationError):
        validate_dict(item, validator=_pystac_validator())


def test_unknown_extension_cannot_be_validated_offline(store, no_network):
    item = mask_item(store, href="./T33UUU.zarr").to_dict()
    item["stac_extensions"].append("https://stac-extensions.github.io/eo/v2.0.0/schema.json")
    with pytest.raises(StacError, match=r"ships no copy of https://stac-extensions\.github\.io/eo/"):
        validate_item(item)
    with pytest.raises(StacError, match="not a STAC item"):
        validate_item({**item, "type": "Collection"})
