"""KappaMask's DeepLabv3+ (aligned Xception, output stride 16) as released, in torch.

KappaMask's default network since 2022 (``DeepLabv3Plus`` in kappazeta/km_predict
``architectures.py``, published as ``l1c_deeplabv3plus.hdf5`` and ``l2a_deeplabv3plus.hdf5``)
is a Keras DeepLabv3+; this module computes what that Keras graph computes, so that the
published Keras weights can be loaded into it by order
(:meth:`KappaMaskDeepLabV3Plus.load_keras_layers`).

The network, as the released code builds it:

* entry flow: 3x3/2 conv 32, 3x3 conv 64 (each conv-BN-ReLU), then three blocks of
  [sepconv-BN, ReLU, sepconv-BN, 3x3/2 max pool] (128, 256, 728 filters) added to a 1x1/2
  conv-BN shortcut. The shortcuts form their **own chain**: each takes the previous
  shortcut, not the previous block's output (the first takes the 64-filter ReLU output);
* middle flow: 8 residual blocks of 3 x [ReLU, sepconv 728, BN], a ReLU, then the add;
* exit flow, cut where the code taps it: ReLU, sepconv 728, BN, ReLU, sepconv 1024, BN
  (Keras auto-name ``batch_normalization_36``): the ASPP input, at 1/16 resolution (the rest of
  the exit flow and its 1000-class head are built by the code but are not part of the model);
* ASPP: image pooling (global mean, 1x1 conv with bias, BN, ReLU, broadcast back), 1x1 conv and
  3x3 convs at dilations 6, 12, 18 (each conv-BN-ReLU, 256 filters), concatenated in that
  order and projected by a 1x1 conv-BN-ReLU to 256;
* decoder: bilinear x4 of the ASPP output, concatenated with a 1x1 conv-BN-ReLU (48 filters)
  of the 1/4-resolution tap ``batch_normalization_6`` (the second 256-filter sepconv-BN of the
  entry flow, before its max pool), two 3x3 conv-BN-ReLU (256), bilinear x4, a 1x1 conv with
  bias and a softmax over the classes.

Quirks of the released graph that the weights were trained with, all kept:

* every convolution and max pool is preceded by ``tf.pad(..., 'SYMMETRIC')`` (the edge row is
  repeated: ``c b a | a b c | c b a``) and then runs ``'valid'``: stride 1 pads ``d*(k-1)/2``
  on each side; stride 2 on an even size pads 0 before and 1 after (the first conv and the max
  pools); 1x1 convolutions pad nothing. Zero padding instead changes 59 % of the classes on the
  fixture;
* BatchNorm epsilon is Keras's 1e-3 (torch's default 1e-5 changes 1.1 % of the classes);
* both upsamplings are Keras ``UpSampling2D(interpolation='bilinear')`` = ``tf.image.resize``
  bilinear with half-pixel centres = torch ``interpolate(..., align_corners=False)``;
* separable convolutions are depthwise (multiplier 1) then pointwise, no bias, nothing between.

The input size is not free: SYMMETRIC padding needs the pad to be no larger than the map, so
the dilation-18 ASPP branch needs a 1/16-resolution map of at least 18 px (:data:`MIN_TILE` =
288 px), and both sides must be multiples of :data:`TILE_MULTIPLE` (16) for the two x4
upsamplings to meet the skip branch. km_predict runs 512 x 512 px tiles. No weight shape
depends on the input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError

if TYPE_CHECKING:
    from .keras_hdf5 import KerasLayer

__all__ = [
    "BN_EPS",
    "MIN_TILE",
    "N_WEIGHTED_LAYERS",
    "TILE_MULTIPLE",
    "KappaMaskDeepLabV3Plus",
    "symmetric_pad",
]

MIN_TILE = 288
"""Smallest input side in pixels: the dilation-18 ASPP branch pads its 1/16 map by 18 px with
SYMMETRIC padding, which needs the map to be at least 18 px (Keras fails at 256 px)."""

TILE_MULTIPLE = 16
"""Both input sides must be multiples of this (the output stride) for the decoder to fit."""

BN_EPS = 1e-3
"""Keras BatchNormalization's default epsilon, which the published weights were trained with."""

N_WEIGHTED_LAYERS = 93
"""Keras layers with weights in a DeepLabv3Plus weights file (213 layers in all)."""

_ENTRY_WIDTHS = (128, 256, 728)
_MIDDLE_BLOCKS = 8
_MIDDLE_WIDTH = 728
_ASPP_RATES = (6, 12, 18)
_ASPP_WIDTH = 256
_SKIP_WIDTH = 48


def symmetric_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Pad the last two axes as ``tf.pad(..., mode='SYMMETRIC')`` does (edge repeated).

    Parameters
    ----------
    x : torch.Tensor
        ``(..., H, W)`` tensor.
    top, bottom, left, right : int
        Rows before/after and columns before/after; each at most the size of its axis.

    Returns
    -------
    torch.Tensor
        ``(..., H + top + bottom, W + left + right)``.
    """
    height, width = x.shape[-2], x.shape[-1]
    if max(top, bottom) > height or max(left, right) > width:
        raise ValueError(f"SYMMETRIC padding by ({top}, {bottom}, {left}, {right}) needs a map of "
                         f"at least that size, got {height} x {width}")
    if top or bottom:
        rows = torch.cat([torch.arange(top - 1, -1, -1), torch.arange(height),
                          torch.arange(height - 1, height - 1 - bottom, -1)]).to(x.device)
        x = x.index_select(-2, rows)
    if left or right:
        cols = torch.cat([torch.arange(left - 1, -1, -1), torch.arange(width),
                          torch.arange(width - 1, width - 1 - right, -1)]).to(x.device)
        x = x.index_select(-1, cols)
    return x


def _same_pad(x: torch.Tensor, kernel_size: int, stride: int = 1, dilation: int = 1
              ) -> torch.Tensor:
    """km_predict's ``CustomPad``: TF 'same' amounts (less before than after), SYMMETRIC values.

    ``CustomPad`` pads the height axis by the amounts computed from the width and vice versa;
    inputs are square or have both sides multiples of 16, so every map has even sides at the
    stride-2 layers and the amounts of the two axes are the same.
    """
    effective = kernel_size + (kernel_size - 1) * (dilation - 1)
    amounts = []
    for size in x.shape[-2:]:
        total = max(effective - (stride if size % stride == 0 else size % stride), 0)
        amounts += [total // 2, total - total // 2]
    if not any(amounts):
        return x
    return symmetric_pad(x, *amounts)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    # Keras momentum 0.99 = torch momentum 0.01
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=0.01)


class _SeparableConv2d(nn.Module):
    """Keras ``SeparableConv2D`` without bias: depthwise 3x3 (multiplier 1), then pointwise."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(_same_pad(x, 3)))


class _SepBN(nn.Module):
    """``sep_bn``: SYMMETRIC pad, separable conv, BatchNorm (no activation)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = _SeparableConv2d(in_channels, out_channels)
        self.bn = _batch_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class _ConvBN(nn.Module):
    """``conv_bn`` / ``convolutional_block``: SYMMETRIC pad, conv, BatchNorm, optional ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, bias: bool = False, relu: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              dilation=dilation, bias=bias)
        self.bn = _batch_norm(out_channels)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        x = _same_pad(x, conv.kernel_size[0], conv.stride[0], conv.dilation[0])
        x = self.bn(conv(x))
        return F.relu(x) if self.relu else x


def _max_pool(x: torch.Tensor) -> torch.Tensor:
    """``CustomPad(3, stride 2)`` then ``MaxPool2D(3, 2, 'valid')``."""
    return F.max_pool2d(_same_pad(x, 3, stride=2), 3, 2)


class _EntryBlock(nn.Module):
    def __init__(self, in_channels: int, shortcut_in: int, out_channels: int) -> None:
        super().__init__()
        self.sep1 = _SepBN(in_channels, out_channels)
        self.sep2 = _SepBN(out_channels, out_channels)
        self.shortcut = _ConvBN(shortcut_in, out_channels, 1, stride=2)

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (block output, new shortcut, pre-pool feature ``sep2``)."""
        x = self.sep1(x)
        feature = self.sep2(F.relu(x))
        shortcut = self.shortcut(shortcut)
        return shortcut + _max_pool(feature), shortcut, feature


class _MiddleBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.seps = nn.ModuleList(_SepBN(channels, channels) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for sep in self.seps:
            y = sep(F.relu(y))
        return x + F.relu(y)


class _ASPP(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.pool = _ConvBN(in_channels, _ASPP_WIDTH, 1, bias=True, relu=True)
        self.branch1 = _ConvBN(in_channels, _ASPP_WIDTH, 1, relu=True)
        self.dilated = nn.ModuleList(_ConvBN(in_channels, _ASPP_WIDTH, 3, dilation=rate,
                                             relu=True) for rate in _ASPP_RATES)
        self.project = _ConvBN(_ASPP_WIDTH * (2 + len(_ASPP_RATES)), _ASPP_WIDTH, 1, relu=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # AveragePooling2D over the whole map, then bilinear upsampling of a 1x1 map = broadcast
        pooled = self.pool(x.mean(dim=(2, 3), keepdim=True)).expand(-1, -1, *x.shape[-2:])
        branches = [pooled, self.branch1(x), *(conv(x) for conv in self.dilated)]
        return self.project(torch.cat(branches, dim=1))


class KappaMaskDeepLabV3Plus(nn.Module):
    """KappaMask's released Keras DeepLabv3+ (aligned Xception, ASPP 6/12/18) in torch.

    Parameters
    ----------
    in_channels : int
        Input bands: 13 for L1C (B01-B12 with B8A after B08), 14 for L2A (AOT, B01-B12 without
        B10, WVP).
    n_classes : int, default 6
        Output channels (KappaMask: UNDEFINED, CLEAR, CLOUD_SHADOW, SEMI_TRANSPARENT_CLOUD,
        CLOUD, MISSING).

    Notes
    -----
    The Keras file counts 24,601,390 values for L1C (BatchNorm moving statistics included:
    here they are buffers) and 288 more for L2A (the first kernel's 14th input channel).
    BatchNorm uses ``eps=1e-3``; put the module in ``eval()`` mode for inference.
    """

    def __init__(self, in_channels: int, n_classes: int = 6) -> None:
        super().__init__()
        if in_channels < 1 or n_classes < 1:
            raise ValueError(f"in_channels and n_classes must be positive, got {in_channels} "
                             f"and {n_classes}")
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.stem1 = _ConvBN(in_channels, 32, 3, stride=2, relu=True)
        self.stem2 = _ConvBN(32, 64, 3, relu=True)
        entry = []
        block_in = shortcut_in = 64
        for width in _ENTRY_WIDTHS:
            entry.append(_EntryBlock(block_in, shortcut_in, width))
            block_in = shortcut_in = width
        self.entry = nn.ModuleList(entry)
        self.middle = nn.ModuleList(_MiddleBlock(_MIDDLE_WIDTH) for _ in range(_MIDDLE_BLOCKS))
        self.exit1 = _SepBN(_MIDDLE_WIDTH, 728)
        self.exit2 = _SepBN(728, 1024)
        self.aspp = _ASPP(1024)
        self.skip = _ConvBN(_ENTRY_WIDTHS[1], _SKIP_WIDTH, 1, relu=True)
        self.decoder1 = _ConvBN(_ASPP_WIDTH + _SKIP_WIDTH, 256, 3, relu=True)
        self.decoder2 = _ConvBN(256, 256, 3, relu=True)
        self.classifier = nn.Conv2d(256, n_classes, 1)

    # -- forward ---------------------------------------------------------------------------

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is ``(N, in_channels, H, W)`` with a size the net takes.

        Parameters
        ----------
        x : torch.Tensor
            The input batch.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"KappaMask DeepLabv3+ expects (N, {self.in_channels}, H, W) input, "
                             f"got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if min(height, width) < MIN_TILE or height % TILE_MULTIPLE or width % TILE_MULTIPLE:
            raise ValueError(
                f"KappaMask DeepLabv3+ needs tiles of at least MIN_TILE = {MIN_TILE} px on each "
                f"side, both sides multiples of {TILE_MULTIPLE} (the released Keras network "
                f"accepts nothing else; km_predict uses 512), got {height} x {width}; use a "
                f"larger tile size")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax class probabilities, as the Keras model outputs them.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, in_channels, H, W)`` normalised input, ``H`` and ``W`` multiples of 16, at
            least :data:`MIN_TILE`.

        Returns
        -------
        torch.Tensor
            ``(N, n_classes, H, W)`` probabilities (softmax over the channel axis).
        """
        self.check_input(x)
        size = x.shape[-2:]
        x = self.stem2(self.stem1(x))
        shortcut = x
        skip_feature = x
        for i, block in enumerate(self.entry):
            x, shortcut, feature = block(F.relu(x) if i else x, shortcut)
            if i == 1:
                skip_feature = feature  # batch_normalization_6, 1/4 resolution
        for block in self.middle:
            x = block(x)
        x = self.exit2(F.relu(self.exit1(F.relu(x))))  # batch_normalization_36, 1/16
        x = self.aspp(x)
        skip = self.skip(skip_feature)
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        x = self.decoder2(self.decoder1(torch.cat([x, skip], dim=1)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return torch.softmax(self.classifier(x), dim=1)

    # -- Keras weights ---------------------------------------------------------------------

    def _keras_order(self) -> list[nn.Module]:
        """The network's weighted layers in the order of the Keras file (topological).

        Keras orders a functional model's layers by graph depth, so in each entry block the
        second separable conv and its BN come before the shortcut conv, and the four ASPP
        convolutions come before their four BatchNorms.
        """
        order: list[nn.Module] = []

        def conv_bn(block: _ConvBN | _SepBN) -> None:
            order.extend([block.conv, block.bn])

        conv_bn(self.stem1)
        conv_bn(self.stem2)
        for block in cast("list[_EntryBlock]", list(self.entry)):
            conv_bn(block.sep1)
            conv_bn(block.sep2)
            conv_bn(block.shortcut)
        for middle in cast("list[_MiddleBlock]", list(self.middle)):
            for sep in cast("list[_SepBN]", list(middle.seps)):
                conv_bn(sep)
        conv_bn(self.exit1)
        conv_bn(self.exit2)
        aspp = self.aspp
        conv_bn(aspp.pool)
        parallel = [aspp.branch1, *aspp.dilated]
        order.extend(branch.conv for branch in parallel)
        order.extend(branch.bn for branch in parallel)
        conv_bn(aspp.project)
        conv_bn(self.skip)
        conv_bn(self.decoder1)
        conv_bn(self.decoder2)
        order.append(self.classifier)
        return order

    @staticmethod
    def _targets(module: nn.Module) -> list[tuple[torch.Tensor, str]]:
        """The torch tensors one Keras layer fills, in Keras weight order, with their layout."""
        if isinstance(module, _SeparableConv2d):
            return [(module.depthwise.weight, "depthwise"), (module.pointwise.weight, "conv")]
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            return [(module.weight, "vector"), (module.bias, "vector"),
                    (module.running_mean, "vector"), (module.running_var, "vector")]
        if isinstance(module, nn.Conv2d):
            targets = [(module.weight, "conv")]
            if module.bias is not None:
                targets.append((module.bias, "vector"))
            return targets
        raise TypeError(f"no Keras layout for {type(module).__name__}")

    @staticmethod
    def _keras_shape(tensor: torch.Tensor, layout: str) -> tuple[int, ...]:
        if layout == "conv":  # torch (out, in, kh, kw) -> Keras (kh, kw, in, out)
            out_c, in_c, kh, kw = tensor.shape
            return (kh, kw, in_c, out_c)
        if layout == "depthwise":  # torch (in, 1, kh, kw) -> Keras (kh, kw, in, 1)
            in_c, _, kh, kw = tensor.shape
            return (kh, kw, in_c, 1)
        return tuple(tensor.shape)

    @staticmethod
    def _to_torch(array: np.ndarray, layout: str) -> torch.Tensor:
        value = np.asarray(array, dtype=np.float32)
        if layout in ("conv", "depthwise"):
            # (kh, kw, in, out) -> (out, in, kh, kw); depthwise (kh, kw, in, 1) -> (in, 1, kh, kw)
            value = value.transpose(3, 2, 0, 1) if layout == "conv" else value.transpose(2, 3, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(value))

    def keras_weight_shapes(self) -> list[tuple[int, ...]]:
        """The Keras-layout shapes of all weight arrays in file order (265 arrays).

        Returns
        -------
        list of tuple of int
            Conv2D kernel ``(kh, kw, in, out)`` then bias; BatchNorm gamma, beta, moving mean,
            moving variance; SeparableConv2D depthwise ``(kh, kw, in, 1)``, pointwise
            ``(1, 1, in, out)``.
        """
        return [self._keras_shape(tensor, layout) for module in self._keras_order()
                for tensor, layout in self._targets(module)]

    def load_keras_layers(self, layers: Sequence[KerasLayer]) -> None:
        """Load a Keras DeepLabv3Plus weights file's layers, paired by order as Keras does.

        Layers without weights are skipped; the weighted ones are paired in order with this
        network's weighted layers (names are ignored, as in Keras ``load_weights``) and their
        arrays taken in ``weight_names`` order. Nothing is changed unless every array fits.

        Parameters
        ----------
        layers : sequence of KerasLayer
            The file's layers in file order (``read_keras_weights``).

        Raises
        ------
        WeightsError
            The number of weighted layers, of arrays in a layer, or a shape does not match;
            the message names the first mismatch (index, layer, weight name, shapes).
        """
        weighted = [layer for layer in layers if len(layer.arrays)]
        order = self._keras_order()
        hint = ("the file given as weights= is not a KappaMask DeepLabv3Plus weights file for "
                f"{self.in_channels} bands and {self.n_classes} classes; pass the matching "
                "l1c_deeplabv3plus.hdf5 (13 bands) or l2a_deeplabv3plus.hdf5 (14 bands)")
        first: str | None = None
        pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        for index, (layer, module) in enumerate(zip(weighted, order, strict=False)):
            targets = self._targets(module)
            if len(layer.arrays) != len(targets):
                first = (f"weighted layer {index} {layer.name!r} has {len(layer.arrays)} arrays "
                         f"({', '.join(layer.weight_names)}), expected {len(targets)}")
                break
            arrays = zip(layer.weight_names, layer.arrays, targets, strict=True)
            for name, array, (tensor, layout) in arrays:
                expected = self._keras_shape(tensor, layout)
                if tuple(array.shape) != expected:
                    first = (f"weighted layer {index} {layer.name!r} weight {name!r} has shape "
                             f"{tuple(array.shape)}, expected {expected}")
                    break
                pending.append((tensor, self._to_torch(array, layout)))
            if first:
                break
        if len(weighted) != len(order):
            count = (f"it has {len(weighted)} layers with weights, the network "
                     f"{len(order)}")
            first = f"{count} (first difference: {first})" if first else count
        if first:
            raise WeightsError(f"{hint}: {first}")
        with torch.no_grad():
            for tensor, value in pending:
                tensor.copy_(value.to(dtype=tensor.dtype, device=tensor.device))

    @staticmethod
    def looks_like(layers: Sequence[KerasLayer]) -> bool:
        """Whether a Keras weights file's layers look like a DeepLabv3Plus file (cheap).

        True when the file has depthwise kernels (SeparableConv2D: none in KappaMask's U-Net)
        or exactly :data:`N_WEIGHTED_LAYERS` layers with weights.

        Parameters
        ----------
        layers : sequence of KerasLayer
            The file's layers in file order.

        Returns
        -------
        bool
        """
        weighted = [layer for layer in layers if len(layer.arrays)]
        depthwise = any("depthwise_kernel" in name for layer in weighted
                        for name in layer.weight_names)
        return depthwise or len(weighted) == N_WEIGHTED_LAYERS
