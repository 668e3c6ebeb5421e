"""The restricted reader of TorchScript / torch zip archives: tensors out, nothing run."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from xcloud.errors import MissingWeightsError, WeightsError
from xcloud.models.torchscript_archive import (
    ScriptObject,
    is_torch_zip_archive,
    is_torchscript_archive,
    read_archive_objects,
    read_torchscript_tensors,
)

from .conftest import need_data

FIXTURE = "fixtures/cloudsen12_torchscript/cloudsen12l2a.pt"
JIT_WARNINGS = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")


class WithAttributes(nn.Module):
    """A parameterised module with a buffer, a plain tensor attribute and an int list."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.norm = nn.BatchNorm2d(2)
        self.register_buffer("offset", torch.arange(2.0))
        self.scale = torch.full((2,), 3.0)  # neither parameter nor buffer
        self.sizes = [1, 2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x)) + self.offset.view(1, 2, 1, 1)
        return y * self.scale.view(1, 2, 1, 1) + torch.tensor([0.5, 1.5]).view(1, 2, 1, 1)


def _random_state(module: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5)
    return module.eval()


@pytest.fixture
def scripted(tmp_path) -> tuple[torch.jit.ScriptModule, Path]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
        module = torch.jit.script(_random_state(WithAttributes()))
    path = tmp_path / "scripted.pt"
    module.save(str(path))
    return module, path


def rewrite_archive(source: Path, target: Path, members: dict[str, bytes | None]) -> Path:
    """A copy of the zip ``source`` with members (``<root>/`` implied) replaced by new bytes,
    or dropped where ``None``."""
    with zipfile.ZipFile(source) as old:
        root = old.namelist()[0].split("/", 1)[0]
        changes = {f"{root}/{name}": content for name, content in members.items()}
        with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as new:
            for info in old.infolist():
                content = changes.pop(info.filename, old.read(info.filename))
                if content is not None:
                    new.writestr(info.filename, content)
            for name, content in changes.items():
                if content is not None:
                    new.writestr(name, content)
    return target


def _member(path: Path, name: str) -> bytes:
    with zipfile.ZipFile(path) as archive:
        root = archive.namelist()[0].split("/", 1)[0]
        return archive.read(f"{root}/{name}")


# -- what the reader gives ---------------------------------------------------------------------

@JIT_WARNINGS
def test_the_fixture_archive_gives_torch_jit_loads_state_dict():
    path = need_data(FIXTURE)
    assert is_torchscript_archive(path) and is_torch_zip_archive(path)
    tensors = read_torchscript_tensors(path)
    reference = torch.jit.load(str(path)).state_dict()  # trusted fixture: cross-check only
    assert list(tensors) == list(reference) and len(tensors) == 374
    for name, tensor in reference.items():
        assert tensors[name].dtype == tensor.dtype and torch.equal(tensors[name], tensor), name
    assert tensors["encoder.features.0.0.weight"].shape == (32, 12, 3, 3)
    assert tensors["encoder.features.0.1.num_batches_tracked"].dtype == torch.int64
    learned = sum(t.numel() for name, t in tensors.items()
                  if not name.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert learned == 2_664_036  # meta.json n_params_fixture


def test_scripted_module_keeps_parameters_and_buffers_only(scripted):
    module, path = scripted
    tensors = read_torchscript_tensors(path)
    reference = module.state_dict()
    assert list(tensors) == list(reference) == [
        "offset", "conv.weight", "conv.bias", "norm.weight", "norm.bias", "norm.running_mean",
        "norm.running_var", "norm.num_batches_tracked"]
    assert all(torch.equal(tensors[k], reference[k]) for k in reference)
    data, constants = read_archive_objects(path)
    assert isinstance(data, ScriptObject) and data.qualified_name.startswith("__torch__.")
    assert data.state["sizes"] == [1, 2]  # torch.jit._pickle.build_intlist, rebuilt inertly
    assert torch.equal(data.state["scale"], torch.full((2,), 3.0))  # read, not in state dict
    assert isinstance(constants, tuple)


@JIT_WARNINGS
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_traced_module_and_its_constants(tmp_path):
    module = _random_state(WithAttributes())
    traced = torch.jit.trace(module, torch.rand(1, 3, 4, 4))
    traced.save(str(tmp_path / "traced.pt"))
    tensors = read_torchscript_tensors(tmp_path / "traced.pt")
    assert list(tensors) == list(traced.state_dict())
    assert all(torch.equal(tensors[k], v) for k, v in module.state_dict().items())
    _, constants = read_archive_objects(tmp_path / "traced.pt")
    assert any(torch.equal(c, torch.tensor([0.5, 1.5])) for c in constants)


def test_plain_torch_save_zip_gives_its_tensors_by_dotted_key(tmp_path):
    state = _random_state(nn.Conv2d(2, 3, 1)).state_dict()
    content = {"state_dict": state, "half": torch.ones(2, dtype=torch.float16), "epoch": 3,
               "view": torch.arange(10.0)[2:8:2]}
    torch.save(content, tmp_path / "plain.pt")
    assert is_torch_zip_archive(tmp_path / "plain.pt")
    assert not is_torchscript_archive(tmp_path / "plain.pt")
    tensors = read_torchscript_tensors(tmp_path / "plain.pt")
    assert list(tensors) == ["state_dict.weight", "state_dict.bias", "half", "view"]
    assert torch.equal(tensors["state_dict.weight"], state["weight"])
    assert tensors["half"].dtype == torch.float16
    assert torch.equal(tensors["view"], torch.tensor([2.0, 4.0, 6.0]))


def test_big_endian_storages_are_byte_swapped(tmp_path):
    values = torch.tensor([1.5, -2.25, 3e-8, 7e5])
    torch.save({"w": values}, tmp_path / "little.pt")
    swapped = values.numpy().astype(">f4").tobytes()
    rewrite_archive(tmp_path / "little.pt", tmp_path / "big.pt",
                    {"byteorder": b"big", "data/0": swapped})
    assert torch.equal(read_torchscript_tensors(tmp_path / "big.pt")["w"], values)


def test_is_torchscript_archive_is_false_for_other_files(tmp_path):
    (tmp_path / "text.pt").write_bytes(b"not a zip")
    assert not is_torchscript_archive(tmp_path / "text.pt")
    assert not is_torchscript_archive(tmp_path / "absent.pt")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert not is_torch_zip_archive(tmp_path / "other.zip")


# -- what it refuses ---------------------------------------------------------------------------

class SideEffect:
    """Pickles to a call of ``os.mkdir(marker)``: the marker exists iff the payload ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.mkdir, (str(self.marker),)


def _op_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _op_str(text: str) -> bytes:
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def _exec_call(marker: Path) -> bytes:
    """``builtins.exec("import os; os.mkdir(marker)")`` in pickle opcodes."""
    return (_op_global("builtins", "exec") + b"(" + _op_str(f"import os; os.mkdir({str(marker)!r})")
            + b"tR")


def module_with_payload(marker: Path) -> bytes:
    """A TorchScript module pickle (NEWOBJ + BUILD of a ``__torch__`` class) one of whose
    attributes is the ``exec`` payload."""
    return (b"\x80\x02" + _op_global("__torch__", "Evil") + b")\x81}(" + _op_str("training")
            + b"\x89" + _op_str("weight") + _exec_call(marker) + b"ub.")


def test_the_payloads_are_live(tmp_path):
    """Control: the payloads below do run when plain pickle loads them."""
    pickle.loads(pickle.dumps(SideEffect(tmp_path / "a")))
    pickle.loads(b"\x80\x02" + _exec_call(tmp_path / "b") + b".")
    assert (tmp_path / "a").is_dir() and (tmp_path / "b").is_dir()


@pytest.mark.parametrize("case", ["data-pkl-module-attribute", "data-pkl-whole", "constants-pkl",
                                  "plain-torch-save"])
def test_pickled_code_is_refused_and_never_runs(case, scripted, tmp_path):
    _, good = scripted
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pt"
    if case == "data-pkl-module-attribute":
        rewrite_archive(good, evil, {"data.pkl": module_with_payload(marker)})
        forbidden = "builtins.exec"
    elif case == "data-pkl-whole":
        rewrite_archive(good, evil, {"data.pkl": pickle.dumps(SideEffect(marker), protocol=2)})
        forbidden = "posix.mkdir"
    elif case == "constants-pkl":
        payload = pickle.dumps((1.5, SideEffect(marker)), protocol=2)
        rewrite_archive(good, evil, {"constants.pkl": payload})
        forbidden = "posix.mkdir"
    else:
        torch.save({"weight": torch.zeros(2), "hook": SideEffect(marker)}, evil)
        forbidden = "posix.mkdir"
    with pytest.raises(WeightsError, match=f"names the global {forbidden}.*never runs code"):
        read_torchscript_tensors(evil)
    assert not marker.exists()


def test_globals_outside_the_allow_list_are_refused_by_name(scripted, tmp_path):
    _, good = scripted
    data = _member(good, "data.pkl")
    for module, name in [("torch", "load"), ("torch", "UntypedStorage"), ("os", "system"),
                         ("torch.jit", "load"), ("__builtin__", "eval")]:
        pickled = b"\x80\x02" + _op_global(module, name) + b")R."
        rewrite_archive(good, tmp_path / "evil.pt", {"data.pkl": pickled})
        with pytest.raises(WeightsError, match=rf"global {module}\.{name}, which xcloud refuses"):
            read_torchscript_tensors(tmp_path / "evil.pt")
    assert b"torch\nFloatStorage\n" in data
    untyped = data.replace(b"torch\nFloatStorage\n", b"torch\nUntypedStorage\n")
    rewrite_archive(good, tmp_path / "untyped.pt", {"data.pkl": untyped})
    with pytest.raises(WeightsError, match=r"global torch\.UntypedStorage"):
        read_torchscript_tensors(tmp_path / "untyped.pt")


def test_damaged_archives_are_refused_cleanly(scripted, tmp_path):
    _, good = scripted
    first = _member(good, "data/0")
    cases = {
        "short-storage": ({"data/0": first[:-4]}, r"storage .*data/0 has \d+ bytes, not"),
        "missing-storage": ({"data/0": None}, r"lacks storage .*data/0"),
        "no-data-pkl": ({"data.pkl": None}, r"not a torch archive \(no single"),
        "truncated-pickle": ({"data.pkl": _member(good, "data.pkl")[:200]},
                             r"data\.pkl cannot be read"),
        "unknown-byte-order": ({"byteorder": b"middle"}, "unknown byte order"),
    }
    for name, (members, message) in cases.items():
        target = rewrite_archive(good, tmp_path / f"{name}.pt", members)
        with pytest.raises(WeightsError, match=message):
            read_torchscript_tensors(target)
    (tmp_path / "garbage.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match="not a torch zip archive"):
        read_torchscript_tensors(tmp_path / "garbage.pt")
    with pytest.raises(MissingWeightsError, match="does not exist"):
        read_torchscript_tensors(tmp_path / "absent.pt")


def test_a_view_past_its_storage_is_refused(tmp_path):
    torch.save({"w": torch.zeros(4)}, tmp_path / "good.pt")
    data = _member(tmp_path / "good.pt", "data.pkl")
    size = b"K\x00K\x04\x85"  # offset 0, size (4,)
    assert data.count(size) == 1
    rewrite_archive(tmp_path / "good.pt", tmp_path / "past.pt",
             {"data.pkl": data.replace(size, b"K\x00K\x05\x85")})
    with pytest.raises(WeightsError, match=r"reaches past the end of storage 0 \(4 elements\)"):
        read_torchscript_tensors(tmp_path / "past.pt")
    assert torch.equal(read_torchscript_tensors(tmp_path / "good.pt")["w"], torch.zeros(4))


def test_script_objects_take_no_constructor_arguments(scripted, tmp_path):
    _, good = scripted
    pickled = b"\x80\x02" + _op_global("__torch__", "M") + b"(" + _op_str("x") + b"tR."
    rewrite_archive(good, tmp_path / "args.pt", {"data.pkl": pickled})
    with pytest.raises(WeightsError, match="built with arguments"):
        read_torchscript_tensors(tmp_path / "args.pt")


def test_build_cannot_change_allowed_functions_or_rebuilt_tensors(tmp_path):
    """A pickle's BUILD (setstate) on what the reader hands out fails instead of changing it:
    the allowed functions (their defaults, say) and the rebuilt tensors (``Tensor.__setstate__``
    could re-point the storage and attach hooks) are frozen and have no ``__dict__``."""
    torch.save({"w": torch.arange(4.0)}, tmp_path / "good.pt")
    data = _member(tmp_path / "good.pt", "data.pkl")
    assert data.endswith(b"s.")  # SETITEM of the tensor, STOP
    slot_state = b"N}(" + _op_str("tensor") + b"K\x01u\x86b"  # BUILD (None, {"tensor": 1})
    dict_state = b"}(" + _op_str("__defaults__") + b"N" + b"ub"  # BUILD {"__defaults__": None}
    cases = {
        "tensor-slots": data[:-2] + slot_state + b"s.",
        "tensor-dict": data[:-2] + dict_state + b"s.",
        "function": b"\x80\x02" + _op_global("torch._utils", "_rebuild_tensor_v2") + dict_state
                    + b".",
    }
    for name, pickled in cases.items():
        target = rewrite_archive(tmp_path / "good.pt", tmp_path / f"{name}.pt",
                                 {"data.pkl": pickled})
        with pytest.raises(WeightsError, match=r"data\.pkl cannot be read \(.*Error"):
            read_torchscript_tensors(target)
    assert torch.equal(read_torchscript_tensors(tmp_path / "good.pt")["w"], torch.arange(4.0))
