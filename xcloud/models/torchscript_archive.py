"""Tensors of TorchScript and torch zip archives, read without running anything in them.

A TorchScript archive (``torch.jit.save``) and a torch zip file (``torch.save``) are zip files
with one top folder ``<root>/``:

- ``data.pkl``: a pickle of the object tree. In TorchScript archives each module is an object
  of a class ``__torch__.<qualified name>`` whose state is the dict of its attributes
  (parameters, buffers, submodules, plain values); tensors are
  ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)``
  calls whose storage is a persistent id ``("storage", torch.<Type>Storage, key, location,
  numel)``;
- ``data/<key>``: the bytes of each storage (``byteorder`` tells their byte order);
- ``constants.pkl`` and ``constants/<key>``: the tensor constants of the TorchScript code;
- ``code/``: the TorchScript source of each class, which declares which attributes are
  parameters (``__parameters__ = [...]``) and buffers (``__buffers__ = [...]``).

``torch.jit.load`` compiles and runs that code, and ``pickle`` would import and call whatever
the pickles name. This module does neither: ``data.pkl`` and ``constants.pkl`` go through a
``pickle.Unpickler`` whose ``find_class`` gives only

- xcloud's own re-implementations of the tensor rebuilders (``torch._utils._rebuild_tensor_v2``,
  ``_rebuild_parameter``, ``_rebuild_parameter_with_state``) and of TorchScript's typed list
  helpers (``torch.jit._pickle.build_intlist`` and the like), which only check their arguments
  and view a storage;
- ``collections.OrderedDict``;
- inert markers for the storage types (``torch.FloatStorage`` ...), which are never called;
- for every ``__torch__.*`` class, an inert placeholder (:class:`ScriptObject`) that records
  the attribute state and nothing else.

Any other global (``builtins.exec``, ``os.system``, ``torch.load``, ...) stops the reading with
:class:`~xcloud.errors.WeightsError` naming it, before anything is called. Storages are read
from ``data/<key>`` with their dtype, byte order and size checked, and every tensor view is
checked against its storage's bounds. The ``code/`` files are only scanned as text for the two
declarations above (``ast.literal_eval`` of a list of strings); they are never compiled,
imported or run. Other members (``*.debug_pkl``, ``traced_inputs.pkl``, ``extra/``) are not
read.

The module tree is then walked to the names that ``torch.jit.load(path).state_dict()`` gives,
in its order: per module its parameters, then its buffers, then its submodules, dotted
(``encoder.features.0.0.weight``, ``...running_mean``, ``...num_batches_tracked``).
"""

from __future__ import annotations

import ast
import collections
import io
import os
import pickle
import re
import sys
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import torch

from ..errors import MissingWeightsError, WeightsError

__all__ = [
    "ALLOWED_GLOBALS",
    "ScriptObject",
    "is_torch_zip_archive",
    "is_torchscript_archive",
    "read_archive_objects",
    "read_torchscript_tensors",
]

_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}
_SCRIPT_PREFIX = "__torch__"
_KEY = re.compile(r"[A-Za-z0-9_]+")
_MAX_DEPTH = 200
_MAX_ENTRIES = 1_000_000
_CLASS = re.compile(r"^class (\w+)\(", re.MULTILINE)
_DECLARATION = re.compile(r"^  (__parameters__|__buffers__) = (\[[^\]\n]*\])", re.MULTILINE)


class ScriptObject:
    """An object of a TorchScript class (``__torch__.*``): its class name and state, inert.

    The unpickler makes one subclass per qualified name; instances only keep the state that
    the pickle's ``BUILD`` gives them (a module's attribute dict), with no behaviour.
    """

    __slots__ = ("state",)
    qualified_name: ClassVar[str] = ""

    def __new__(cls, *args: object, **kwargs: object) -> ScriptObject:
        """Refuse construction with arguments (only pickled state is allowed)."""
        if args or kwargs:
            raise WeightsError(f"TorchScript object {cls.qualified_name} built with arguments; "
                               "an archive's modules are built from their state only")
        instance = super().__new__(cls)
        instance.state = None
        return instance

    def __setstate__(self, state: object) -> None:
        self.state = state

    def __reduce__(self) -> Any:
        raise TypeError("ScriptObject placeholders cannot be pickled")

    def __repr__(self) -> str:
        return f"ScriptObject({self.qualified_name})"


class _Sealed:
    """Base of what the unpickler hands out besides placeholders: no ``__dict__``, and no
    attribute can be set or deleted after construction, so a pickle's ``BUILD`` (set state)
    on it fails instead of changing it."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *values: object) -> None:
        for field, value in zip(self._fields, values, strict=True):
            object.__setattr__(self, field, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __setstate__(self, state: object) -> None:
        raise AttributeError(f"{type(self).__name__} takes no pickled state")

    def __reduce__(self) -> Any:
        raise TypeError(f"{type(self).__name__} cannot be pickled")


class _StorageType(_Sealed):
    """Stands for ``torch.<name>``: a storage type named in a persistent id, never called."""

    __slots__ = ("dtype", "name")
    _fields = ("name", "dtype")
    name: str
    dtype: torch.dtype


class _Storage(_Sealed):
    """One storage of the archive: its key and its elements as a flat tensor."""

    __slots__ = ("data", "key")
    _fields = ("key", "data")
    key: str
    data: torch.Tensor


class _TensorRef(_Sealed):
    """A rebuilt tensor while unpickling, sealed: a pickle's ``BUILD`` cannot reach the tensor
    (``Tensor.__setstate__`` would re-point its storage and attach backward hooks);
    ``_resolve`` unwraps it afterwards."""

    __slots__ = ("tensor",)
    _fields = ("tensor",)
    tensor: torch.Tensor


class _Allowed(_Sealed):
    """An allowed global as the unpickler hands it out, sealed, so that a pickle's ``BUILD``
    cannot change the function behind it (its defaults, say)."""

    __slots__ = ("function",)
    _fields = ("function",)
    function: Callable[..., object]

    def __call__(self, *args: object) -> object:
        return self.function(*args)


def _ints(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise WeightsError(f"tensor {what} {value!r} is not a tuple of non-negative integers")
    return tuple(value)


def _rebuild_tensor(storage: object, offset: object, size: object, stride: object,
                    requires_grad: object = False, hooks: object = None,
                    metadata: object = None) -> _TensorRef:
    """``torch._utils._rebuild_tensor_v2``, checked: a view of ``storage`` within its bounds."""
    if not isinstance(storage, _Storage):
        raise WeightsError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise WeightsError(f"tensor storage offset {offset!r} is not a non-negative integer")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    if len(shape) != len(strides):
        raise WeightsError(f"tensor size {shape} and stride {strides} differ in length")
    if not isinstance(requires_grad, bool):
        raise WeightsError(f"tensor requires_grad {requires_grad!r} is not a bool")
    if hooks or metadata:
        raise WeightsError("tensor with backward hooks or Python attributes; xcloud reads "
                           "plain tensors only")
    if all(shape):
        last = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
        if last >= storage.data.numel():
            raise WeightsError(
                f"tensor of size {shape}, stride {strides} at offset {offset} reaches past the "
                f"end of storage {storage.key} ({storage.data.numel()} elements)")
    return _TensorRef(torch.as_strided(storage.data, shape, strides, offset))


def _rebuild_parameter(data: object, requires_grad: object = True, hooks: object = None,
                       state: object = None) -> _TensorRef:
    """``torch._utils._rebuild_parameter(_with_state)``: the tensor itself."""
    if not isinstance(data, _TensorRef) or hooks:
        raise WeightsError("parameter rebuilt from something other than a plain tensor")
    return data


def _build_list(items: object) -> list[object]:
    """``torch.jit._pickle.build_intlist`` and the like: the list itself."""
    if not isinstance(items, list):
        raise WeightsError(f"typed TorchScript list built from {type(items).__name__}")
    return items


def _restore_type_tag(value: object, type_name: object = None) -> object:
    """``torch.jit._pickle.restore_type_tag``: the value (the type tag is dropped)."""
    return value


ALLOWED_GLOBALS: Mapping[tuple[str, str], Callable[..., object]] = MappingProxyType({
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.jit._pickle", "build_intlist"): _build_list,
    ("torch.jit._pickle", "build_doublelist"): _build_list,
    ("torch.jit._pickle", "build_boollist"): _build_list,
    ("torch.jit._pickle", "build_tensorlist"): _build_list,
    ("torch.jit._pickle", "build_genericlist"): _build_list,
    ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
})
"""Globals an archive's pickles may name, each mapped to xcloud's own, checked stand-in
(besides ``torch.<Type>Storage`` markers and the inert ``__torch__.*`` placeholders);
read-only."""


class _Archive:
    """An open archive: its zip, top folder and byte order."""

    def __init__(self, path: Path, archive: zipfile.ZipFile) -> None:
        self.path = path
        self.zip = archive
        self.names = set(archive.namelist())
        roots = {name.split("/", 1)[0] for name in self.names if name.endswith("/data.pkl")
                 and name.count("/") == 1}
        if len(roots) != 1:
            raise WeightsError(f"weights file {path} is a zip file but not a torch archive "
                               "(no single <folder>/data.pkl)")
        self.root = roots.pop()
        order = self._text("byteorder", default="little")
        if order not in ("little", "big"):
            raise WeightsError(f"weights file {path} has an unknown byte order {order!r}")
        self.swap = order != sys.byteorder

    def member(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def _text(self, relative: str, *, default: str) -> str:
        name = self.member(relative)
        if name not in self.names:
            return default
        return self.zip.read(name).decode("ascii", errors="replace").strip()

    def storage(self, folder: str, key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        name = self.member(f"{folder}/{key}")
        if name not in self.names:
            raise WeightsError(f"weights file {self.path} lacks storage {name} that its "
                               "pickle names; the archive is incomplete or damaged")
        itemsize = torch.empty(0, dtype=dtype).element_size()
        size = self.zip.getinfo(name).file_size
        if size != numel * itemsize:
            raise WeightsError(
                f"weights file {self.path}: storage {name} has {size} bytes, not the "
                f"{numel} x {itemsize} its pickle declares; the archive is damaged")
        if numel == 0:
            return torch.empty(0, dtype=dtype)
        raw = torch.frombuffer(bytearray(self.zip.read(name)), dtype=torch.uint8)
        if self.swap and itemsize > 1:
            raw = raw.view(numel, itemsize).flip(1).reshape(-1)
        return raw.view(dtype)


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds tensors and inert placeholders; refuses every other global."""

    def __init__(self, archive: _Archive, member: str, folder: str) -> None:
        super().__init__(io.BytesIO(archive.zip.read(archive.member(member))))
        self._archive = archive
        self._member = member
        self._folder = folder
        self._storages: dict[str, _Storage] = {}
        self._classes: dict[str, type[ScriptObject]] = {}

    def find_class(self, module: str, name: str) -> Any:
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is not None:
            return _Allowed(allowed)
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if module == _SCRIPT_PREFIX or module.startswith(_SCRIPT_PREFIX + "."):
            qualified = f"{module}.{name}"
            if qualified not in self._classes:
                self._classes[qualified] = type(name, (ScriptObject,),
                                                {"__slots__": (), "qualified_name": qualified})
            return self._classes[qualified]
        raise WeightsError(
            f"weights file {self._archive.path}: {self._member} names the global "
            f"{module}.{name}, which xcloud refuses (it reads tensors only and never runs "
            "code from a weights file); pass weights= a file that holds only tensors")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise WeightsError(f"weights file {self._archive.path}: {self._member} refers to "
                               f"an unknown persistent object {pid!r:.80}")
        _, kind, key, location, numel = pid
        if not isinstance(kind, _StorageType):
            raise WeightsError(f"weights file {self._archive.path}: storage type {kind!r:.80} "
                               "is not one of torch's typed storages")
        if not (isinstance(key, str) and _KEY.fullmatch(key) and isinstance(location, str)
                and isinstance(numel, int) and not isinstance(numel, bool) and numel >= 0):
            raise WeightsError(f"weights file {self._archive.path}: malformed storage "
                               f"reference {pid!r:.120}")
        known = self._storages.get(key)
        if known is None:
            data = self._archive.storage(self._folder, key, kind.dtype, numel)
            known = self._storages[key] = _Storage(key, data)
        if known.data.dtype != kind.dtype or known.data.numel() != numel:
            raise WeightsError(f"weights file {self._archive.path}: storage {key} is named "
                               "with two different types or sizes")
        return known


def _open(path: str | os.PathLike[str]) -> tuple[Path, zipfile.ZipFile]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"weights file {path} does not exist; pass weights= the "
                                  "path of a local file")
    try:
        return path, zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise WeightsError(f"weights file {path} is not a torch zip archive ({error}); pass "
                           "weights= a TorchScript archive, a torch.save file or safetensors"
                           ) from None


def _resolve(node: object, memo: dict[int, object], depth: int = 0) -> object:
    """``node`` with each ``_TensorRef`` replaced by its tensor (in containers and in
    the state of :class:`ScriptObject` placeholders, in place); shared objects once."""
    if depth > _MAX_DEPTH:
        raise WeightsError(f"objects nested deeper than {_MAX_DEPTH} levels in a weights file")
    if isinstance(node, _TensorRef):
        return node.tensor
    if not isinstance(node, ScriptObject | dict | list | tuple):
        return node
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = node  # a cycle meets the unresolved object; placeholders resolve in place
    if isinstance(node, ScriptObject):
        node.state = _resolve(node.state, memo, depth + 1)
        return node
    if isinstance(node, dict):
        items = {key: _resolve(value, memo, depth + 1) for key, value in node.items()}
        resolved: object = items if type(node) is dict else collections.OrderedDict(items)
    else:
        resolved = type(node)(_resolve(value, memo, depth + 1) for value in node)
    memo[id(node)] = resolved
    return resolved


def _unpickle(archive: _Archive, member: str, folder: str) -> object:
    try:
        return _resolve(_RestrictedUnpickler(archive, member, folder).load(), {})
    except WeightsError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError,
            IndexError, KeyError, RuntimeError, RecursionError, zipfile.BadZipFile,
            OSError) as error:
        raise WeightsError(f"weights file {archive.path}: {archive.member(member)} cannot be "
                           f"read ({type(error).__name__}: {error}); the archive is damaged "
                           "or not a torch archive") from None


def _load(archive: _Archive) -> tuple[object, object | None]:
    data = _unpickle(archive, "data.pkl", "data")
    constants = None
    if archive.member("constants.pkl") in archive.names:
        constants = _unpickle(archive, "constants.pkl", "constants")
    return data, constants


def read_archive_objects(path: str | os.PathLike[str]) -> tuple[object, object | None]:
    """The unpickled ``data.pkl`` and ``constants.pkl`` (``None`` if absent) of an archive.

    Tensors come back as CPU tensors, TorchScript objects as :class:`ScriptObject`
    placeholders; see the module docstring for what is allowed.

    Raises
    ------
    MissingWeightsError
        ``path`` does not exist.
    WeightsError
        It is not a zip archive with one ``<folder>/data.pkl``, a pickle names a global
        outside :data:`ALLOWED_GLOBALS`, or a storage is missing or of the wrong size.
    """
    path, handle = _open(path)
    with handle:
        return _load(_Archive(path, handle))


def _declarations(handle: zipfile.ZipFile, root: str,
                  qualified: str) -> tuple[list[str], list[str]] | None:
    """``__parameters__`` and ``__buffers__`` of class ``qualified`` in ``code/``, as text."""
    module, _, name = qualified.rpartition(".")
    member = f"{root}/code/{module.replace('.', '/')}.py"
    try:
        source = handle.read(member).decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        return None
    starts = [(match.start(), match.group(1)) for match in _CLASS.finditer(source)]
    for index, (start, found) in enumerate(starts):
        if found != name:
            continue
        stop = starts[index + 1][0] if index + 1 < len(starts) else len(source)
        declared: dict[str, list[str]] = {}
        for match in _DECLARATION.finditer(source, start, stop):
            try:
                value = ast.literal_eval(match.group(2))
            except (ValueError, SyntaxError):
                return None
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                return None
            declared[match.group(1)] = value
        if set(declared) == {"__parameters__", "__buffers__"}:
            return declared["__parameters__"], declared["__buffers__"]
        return None
    return None


def _module_tensors(node: ScriptObject, prefix: str, out: dict[str, torch.Tensor],
                    declared: Callable[[str], tuple[list[str], list[str]] | None],
                    stack: set[int]) -> None:
    if id(node) in stack:
        raise WeightsError(f"TorchScript module {prefix or '<root>'} contains itself")
    state = node.state
    if not isinstance(state, dict):
        return  # a TorchScript object that is not a module holds no state-dict entries
    stack.add(id(node))
    names = declared(node.qualified_name)
    if names is None:  # no readable declaration: every tensor attribute counts
        own = [key for key, value in state.items() if isinstance(value, torch.Tensor)]
    else:
        own = [key for key in (*names[0], *names[1]) if isinstance(state.get(key), torch.Tensor)]
    for key in own:
        out[f"{prefix}{key}"] = state[key]
    if len(out) > _MAX_ENTRIES or len(stack) > _MAX_DEPTH:
        raise WeightsError(f"more than {_MAX_ENTRIES} tensors or {_MAX_DEPTH} nested modules "
                           "in a weights file")
    for key, value in state.items():
        if isinstance(value, ScriptObject):
            _module_tensors(value, f"{prefix}{key}.", out, declared, stack)
    stack.discard(id(node))


def _mapping_tensors(node: Mapping[Any, Any], prefix: str,
                     out: dict[str, torch.Tensor], depth: int = 0) -> None:
    if depth > 32 or len(out) > _MAX_ENTRIES:
        raise WeightsError(f"dictionaries nested deeper than 32 levels or more than "
                           f"{_MAX_ENTRIES} tensors in a weights file")
    for key, value in node.items():
        if isinstance(value, torch.Tensor):
            out[f"{prefix}{key}"] = value
        elif isinstance(value, Mapping):
            _mapping_tensors(value, f"{prefix}{key}.", out, depth + 1)


def read_torchscript_tensors(path: str | os.PathLike[str], *,
                             map_location: str | torch.device = "cpu"
                             ) -> dict[str, torch.Tensor]:
    """The tensors of a TorchScript or torch zip archive by state-dict name, never run.

    Parameters
    ----------
    path
        A ``torch.jit.save`` archive (TorchScript), or a ``torch.save`` zip file.
    map_location
        Device the tensors are moved to.

    Returns
    -------
    dict of str to torch.Tensor
        For a TorchScript archive the entries of ``torch.jit.load(path).state_dict()``, same
        names, order and values: parameters and buffers, without plain tensor attributes.
        For a ``torch.save`` file holding (nested) dicts the tensors under dotted keys
        (``{"state_dict": {"a": t}}`` gives ``"state_dict.a"``); other values are skipped.

    Raises
    ------
    MissingWeightsError
        ``path`` does not exist.
    WeightsError
        ``path`` is not such an archive, names a forbidden global (the message names it),
        or is damaged (missing or misshapen storages); see :func:`read_archive_objects`.
    """
    path, handle = _open(path)
    out: dict[str, torch.Tensor] = {}
    with handle:
        archive = _Archive(path, handle)
        data, _ = _load(archive)
        if isinstance(data, ScriptObject):
            cache: dict[str, tuple[list[str], list[str]] | None] = {}

            def declared(qualified: str) -> tuple[list[str], list[str]] | None:
                if qualified not in cache:
                    cache[qualified] = _declarations(handle, archive.root, qualified)
                return cache[qualified]

            _module_tensors(data, "", out, declared, set())
        elif isinstance(data, Mapping):
            _mapping_tensors(data, "", out)
    if not out:
        raise WeightsError(f"weights file {path} holds no tensors ({type(data).__name__} at "
                           "its top); pass weights= a network's archive or state_dict")
    return {name: tensor.to(map_location) for name, tensor in out.items()}


def _members(path: str | os.PathLike[str]) -> tuple[str, set[str]] | None:
    try:
        with zipfile.ZipFile(Path(path).expanduser()) as handle:
            names = set(handle.namelist())
    except (zipfile.BadZipFile, OSError):
        return None
    roots = {name.split("/", 1)[0] for name in names
             if name.endswith("/data.pkl") and name.count("/") == 1}
    return (roots.pop(), names) if len(roots) == 1 else None


def is_torch_zip_archive(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a zip file with one ``<folder>/data.pkl`` (torch's zip layout)."""
    return _members(path) is not None


def is_torchscript_archive(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a TorchScript archive: torch's zip layout with ``constants.pkl`` or
    ``code/`` (which ``torch.save`` files lack). Reads the zip directory only."""
    found = _members(path)
    if found is None:
        return False
    root, names = found
    return f"{root}/constants.pkl" in names or any(n.startswith(f"{root}/code/") for n in names)
