"""The model registry and its entry-point group."""

import inspect
import sys
import textwrap

import numpy as np
import pytest

import xcloud
from xcloud.errors import UnknownModelError
from xcloud.models import registry

from .conftest import need_data


def test_builtin_models_are_listed_with_metadata():
    names = xcloud.models.list()
    assert {"ukis-4b-l1c", "ukis-4b-l2a", "ukis-6b-l1c", "ukis-6b-l2a", "s2cloudless"} <= set(names)
    info = xcloud.models.get("ukis-6b-l2a").info
    assert info.bands == ("B02", "B03", "B04", "B08", "B11", "B12")
    assert info.band_info[0].wavelength_min == 459
    assert info.licence == "Apache-2.0" and info.resolution == 30
    assert xcloud.models.get("ukis-6b-l2a").sha256


def test_unknown_name():
    with pytest.raises(UnknownModelError, match="Available"):
        xcloud.models.get("kappamask-l9")


def test_checksum_mismatch_is_refused(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"not the published weights")
    with pytest.raises(xcloud.errors.WeightsError, match="sha256"):
        registry.verify_checksum(path, "0" * 64)


def test_entry_point_plugins_are_registered(tmp_path, monkeypatch, scene):
    package = tmp_path / "plugin_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent('''
        import numpy as np
        from xcloud.models import ModelEntry, ModelInfo, BaseCloudModel
        from xcloud.models.classes import S2CLOUDLESS_SCHEME

        INFO = ModelInfo("bright-is-cloud", "1", ("B02",), 10.0, S2CLOUDLESS_SCHEME,
                         tile_size=None, halo=0)

        class Bright(BaseCloudModel):
            info = INFO
            def predict_proba(self, batch):
                cloud = (batch[:, :1] > 0.3).astype(np.float32)
                return np.concatenate([1 - cloud, cloud], axis=1)

        ENTRY = ModelEntry(INFO, lambda **kwargs: Bright())
    '''))
    dist = tmp_path / "plugin_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[xcloud.models]\nbright = plugin_pkg:ENTRY\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry._STATE, "entry_points_loaded", False)
    assert "bright-is-cloud" in xcloud.models.list()
    mask = scene.cloudmask.predict(model="bright-is-cloud")
    np.testing.assert_array_equal(mask.values, (scene["B02"].values > 0.3).astype(np.uint8))
    registry._REGISTRY.pop("bright-is-cloud")
    sys.modules.pop("plugin_pkg", None)


def _run_in_a_fresh_process(code: str) -> None:
    import subprocess

    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


def test_first_lookups_from_many_threads_all_find_the_builtin_models():
    """The first get() in a fresh process must not let other threads see an empty registry."""
    _run_in_a_fresh_process("""
        import threading
        import xcloud.models.registry as r
        errors = []
        def look():
            try:
                r.get('ukis-6b-l1c')
            except Exception as error:
                errors.append(repr(error))
        threads = [threading.Thread(target=look) for _ in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert not errors, errors
    """)


def test_import_xcloud_loads_no_network_runtime_and_no_model_until_a_lookup():
    """The registry names the built-in models' modules; the first lookup imports them."""
    _run_in_a_fresh_process("""
        import sys
        import xcloud, xcloud.models, xcloud.evaluation
        from xcloud.models import registry
        builtin = set(registry._BUILTIN_MODULES)
        loaded = {'torch', 'onnxruntime', *builtin} & set(sys.modules)
        assert not loaded, sorted(loaded)
        assert 'ukis-6b-l1c' in xcloud.models.list()
        assert builtin <= set(sys.modules), sorted(builtin - set(sys.modules))
    """)


class _FirstBandCloud(xcloud.models.BaseCloudModel):
    """Cloud where the first given band is bright: which band comes first is the test."""

    def __init__(self, info: xcloud.models.ModelInfo) -> None:
        self.info = info

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        cloud = (batch[:, :1] > 0.3).astype(np.float32)
        return np.concatenate([1 - cloud, cloud], axis=1)


def _any_bands_entry(name: str) -> registry.ModelEntry:
    from dataclasses import replace

    from xcloud.models.classes import S2CLOUDLESS_SCHEME
    info = xcloud.models.ModelInfo(name, "1", ("B02",), 10.0, S2CLOUDLESS_SCHEME,
                                   tile_size=None, halo=0)

    def load(*, weights=None, device="cpu", runtime="auto", bands=None):
        return _FirstBandCloud(replace(info, bands=tuple(bands or info.bands)))

    return registry.ModelEntry(info, load)


def test_bands_reach_models_that_take_any_set_and_are_refused_by_fixed_ones(scene):
    entry = registry.register(_any_bands_entry("test-any-bands"))
    assert xcloud.models.load(entry.name, bands=["B04", "B02"]).info.bands == ("B04", "B02")
    with pytest.raises(TypeError, match="fixed set of bands"):
        xcloud.models.load("ukis-6b-l1c", bands=["B02"])
    dark_red = scene.copy()
    dark_red["B04"] = scene["B04"] * 0.0
    dark_red["B02"] = scene["B02"] * 0.0 + 0.9
    by_default = dark_red.cloudmask.predict(model=entry.name)
    red_first = dark_red.cloudmask.predict(model=entry.name, bands=["B04", "B02"])
    assert (by_default.values == 1).all() and (red_first.values == 0).all()
    with pytest.raises(TypeError, match="fixed set of bands"):
        scene.cloudmask.predict(model="ukis-6b-l1c", bands=["B02"])


# -- weights given by the user: typed failures and provenance ----------------------------------

def _ukis_onnx():
    ukis_csmask = pytest.importorskip("ukis_csmask")
    from pathlib import Path
    return Path(ukis_csmask.__file__).parent / "model_6b_l1c.onnx"


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def test_an_empty_or_looping_weights_path_is_a_weights_error(tmp_path):
    with pytest.raises(xcloud.errors.WeightsError, match="empty"):
        xcloud.models.load("kappamask-l1c", weights="")
    loop = tmp_path / "loop.hdf5"
    loop.symlink_to(tmp_path / "loop.hdf5")
    with pytest.raises(xcloud.errors.WeightsError, match=r"cannot be followed|loop"):
        xcloud.models.load("kappamask-l1c", weights=loop)


@pytest.mark.parametrize(("model", "name", "content"), [
    ("cloudsen12-l2a", "truncated.pt", b"PK\x03\x04" + b"\x00" * 40),
    ("kappamask-l1c", "weights.hdf5", b"\x89HDF\r\n\x1a\n" + b"\x00" * 100),
    ("sensei-v2", "weights.pt", b"\x80\x02}q\x00."),
])
def test_unreadable_weights_are_weights_errors_naming_the_file(tmp_path, model, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(xcloud.errors.WeightsError, match=name):
        xcloud.models.load(model, weights=path)


def test_a_keras_file_whose_model_config_is_a_list_is_a_weights_error(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "landsatbiomeRGBI6-copy.hdf5"
    with h5py.File(path, "w") as handle:
        handle.attrs["model_config"] = "[1, 2, 3]"
        handle.create_group("model_weights")
    with pytest.raises(xcloud.errors.WeightsError, match="landsatbiomeRGBI6-copy"):
        xcloud.models.load("dl-l8s2-uv-rgbi", weights=path)


def test_a_corrupt_copy_under_the_published_name_is_refused(tmp_path):
    shipped = _ukis_onnx()
    copy = tmp_path / shipped.name
    copy.write_bytes(shipped.read_bytes())
    _flip_a_byte(copy)
    with pytest.raises(xcloud.errors.WeightsError, match="corrupt or altered copy"):
        xcloud.models.load("ukis-6b-l1c", weights=copy)


def test_masks_say_whether_the_weights_are_the_published_ones(tmp_path, scene):
    shipped = _ukis_onnx()
    copy = tmp_path / "renamed.onnx"
    copy.write_bytes(shipped.read_bytes())
    mask = scene.cloudmask.predict(model="ukis-6b-l1c", weights=copy)
    assert mask.attrs["xcloud:weights_origin"] == "published"
    assert mask.attrs["xcloud:weights_sha256"] == registry.get("ukis-6b-l1c").sha256
    default = scene.cloudmask.predict(model="ukis-6b-l1c")
    assert "xcloud:weights_origin" not in default.attrs
    h5py = pytest.importorskip("h5py")
    del h5py
    fixture = need_data("fixtures/kappamask_keras/l1c_unet.hdf5")
    user = scene.cloudmask.predict(model="kappamask-l1c", weights=fixture, tile_size=192,
                                   tile_overlap=0)
    assert user.attrs["xcloud:weights_origin"] == "user"


@pytest.mark.parametrize(("model", "why"), [("ukis-6b-l1c", "ONNX graph runs as shipped"),
                                            ("s2cloudless", "LightGBM")])
def test_models_without_torch_run_in_float32_only(model, why):
    entry = xcloud.models.get(model)
    entry.check_precision("float32", device="cpu")
    with pytest.raises(ValueError, match=rf"precision='bfloat16': model '{model}' runs in "
                       rf"float32 only \(.*{why}"):
        xcloud.models.load(model, precision="bfloat16")
    with pytest.raises(ValueError, match=r"precision must be one of"):
        entry.check_precision("half", device="cpu")


def test_torch_models_offer_every_precision_and_float16_on_cuda_only():
    torch_models = [name for name in xcloud.models.list_models()
                    if name.startswith(("kappamask", "cloudsen12", "sensei", "dl-l8s2-uv"))]
    assert {name.split("-")[0] for name in torch_models} == {"kappamask", "cloudsen12",
                                                            "sensei", "dl"}
    for name in torch_models:
        entry = xcloud.models.get(name)
        assert entry.precisions == registry.PRECISIONS, name
        assert "precision" in inspect.signature(entry.loader).parameters, name
    entry = xcloud.models.get("kappamask-l1c")
    entry.check_precision("float16", device="cuda:1")
    with pytest.raises(ValueError, match=r"precision='float16' needs a CUDA device"):
        entry.check_precision("float16", device="cpu")
