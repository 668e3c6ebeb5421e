"""Fetching published weights from a real HTTP server on 127.0.0.1 into the per-user cache."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pooch")
pytest.importorskip("filelock")

from xcloud.errors import MissingWeightsError, WeightsError
from xcloud.models import fetch
from xcloud.models.fetch import (
    cache_dir,
    cached_weights,
    fetch_weights,
    mirror_url,
    resolve_weights,
    verify_weights,
)
from xcloud.models.published import (
    CLOUDSEN12_HUB,
    KAPPAMASK_HOST,
    SENSEI_V2_HUB,
    PublishedFile,
    PublishedWeights,
    register_published,
    unregister_published,
)

from .conftest import need_data


class FileServer:
    """``python -m http.server`` on 127.0.0.1 serving ``root``; its request log is kept."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root, self.log_path = root, log
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1",
             "--directory", str(root), "0"],
            stdout=subprocess.PIPE, stderr=self._log, text=True)
        line = self.process.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (...) ..."
        self.port = int(line.split(" port ")[1].split()[0])
        self.url = f"http://127.0.0.1:{self.port}"

    def gets(self, path_part: str = "") -> int:
        """GET requests logged so far whose path contains ``path_part``."""
        time.sleep(0.05)  # the log line is written after the response
        text = self.log_path.read_text()
        return sum('"GET ' in line and path_part in line for line in text.splitlines())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.process.stdout.close()
        self._log.close()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "host"
    root.mkdir()
    srv = FileServer(root, tmp_path / "server.log")
    yield srv
    srv.stop()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("XCLOUD_CACHE_DIR", str(folder))
    monkeypatch.setenv("XCLOUD_WEIGHTS_RETRIES", "0")
    monkeypatch.delenv("XCLOUD_WEIGHTS_URL", raising=False)
    return folder


@pytest.fixture
def entries():
    names = []

    def add(entry: PublishedWeights) -> PublishedWeights:
        names.append(entry.name)
        return register_published(entry, overwrite=True)

    yield add
    for name in names:
        unregister_published(name)


def serve(server: FileServer, url: str, data: bytes) -> None:
    """Put ``data`` where ``url``'s path points on the test host."""
    target = server.root.joinpath(*url.split("://", 1)[1].split("/")[1:])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def single(name: str, data: bytes, *, sha256: str | None = "auto",
           size: int | None = None, filename: str = "l1c_unet.hdf5",
           host: str = KAPPAMASK_HOST) -> PublishedWeights:
    """A one-file artifact with the real KappaMask URL layout."""
    digest = sha(data) if sha256 == "auto" else sha256
    return PublishedWeights(
        name=name, model=name, files=(PublishedFile(f"{host}/{filename}", filename, digest,
                                                    size),),
        licence="test", bands=("B01",), citation="", source_page="", format="keras-hdf5-weights",
        subdir=f"test/{name}", main=filename, default=True)


def payload(n: int = 50_000, seed: int = 0) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32)


def leftovers(folder: Path) -> list[str]:
    """Files in ``folder`` other than weights, their records and lock files."""
    return sorted(p.name for p in folder.iterdir()
                  if p.suffix not in (".lock", ".sha256", ".hdf5", ".pt", ".yaml"))


# -- single files ---------------------------------------------------------------------------

def test_first_use_downloads_and_verifies_second_use_reads_the_cache(server, cache, entries):
    data = payload()
    entry = entries(single("t-known", data))
    serve(server, entry.files[0].url, data)
    assert cached_weights("t-known") is None
    path = fetch_weights("t-known", base_url=server.url)
    assert path == cache / "test" / "t-known" / "l1c_unet.hdf5"
    assert path.read_bytes() == data and server.gets("l1c_unet.hdf5") == 1
    assert fetch_weights("t-known", base_url=server.url) == path
    assert cached_weights("t-known") == path
    assert server.gets() == 1  # the second use read the cache
    (check,) = verify_weights("t-known")
    assert check.status == "verified" and check.actual == sha(data)
    assert leftovers(path.parent) == []


def test_unknown_hash_is_recorded_on_first_use_and_checked_later(server, cache, entries):
    data = payload(seed=1)
    entry = entries(single("t-tofu", data, sha256=None))
    serve(server, entry.files[0].url, data)
    path = fetch_weights("t-tofu", base_url=server.url)
    record = path.with_name(path.name + ".sha256")
    assert record.read_text().split()[0] == sha(data)
    assert verify_weights("t-tofu")[0].status == "recorded"
    path.write_bytes(data[:-1] + b"x")  # the cached file changes behind our back
    check = verify_weights("t-tofu")[0]
    assert check.status == "mismatch" and check.expected == sha(data)
    with pytest.raises(WeightsError, match="removed"):
        cached_weights("t-tofu")
    assert not path.exists()
    assert fetch_weights("t-tofu", base_url=server.url).read_bytes() == data  # fetched again
    assert server.gets() == 2


def test_wrong_sha256_is_refused_before_anything_is_deserialised(server, cache, entries,
                                                                 monkeypatch):
    torch = pytest.importorskip("torch")
    buffer = cache.parent / "state.pt"
    torch.save({"w": torch.arange(4.0)}, buffer)
    data = buffer.read_bytes()
    entry = entries(single("t-wrong", data, sha256=sha(b"the published file"),
                           filename="cloudsen12.pt", host=CLOUDSEN12_HUB))
    serve(server, entry.files[0].url, data)
    monkeypatch.setenv("XCLOUD_WEIGHTS_URL", server.url)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a) or real_load(*a, **k))

    def loader():  # what a model loader does
        return torch.load(resolve_weights("t-wrong", None), weights_only=True)

    with pytest.raises(WeightsError, match="does not have the published sha256"):
        loader()
    assert calls == [] and server.gets("cloudsen12.pt") == 1
    folder = cache / "test" / "t-wrong"
    assert not (folder / "cloudsen12.pt").exists() and leftovers(folder) == []
    assert cached_weights("t-wrong") is None


def test_wrong_size_is_refused(server, cache, entries):
    data = payload(seed=2)
    entry = entries(single("t-size", data, sha256=None, size=len(data) + 1))
    serve(server, entry.files[0].url, data)
    with pytest.raises(WeightsError, match="bytes"):
        fetch_weights("t-size", base_url=server.url)
    assert not (cache / "test" / "t-size" / "l1c_unet.hdf5").exists()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("how", ["stopped", "closed-port", "404"])
def test_offline_or_http_failure_says_what_to_fetch_and_where(server, cache, entries, how):
    data = payload(seed=3)
    entry = entries(single("t-offline", data))
    if how == "404":
        base = server.url  # serves nothing at that path
    elif how == "stopped":
        serve(server, entry.files[0].url, data)
        server.stop()
        base = server.url
        server.stop = lambda: None
    else:
        base = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(MissingWeightsError) as info:
        fetch_weights("t-offline", base_url=base)
    message = str(info.value)
    target = cache / "test" / "t-offline" / "l1c_unet.hdf5"
    assert f"{base}/model_weights/2022-09-13/l1c_unet.hdf5" in message
    assert str(target) in message and "weights=PATH" in message and "XCLOUD_CACHE_DIR" in message
    assert not target.exists()
    target.parent.mkdir(parents=True, exist_ok=True)  # offline use: put the file there
    target.write_bytes(data)
    assert fetch_weights("t-offline", base_url=base) == target


def test_hand_placed_file_with_a_wrong_published_hash_is_refused(cache, entries):
    entry = entries(single("t-placed", payload(seed=4)))
    target = fetch.local_path(entry)
    target.parent.mkdir(parents=True)
    target.write_bytes(payload(seed=5))
    with pytest.raises(WeightsError, match="has been removed"):
        cached_weights("t-placed")
    assert not target.exists()


def test_resolve_weights_passes_a_given_path_and_checks_it(tmp_path):
    given = tmp_path / "mine.pt"
    given.write_bytes(b"x")
    assert resolve_weights("cloudsen12-l2a", str(given)) == given
    with pytest.raises(MissingWeightsError, match="weights="):
        resolve_weights("cloudsen12-l2a", tmp_path / "absent.pt")
    assert resolve_weights("model-without-published-weights", None) is None


def test_cache_dir_and_mirror_url(tmp_path, monkeypatch):
    monkeypatch.delenv("XCLOUD_CACHE_DIR", raising=False)
    platformdirs = pytest.importorskip("platformdirs")
    assert cache_dir() == Path(platformdirs.user_cache_dir("xcloud")) / "weights"
    monkeypatch.setenv("XCLOUD_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path and cache_dir(tmp_path / "x") == tmp_path / "x"
    url = f"{SENSEI_V2_HUB}/full-models/M/weights.pt"
    assert mirror_url(url, "http://10.1.2.3:81/m/") == \
        "http://10.1.2.3:81/m/aliFrancis/SEnSeIv2/resolve/main/full-models/M/weights.pt"
    monkeypatch.setenv("XCLOUD_WEIGHTS_URL", "http://mirror")
    assert mirror_url(url).startswith("http://mirror/aliFrancis/")
    with pytest.raises(WeightsError, match="base_url="):
        mirror_url(url, "ftp://x")


# -- SEnSeI-v2: several files in the authors' layout -------------------------------------------

def _sensei_entry(name: str, files: dict[str, bytes], *, listed_config: str | None):
    folder = f"full-models/{name}"
    listed = [PublishedFile(f"{SENSEI_V2_HUB}/{folder}/{f}", f"{folder}/{f}", sha(d), len(d))
              for f, d in files.items()]
    if listed_config:
        listed.append(PublishedFile(f"{SENSEI_V2_HUB}/sensei-configs/{listed_config}",
                                    f"sensei-configs/{listed_config}"))
    return PublishedWeights(
        name=f"t-{name.lower()}", model=f"t-{name.lower()}", files=tuple(listed), licence="test",
        bands=(), citation="", source_page="", format="senseiv2-full-model",
        subdir="sensei-v2", main=folder, default=True)


def test_sensei_folder_and_the_sensei_config_its_config_names(server, cache, entries):
    config = b"NAME: M\nSEnSeIv2: 'hf_models/sensei-configs/senseiv2-small.yaml'\nCLASSES: 7\n"
    files = {"weights.pt": payload(seed=6), "config.yaml": config}
    entry = entries(_sensei_entry("M", files, listed_config="senseiv2-medium.yaml"))
    for file in entry.files:
        data = files.get(file.filename.rsplit("/", 1)[-1], b"blocks: []\n")
        serve(server, file.url, data)
    serve(server, f"{SENSEI_V2_HUB}/sensei-configs/senseiv2-small.yaml", b"blocks: [x]\n")
    folder = fetch_weights(entry.name, base_url=server.url)
    assert folder == cache / "sensei-v2" / "full-models" / "M" and folder.is_dir()
    assert (folder / "weights.pt").read_bytes() == files["weights.pt"]
    configs = folder.parent.parent / "sensei-configs"
    assert sorted(p.name for p in configs.glob("*.yaml")) == ["senseiv2-medium.yaml",
                                                              "senseiv2-small.yaml"]
    assert server.gets() == 4
    assert {c.status for c in verify_weights(entry.name)} == {"verified", "recorded"}
    assert len(verify_weights(entry.name)) == 4  # the named config is checked too
    assert cached_weights(entry.name) == folder and server.gets() == 4


def test_real_published_format_fixtures_round_trip(server, cache, entries):
    """The fixture files (authors' formats), served in the authors' layouts, fetched intact."""
    torch = pytest.importorskip("torch")
    kappa = need_data("fixtures/kappamask_keras/l1c_unet.hdf5")
    jit = need_data("fixtures/cloudsen12_torchscript/cloudsen12l2a.pt")
    sensei = need_data("fixtures/sensei_v2_published")
    name = "SEnSeIv2-SegFormerTiny-test"
    model_dir = sensei / "full-models" / name
    files = {"weights.pt": (model_dir / "weights.pt").read_bytes(),
             "config.yaml": (model_dir / "config.yaml").read_bytes(),
             "segformer-config/config.json":
                 (model_dir / "segformer-config" / "config.json").read_bytes()}
    s_entry = entries(_sensei_entry(name, files, listed_config=None))
    for file in s_entry.files:
        serve(server, file.url, files[file.filename.split("/", 2)[2]])
    named = sensei / "sensei-configs" / "senseiv2-test.yaml"
    serve(server, f"{SENSEI_V2_HUB}/sensei-configs/senseiv2-test.yaml", named.read_bytes())
    k_entry = entries(single("t-kappa", kappa.read_bytes()))
    c_entry = entries(single("t-jit", jit.read_bytes(), filename="cloudsen12-s2-l2a-1.0.0.pt",
                             host=CLOUDSEN12_HUB))
    for entry, source in ((k_entry, kappa), (c_entry, jit)):
        serve(server, entry.files[0].url, source.read_bytes())
        assert fetch_weights(entry.name, base_url=server.url).read_bytes() == source.read_bytes()
    folder = fetch_weights(s_entry.name, base_url=server.url)
    assert (folder / "segformer-config" / "config.json").is_file()
    assert (folder.parent.parent / "sensei-configs" / "senseiv2-test.yaml").read_bytes() == \
        named.read_bytes()
    state = torch.load(folder / "weights.pt", weights_only=True)
    reference = torch.load(model_dir / "weights.pt", weights_only=True)
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in state)


# -- Dask workers -------------------------------------------------------------------------------

def _worker_fetch(entry: PublishedWeights, cache: str, base_url: str, barrier: str,
                  n: int) -> tuple[str, str, int]:
    """Register ``entry`` in this worker, wait for the others, fetch; (path, sha256, pid)."""
    register_published(entry, overwrite=True)
    Path(barrier, str(os.getpid())).touch()
    deadline = time.monotonic() + 30
    while len(os.listdir(barrier)) < n and time.monotonic() < deadline:
        time.sleep(0.005)
    path = fetch_weights(entry.name, cache_dir=cache, base_url=base_url, retries=0)
    return str(path), fetch.file_sha256(path), os.getpid()


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        yield client


def _run_on_both(client, entry, caches, base_url, barrier):
    workers = sorted(client.scheduler_info()["workers"])
    futures = [client.submit(_worker_fetch, entry, cache, base_url, str(barrier), 2,
                             workers=[w], pure=False) for w, cache in zip(workers, caches,
                                                                          strict=True)]
    return client.gather(futures)


def test_two_workers_fetching_at_once_end_with_one_verified_copy(server, tmp_path, entries,
                                                                 dask_client):
    data = payload(n=16_000_000, seed=7)
    entry = entries(single("t-dask", data))
    serve(server, entry.files[0].url, data)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    shared = str(tmp_path / "shared-cache")
    results = _run_on_both(dask_client, entry, [shared, shared], server.url, barrier)
    assert len({pid for _, _, pid in results}) == 2  # two processes
    assert {(p, d) for p, d, _ in results} == {(str(fetch.local_path(entry, cache_dir=shared)),
                                                sha(data))}
    assert server.gets("l1c_unet.hdf5") == 1  # the second waited for the first's copy
    folder = Path(results[0][0]).parent
    assert leftovers(folder) == [] and len(list(folder.glob("*.hdf5"))) == 1


def test_workers_with_their_own_caches_keep_one_copy_each(server, tmp_path, entries,
                                                         dask_client):
    data = payload(n=1_000_000, seed=8)
    entry = entries(single("t-dask-own", data))
    serve(server, entry.files[0].url, data)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    caches = [str(tmp_path / "cache-a"), str(tmp_path / "cache-b")]
    results = _run_on_both(dask_client, entry, caches, server.url, barrier)
    assert sorted(p for p, _, _ in results) == sorted(
        str(fetch.local_path(entry, cache_dir=c)) for c in caches)
    assert {d for _, d, _ in results} == {sha(data)} and server.gets() == 2
    for cache in caches:
        copies = [p for p in Path(cache).rglob("*") if p.is_file() and p.suffix == ".hdf5"]
        assert len(copies) == 1
    shutil.rmtree(tmp_path / "cache-a")


# -- the whole path: predict without weights= ------------------------------------------------

def test_predict_without_weights_fetches_the_published_file_once(server, cache, monkeypatch):
    """predict(model=...) alone: the published file comes from the (mirrored) host into the
    cache before any task runs, is pinned to its first hash, and gives what the same file
    given as weights= gives; a second job reads the cache."""
    from xcloud.engine import clear_cache
    from xcloud.models.published import published
    from xcloud.synthetic import synthetic_scene

    hdf5 = need_data("fixtures/kappamask_keras/l1c_unet.hdf5")
    serve(server, published("kappamask-l1c").files[0].url, hdf5.read_bytes())
    monkeypatch.setenv("XCLOUD_WEIGHTS_URL", server.url)
    scene = synthetic_scene(128, seed=3)
    options = {"model": "kappamask-l1c", "tile_size": 128, "tile_overlap": 0}
    clear_cache()
    fetched = scene.cloudmask.predict(**options)
    assert server.gets("l1c_unet.hdf5") == 1
    clear_cache()
    again = scene.cloudmask.predict(**options)
    assert server.gets("l1c_unet.hdf5") == 1
    local = scene.cloudmask.predict(weights=hdf5, **options)
    np.testing.assert_array_equal(fetched.values, local.values)
    np.testing.assert_array_equal(again.values, local.values)
    cached = cached_weights("kappamask-l1c")
    assert cached is not None and cached.read_bytes() == hdf5.read_bytes()
    assert [c.status for c in verify_weights("kappamask-l1c")] == ["recorded"]


# -- weights at a URL (https://, s3://): fetched once per cache, hash-checked ----------------

def test_is_weights_url():
    assert fetch.is_weights_url("https://host/w.pt") and fetch.is_weights_url("s3://b/k.pt")
    assert not fetch.is_weights_url("file:///tmp/w.pt")
    assert not fetch.is_weights_url("/tmp/w.pt") and not fetch.is_weights_url(Path("/tmp/x"))
    assert not fetch.is_weights_url("C://weights.pt")  # a one-letter scheme is a drive


def test_weights_url_is_fetched_once_then_read_from_the_cache(server, cache):
    data = payload(seed=20)
    (server.root / "models").mkdir()
    (server.root / "models" / "mine.pt").write_bytes(data)
    url = f"{server.url}/models/mine.pt"
    path = resolve_weights("cloudsen12-l2a", url)
    assert path == fetch.url_cache_path(url) and path.read_bytes() == data
    assert path.is_relative_to(cache / "urls")
    assert path.with_name("mine.pt.sha256").read_text().split()[0] == sha(data)  # pinned
    assert resolve_weights("cloudsen12-l2a", url) == path
    assert server.gets("mine.pt") == 1  # the second use read the cache
    assert leftovers(path.parent) == []
    other = f"{server.url}/models/mine.pt?v=2"  # another URL, same file name: its own copy
    assert fetch.url_cache_path(other) != path


def test_weights_url_with_a_wrong_sha256_is_refused_before_anything_is_kept(server, cache):
    data = payload(seed=21)
    (server.root / "w.pt").write_bytes(data)
    url = f"{server.url}/w.pt"
    with pytest.raises(WeightsError, match=f"expected {sha(b'other')}"):
        resolve_weights("cloudsen12-l2a", f"{url}#sha256={sha(b'other')}")
    folder = fetch.url_cache_path(url).parent
    assert not fetch.url_cache_path(url).exists() and leftovers(folder) == []
    assert resolve_weights("cloudsen12-l2a", f"{url}#sha256={sha(data)}").read_bytes() == data
    with pytest.raises(WeightsError, match="sha256"):
        resolve_weights("cloudsen12-l2a", f"{url}#md5=abc")


def test_a_published_file_name_at_a_url_must_have_the_published_sha256(server, cache):
    """The real DL-L8S2-UV file's name: the registry's sha256 applies to any URL of it."""
    real = need_data("weights/dl_l8s2_uv/landsatbiomeRGBI6.hdf5")
    (server.root / "a").mkdir()
    (server.root / "b").mkdir()
    (server.root / "a" / real.name).write_bytes(real.read_bytes())
    (server.root / "b" / real.name).write_bytes(real.read_bytes()[:-10] + b"0123456789")
    good, bad = f"{server.url}/a/{real.name}", f"{server.url}/b/{real.name}"
    assert fetch.expected_url_sha256(good, "dl-l8s2-uv-rgbi") == fetch.file_sha256(real)
    assert resolve_weights("dl-l8s2-uv-rgbi", good).read_bytes() == real.read_bytes()
    with pytest.raises(WeightsError, match="expected"):
        resolve_weights("dl-l8s2-uv-rgbi", bad)
    assert not fetch.url_cache_path(bad).exists()


def test_an_unreachable_weights_url_says_what_to_do(server, cache):
    url = f"{server.url}/absent.pt"
    with pytest.raises(MissingWeightsError) as info:
        resolve_weights("cloudsen12-l2a", url)
    message = str(info.value)
    assert url in message and "weights=PATH" in message
    assert str(fetch.url_cache_path(url)) in message


def test_weights_from_s3_with_storage_options_given_or_registered(cache, tmp_path):
    pytest.importorskip("s3fs")
    from .moto_server import MotoServer, MotoServerError

    try:
        moto = MotoServer(log=tmp_path / "moto.log").start()
    except MotoServerError as error:
        pytest.skip(str(error))
    try:
        bucket = moto.bucket()
        data = payload(seed=22)
        moto.client().put_object(Bucket=bucket, Key="models/w.pt", Body=data)
        url = f"s3://{bucket}/models/w.pt"
        with pytest.raises(MissingWeightsError, match=url):  # no endpoint: not reachable
            fetch.fetch_url_weights(url, storage_options={"endpoint_url": "http://127.0.0.1:9",
                                                          "anon": True}, retries=0)
        path = fetch.fetch_url_weights(url, storage_options=moto.options())
        assert path.read_bytes() == data
        path.unlink()
        fetch.register_url_options(f"s3://{bucket}/", moto.options())
        try:
            assert resolve_weights("cloudsen12-l2a", url).read_bytes() == data
        finally:
            fetch.register_url_options(f"s3://{bucket}/", None)
        assert fetch.url_options(url) == {}
    finally:
        moto.stop()
