"""The model registry: built-in models plus those other packages register by entry point.

The built-in models' modules are named here, not imported: the first lookup imports them, and
each registers its models with :func:`register` (the model modules import the registry, never
the other way round, so ``import xcloud`` loads no network runtime).

A third-party package registers models in its ``pyproject.toml``::

    [project.entry-points."xcloud.models"]
    my-model = "my_package.models:MY_MODEL_ENTRY"

where the object is a :class:`ModelEntry` (or a callable returning one or a list of them).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import inspect
import os
import pickle
import re
import struct
import threading
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from ..errors import UnknownModelError, WeightsError, XcloudError
from .fetch import expected_url_sha256, is_weights_url, resolve_weights
from .protocol import CloudModel, ModelInfo
from .published import published_for_model

__all__ = [
    "ENTRY_POINT_GROUP",
    "PRECISIONS",
    "BandSpec",
    "ModelEntry",
    "check_precision",
    "get",
    "known_weights",
    "list_models",
    "load",
    "register",
    "sha256",
    "unregister",
    "weights_origin",
]

ENTRY_POINT_GROUP = "xcloud.models"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

PRECISIONS = ("float32", "float16", "bfloat16")
"""The inference precisions (``precision=``): ``float32`` runs every model; torch models also
run their convolutions under :func:`torch.autocast` in ``float16`` (CUDA only) or
``bfloat16``, their outputs back in float32."""

Loader = Callable[..., CloudModel]
BandSpec = str | Mapping[str, object]
"""A band: its name, or a band descriptor dict (SEnSeI-v2's ``band_type``,
``min_wavelength``, ``max_wavelength``)."""


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its metadata and how to load it.

    ``loader(weights=..., device=..., runtime=...)`` returns a :class:`CloudModel`.
    ``sha256`` is the checksum of the default weights file (64 lowercase hex digits), which
    the loader verifies before it deserialises anything; entries whose weights are always the
    user's own local file (``info.needs_weights_file`` and nothing published) have none.
    ``weights_filename`` is that file's name: a file of that name given as ``weights=`` with
    another checksum is a corrupt copy and refused. ``precisions`` are those of
    :data:`PRECISIONS` the model runs in (its loader takes ``precision=`` when there are
    others than float32); ``precision_note`` says why a float32-only model runs in float32.
    """

    info: ModelInfo
    loader: Loader
    sha256: str | None = None
    weights_filename: str | None = None
    precisions: tuple[str, ...] = ("float32",)
    precision_note: str = ""

    def __post_init__(self) -> None:
        if self.sha256 is not None and not _SHA256_HEX.fullmatch(self.sha256):
            raise WeightsError(
                f"model {self.info.name!r}: sha256 must be 64 lowercase hex digits, got "
                f"{self.sha256!r}; compute it with xcloud.models.registry.sha256(path)"
            )

    @property
    def name(self) -> str:
        """The registry name."""
        return self.info.name

    def check_precision(self, precision: str, *, device: str) -> None:
        """``ValueError`` naming ``precision`` unless the model runs in it on ``device``."""
        check_precision(precision, device=device, model=self.name)
        if precision not in self.precisions:
            note = f" ({self.precision_note})" if self.precision_note else ""
            raise ValueError(f"precision={precision!r}: model {self.name!r} runs in "
                             f"{', '.join(self.precisions)} only{note}; pass "
                             "precision='float32'")

    def load(self, *, weights: str | Path | None = None, device: str = "cpu",
             runtime: str = "auto", bands: Sequence[BandSpec] | None = None,
             precision: str = "float32") -> CloudModel:
        """Load the model (use :func:`xcloud.engine.get_model` to reuse it within a process).

        ``bands`` is for models that take any set of bands (SEnSeI-v2): the bands, in channel
        order, that the loaded model is given; models with a fixed layout refuse it.
        ``precision`` is one of the model's ``precisions`` (:data:`PRECISIONS`).
        """
        self.check_precision(precision, device=device)
        options: dict[str, Any] = {"weights": weights, "device": device, "runtime": runtime}
        if precision != "float32":
            options["precision"] = precision
        if bands is not None:
            if "bands" not in inspect.signature(self.loader).parameters:
                raise TypeError(f"model {self.name!r} takes a fixed set of bands "
                                f"({', '.join(self.info.bands)}); do not pass bands=")
            options["bands"] = bands
        if weights is None:
            return self.loader(**options)
        if is_weights_url(weights):  # into this process's cache, hash-checked when known
            fetched = resolve_weights(self.name, weights)
            assert fetched is not None  # a URL resolves to the fetched file, never to None
            weights = options["weights"] = fetched
        _refuse_corrupt_copy(self, _checked_weights(weights))
        try:
            return self.loader(**options)
        except XcloudError:
            raise
        except _READ_ERRORS as error:  # whatever a reader raises on a file it cannot read
            raise WeightsError(
                f"weights={os.fspath(weights)!r} cannot be read as weights of {self.name} "
                f"({type(error).__name__}: {error}); pass a file in the format the model's "
                "documentation names") from error


_READ_ERRORS = (OSError, RuntimeError, AttributeError, KeyError, EOFError, UnicodeDecodeError,
                zipfile.BadZipFile, pickle.UnpicklingError, struct.error)


def _checked_weights(weights: str | os.PathLike[str]) -> str | Path:
    """``weights`` as a path (or a URL, as it is); :class:`WeightsError` for an empty one or a
    symbolic-link loop."""
    text = os.fspath(weights)
    if not text.strip():
        raise WeightsError("weights='' is empty: pass the path (or URL) of a weights file, or "
                           "leave weights= out for the model's default")
    if "://" in text:
        return text
    path = Path(text).expanduser()
    try:
        path.resolve(strict=False)
        path.exists()
    except (RuntimeError, OSError) as error:  # a symlink loop: RuntimeError before 3.13
        raise WeightsError(f"weights={text!r} cannot be followed ({error}); pass the path of "
                           "the weights file itself") from None
    return path


def known_weights(entry: ModelEntry) -> dict[str, set[str]]:
    """The published or shipped weights files of ``entry``'s model: name -> sha256s."""
    known: dict[str, set[str]] = {}
    if entry.weights_filename and entry.sha256:
        known.setdefault(entry.weights_filename, set()).add(entry.sha256)
    for artifact in published_for_model(entry.name):
        for file in artifact.files:
            if file.sha256:
                known.setdefault(file.filename, set()).add(file.sha256)
    return known


def _refuse_corrupt_copy(entry: ModelEntry, path: str | Path) -> None:
    if not isinstance(path, Path) or not path.is_file():
        return
    expected = known_weights(entry).get(path.name)
    actual = sha256(path) if expected else None
    if expected and actual not in expected:
        raise WeightsError(
            f"weights={str(path)!r} has sha256 {actual}, not that of {entry.name}'s published "
            f"file of this name ({', '.join(sorted(expected))}): a corrupt or altered copy; "
            "download it again (`xcloud weights fetch`, or reinstall the package that ships "
            "it)")


@functools.lru_cache(maxsize=32)
def _provenance_digest(path: str, size: int, mtime_ns: int) -> str:
    """The sha256 for a mask's provenance, once per file version (a job that calls predict
    per scene with the same weights hashes them once; checks before loading never cache)."""
    del size, mtime_ns  # the cache key: a rewritten file is hashed again
    return sha256(path)


def weights_origin(entry: ModelEntry, weights: str | os.PathLike[str]) -> dict[str, str]:
    """Provenance of a weights file given as ``weights=``, for the mask's attributes:
    its path, sha256 and ``published`` (one of the model's published or shipped files) or
    ``user`` (any other file)."""
    text = os.fspath(weights)
    path = Path(text).expanduser()
    if is_weights_url(text):
        expected = expected_url_sha256(text, entry.name)
        published = expected is not None and any(
            expected in hashes for hashes in known_weights(entry).values())
        origin = {"xcloud:weights": text,
                  "xcloud:weights_origin": "published" if published else "user"}
        return origin | ({"xcloud:weights_sha256": expected} if expected else {})
    if not path.is_file():
        return {"xcloud:weights": text, "xcloud:weights_origin": "user"}
    stat = path.stat()
    digest = _provenance_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    published = any(digest in hashes for hashes in known_weights(entry).values())
    return {"xcloud:weights": str(path), "xcloud:weights_sha256": digest,
            "xcloud:weights_origin": "published" if published else "user"}


_BUILTIN_MODULES: tuple[str, ...] = tuple(f"{__package__}.{name}" for name in (
    "cloudsen12", "dl_l8s2_uv", "kappamask", "s2cloudless", "sensei", "ukis"))
"""The modules of the built-in models, imported on the first lookup (:func:`get`,
:func:`list_models`), not with the registry: each calls :func:`register` for its models."""

_REGISTRY: dict[str, ModelEntry] = {}
_LOCK = threading.Lock()
_LOAD_LOCK = threading.RLock()
_STATE = {"entry_points_loaded": False, "builtins_loaded": False}


def register(entry: ModelEntry, *, overwrite: bool = False) -> ModelEntry:
    """Add ``entry`` to the registry (refuses to replace an existing name unless ``overwrite``)."""
    with _LOCK:
        if entry.name in _REGISTRY and not overwrite and _REGISTRY[entry.name] is not entry:
            raise ValueError(
                f"a model named {entry.name!r} is already registered; pass overwrite=True to "
                "replace it"
            )
        _REGISTRY[entry.name] = entry
    return entry


def unregister(name: str) -> ModelEntry | None:
    """Remove the model ``name`` from the registry (e.g. a test's model); the removed entry."""
    with _LOCK:
        return _REGISTRY.pop(name, None)


def _entries_from(obj: object) -> Iterable[ModelEntry]:
    if isinstance(obj, ModelEntry):
        return [obj]
    if callable(obj):
        return _entries_from(obj())
    if isinstance(obj, Iterable):
        return [e for item in obj for e in _entries_from(item)]
    raise TypeError(f"entry point gave {obj!r}, not a ModelEntry")


def _load_plugins() -> None:
    """Import the built-in models and the entry points once; threads wait for it to finish
    (a flag set before the imports let a second Dask thread see an empty registry)."""
    if _STATE["builtins_loaded"] and _STATE["entry_points_loaded"]:
        return
    with _LOAD_LOCK:
        if not _STATE["builtins_loaded"]:
            for module in _BUILTIN_MODULES:  # each registers its models when imported
                importlib.import_module(module)
            _STATE["builtins_loaded"] = True
        if _STATE["entry_points_loaded"]:
            return
        for point in entry_points(group=ENTRY_POINT_GROUP):
            for entry in _entries_from(point.load()):
                register(entry, overwrite=True)
        _STATE["entry_points_loaded"] = True


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    _load_plugins()
    return sorted(_REGISTRY)


def get(name: str) -> ModelEntry:
    """The :class:`ModelEntry` registered as ``name``."""
    _load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"no model named {name!r}.{hint} Available: {', '.join(sorted(_REGISTRY))}. "
            "Run `xcloud models` to list them with their bands."
        ) from None


def load(name: str, *, weights: str | Path | None = None, device: str = "cpu",
         runtime: str = "auto", bands: Sequence[BandSpec] | None = None,
         precision: str = "float32") -> CloudModel:
    """Load the model registered as ``name``.

    Parameters
    ----------
    name
        Registry name (:func:`list_models`).
    weights
        Weights file or folder replacing the model's default.
    device, runtime
        Torch device, and ``"torch"``/``"onnxruntime"`` where a model offers both.
    bands
        For models that take any set of bands (SEnSeI-v2): band names or the authors' band
        descriptor dicts, in channel order.
    precision
        ``"float32"``, or for torch models ``"bfloat16"`` or ``"float16"`` (CUDA only):
        see :data:`PRECISIONS`.
    """
    return get(name).load(weights=weights, device=device, runtime=runtime, bands=bands,
                          precision=precision)


def check_precision(precision: str, *, device: str, model: str) -> None:
    """``ValueError`` naming ``precision`` unless it is one of :data:`PRECISIONS` that runs on
    ``device`` (a torch device; float16 needs CUDA)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float16" and not str(device).startswith("cuda"):
        raise ValueError(f"precision='float16' needs a CUDA device (model {model!r} on "
                         f"device={device!r}); use precision='bfloat16' on the CPU")


def sha256(path: str | Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: str | Path, expected: str | None) -> None:
    """Raise :class:`WeightsError` unless ``path`` has the sha256 ``expected`` (if given)."""
    if expected is None:
        return
    actual = sha256(path)
    if actual != expected:
        raise WeightsError(
            f"weights file {path} has sha256 {actual}, expected {expected}; the file is corrupt "
            "or not the published one: reinstall the package that ships it"
        )
