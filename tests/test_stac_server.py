"""The test STAC API server is real: pystac-client searches it and gets what the data says.

Expected results are computed in Python from the item JSON (footprints with shapely, datetimes
and cloud cover from the properties) and compared with what the server answers.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from .conftest import need_data, start_stac_api
from .stac_server import (
    StacApiServer,
    StacApiServerError,
    collection_for_items,
    find_pg_bindir,
    server_unavailable_reason,
)

pystac_client = pytest.importorskip("pystac_client")
shapely_geometry = pytest.importorskip("shapely.geometry")

COLLECTIONS = ["sentinel-2-c1-l2a", "sentinel-2-l1c", "sentinel-2-l2a"]


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _ids(items: Any) -> list[str]:
    return sorted(item["id"] if isinstance(item, dict) else item.id for item in items)


@pytest.fixture(scope="module")
def earth_search_items() -> list[dict[str, Any]]:
    """The complete items of the Earth Search item collections (partial ``fields`` answers with
    neither geometry nor assets are left out: a STAC API cannot hold them)."""
    folder = need_data("stac/earth_search")
    items = []
    for path in sorted(folder.glob("*.json")):
        collection = json.loads(path.read_text())
        assert collection["type"] == "FeatureCollection"
        items += [f for f in collection["features"] if f.get("geometry") and f.get("assets")]
    assert {item["collection"] for item in items} == set(COLLECTIONS)
    return items


@pytest.fixture(scope="module")
def earth_search(earth_search_items) -> Iterator[Any]:
    """A server of this module's own (nothing else ingests there), holding the real items."""
    server = start_stac_api()
    try:
        collections = [
            collection_for_items(cid, [i for i in earth_search_items if i["collection"] == cid])
            for cid in COLLECTIONS
        ]
        server.ingest(collections, earth_search_items)
        yield pystac_client.Client.open(server.url)
    finally:
        server.stop()


# -- the real Earth Search items ----------------------------------------------------------------


def test_collections_and_items_come_back_whole(earth_search, earth_search_items):
    assert sorted(c.id for c in earth_search.get_collections()) == COLLECTIONS
    served = {i["id"]: i for i in earth_search.search(collections=COLLECTIONS).items_as_dicts()}
    assert sorted(served) == _ids(earth_search_items)
    for item in earth_search_items:
        back = served[item["id"]]
        assert back["collection"] == item["collection"]
        assert back["properties"] == item["properties"]
        assert back["assets"] == item["assets"]
        assert shapely_geometry.shape(back["geometry"]).equals(
            shapely_geometry.shape(item["geometry"]))


def test_bbox_returns_the_intersecting_items_only(earth_search, earth_search_items):
    bbox = [-39.5, -5.0, -38.5, -4.6]
    area = shapely_geometry.box(*bbox)
    expected = [i for i in earth_search_items
                if shapely_geometry.shape(i["geometry"]).intersects(area)]
    assert 0 < len(expected) < len(earth_search_items)
    found = earth_search.search(collections=COLLECTIONS, bbox=bbox).items_as_dicts()
    assert _ids(found) == _ids(expected)


@pytest.mark.parametrize("interval", [
    ("2025-07-31T13:03:20Z", "2025-07-31T13:03:26Z"),
    (None, "2024-01-01T00:00:00Z"),
])
def test_datetime_range(earth_search, earth_search_items, interval):
    start, end = (_time(v) if v else None for v in interval)
    expected = [i for i in earth_search_items
                if (start is None or _time(i["properties"]["datetime"]) >= start)
                and _time(i["properties"]["datetime"]) <= end]
    assert 0 < len(expected) < len(earth_search_items)
    text = "/".join(v or ".." for v in interval)
    found = earth_search.search(collections=COLLECTIONS, datetime=text).items_as_dicts()
    assert _ids(found) == _ids(expected)


# 25.342679 is the cloud cover of S2B_24MWV (L2A): "lt" must leave it out
@pytest.mark.parametrize("limit", [25.342679, 30.0])
def test_query_extension_filters_on_cloud_cover(earth_search, earth_search_items, limit):
    expected = [i for i in earth_search_items if i["properties"]["eo:cloud_cover"] < limit]
    assert 0 < len(expected) < len(earth_search_items)
    found = earth_search.search(collections=COLLECTIONS,
                                query={"eo:cloud_cover": {"lt": limit}}).items_as_dicts()
    assert _ids(found) == _ids(expected)


def test_cql2_json_filter(earth_search, earth_search_items):
    limit = 25.342679
    below = {"op": "<", "args": [{"property": "eo:cloud_cover"}, limit]}
    expected = [i for i in earth_search_items if i["properties"]["eo:cloud_cover"] < limit]
    found = earth_search.search(collections=COLLECTIONS, filter=below,
                                filter_lang="cql2-json").items_as_dicts()
    assert 0 < len(expected) < len(earth_search_items)
    assert _ids(found) == _ids(expected)

    both = {"op": "and", "args": [
        {"op": ">=", "args": [{"property": "eo:cloud_cover"}, limit]},
        {"op": "=", "args": [{"property": "collection"}, "sentinel-2-l2a"]},
    ]}
    expected = [i for i in earth_search_items if i["properties"]["eo:cloud_cover"] >= limit
                and i["collection"] == "sentinel-2-l2a"]
    found = earth_search.search(collections=COLLECTIONS, filter=both,
                                filter_lang="cql2-json").items_as_dicts()
    assert expected
    assert _ids(found) == _ids(expected)


def test_max_items_and_paging(earth_search, earth_search_items):
    total = len(earth_search_items)
    assert total > 10
    limited = earth_search.search(collections=COLLECTIONS, max_items=5, limit=2)
    assert len(list(limited.items_as_dicts())) == 5

    paged = earth_search.search(collections=COLLECTIONS, limit=4)
    pages = list(paged.pages_as_dicts())
    assert len(pages) == math.ceil(total / 4)
    assert all(len(page["features"]) == 4 for page in pages[:-1])
    ids = [item["id"] for page in pages for item in page["features"]]
    assert len(ids) == len(set(ids)) == total
    assert sorted(ids) == _ids(earth_search_items)
    assert paged.matched() == total


# -- generated items on the shared server (no real data needed) --------------------------------


def _write_cog(path: Path, values: np.ndarray, x0: float, y0: float) -> None:
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    with rasterio.open(path, "w", driver="COG", width=values.shape[1], height=values.shape[0],
                       count=1, dtype=values.dtype.name, crs="EPSG:32633",
                       transform=from_origin(x0, y0, 10, 10)) as dst:
        dst.write(values, 1)


def _tiny_item(item_id: str, collection: str, href: str, x0: float, y0: float, when: str,
               cloud: float) -> dict[str, Any]:
    from pyproj import Transformer

    to_lonlat = Transformer.from_crs(32633, 4326, always_xy=True)
    xs, ys = to_lonlat.transform([x0, x0 + 640, x0 + 640, x0], [y0, y0, y0 - 640, y0 - 640])
    ring = [[x, y] for x, y in zip(xs, ys, strict=True)]
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": ["https://stac-extensions.github.io/projection/v1.1.0/schema.json"],
        "id": item_id,
        "collection": collection,
        "bbox": [min(xs), min(ys), max(xs), max(ys)],
        "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
        "properties": {"datetime": when, "eo:cloud_cover": cloud, "proj:epsg": 32633,
                       "proj:shape": [64, 64], "proj:transform": [10, 0, x0, 0, -10, y0]},
        "links": [],
        "assets": {"red": {"href": href, "roles": ["data"],
                           "type": "image/tiff; application=geotiff; profile=cloud-optimized"}},
    }


def test_generated_items_search_and_load(stac_api, tmp_path):
    odc_stac = pytest.importorskip("odc.stac")
    collection = f"tiny-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(0)
    pixels = [rng.integers(1, 10000, (64, 64), dtype=np.uint16) for _ in range(2)]
    origins = [(330000.0, 5822040.0), (400000.0, 5822040.0)]  # about 70 km apart
    items = []
    for n, (values, (x0, y0)) in enumerate(zip(pixels, origins, strict=True)):
        path = tmp_path / f"red{n}.tif"
        _write_cog(path, values, x0, y0)
        items.append(_tiny_item(f"tiny-{n}", collection, path.as_uri(), x0, y0,
                                f"2017-02-{16 + n}T10:00:00Z", [5.0, 60.0][n]))
    stac_api.ingest([collection_for_items(collection, items)], items)
    client = pystac_client.Client.open(stac_api.url)

    def ids(**search: Any) -> list[str]:
        return _ids(client.search(collections=[collection], **search).items_as_dicts())

    assert ids() == ["tiny-0", "tiny-1"]
    assert ids(bbox=items[1]["bbox"]) == ["tiny-1"]
    assert ids(datetime="2017-02-16T00:00:00Z/2017-02-16T23:59:59Z") == ["tiny-0"]
    assert ids(query={"eo:cloud_cover": {"lt": 50}}) == ["tiny-0"]
    assert ids(filter={"op": ">", "args": [{"property": "eo:cloud_cover"}, 50]},
               filter_lang="cql2-json") == ["tiny-1"]

    # file:// hrefs come back as given and odc-stac reads the pixels through them
    found = sorted(client.search(collections=[collection]).items(), key=lambda i: i.id)
    assert [i.assets["red"].href for i in found] == [i["assets"]["red"]["href"] for i in items]
    for item, values in zip(found, pixels, strict=True):
        loaded = odc_stac.load([item], bands=["red"])
        np.testing.assert_array_equal(loaded["red"].values[0], values)

    # upsert: ingesting again replaces, it does not duplicate
    items[0]["properties"]["eo:cloud_cover"] = 80.0
    stac_api.ingest(items=[items[0]])
    assert ids() == ["tiny-0", "tiny-1"]
    assert ids(query={"eo:cloud_cover": {"lt": 50}}) == []


# -- the helper itself -------------------------------------------------------------------------


def _process_tree(pids: list[int]) -> list[psutil.Process]:
    procs = [psutil.Process(pid) for pid in pids]
    return procs + [child for p in procs for child in p.children(recursive=True)]


def test_stop_leaves_no_process_and_no_folder():
    server = start_stac_api()
    try:
        procs = _process_tree(server.pids)
        tmpdir = server.tmpdir
        assert len(server.pids) == 2 and server.running
        assert tmpdir is not None and tmpdir.is_dir()
    finally:
        server.stop()
    assert not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not tmpdir.exists()
    server.stop()  # twice is fine


def test_failed_start_cleans_up(tmp_path):
    if find_pg_bindir() is None:
        pytest.skip(server_unavailable_reason() or "no PostgreSQL programs")
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'no pypgstac in this python' >&2\nexit 3\n")
    broken.chmod(0o755)
    server = StacApiServer(server_python=broken, timeout=30)
    seen: dict[str, Any] = {}
    start_postgres = server._start_postgres

    def spy() -> None:
        start_postgres()
        seen["procs"] = _process_tree(server.pids)
        seen["tmpdir"] = server.tmpdir

    server._start_postgres = spy  # type: ignore[method-assign]
    with pytest.raises(StacApiServerError, match="no pypgstac in this python"):
        server.start()
    assert seen["procs"], "PostgreSQL should have started before the migration failed"
    assert not [p for p in seen["procs"] if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not seen["tmpdir"].exists()


def test_skip_or_fail_policy(monkeypatch, tmp_path):
    monkeypatch.setenv("XCLOUD_STAC_SERVER_PYTHON", str(tmp_path / "missing" / "python"))
    monkeypatch.delenv("XCLOUD_REQUIRE_STAC_SERVER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="does not exist"):
        start_stac_api()
    monkeypatch.setenv("XCLOUD_REQUIRE_STAC_SERVER", "1")
    with pytest.raises(pytest.fail.Exception, match="does not exist"):
        start_stac_api()
