"""Faults: a STAC API that fails, an asset that cannot be read, a killed Dask worker."""

from __future__ import annotations

import itertools
import os
import signal
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

import xcloud
from tests.faulty_proxy import FaultyProxy
from tests.stac_server import collection_for_items
from tests.test_load import SIZE_10M, localize
from tests.test_radiometry import real_items
from tests.test_search import COLLECTION, ITEMS
from tests.test_zarr import crash_after
from xcloud.data.load import load, take_read_failures
from xcloud.data.search import _new_entries
from xcloud.engine.cluster import local_cluster
from xcloud.errors import AssetReadError, AssetReadWarning, StacError
from xcloud.synthetic import synthetic_scene

# -- STAC API faults (a faulty proxy in front of the real local STAC API) -------------------

EVERY_ID = {item["id"] for item in ITEMS}


@pytest.fixture(scope="module")
def faulty_proxy(stac_api):
    stac_api.ingest([collection_for_items(COLLECTION, ITEMS)], ITEMS)
    with FaultyProxy(stac_api.url) as proxy:
        yield proxy


@pytest.fixture
def proxy(faulty_proxy):
    faulty_proxy.reset()
    yield faulty_proxy
    faulty_proxy.reset()


def search(proxy: FaultyProxy, **options):
    found = xcloud.search(proxy.url, collections=[COLLECTION], limit=2, **options)
    return {item.id for item in found}


@pytest.mark.parametrize("status", [503, 429])
def test_errors_are_retried_with_growing_backoff_then_succeed(proxy, status):
    search(proxy)
    undisturbed = len(proxy.requests)
    proxy.reset()
    proxy.fail(3, status)
    assert search(proxy, retries=4, backoff=0.1) == EVERY_ID
    statuses = proxy.statuses()
    assert statuses == [status] * 3 + [200] * undisturbed  # each failure retried once
    arrivals = [seen.time for seen in proxy.requests[:4]]
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    for gap, pause in zip(gaps, (0.1, 0.2, 0.4), strict=True):
        assert gap >= pause * 0.95
    assert gaps[0] < gaps[1] < gaps[2]


def test_a_permanent_failure_is_a_stac_error_in_bounded_time(proxy):
    proxy.fail(1000, 502, path="/search")
    start = time.monotonic()
    with pytest.raises(StacError, match=r"after 4 attempts: HTTP 502.*retries=") as caught:
        search(proxy, retries=3, backoff=0.05)
    assert f"POST {proxy.url}/search" in str(caught.value)
    assert proxy.statuses() == [200, 200] + [502] * 4  # the root, then the configured retries
    assert time.monotonic() - start < 0.05 * (1 + 2 + 4) + 2.0


def test_a_client_error_is_not_retried(proxy):
    proxy.fail(1, 400)
    with pytest.raises(StacError, match=r"after 1 attempt: HTTP 400.*check the URL"):
        search(proxy, retries=3, backoff=0.05)
    assert proxy.statuses() == [400]


def test_timeouts_are_retried_then_succeed_or_fail(proxy):
    proxy.delay(1.5, count=1)
    assert search(proxy, retries=2, backoff=0.05, timeout=0.4) == EVERY_ID
    proxy.reset()
    proxy.delay(1.5, count=1000, path="/search")
    start = time.monotonic()
    with pytest.raises(StacError, match="search failed after 3 attempts: no answer within"):
        search(proxy, retries=2, backoff=0.05, timeout=0.4)
    assert [seen.path for seen in proxy.requests] == ["/", "/"] + ["/search"] * 3
    assert time.monotonic() - start < 3 * 0.4 + 0.05 * 3 + 1.0


@pytest.mark.parametrize(("paging", "message"), [
    ("repeat", "leads back to a page already read"),
    ("same-items", "holds only items already returned"),
])
def test_paging_that_goes_round_in_circles_stops(proxy, paging, message):
    proxy.paging = paging
    with pytest.raises(StacError, match=message):
        search(proxy, retries=0)
    assert len(proxy.requests) <= 4  # the root twice, page 1, and the page that repeats


def test_a_404_in_the_middle_of_paging_is_a_stac_error(proxy):
    proxy.paging = "404"
    with pytest.raises(StacError, match=r"/search failed after 1 attempt: HTTP 404"):
        search(proxy, retries=3, backoff=0.05)
    assert proxy.statuses()[-2:] == [200, 404]


def test_items_repeated_on_a_later_page_are_kept_once():
    seen: set[str] = set()
    first = _new_entries({"features": [{"id": "a"}, {"id": "b"}]}, seen, "u", 1)
    second = _new_entries({"features": [{"id": "b"}, {"id": "c"}]}, seen, "u", 2)
    assert [f["id"] for f in first["features"]] == ["a", "b"]
    assert [f["id"] for f in second["features"]] == ["c"]


# -- an asset that cannot be read when the chunks are computed --------------------------------

L1C_ITEMS = "stac/earth_search/earth-search__sentinel-2-l1c__itemcollection.json"
S2CLOUDLESS_ASSETS = ["coastal", "blue", "red", "rededge1", "nir", "nir08", "nir09", "cirrus",
                      "swir16", "swir22"]
CHUNK = 8  # 10 m pixels: 2 x 2 chunks of the 12 x 12 px local item


@pytest.fixture
def local_item(tmp_path) -> dict:
    """A real Earth Search L1C item with s2cloudless's bands on small local GeoTIFFs."""
    keys = dict.fromkeys(S2CLOUDLESS_ASSETS, "dn")
    return localize(real_items(L1C_ITEMS)[0], keys, tmp_path)


def asset_path(item: dict, asset: str) -> Path:
    return Path(item["assets"][asset]["href"].removeprefix("file://"))


def corrupt(item: dict, asset: str, keep: float = 0.1) -> bytes:
    """Truncate an asset's GeoTIFF to a fraction ``keep`` of its bytes (a cut-off download).

    Returns the original bytes.
    """
    content = asset_path(item, asset).read_bytes()
    asset_path(item, asset).write_bytes(content[:int(len(content) * keep)])
    return content


def lazy_mask(item: dict, **options):
    data = load([item], bands=S2CLOUDLESS_ASSETS, resolution=10, chunks=CHUNK, **options)
    return data, xcloud.predict(data, model="s2cloudless", invalid="nodata")


def test_unreadable_asset_becomes_no_data_and_is_reported(local_item, tmp_path):
    take_read_failures()  # forget what other tests left in this process
    intact = lazy_mask(local_item)[1].values
    data, mask = lazy_mask(local_item)
    corrupt(local_item, "red")  # after the lazy load was built: the read fails in the tasks
    with pytest.warns(AssetReadWarning, match=local_item["id"]):
        summary = xcloud.to_zarr(mask, tmp_path / "mask.zarr")
    stored = zarr.open_group(str(tmp_path / "mask.zarr"), mode="r")
    assert summary.read_failures == 4  # one read of the band per chunk
    assert stored.attrs["xcloud:read_failures"] == {
        "count": 4, "items": [local_item["id"]], "assets": [f"{local_item['id']}:B04"]}
    nodata = mask.attrs["nodata"]
    assert (np.asarray(stored["cloud_mask"]) == nodata).all()  # never "clear"
    assert (intact != nodata).sum() > SIZE_10M**2 // 3  # the intact item has valid pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AssetReadWarning)
        red = data["B04"].values
    assert np.isnan(red).all() and not np.isnan(data["B02"].values[0, 1:, 1:]).any()
    failures = take_read_failures()
    assert {(f.item, f.band) for f in failures} == {(local_item["id"], "B04")}
    assert len(failures) == 4 and "red.tif" in failures[0].href


def test_read_failures_survive_an_interrupted_write(local_item, tmp_path, monkeypatch):
    take_read_failures()
    _, mask = lazy_mask(local_item)
    intact = corrupt(local_item, "red")
    crash_after(2, monkeypatch)  # the write dies after 2 of the 4 chunks
    with pytest.raises(RuntimeError, match="power cut"), pytest.warns(AssetReadWarning):
        xcloud.to_zarr(mask, tmp_path / "mask.zarr", scheduler="synchronous")
    monkeypatch.undo()
    take_read_failures()  # what the process held dies with it; the saved reports do not
    asset_path(local_item, "red").write_bytes(intact)  # the rerun reads the file fine
    summary = xcloud.to_zarr(mask, tmp_path / "mask.zarr", scheduler="synchronous")
    assert (summary.chunks_skipped, summary.chunks_written) == (2, 2)
    assert summary.read_failures >= 2  # at least the reads of the 2 chunks written before
    attrs = zarr.open_group(str(tmp_path / "mask.zarr"), mode="r").attrs
    assert attrs["xcloud:read_failures"]["items"] == [local_item["id"]]


@pytest.mark.parametrize("keep", [0.1, 0.5], ids=["header-cut", "tags-cut"])
def test_unreadable_asset_raises_with_strict(local_item, tmp_path, keep):
    _, mask = lazy_mask(local_item, strict=True)
    corrupt(local_item, "red", keep)
    with pytest.raises(AssetReadError, match=rf"band B04 of item '{local_item['id']}'.*strict="):
        xcloud.to_zarr(mask, tmp_path / "mask.zarr", scheduler="synchronous")


# -- a Dask worker killed in the middle of a predict + to_zarr job ----------------------------


def slowed(scene, band: str, seconds: float):
    """The scene with every chunk of ``band`` taking ``seconds`` longer to compute."""
    def wait(block):
        time.sleep(seconds)
        return block

    data = scene[band].data.map_blocks(wait, dtype=scene[band].dtype)
    return scene.assign({band: scene[band].copy(data=data)})


def wait_for_markers(store: Path, count: int, job) -> int:
    markers = store / ".xcloud" / "done" / "_root" / "cloud_mask"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not job.done():
        found = len(os.listdir(markers)) if markers.is_dir() else 0
        if found >= count:
            return found
        time.sleep(0.02)
    raise AssertionError(f"the job ended or stalled before {count} chunks were written")


@pytest.mark.slow
def test_a_killed_worker_does_not_change_the_result(tmp_path):
    distributed = pytest.importorskip("distributed")
    scene = synthetic_scene(128, seed=3).chunk({"y": 32, "x": 32})
    reference = tmp_path / "reference.zarr"
    xcloud.to_zarr(xcloud.predict(scene, model="s2cloudless"), reference)
    store = tmp_path / "killed.zarr"
    mask = xcloud.predict(slowed(scene, "B02", 0.2), model="s2cloudless")
    with local_cluster(n_workers=2, threads_per_worker=1) as cluster, \
            distributed.Client(cluster) as client, ThreadPoolExecutor(1) as pool:
        job = pool.submit(xcloud.to_zarr, mask, store)
        written = wait_for_markers(store, 2, job)
        victim = next(iter(client.run(os.getpid).values()))
        os.kill(victim, signal.SIGKILL)
        summary = job.result(timeout=120)
        pids = set(client.run(os.getpid).values())
    assert 2 <= written < 16 and summary.chunks_written == 16
    assert victim not in pids  # the worker really died (its nanny started another)
    xr.testing.assert_identical(xr.open_zarr(store).load(), xr.open_zarr(reference).load())
