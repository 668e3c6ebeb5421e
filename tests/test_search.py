"""``xcloud.search`` against the real local STAC API and against a static catalogue."""

from __future__ import annotations

import json

import pytest

import xcloud
from tests.stac_server import collection_for_items
from xcloud.errors import StacError

COLLECTION = "xcloud-search-test"


def _item(index: int, lon: float, day: int, cloud: float) -> dict:
    box = [lon, 50.0, lon + 0.5, 50.5]
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": f"item-{index}",
        "collection": COLLECTION, "bbox": box,
        "geometry": {"type": "Polygon", "coordinates": [[
            [box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]],
            [box[0], box[1]]]]},
        "properties": {"datetime": f"2024-06-{day:02d}T10:00:00Z", "eo:cloud_cover": cloud,
                       "platform": "sentinel-2a" if index % 2 else "sentinel-2b"},
        "assets": {}, "links": [],
    }


ITEMS = [_item(i, lon, day, cloud) for i, (lon, day, cloud) in enumerate(
    [(10.0, 1, 5.0), (10.2, 3, 50.0), (12.0, 5, 15.0), (12.2, 20, 90.0), (10.1, 28, 30.0)])]


def _ids(found) -> set[str]:
    return {item.id for item in found}


@pytest.fixture(scope="module")
def api_url(stac_api):
    stac_api.ingest([collection_for_items(COLLECTION, ITEMS)], ITEMS)
    return stac_api.url


@pytest.fixture(scope="module")
def static_catalogue(tmp_path_factory):
    path = tmp_path_factory.mktemp("static") / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": ITEMS}))
    return path


CASES = [
    ({"bbox": [9.9, 49.9, 10.6, 50.6]}, {"item-0", "item-1", "item-4"}),
    ({"datetime": "2024-06-02/2024-06-10"}, {"item-1", "item-2"}),
    ({"query": {"eo:cloud_cover": {"lt": 20}}}, {"item-0", "item-2"}),
    ({"bbox": [11.9, 49.9, 12.8, 50.6], "query": {"eo:cloud_cover": {"gte": 20}}}, {"item-3"}),
    ({"ids": ["item-3", "item-4"]}, {"item-3", "item-4"}),
]


@pytest.mark.parametrize(("criteria", "expected"), CASES)
def test_api_and_static_catalogue_agree(api_url, static_catalogue, criteria, expected):
    from_api = xcloud.search(api_url, collections=[COLLECTION], **criteria)
    from_static = xcloud.search(static_catalogue, collections=[COLLECTION], **criteria)
    assert _ids(from_api) == expected
    assert _ids(from_static) == expected


def test_cql2_filter_and_max_items(api_url):
    found = xcloud.search(api_url, collections=[COLLECTION], filter={
        "op": "and", "args": [
            {"op": "<", "args": [{"property": "eo:cloud_cover"}, 60]},
            {"op": "=", "args": [{"property": "platform"}, "sentinel-2b"]}]})
    assert _ids(found) == {"item-0", "item-2", "item-4"}
    assert len(xcloud.search(api_url, collections=[COLLECTION], max_items=2, limit=1)) == 2


def test_errors_name_the_problem(static_catalogue, tmp_path):
    with pytest.raises(StacError, match="needs a STAC API"):
        xcloud.search(static_catalogue, filter={"op": "=", "args": [1, 1]})
    with pytest.raises(StacError, match="neither"):
        xcloud.search(tmp_path / "nothing.json")
    with pytest.raises(StacError, match="cannot open the STAC API"):
        xcloud.search("http://127.0.0.1:9", retries=0, timeout=2)


def _box_item(item_id: str, west: float, east: float, geometry: bool = True) -> dict:
    item = _item(0, 0.0, 1, 10.0)
    item["id"] = item_id
    item["bbox"] = [west, -17.0, east, -16.0]
    if not geometry:
        item["geometry"] = None
    elif west <= east:
        item["geometry"] = {"type": "Polygon", "coordinates": [[
            [west, -17.0], [east, -17.0], [east, -16.0], [west, -16.0], [west, -17.0]]]}
    else:  # split at the antimeridian, as STAC recommends
        item["geometry"] = {"type": "MultiPolygon", "coordinates": [
            [[[west, -17.0], [180.0, -17.0], [180.0, -16.0], [west, -16.0], [west, -17.0]]],
            [[[-180.0, -17.0], [east, -17.0], [east, -16.0], [-180.0, -16.0],
              [-180.0, -17.0]]]]}
    return item


@pytest.mark.parametrize("bbox", [[179.5, -17.5, -179.5, -15.5],   # across 180
                                  [179.2, -17.5, 179.9, -15.5],     # west of 180 only
                                  [-179.9, -17.5, -179.2, -15.5]])  # east of 180 only
def test_static_search_across_the_antimeridian(tmp_path, bbox):
    """A bbox with west > east crosses 180 degrees: it is the two boxes either side of it,
    never the inverted box from east to west (which holds the rest of the world)."""
    items = [_box_item("fiji-west", 179.0, 179.95), _box_item("fiji-east", -179.95, -179.0),
             _box_item("across", 179.8, -179.8), _box_item("across-bbox-only", 179.8, -179.8,
                                                           geometry=False),
             _box_item("at-19E", 19.0, 20.0)]
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    found = _ids(xcloud.search(path, bbox=bbox))
    west_side, east_side = bbox[0] < 180 and bbox[0] > 0, bbox[2] < 0
    expected = {"across", "across-bbox-only"}
    expected |= {"fiji-west"} if west_side else set()
    expected |= {"fiji-east"} if east_side else set()
    assert found == expected
