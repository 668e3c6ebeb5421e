"""The DL-L8S2-UV network (López-Puigdollers et al. 2021) built from a Keras 2 HDF5 file.

:func:`read_keras_hdf5` reads a Keras full-model HDF5 file with h5py alone (no TensorFlow);
:func:`load_keras_hdf5` builds the torch network (:class:`DLL8S2UVNet`) from its
``model_config``, layer by layer, and copies the weights. The architecture and the models
built on it are described in :mod:`xcloud.models.dl_l8s2_uv` (the adapter and the registered
models).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._optional import import_optional
from ..errors import MissingWeightsError, WeightsError

__all__ = ["DLL8S2UVNet", "KerasModelFile", "Weights", "load_keras_hdf5", "read_keras_hdf5"]

Weights = Mapping[str, np.ndarray]
"""The weights of one Keras layer by short name (``kernel``, ``bias``, ``gamma``...)."""



# --------------------------------------------------------------------------- HDF5 reading


@dataclass(frozen=True)
class KerasModelFile:
    """A Keras full-model HDF5 file: the functional model's config and its weights by layer."""

    config: Mapping[str, Any]
    weights: Mapping[str, Weights]
    keras_version: str = ""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _layer_weights(group: Any) -> dict[str, np.ndarray]:
    names = [_text(n) for n in group.attrs.get("weight_names", [])]
    return {n.rsplit("/", 1)[-1].split(":")[0]: np.asarray(group[n], np.float32) for n in names}


def read_keras_hdf5(path: str | os.PathLike[str]) -> KerasModelFile:
    """Read the model config and the weights of a Keras 2 ``model.save`` HDF5 file with h5py.

    Raises
    ------
    MissingWeightsError
        The file does not exist.
    WeightsError
        It is not HDF5, or not a full Keras model (``save_weights`` files have no config).
    """
    h5py = import_optional("h5py", extra="keras")
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"weights file {path} does not exist")
    try:
        with h5py.File(path, "r") as handle:
            return _read_model(handle, path)
    except (OSError, KeyError, json.JSONDecodeError) as error:
        raise WeightsError(f"{path} is not a readable Keras HDF5 model ({error})") from None


def _read_model(handle: Any, path: Path) -> KerasModelFile:
    if "model_config" not in handle.attrs or "model_weights" not in handle:
        raise WeightsError(f"{path} is not a Keras full model (no model_config or model_weights); "
                           "save it with model.save, not save_weights")
    group = handle["model_weights"]
    weights = {_text(n): _layer_weights(group[_text(n)])
               for n in group.attrs.get("layer_names", [])}
    return KerasModelFile(json.loads(_text(handle.attrs["model_config"])), weights,
                          _text(handle.attrs.get("keras_version", "")))


# --------------------------------------------------------------------------- Keras layers


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """Keras/TensorFlow ``same`` padding of one axis: any odd pixel goes after."""
    total = max((-(-size // stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
              dilation: tuple[int, int] = (1, 1), value: float = 0.0) -> torch.Tensor:
    rows = _same_padding(x.shape[-2], kernel[0], stride[0], dilation[0])
    cols = _same_padding(x.shape[-1], kernel[1], stride[1], dilation[1])
    return F.pad(x, (*cols, *rows), value=value) if any(rows + cols) else x


def _hwio_to_oihw(kernel: np.ndarray) -> np.ndarray:
    return kernel.transpose(3, 2, 0, 1)


def _depthwise_to_torch(kernel: np.ndarray) -> np.ndarray:
    # Keras (H, W, C, M): output channel c * M + m, as torch's groups=C convolution orders it
    height, width = kernel.shape[:2]
    return kernel.reshape(height, width, -1).transpose(2, 0, 1)[:, None]


def _unchanged(array: np.ndarray) -> np.ndarray:
    return array


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "linear": nn.Identity, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
    "softmax": lambda: nn.Softmax(dim=1),
}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise WeightsError(f"Keras activation {name!r} is not supported (only "
                           f"{', '.join(_ACTIVATIONS)})")
    return _ACTIVATIONS[name]()


def _require(condition: bool, config: Mapping[str, Any], what: str) -> None:
    if not condition:
        raise WeightsError(f"Keras layer {config.get('name')!r}: {what} is not supported")


_Targets = dict[str, tuple[torch.Tensor, Callable[[np.ndarray], np.ndarray]]]
"""Keras weight name -> (torch tensor, layout conversion of the Keras array)."""


class _KerasLayer(nn.Module):
    """A Keras layer in NCHW: its output channels, its downsampling and its Keras weights."""

    out_channels: int
    downsample: Fraction = Fraction(1)

    def keras_targets(self) -> _Targets:
        """Torch tensor and layout conversion of each Keras weight of the layer."""
        return {}

    def load_keras(self, weights: Weights, layer: str) -> None:
        """Copy the layer's Keras weights, checking names and shapes."""
        targets = self.keras_targets()
        if targets.keys() != weights.keys():
            raise WeightsError(f"Keras layer {layer!r} has weights {sorted(weights)}; the "
                               f"network built from its config needs {sorted(targets)}")
        for key, (tensor, convert) in targets.items():
            value = torch.from_numpy(np.ascontiguousarray(convert(weights[key])))
            if value.shape != tensor.shape:
                raise WeightsError(f"Keras weight {layer}/{key} has shape "
                                   f"{tuple(weights[key].shape)}, which does not fit the config")
            with torch.no_grad():
                tensor.copy_(value)


class _Passthrough(_KerasLayer):
    """InputLayer, and Dropout-like layers (identity at inference)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _Conv2D(_KerasLayer):
    def __init__(self, config: Mapping[str, Any], channels: int) -> None:
        super().__init__()
        self.kernel, self.stride = _pair(config["kernel_size"]), _pair(config["strides"])
        self.dilation = _pair(config.get("dilation_rate", 1))
        self.same = _padding(config)
        self.out_channels = int(config["filters"])
        self.downsample = Fraction(max(self.stride))
        self.conv = nn.Conv2d(channels, self.out_channels, self.kernel, self.stride,
                              dilation=self.dilation, bias=bool(config["use_bias"]))
        self.activation = _activation(config["activation"])

    def keras_targets(self) -> _Targets:
        targets: _Targets = {"kernel": (self.conv.weight, _hwio_to_oihw)}
        if self.conv.bias is not None:
            targets["bias"] = (self.conv.bias, _unchanged)
        return targets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            x = _pad_same(x, self.kernel, self.stride, self.dilation)
        return self.activation(self.conv(x))


class _SeparableConv2D(_Conv2D):
    """Depthwise (stride, dilation, depth multiplier) then pointwise 1x1 with the bias."""

    def __init__(self, config: Mapping[str, Any], channels: int) -> None:
        # the pointwise part is a 1x1 Conv2D with the layer's filters, bias and activation
        super().__init__({**config, "kernel_size": 1, "strides": 1, "dilation_rate": 1},
                         channels * int(config.get("depth_multiplier", 1)))
        self.kernel, self.stride = _pair(config["kernel_size"]), _pair(config["strides"])
        self.dilation = _pair(config.get("dilation_rate", 1))
        self.downsample = Fraction(max(self.stride))
        self.depthwise = nn.Conv2d(channels, self.conv.in_channels, self.kernel, self.stride,
                                   dilation=self.dilation, groups=channels, bias=False)

    def keras_targets(self) -> _Targets:
        targets = super().keras_targets()
        targets["pointwise_kernel"] = targets.pop("kernel")
        return {"depthwise_kernel": (self.depthwise.weight, _depthwise_to_torch), **targets}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            x = _pad_same(x, self.kernel, self.stride, self.dilation)
        return self.activation(self.conv(self.depthwise(x)))


class _Conv2DTranspose(_KerasLayer):
    """Keras' output is ``size * stride`` (``same``) or ``size * stride + max(k - s, 0)``."""

    def __init__(self, config: Mapping[str, Any], channels: int) -> None:
        super().__init__()
        _require(config.get("output_padding") is None, config, "output_padding")
        _require(_pair(config.get("dilation_rate", 1)) == (1, 1), config, "dilation")
        kernel, self.stride = _pair(config["kernel_size"]), _pair(config["strides"])
        self.same = _padding(config)
        self.crop = tuple(max(k - s, 0) // 2 for k, s in zip(kernel, self.stride, strict=True))
        self.out_channels = int(config["filters"])
        self.downsample = Fraction(1, max(self.stride))
        self.conv = nn.ConvTranspose2d(
            channels, self.out_channels, kernel, self.stride, bias=bool(config["use_bias"]),
            output_padding=(max(self.stride[0] - kernel[0], 0), max(self.stride[1] - kernel[1], 0)))
        self.activation = _activation(config["activation"])

    keras_targets = _Conv2D.keras_targets  # kernel (H, W, out, in) -> (in, out, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2] * self.stride[0], x.shape[-1] * self.stride[1]
        y = self.conv(x)
        if self.same:
            y = y[..., self.crop[0]:self.crop[0] + height, self.crop[1]:self.crop[1] + width]
        return self.activation(y)


class _BatchNormalization(_KerasLayer):
    def __init__(self, config: Mapping[str, Any], channels: int) -> None:
        super().__init__()
        axis = config.get("axis", -1)
        _require(axis in (-1, 3, [-1], [3]), config, f"axis {axis}")
        self.out_channels = channels
        self.norm = nn.BatchNorm2d(channels, eps=float(config["epsilon"]))
        self.center, self.scale = bool(config.get("center", True)), bool(config.get("scale", True))

    def keras_targets(self) -> _Targets:
        mean, variance = self.norm.running_mean, self.norm.running_var
        assert mean is not None and variance is not None  # built with track_running_stats
        targets: _Targets = {"moving_mean": (mean, _unchanged),
                             "moving_variance": (variance, _unchanged)}
        if self.scale:
            targets["gamma"] = (self.norm.weight, _unchanged)
        if self.center:
            targets["beta"] = (self.norm.bias, _unchanged)
        return targets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class _Activation(_Passthrough):
    def __init__(self, config: Mapping[str, Any], channels: int) -> None:
        super().__init__(channels)
        self.activation = _activation(config["activation"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x)


class _MaxPooling2D(_Passthrough):
    def __init__(self, config: Mapping[str, Any], channels: int) -> None:
        super().__init__(channels)
        self.pool = _pair(config["pool_size"])
        self.stride = _pair(config.get("strides") or config["pool_size"])
        self.same = _padding(config)
        self.downsample = Fraction(max(self.stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            x = _pad_same(x, self.pool, self.stride, value=-torch.inf)
        return F.max_pool2d(x, self.pool, self.stride)


class _UpSampling2D(_Passthrough):
    def __init__(self, config: Mapping[str, Any], channels: int) -> None:
        super().__init__(channels)
        mode = config.get("interpolation", "nearest")
        _require(mode == "nearest", config, f"interpolation {mode!r}")
        self.size = _pair(config["size"])
        self.downsample = Fraction(1, max(self.size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(self.size[0], -2).repeat_interleave(self.size[1], -1)


class _Concatenate(_KerasLayer):
    def __init__(self, config: Mapping[str, Any], channels: Iterable[int]) -> None:
        super().__init__()
        _require(config.get("axis", -1) in (-1, 3), config, f"axis {config.get('axis')}")
        self.out_channels = sum(channels)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return torch.cat(tensors, dim=1)


def _padding(config: Mapping[str, Any]) -> bool:
    """Whether the layer pads ``same``; checks the data format."""
    _require(config.get("data_format", "channels_last") == "channels_last", config,
             "data_format channels_first")
    padding = config.get("padding", "valid")
    _require(padding in ("same", "valid"), config, f"padding {padding!r}")
    return padding == "same"


_SINGLE_INPUT: dict[str, Callable[[Mapping[str, Any], int], _KerasLayer]] = {
    "Conv2D": _Conv2D, "SeparableConv2D": _SeparableConv2D, "Conv2DTranspose": _Conv2DTranspose,
    "BatchNormalization": _BatchNormalization, "Activation": _Activation,
    "MaxPooling2D": _MaxPooling2D, "UpSampling2D": _UpSampling2D,
    "Dropout": lambda _, channels: _Passthrough(channels),
    "SpatialDropout2D": lambda _, channels: _Passthrough(channels),
}


# --------------------------------------------------------------------------- the network


def _inbound(layer: Mapping[str, Any]) -> tuple[str, ...]:
    nodes = layer.get("inbound_nodes", [])
    if len(nodes) > 1:
        raise WeightsError(f"Keras layer {layer['name']!r} is shared (called {len(nodes)} "
                           "times); shared layers are not supported")
    return tuple(str(entry[0]) for entry in (nodes[0] if nodes else []))


def _only(refs: list[list[Any]], what: str) -> str:
    if len(refs) != 1:
        raise WeightsError(f"the Keras model has {len(refs)} {what}; one is supported")
    return str(refs[0][0])


def _build_layer(layer: Mapping[str, Any], channels: list[int]) -> _KerasLayer:
    kind, config = layer["class_name"], layer["config"]
    if kind == "InputLayer":
        return _Passthrough(int(config["batch_input_shape"][-1]))
    if kind == "Concatenate":
        return _Concatenate(config, channels)
    if kind not in _SINGLE_INPUT:
        raise WeightsError(f"Keras layer type {kind} ({layer['name']!r}) is not supported; "
                           f"supported: InputLayer, Concatenate, {', '.join(_SINGLE_INPUT)}")
    if len(channels) != 1:
        raise WeightsError(f"Keras layer {layer['name']!r} ({kind}) has {len(channels)} inputs")
    return _SINGLE_INPUT[kind](config, channels[0])


def _release_plan(graph: tuple[tuple[str, tuple[str, ...]], ...],
                  keep: str) -> tuple[tuple[str, ...], ...]:
    """For each step of ``graph``, the outputs that no later step reads (except ``keep``)."""
    last_use = {source: step for step, (_, inputs) in enumerate(graph) for source in inputs}
    return tuple(tuple(s for s in dict.fromkeys(inputs) if last_use[s] == step and s != keep)
                 for step, (_, inputs) in enumerate(graph))


class DLL8S2UVNet(nn.Module):
    """A Keras 2 functional model of 2-D layers, built in torch from its ``model_config``.

    It takes and returns NCHW tensors (the Keras model is NHWC): for the DL-L8S2-UV files,
    TOA reflectance (N, bands, H, W) to the cloud probability (N, 1, H, W). Layers are the
    Keras ones, under their Keras names in :attr:`layers`; build it with
    :func:`load_keras_hdf5`, or from a config and then :meth:`load_keras_weights`.

    Parameters
    ----------
    config
        The ``config`` of a Keras functional ``Model`` (``layers``, ``input_layers``,
        ``output_layers``), as in the HDF5 file's ``model_config``.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.layers = nn.ModuleDict()
        self.graph: tuple[tuple[str, tuple[str, ...]], ...] = ()
        self.input_name = _only(config["input_layers"], "inputs")
        self.output_name = _only(config["output_layers"], "outputs")
        scale: dict[str, Fraction] = {}
        for layer in config["layers"]:
            name, inputs = str(layer["name"]), _inbound(layer)
            if any(source not in self.layers for source in inputs):
                raise WeightsError(f"Keras layer {name!r} comes before its inputs {inputs}")
            module = _build_layer(layer, [cast(_KerasLayer, self.layers[s]).out_channels
                                          for s in inputs])
            scale[name] = max((scale[s] for s in inputs), default=Fraction(1)) * module.downsample
            self.layers[name] = module
            self.graph += ((name, inputs),)
        self.multiple = int(max(scale.values()))
        self.keras_version = ""
        self._release = _release_plan(self.graph, keep=self.output_name)
        self.in_channels = self.layers[self.input_name].out_channels
        self.out_channels = self.layers[self.output_name].out_channels

    def load_keras_weights(self, weights: Mapping[str, Weights]) -> DLL8S2UVNet:
        """Copy Keras weights (by layer name, then short weight name) into the layers."""
        unknown = sorted(weights.keys() - self.layers.keys())
        if unknown:
            raise WeightsError(f"weights for layers {unknown} that the config does not have")
        for name, layer in self.layers.items():
            cast(_KerasLayer, layer).load_keras(weights.get(name, {}), name)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of ``(N, in_channels, H, W)`` reflectance."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"the network takes (N, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        if x.shape[-2] % self.multiple or x.shape[-1] % self.multiple:
            raise ValueError(f"height and width must be multiples of {self.multiple}, got "
                             f"{tuple(x.shape[-2:])}; pad the input first")
        outputs: dict[str, torch.Tensor] = {}
        for (name, inputs), release in zip(self.graph, self._release, strict=True):
            outputs[name] = self.layers[name](*([outputs[s] for s in inputs] or [x]))
            for source in release:  # free activations as soon as no later layer needs them
                del outputs[source]
        return outputs[self.output_name]


def load_keras_hdf5(path: str | os.PathLike[str]) -> DLL8S2UVNet:
    """The torch network (in eval mode) of a Keras 2 full-model HDF5 file, read with h5py.

    Raises
    ------
    MissingWeightsError
        The file does not exist.
    WeightsError
        The file is not a Keras full model, or uses layers or options that are not supported.
    """
    content = read_keras_hdf5(path)
    if content.config.get("class_name") not in ("Model", "Functional"):
        raise WeightsError(f"{path} holds a Keras {content.config.get('class_name')}, not a "
                           "functional Model")
    network = DLL8S2UVNet(content.config["config"])
    network.keras_version = content.keras_version
    return network.load_keras_weights(content.weights).eval()
