"""Reading Keras 2 HDF5 weights without TensorFlow: the arrays of each weighted layer, in order.

Two layouts are read, as ``tf.keras`` (Keras 2) writes them:

- a *weights* file (``model.save_weights(path)`` or ``ModelCheckpoint(save_weights_only=True)``
  to ``*.h5``/``*.hdf5``): the root has the attributes ``layer_names`` (every layer of the
  model in order, weightless ones too), ``backend`` and ``keras_version``, and one group per
  layer whose attribute ``weight_names`` names its datasets (``conv2d/kernel:0``, ...);
- a *full-model* file (``model.save(path)``): the same under the group ``/model_weights``, and
  the model's JSON description in the root attribute ``model_config``.

Keras' ``load_weights`` pairs the model's weighted layers with the file's weighted groups **by
order**; group names (Keras' per-process counters) and any name-scope prefix of the weight
names play no part. :func:`read_keras_weights` therefore returns the weighted layers in the
file's ``layer_names`` order, each with its arrays in ``weight_names`` order and Keras layout
(a convolution kernel is ``(kh, kw, in, out)``), and a network maps them by position.

Nothing in the file is executed or unpickled: only datasets and string attributes are read,
with ``h5py`` (the ``keras`` extra), imported when a file is read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._optional import import_optional
from ..errors import MissingWeightsError, WeightsError

__all__ = ["HDF5_SIGNATURE", "KerasLayer", "KerasWeights", "is_keras_hdf5",
           "read_keras_weights"]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
"""The first 8 bytes of an HDF5 file (at offset 0, or 512, 1024, ... after a user block)."""

_WHAT_TO_PASS = ("pass a Keras 2 HDF5 file written by model.save_weights(...) or "
                 "model.save(...) (e.g. the published KappaMask l1c_unet.hdf5)")


@dataclass(frozen=True)
class KerasLayer:
    """One weighted layer of a Keras HDF5 file.

    ``name`` is the file's group name (a per-process counter such as ``conv2d_3``: not to be
    relied upon); ``weight_names`` and ``arrays`` are in the file's order, the arrays as stored
    (Keras layouts: kernel ``(kh, kw, in, out)``, depthwise kernel ``(kh, kw, in, 1)``, ...).
    """

    name: str
    weight_names: tuple[str, ...]
    arrays: tuple[np.ndarray, ...]

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """The shapes of :attr:`arrays`."""
        return tuple(tuple(a.shape) for a in self.arrays)

    @property
    def short_names(self) -> tuple[str, ...]:
        """The weight names without scope and suffix: ``"kernel"``, ``"bias"``, ``"gamma"``..."""
        return tuple(n.rsplit("/", 1)[-1].split(":", 1)[0] for n in self.weight_names)


@dataclass(frozen=True)
class KerasWeights:
    """The weighted layers of a Keras HDF5 file, in the file's ``layer_names`` order.

    ``model_config`` is the parsed JSON description of a full-model file, ``None`` for a
    weights file.
    """

    layers: tuple[KerasLayer, ...]
    keras_version: str
    backend: str
    model_config: dict[str, Any] | None

    @property
    def n_values(self) -> int:
        """The number of stored values of all layers."""
        return sum(int(a.size) for layer in self.layers for a in layer.arrays)


def is_keras_hdf5(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an HDF5 file (by its signature; no h5py needed).

    Only the signature is checked, at offset 0 and after a user block of 512, 1024, 2048...
    bytes; whether the file holds Keras weights is :func:`read_keras_weights`'s to find out.
    """
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            offset = 0
            while offset + len(HDF5_SIGNATURE) <= size:
                handle.seek(offset)
                if handle.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                    return True
                offset = 512 if offset == 0 else 2 * offset
    except OSError:
        return False
    return False


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value.item())
    return str(value)


def _names(value: Any) -> list[str]:
    return [_text(v) for v in np.atleast_1d(np.asarray(value, dtype=object)).tolist()]


def read_keras_weights(path: str | os.PathLike[str]) -> KerasWeights:
    """Read the weighted layers of a Keras 2 HDF5 weights file or full-model file.

    Parameters
    ----------
    path
        A ``save_weights`` file (``layer_names`` at the root) or a ``model.save`` file
        (weights under ``/model_weights``, ``model_config`` at the root).

    Returns
    -------
    KerasWeights
        The layers that have weights, in the file's ``layer_names`` order.

    Raises
    ------
    MissingWeightsError
        ``path`` does not exist.
    WeightsError
        It is not HDF5, has no ``layer_names``, names a group or dataset it does not hold,
        has a ``model_config`` that is not a JSON object, or is truncated or damaged.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"weights file {path} does not exist; {_WHAT_TO_PASS}")
    if not is_keras_hdf5(path):
        raise WeightsError(f"weights={path} is not an HDF5 file (no HDF5 signature); "
                           f"{_WHAT_TO_PASS}")
    h5py = import_optional("h5py", extra="keras")
    try:
        with h5py.File(path, "r") as handle:
            return _read(handle, path)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as error:
        if isinstance(error, WeightsError):
            raise
        raise WeightsError(f"weights={path} cannot be read as a Keras HDF5 file; it may be "
                           f"truncated or damaged ({type(error).__name__}: {error}); "
                           f"download it again, or {_WHAT_TO_PASS}") from None


def _model_config(handle: Any, path: Path) -> dict[str, Any] | None:
    if "model_config" not in handle.attrs:
        return None
    try:
        config = json.loads(_text(handle.attrs["model_config"]))
    except (ValueError, UnicodeDecodeError) as error:
        raise WeightsError(f"weights={path}: its model_config is not JSON ({error}); "
                           f"{_WHAT_TO_PASS}") from None
    if not isinstance(config, dict):
        raise WeightsError(f"weights={path}: its model_config is a JSON "
                           f"{type(config).__name__}, not an object (a Keras model "
                           f"description); {_WHAT_TO_PASS}")
    return config


def _read(handle: Any, path: Path) -> KerasWeights:
    config = _model_config(handle, path)
    full_model = "model_weights" in handle
    group = handle["model_weights"] if full_model else handle
    if "layer_names" not in group.attrs:
        where = "/model_weights" if full_model else "the root"
        raise WeightsError(f"weights={path} has no 'layer_names' attribute at {where}: it is "
                           f"HDF5 but not a Keras 2 weights file (Keras 3 .weights.h5 files "
                           f"and plain HDF5 data are not read); {_WHAT_TO_PASS}")
    layers = []
    for name in _names(group.attrs["layer_names"]):
        if name not in group:
            raise WeightsError(f"weights={path} lists layer {name!r} in layer_names but has "
                               f"no group for it; the file is incomplete: {_WHAT_TO_PASS}")
        layer_group = group[name]
        weight_names = tuple(_names(layer_group.attrs.get("weight_names", [])))
        if not weight_names:
            continue
        missing = [w for w in weight_names if w not in layer_group]
        if missing:
            raise WeightsError(f"weights={path}: layer {name!r} names weights {missing} that "
                               f"it does not hold; the file is incomplete: {_WHAT_TO_PASS}")
        arrays = tuple(np.asarray(layer_group[w][()]) for w in weight_names)
        layers.append(KerasLayer(name, weight_names, arrays))
    attrs = {key: _text(group.attrs.get(key, handle.attrs.get(key, "")))
             for key in ("keras_version", "backend")}
    return KerasWeights(tuple(layers), attrs["keras_version"], attrs["backend"], config)
