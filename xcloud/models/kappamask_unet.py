"""The KappaMask U-Net (Domnich et al. 2021) as km_predict builds it, in torch.

``architectures.Unet().construct(h, w, n_bands, 6, layers=depth, units=filters)`` of
KappaZeta's km_predict: per level two 3x3 convolutions with ReLU (Keras ``padding="same"``,
He-normal initialisation), 2x2 max pooling, dropout 0.5 on the deepest encoder level and the
bottleneck (training only; the dropped tensor is also the skip), then per level up: nearest
upsampling x2, a 2x2 convolution with ReLU (Keras ``"same"`` with an even kernel pads 0 before
and 1 after), concatenation ``[skip, upsampled]`` and two 3x3 convolutions; then a 3x3
convolution with ReLU to 2 channels and a 1x1 convolution to the 6 output channels, each
through its own **sigmoid** (independent, not a softmax). The class is the argmax over all six.

Output channels, in the authors' order (km_predict's ``classes``): 0 UNDEFINED, 1 CLEAR,
2 CLOUD_SHADOW, 3 SEMI_TRANSPARENT_CLOUD, 4 CLOUD, 5 MISSING.

=====================================  ======  =======  =============
network                                levels  filters     parameters
=====================================  ======  =======  =============
published L1C / L2A (13 bands)              5       64     31,038,612
L2A with B07 (14 bands)                     5       64     31,039,188
fixture (13 bands, ``units=8``)             5        8        486,692
smallest of the paper's grid (13)           5       32      7,763,540
=====================================  ======  =======  =============

Depth (levels including the bottleneck, km_predict's ``layers``: 5, 6 or 7) and width
(``units``: filters of the first level, doubling per level) are the published network's own
parameters. ``head_channels`` (2 in the published network) and ``batch_norm`` (none in it) are
xcloud training options; a network with other values cannot take published weights.

:meth:`KappaMaskUNet.load_keras_layers` loads the weighted layers of a Keras HDF5 file (see
:mod:`xcloud.models.keras_hdf5`) by position, as Keras' ``load_weights`` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError
from .keras_hdf5 import KerasLayer

__all__ = ["KAPPAMASK_CHANNELS", "KappaMaskConfig", "KappaMaskUNet"]

KAPPAMASK_CHANNELS = ("UNDEFINED", "CLEAR", "CLOUD_SHADOW", "SEMI_TRANSPARENT_CLOUD", "CLOUD",
                      "MISSING")
"""The published networks' output channels, in order (km_predict's ``classes``)."""


@dataclass(frozen=True)
class KappaMaskConfig:
    """Everything that builds a :class:`KappaMaskUNet`; JSON serialisable via :meth:`to_dict`.

    The defaults are the published network's (``n_classes`` 6, 5 levels, 64 filters, the
    2-channel ReLU layer before the classifier, no batch normalisation). ``head_channels=0``
    leaves the 2-channel layer out (it is often dead over most pixels at random
    initialisation), ``batch_norm`` adds batch normalisation after every convolution but the
    classifier: training options only, published weights need the defaults.
    """

    in_channels: int
    n_classes: int = 6
    depth: int = 5
    filters: int = 64
    dropout: float = 0.5
    head_channels: int = 2
    batch_norm: bool = False

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.n_classes < 1 or self.filters < 1:
            raise ValueError(f"in_channels, n_classes and filters must be >= 1, got {self}")
        if self.depth < 2:
            raise ValueError(f"depth counts the levels including the bottleneck: >= 2, "
                             f"got {self.depth}")
        if not 0.0 <= self.dropout < 1.0 or self.head_channels < 0:
            raise ValueError(f"dropout must be in [0, 1) and head_channels >= 0, got {self}")

    def to_dict(self) -> dict[str, Any]:
        """Return a plain, JSON-serialisable dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KappaMaskConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)

    @classmethod
    def from_keras_layers(cls, layers: Sequence[KerasLayer]) -> KappaMaskConfig:
        """The configuration of the U-Net whose Keras weighted layers are ``layers``.

        Bands and width come from the first kernel ``(3, 3, bands, filters)``, the depth from
        the number of convolutions (``5 * depth - 1``), head and classes from the last two.

        Raises
        ------
        WeightsError
            The layers are not those of a km_predict U-Net.
        """
        if not KappaMaskUNet.looks_like(layers):
            raise WeightsError(
                f"these {len(layers)} weighted layers are not a KappaMask U-Net's (2-D "
                f"convolutions with a bias each, 5 * depth - 1 of them, the first a 3x3 "
                f"kernel)"
            )
        first, head, last = layers[0].arrays[0], layers[-2].arrays[0], layers[-1].arrays[0]
        return cls(in_channels=int(first.shape[2]), n_classes=int(last.shape[3]),
                   depth=(len(layers) + 1) // 5, filters=int(first.shape[3]),
                   head_channels=int(head.shape[3]))


def _conv(in_channels: int, out_channels: int, kernel: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel,
                                         padding=1 if kernel == 3 else 0)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _double_conv(in_channels: int, out_channels: int, batch_norm: bool) -> nn.Sequential:
    return nn.Sequential(_conv(in_channels, out_channels, 3, batch_norm),
                         _conv(out_channels, out_channels, 3, batch_norm))


class _UpBlock(nn.Module):
    """Upsample x2 (nearest), 2x2 convolution, concatenate ``[skip, up]``, two 3x3 convs."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool) -> None:
        super().__init__()
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2.0, mode="nearest"),
            nn.ZeroPad2d((0, 1, 0, 1)),  # Keras "same" with an even kernel pads after
            _conv(in_channels, out_channels, 2, batch_norm),
        )
        self.conv = _double_conv(2 * out_channels, out_channels, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class KappaMaskUNet(nn.Module):
    """The KappaMask U-Net; :meth:`forward` returns the six sigmoid outputs (N, 6, H, W).

    Parameters
    ----------
    in_channels
        Input bands (13 for the published L1C and L2A networks).
    n_classes
        Output channels (6: see :data:`KAPPAMASK_CHANNELS`).
    depth, filters
        Levels including the bottleneck (km_predict's ``layers``) and filters of the first
        level (``units``; doubling per level: 64 .. 1024 for the default 5 x 64). Height and
        width must be multiples of ``2 ** (depth - 1)``.
    dropout
        Dropout rate on the deepest encoder level and the bottleneck (training only).
    head_channels, batch_norm
        See :class:`KappaMaskConfig`.
    """

    def __init__(self, in_channels: int, *, n_classes: int = 6, depth: int = 5,
                 filters: int = 64, dropout: float = 0.5, head_channels: int = 2,
                 batch_norm: bool = False) -> None:
        super().__init__()
        self.config = KappaMaskConfig(in_channels, n_classes, depth, filters, dropout,
                                      head_channels, batch_norm)
        widths = [filters * 2**level for level in range(depth)]
        inputs = [in_channels, *widths[:-2]]
        self.encoder = nn.ModuleList(_double_conv(i, o, batch_norm)
                                     for i, o in zip(inputs, widths[:-1], strict=True))
        self.bottleneck = _double_conv(widths[-2], widths[-1], batch_norm)
        self.decoder = nn.ModuleList(_UpBlock(widths[level + 1], widths[level], batch_norm)
                                     for level in reversed(range(depth - 1)))
        self.dropout = nn.Dropout(dropout)
        self.head = _conv(filters, head_channels, 3, batch_norm) if head_channels else None
        self.classifier = nn.Conv2d(head_channels or filters, n_classes, 1)
        self.reset_parameters()

    @classmethod
    def from_config(cls, config: KappaMaskConfig) -> KappaMaskUNet:
        """Build the network described by ``config``."""
        values = config.to_dict()
        return cls(values.pop("in_channels"), **values)

    def reset_parameters(self) -> None:
        """Keras' initialisation: He-normal convolutions, Glorot-uniform classifier, zero bias."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                if module is self.classifier:
                    nn.init.xavier_uniform_(module.weight)
                else:
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def _check_input(self, x: torch.Tensor) -> None:
        multiple = 2 ** (self.config.depth - 1)
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"KappaMaskUNet takes (N, {self.config.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        if x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise ValueError(
                f"a KappaMaskUNet of depth {self.config.depth} needs height and width that are "
                f"multiples of {multiple}, got {tuple(x.shape[-2:])}; pad the input first"
            )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's output before the sigmoid (N, n_classes, H, W)."""
        self._check_input(x)
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level == len(self.encoder) - 1:
                x = self.dropout(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.dropout(self.bottleneck(x))
        for block, skip in zip(self.decoder, reversed(skips), strict=True):
            x = block(x, skip)
        if self.head is not None:
            x = self.head(x)
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The published output: a sigmoid per channel (N, n_classes, H, W)."""
        return torch.sigmoid(self.logits(x))

    def convolutions(self) -> list[tuple[str, nn.Conv2d]]:
        """The convolutions with their module names, in the order of the Keras layers."""
        return [(name, module) for name, module in self.named_modules()
                if isinstance(module, nn.Conv2d)]

    @staticmethod
    def looks_like(layers: Sequence[KerasLayer]) -> bool:
        """Whether ``layers`` (a Keras file's weighted layers) can be a km_predict U-Net's."""
        if len(layers) < 9 or (len(layers) + 1) % 5:
            return False
        for layer in layers:
            if len(layer.arrays) != 2 or layer.arrays[0].ndim != 4 or layer.arrays[1].ndim != 1:
                return False
        return layers[0].arrays[0].shape[:2] == (3, 3)

    def load_keras_layers(self, layers: Sequence[KerasLayer]) -> None:
        """Load the weighted layers of a Keras HDF5 file, by position (Keras ``load_weights``).

        Each layer's ``(kernel (kh, kw, in, out), bias)`` goes to the convolution at the same
        position (kernels transposed to torch's ``(out, in, kh, kw)``).

        Raises
        ------
        WeightsError
            The network has batch normalisation, or the counts or shapes differ (the first
            mismatch is named).
        """
        if self.config.batch_norm:
            raise WeightsError("Keras KappaMask files have no batch normalisation; build the "
                               "KappaMaskUNet with batch_norm=False to load them")
        convolutions = self.convolutions()
        if len(layers) != len(convolutions):
            raise WeightsError(
                f"the file has {len(layers)} weighted layers; a KappaMask U-Net of depth "
                f"{self.config.depth} has {len(convolutions)} convolutions (5 * depth - 1)"
            )
        tensors = []
        for position, (layer, (name, conv)) in enumerate(
                zip(layers, convolutions, strict=True)):
            expected = ((*conv.weight.shape[2:], conv.in_channels, conv.out_channels),
                        (conv.out_channels,))
            if len(layer.arrays) != 2 or layer.shapes != expected:
                raise WeightsError(
                    f"weighted layer {position} of the file ({layer.name!r}: "
                    f"{', '.join(layer.weight_names)} of shapes {list(layer.shapes)}) does not "
                    f"fit convolution {position} of the network ({name}: kernel and bias "
                    f"{list(expected)})"
                )
            kernel, bias = (np.asarray(a, dtype=np.float32) for a in layer.arrays)
            tensors.append((conv, torch.from_numpy(np.ascontiguousarray(
                kernel.transpose(3, 2, 0, 1))), torch.from_numpy(bias.copy())))
        with torch.no_grad():
            for conv, kernel_tensor, bias_tensor in tensors:
                conv.weight.copy_(kernel_tensor)
                assert conv.bias is not None  # every KappaMask convolution has a bias
                conv.bias.copy_(bias_tensor)
