"""Shared fixtures: the real data folder (optional) and small generated scenes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import xcloud  # noqa: F401  (registers the accessor)
from xcloud.synthetic import synthetic_scene

from .stac_server import (
    REQUIRE_ENV,
    StacApiServer,
    StacApiServerError,
    server_required,
    server_unavailable_reason,
)

UKIS_BANDS = ["blue", "green", "red", "nir", "swir16", "swir22"]


def data_dir() -> Path:
    """The real-data folder: $XCLOUD_TEST_DATA, else ../shared/data beside the repository."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    return Path(os.environ.get("XCLOUD_TEST_DATA", default))


def need_data(relative: str) -> Path:
    path = data_dir() / relative
    if not path.exists():
        pytest.skip(f"real test data {relative} not found under {data_dir()} "
                    "(set XCLOUD_TEST_DATA)")
    return path


@pytest.fixture(scope="session")
def labelled_patch() -> dict[str, np.ndarray]:
    """ukis-csmask's real labelled Sentinel-2 patch: img (512, 512, 6), msk (512, 512, 1)."""
    with np.load(need_data("labeled/ukis_csmask/sentinel2.npz")) as data:
        return {"img": data["img"], "msk": data["msk"]}


@pytest.fixture(scope="session")
def patch_array(labelled_patch) -> xr.DataArray:
    """The labelled patch as a (band, y, x) DataArray with Earth Search band names."""
    image = labelled_patch["img"].transpose(2, 0, 1)
    return xr.DataArray(image, dims=("band", "y", "x"), coords={"band": UKIS_BANDS})


@pytest.fixture(scope="session")
def reference_labels(labelled_patch) -> np.ndarray:
    """Labels mapped to the ukis scheme: 0 shadow, 1-3 clear, 4 cloud -> 2, 0, 0, 0, 1."""
    return np.array([2, 0, 0, 0, 1], np.uint8)[labelled_patch["msk"][..., 0]]


@pytest.fixture
def scene() -> xr.Dataset:
    """A generated 13-band 10 m scene (192 x 192 px) with CRS and coordinates."""
    return synthetic_scene(192, seed=1)


def start_stac_api() -> StacApiServer:
    """A started test STAC API server; skips with the reason, fails if $XCLOUD_REQUIRE_STAC_SERVER.

    The caller stops it (``server.stop()``).
    """
    reason = server_unavailable_reason()
    if reason is None:
        try:
            return StacApiServer().start()
        except StacApiServerError as exc:
            reason = f"the test STAC API server did not start: {exc}"
    if server_required():
        pytest.fail(f"{reason} ({REQUIRE_ENV} is set)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def stac_api() -> Iterator[StacApiServer]:
    """A real STAC API (stac-fastapi-pgstac) on 127.0.0.1, shared by the session.

    ``stac_api.url`` for pystac-client; ``stac_api.ingest(collections, items)`` upserts. Other
    tests use the same server: give collections unique ids and search within them.
    """
    server = start_stac_api()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _no_weights_from_the_internet(tmp_path_factory, monkeypatch) -> None:
    """No test fetches weights from the authors' hosts or writes the user's cache: published
    weights come from a closed local port (tests that serve them set their own mirror) into
    a cache of the test session."""
    monkeypatch.setenv("XCLOUD_WEIGHTS_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("XCLOUD_WEIGHTS_RETRIES", "0")
    monkeypatch.setenv("XCLOUD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "weights-cache"))


@pytest.fixture(autouse=True)
def _registry_left_as_found() -> Iterator[None]:
    """Models a test registers are forgotten after it (other tests list every model)."""
    from xcloud.models import list_models, registry, unregister

    list_models()  # built-ins and plugins first, so that they are not taken for the test's
    before = set(registry._REGISTRY)
    yield
    for name in set(registry._REGISTRY) - before:
        unregister(name)


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 (a subprocess), for one test module; skipped with the
    reason only where moto is not installed (a server that fails to start fails the test)."""
    from .moto_server import MotoServer, MotoServerError

    server = MotoServer(log=tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        server.start()
    except MotoServerError as error:
        if MotoServer.executable() is None:
            pytest.skip(str(error))
        raise
    yield server
    server.stop()
