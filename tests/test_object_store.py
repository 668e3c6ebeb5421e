"""Masks to object storage: a real moto S3 server on 127.0.0.1 (a subprocess), and memory://.

What is checked: a write to ``s3://bucket/masks.zarr`` equals the local write exactly; the
write state lives in the bucket and nothing lands on local disk; a writer killed with SIGKILL
is resumed to an identical store (zarr formats 2 and 3); two jobs on one store: the second is
refused, both ways round, and the store holds the first job's mask only; a stale lease is taken
over after its expiry; S3 errors (503 SlowDown) and stalls past the read timeout are retried by
botocore, and a store that keeps failing stops the write with an error naming the chunk, with
no chunk marked done that was not written; the STAC item and quick-look are written in the
bucket beside the store and validate from there.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

import xcloud
from xcloud.engine.cluster import local_cluster
from xcloud.errors import StoreLockedError, StoreWriteError
from xcloud.outputs import to_zarr
from xcloud.outputs.quicklook import write_quicklook
from xcloud.outputs.stac import read_item, validate_item, write_item
from xcloud.synthetic import synthetic_scene

from .faulty_s3_proxy import FaultyS3Proxy
from .test_faults import slowed
from .test_zarr import T0, T1, chunk_keys, synthetic_mask

pytest.importorskip("s3fs")
pytest.importorskip("rioxarray")

ROOT = Path(__file__).resolve().parents[1]
EVERYTHING = {f"{t}.{i}.{j}" for t in range(2) for i in range(3) for j in range(3)}


@pytest.fixture
def bucket(moto) -> str:
    return moto.bucket()


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[tuple[int, str], Path]:
    """Local stores of the synthetic masks (formats 2 and 3, two models), written once."""
    folder = tmp_path_factory.mktemp("references")
    stores = {}
    for zarr_format in (2, 3):
        for model in ("ukis-6b-l1c", "s2cloudless"):
            path = folder / f"{model}-v{zarr_format}.zarr"
            to_zarr(synthetic_mask(model=model), path, zarr_format=zarr_format)
            stores[zarr_format, model] = path
    return stores


def open_s3(url: str, options: dict, **kwargs) -> xr.Dataset:
    return xr.open_zarr(url, storage_options=options, **kwargs).load()


def root_attrs(store) -> dict:
    return dict(zarr.open_group(store, mode="r").attrs)


def s3_store(moto, url: str) -> zarr.storage.FsspecStore:
    return zarr.storage.FsspecStore.from_url(url, storage_options=moto.options(), read_only=True)


def assert_same_store(moto, url: str, local: Path, groups=("",)) -> None:
    """Arrays, coordinates and attributes (every group) of the S3 store equal the local one,
    each read as written (a job killed before it wrote any metadata is resumed in the default
    format, whatever format the killed job asked for: xr.open_zarr would decode a format 2
    store's fill value to NaN and a format 3 store's not)."""
    remote = s3_store(moto, url)
    for group in groups:
        xr.testing.assert_identical(
            xcloud.open_mask(url, group=group or None, storage_options=moto.options(),
                             consolidated=False).load(),
            xcloud.open_mask(local, group=group or None, consolidated=False).load())
        assert dict(zarr.open_group(remote, path=group or None, mode="r").attrs) == \
            dict(zarr.open_group(str(local), path=group or None, mode="r").attrs)


def no_state(moto, bucket: str, store: str = "masks.zarr") -> bool:
    return moto.keys(bucket, f"{store}/.xcloud/") == []


# -- equality with the local writer ---------------------------------------------------------


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_s3_store_equals_the_local_store(moto, bucket, tmp_path, monkeypatch, zarr_format):
    local = tmp_path / "local" / "masks.zarr"
    to_zarr(synthetic_mask(), local, zarr_format=zarr_format, multiscales=(2,))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    url = f"s3://{bucket}/masks.zarr"
    summary = to_zarr(synthetic_mask(), url, storage_options=moto.options(),
                      zarr_format=zarr_format, multiscales=(2,))
    assert summary.path == url and summary.chunks_written == 18 + 18
    assert_same_store(moto, url, local, groups=("", "r20m"))
    # consolidated metadata as locally; the write state and lease are gone from the bucket
    group = zarr.open_consolidated(s3_store(moto, url), zarr_format=zarr_format, mode="r")
    assert "cloudmask" in group.metadata.consolidated_metadata.metadata
    assert no_state(moto, bucket)
    assert list(work.iterdir()) == []  # nothing of the output on local disk
    # and a rerun is a no-op that computes nothing
    calls = []
    again = to_zarr(synthetic_mask(calls=calls), url, storage_options=moto.options())
    assert calls == [] and again.chunks_written == 0


def test_append_along_time_in_the_bucket(moto, bucket, references):
    url = f"s3://{bucket}/masks.zarr"
    to_zarr(synthetic_mask(times=(T0,)), url, storage_options=moto.options())
    calls = []
    summary = to_zarr(synthetic_mask(times=(T1,), calls=calls), url,
                      storage_options=moto.options())
    assert summary.times_appended == 1 and len(calls) == 9
    assert_same_store(moto, url, references[3, "ukis-6b-l1c"])


def test_memory_store_round_trip(tmp_path, references):
    url = "memory://xcloud-test/masks.zarr"
    summary = to_zarr(synthetic_mask(), url, zarr_format=2)
    assert summary.chunks_written == 18
    back = xr.open_zarr(url).load()
    xr.testing.assert_identical(back, xr.open_zarr(references[2, "ukis-6b-l1c"]).load())
    import fsspec

    assert not fsspec.filesystem("memory").exists("/xcloud-test/masks.zarr/.xcloud")
    fsspec.filesystem("memory").rm("/xcloud-test", recursive=True)


def test_file_url_is_the_local_path(tmp_path, references):
    summary = to_zarr(synthetic_mask(), f"file://{tmp_path}/m.zarr", zarr_format=3)
    assert summary.path == tmp_path / "m.zarr"
    xr.testing.assert_identical(xr.open_zarr(tmp_path / "m.zarr").load(),
                                xr.open_zarr(references[3, "ukis-6b-l1c"]).load())


# -- resume after SIGKILL --------------------------------------------------------------------

WRITER = """
import os, sys, time
sys.path.insert(0, {root!r})
from tests.test_zarr import synthetic_mask
from xcloud.errors import StoreLockedError, StoreWriteError
from xcloud.outputs import to_zarr
while {gate!r} and not os.path.exists({gate!r}):  # imported, waiting for the word to go
    time.sleep(0.01)
to_zarr(synthetic_mask(delay={delay}, model={model!r}), {url!r}, zarr_format={zarr_format},
        storage_options={options!r}, scheduler="synchronous", lease_ttl={ttl})
"""


def start_writer(folder: Path, moto, url: str, zarr_format: int = 3, *, delay: float = 0.15,
                 model: str = "ukis-6b-l1c", ttl: float = 60.0,
                 gate: Path | None = None) -> subprocess.Popen:
    script = folder / f"writer-{time.monotonic_ns()}.py"
    script.write_text(WRITER.format(root=str(ROOT), delay=delay, url=url, model=model,
                                    zarr_format=zarr_format, options=moto.options(), ttl=ttl,
                                    gate=str(gate or "")))
    return subprocess.Popen([sys.executable, str(script)], cwd=folder, stderr=subprocess.PIPE)


def wait_for_keys(moto, bucket: str, prefix: str, count: int, process, timeout=60.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        keys = moto.keys(bucket, prefix)
        if len(keys) >= count:
            return keys
        time.sleep(0.02)
    return moto.keys(bucket, prefix)


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_resume_after_sigkill_finishes_only_missing_chunks(moto, bucket, tmp_path, references,
                                                           zarr_format):
    url = f"s3://{bucket}/masks.zarr"
    markers = "masks.zarr/.xcloud/done/_root/cloudmask/"
    process = start_writer(tmp_path, moto, url, zarr_format)
    wait_for_keys(moto, bucket, markers, 4, process)
    kill(process)
    done = {key.rsplit("/", 1)[-1] for key in moto.keys(bucket, markers)}
    assert 4 <= len(done) < 18
    assert moto.keys(bucket, "masks.zarr/.xcloud/lease.json")  # the killed job's lease
    assert not (tmp_path / "masks.zarr").exists()  # markers in the bucket, not on disk
    calls = []
    summary = to_zarr(synthetic_mask(calls=calls), url, storage_options=moto.options(),
                      scheduler="synchronous")  # a dead holder of this host: taken over at once
    assert chunk_keys(calls, (T0, T1)) == EVERYTHING - done and len(calls) == 18 - len(done)
    assert (summary.chunks_skipped, summary.chunks_written) == (len(done), 18 - len(done))
    assert_same_store(moto, url, references[zarr_format, "ukis-6b-l1c"])
    assert no_state(moto, bucket)


RANDOM_KILLS = 6


@pytest.mark.slow
def test_random_sigkills_never_lose_or_corrupt_a_chunk(moto, tmp_path, references):
    rng = random.Random(17)
    kills, run, interrupted = 0, 0, 0
    while kills < RANDOM_KILLS:
        bucket, zarr_format = moto.bucket(), (2, 3)[run % 2]
        url = f"s3://{bucket}/masks.zarr"
        for _ in range(min(rng.choice((1, 2)), RANDOM_KILLS - kills)):
            process = start_writer(tmp_path, moto, url, zarr_format)
            wait_for_keys(moto, bucket, "masks.zarr/.xcloud/lease.json", 1, process)
            time.sleep(rng.uniform(0.0, 2.4))  # the template or a chunk
            kill(process)
            kills += 1
        keys = moto.keys(bucket, "masks.zarr/")
        interrupted += any("/.xcloud/done/" in k for k in keys)
        run += 1
        summary = to_zarr(synthetic_mask(), url, storage_options=moto.options())
        assert summary.chunks_written + summary.chunks_skipped in (0, 18)
        assert_same_store(moto, url, references[zarr_format, "ukis-6b-l1c"])
        assert no_state(moto, bucket)
    assert interrupted >= 1


# -- two jobs on one store ------------------------------------------------------------------


@pytest.mark.parametrize(("first", "second"), [("ukis-6b-l1c", "s2cloudless"),
                                               ("s2cloudless", "ukis-6b-l1c")])
def test_a_second_job_on_the_store_is_refused(moto, bucket, tmp_path, references, first,
                                              second):
    url = f"s3://{bucket}/masks.zarr"
    gate = tmp_path / "go"
    late = start_writer(tmp_path, moto, url, model=second, delay=0.0, gate=gate)
    running = start_writer(tmp_path, moto, url, model=first, delay=0.3)
    wait_for_keys(moto, bucket, "masks.zarr/.xcloud/done/", 1, running)
    gate.touch()
    assert late.wait(timeout=60) != 0
    message = late.stderr.read().decode()
    assert "StoreLockedError" in message and url in message and "expires at" in message
    lease = json.loads(moto.client().get_object(Bucket=bucket,
                                                Key="masks.zarr/.xcloud/lease.json")["Body"].read())
    assert lease["holder"] in message and lease["pid"] == running.pid
    with pytest.raises(StoreLockedError, match=lease["holder"]) as refused:  # this process too
        to_zarr(synthetic_mask(model=second), url, storage_options=moto.options())
    assert refused.value.store == url and refused.value.expires == lease["expires"]
    assert running.wait(timeout=60) == 0
    assert_same_store(moto, url, references[3, first])  # the first job's mask, no mix
    assert no_state(moto, bucket)


def test_a_stale_lease_is_taken_over_after_it_expires(moto, bucket, tmp_path, references):
    url = f"s3://{bucket}/masks.zarr"
    stalled = start_writer(tmp_path, moto, url, ttl=2.0)
    try:
        wait_for_keys(moto, bucket, "masks.zarr/.xcloud/done/", 2, stalled)
        stalled.send_signal(signal.SIGSTOP)  # alive but stalled: it renews no more
        stopped = time.monotonic()
        with pytest.raises(StoreLockedError, match="expires at"):
            to_zarr(synthetic_mask(), url, storage_options=moto.options())
        time.sleep(max(0.0, 2.5 - (time.monotonic() - stopped)))
        summary = to_zarr(synthetic_mask(), url, storage_options=moto.options())
        assert summary.chunks_skipped >= 2
    finally:
        kill(stalled)
    assert_same_store(moto, url, references[3, "ukis-6b-l1c"])
    assert no_state(moto, bucket)


# -- faults: a faulty proxy in front of moto ------------------------------------------------


@pytest.fixture
def proxy(moto):
    with FaultyS3Proxy(moto.endpoint) as faulty:
        yield faulty


def test_slowdown_and_stalls_are_retried(moto, bucket, proxy, references):
    url = f"s3://{bucket}/masks.zarr"
    options = moto.options(proxy.url, config_kwargs={
        "read_timeout": 1.0, "connect_timeout": 1.0,
        "retries": {"max_attempts": 6, "mode": "standard"}})
    chunks = f"/{bucket}/masks.zarr/cloudmask/"
    proxy.fail(3, 503, method="PUT", path=chunks)  # SlowDown, then relayed
    proxy.delay(1.5, 2, method="PUT", path=chunks)  # past the read timeout
    proxy.fail(2, 503, method="GET", path=f"/{bucket}/masks.zarr/")
    to_zarr(synthetic_mask(), url, storage_options=options, scheduler="synchronous")
    statuses = proxy.statuses()
    assert statuses.count(503) == 5 and statuses.count(0) + statuses.count(200) >= 2
    assert_same_store(moto, url, references[3, "ukis-6b-l1c"])


def test_a_store_that_keeps_failing_stops_with_the_chunk_named(moto, bucket, proxy, references):
    url = f"s3://{bucket}/masks.zarr"
    options = moto.options(proxy.url, config_kwargs={"retries": {"max_attempts": 2,
                                                                 "mode": "standard"}})
    to_zarr(synthetic_mask(times=(T0,)), url, storage_options=moto.options())  # T0 is fine
    chunk = f"/{bucket}/masks.zarr/cloudmask/c/1/1/2"  # time 1, y 1, x 2 (v3 key)
    proxy.fail(100, 503, method="PUT", path=chunk)
    with pytest.raises(StoreWriteError, match=r"chunk \[1:2, 32:64, 64:96\] of 'cloudmask'"):
        to_zarr(synthetic_mask(), url, storage_options=options, scheduler="synchronous")
    markers = moto.keys(bucket, "masks.zarr/.xcloud/done/_root/cloudmask/")
    assert "masks.zarr/.xcloud/done/_root/cloudmask/1.1.2" not in markers  # never marked
    assert root_attrs(s3_store(moto, url))["xcloud:complete"] is False
    proxy.reset()
    calls = []
    summary = to_zarr(synthetic_mask(calls=calls), url, storage_options=options)
    assert (np.datetime64(T1, "ns"), 32, 64) in calls and summary.chunks_written == 9 - len(
        markers)
    assert_same_store(moto, url, references[3, "ukis-6b-l1c"])


# -- STAC item and quick-look in the bucket -------------------------------------------------


def test_stac_item_and_quicklook_beside_the_store_in_the_bucket(moto, bucket, tmp_path):
    pystac = pytest.importorskip("pystac")
    pytest.importorskip("jsonschema")
    url = f"s3://{bucket}/masks/T33UUU.zarr"
    mask = synthetic_mask()
    to_zarr(mask, url, storage_options=moto.options())
    local = tmp_path / "T33UUU.zarr"
    to_zarr(mask, local)
    href = write_item(url, storage_options=moto.options(), source_items=["S2A_x"])
    assert href == f"s3://{bucket}/masks/T33UUU.json"
    validate_item(href, storage_options=moto.options())
    document = read_item(href, storage_options=moto.options())
    assert document["assets"]["zarr"]["href"] == "./T33UUU.zarr"
    item = pystac.Item.from_dict(document)
    item.set_self_href(href)
    assert item.assets["zarr"].get_absolute_href() == url  # resolves to the store there
    expected = json.loads(write_item(local).read_text())
    assert {k: v for k, v in document.items() if k != "links"} == \
        {k: v for k, v in expected.items() if k != "links"}
    png = write_quicklook(f"s3://{bucket}/masks/T33UUU.png", mask,
                          storage_options=moto.options())
    body = moto.client().get_object(Bucket=bucket, Key="masks/T33UUU.png")["Body"].read()
    assert png == f"s3://{bucket}/masks/T33UUU.png" and body.startswith(b"\x89PNG\r\n\x1a\n")
    assert not list(Path(os.getcwd()).glob("T33UUU*"))


# -- a worker killed mid-run, the store in the bucket ----------------------------------------


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_worker_killed_mid_run_leaves_an_identical_store_in_the_bucket(moto, bucket,
                                                                         tmp_path, zarr_format):
    """Two worker processes write to S3; one is SIGKILLed after the first markers appear in
    the bucket, twice in a row (the nanny starts a new one): the job completes and the store
    equals an undisturbed local run, its markers gone from the bucket."""
    distributed = pytest.importorskip("distributed")
    scene = synthetic_scene(128, seed=3).chunk({"y": 32, "x": 32})
    reference = tmp_path / "reference.zarr"
    xcloud.to_zarr(xcloud.predict(scene, model="s2cloudless"), reference,
                   zarr_format=zarr_format)
    url = f"s3://{bucket}/killed.zarr"
    mask = xcloud.predict(slowed(scene, "B02", 0.2), model="s2cloudless")
    markers = "killed.zarr/.xcloud/done/"
    with local_cluster(n_workers=2, threads_per_worker=1) as cluster, \
            distributed.Client(cluster) as client, ThreadPoolExecutor(1) as pool:
        job = pool.submit(xcloud.to_zarr, mask, url, storage_options=moto.options(),
                          zarr_format=zarr_format)
        victims = []
        for needed in (2, 6):  # two kills at different points of the run
            deadline = time.monotonic() + 90
            while len(moto.keys(bucket, markers)) < needed and not job.done() \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            pid = next(iter(client.run(os.getpid).values()))
            running = not job.done()
            os.kill(pid, signal.SIGKILL)
            victims.append((pid, running))
        summary = job.result(timeout=180)
        alive = set(client.run(os.getpid).values())
    assert summary.chunks_written == 16 and not alive & {pid for pid, _ in victims}
    assert victims[0][1], "the first kill came after the job had finished"
    assert no_state(moto, bucket, "killed.zarr")
    remote = xr.open_zarr(url, storage_options=moto.options()).load()
    xr.testing.assert_identical(remote, xr.open_zarr(reference).load())
