"""DeepLabV3+ (Chen et al. 2018) with a ResNet-34 encoder, in plain torch.

The layout follows ``segmentation_models_pytorch.DeepLabV3Plus(encoder_name="resnet34")`` with
its defaults (output stride 16, ASPP rates (12, 24, 36), separable ASPP convolutions, dropout
0.5 after the ASPP projection, 256 decoder channels), so module and parameter names match and
smp state dicts load strictly:

* ``encoder.*``: torchvision's ResNet-34 without its classifier (``conv1``, ``bn1``,
  ``layer1`` .. ``layer4``). For output stride 16, ``layer4`` has stride 1 and dilation 2 in
  every convolution (smp's ``replace_strides_with_dilation``).
* ``decoder.aspp``: ASPP (1x1 branch, three separable 3x3 branches dilated by
  ``atrous_rates``, image pooling; 1x1 projection, BN, ReLU, dropout), then a separable 3x3
  convolution, BN, ReLU. ``decoder.block1`` projects ``layer1`` (stride 4) to 48 channels;
  ``decoder.block2`` fuses it with the x4-upsampled ASPP output (separable 3x3, BN, ReLU).
* ``segmentation_head.0``: 1x1 convolution to the classes, then x4 bilinear upsampling
  (``align_corners=True``, as smp's ``UpsamplingBilinear2d``).

The paper's rates for output stride 16 are (6, 12, 18); smp's default (12, 24, 36) is this
module's default too (``atrous_rates`` changes it; no parameter depends on it). Height and
width must be multiples of 16. With 13 input channels and 7 classes the network has
22,470,359 parameters (ResNet-34 encoder 21,316,032; the encoder at 3 channels has
torchvision's 21,284,672).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DeepLabV3Plus", "ResNet34Encoder"]

_RESNET34_BLOCKS = (3, 4, 6, 3)
_RESNET_WIDTHS = (64, 128, 256, 512)
_LOW_LEVEL_CHANNELS = 48
_OUTPUT_STRIDE = 16


def _round_up(size: int) -> int:
    return -(-size // _OUTPUT_STRIDE) * _OUTPUT_STRIDE


def _bn_relu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.ReLU()]


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: two 3x3 convolutions with BN and a residual."""

    def __init__(self, in_channels: int, channels: int, *, stride: int = 1,
                 dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


def _resnet_layer(in_channels: int, channels: int, blocks: int, *, stride: int,
                  dilation: int) -> nn.Sequential:
    first = BasicBlock(in_channels, channels, stride=stride, dilation=dilation)
    rest = (BasicBlock(channels, channels, dilation=dilation) for _ in range(blocks - 1))
    return nn.Sequential(first, *rest)


class ResNet34Encoder(nn.Module):
    """ResNet-34 features at output stride 16: returns (layer1, layer4) maps.

    ``layer1`` has 64 channels at 1/4 of the input size, ``layer4`` 512 channels at 1/16
    (its stride replaced by dilation 2).
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, _RESNET_WIDTHS[0], 7, stride=2, padding=3,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(_RESNET_WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inputs = (_RESNET_WIDTHS[0], *_RESNET_WIDTHS[:-1])
        strides, dilations = (1, 2, 2, 1), (1, 1, 1, 2)
        for index, spec in enumerate(zip(inputs, _RESNET_WIDTHS, _RESNET34_BLOCKS, strides,
                                         dilations, strict=True), start=1):
            i, o, n, s, d = spec
            self.add_module(f"layer{index}", _resnet_layer(i, o, n, stride=s, dilation=d))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        return low, self.layer4(self.layer3(self.layer2(low)))


class SeparableConv2d(nn.Sequential):
    """Depthwise (dilated) convolution, then a 1x1 pointwise convolution."""

    def __init__(self, in_channels: int, out_channels: int, *, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation,
                      groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
        )


class ASPPPooling(nn.Sequential):
    """Image-level branch: global average, 1x1 convolution, BN, ReLU, broadcast back."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1,
                                                            bias=False),
                         *_bn_relu(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(super().forward(x), size=x.shape[2:], mode="bilinear",
                             align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: five branches, concatenated and projected."""

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int], *,
                 separable: bool, dropout: float) -> None:
        super().__init__()
        if len(rates) != 3:
            raise ValueError(f"ASPP takes three atrous rates, got {tuple(rates)}")
        branches: list[nn.Module] = [nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), *_bn_relu(out_channels))]
        for rate in rates:
            conv = (SeparableConv2d(in_channels, out_channels, dilation=rate) if separable
                    else nn.Conv2d(in_channels, out_channels, 3, padding=rate, dilation=rate,
                                   bias=False))
            branches.append(nn.Sequential(conv, *_bn_relu(out_channels)))
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(nn.Conv2d(5 * out_channels, out_channels, 1, bias=False),
                                     *_bn_relu(out_channels), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP on the deep features, fused with 48 projected low-level channels at stride 4."""

    def __init__(self, low_channels: int, deep_channels: int, out_channels: int,
                 rates: Sequence[int], *, separable: bool, dropout: float) -> None:
        super().__init__()
        self.aspp = nn.Sequential(
            ASPP(deep_channels, out_channels, rates, separable=separable, dropout=dropout),
            SeparableConv2d(out_channels, out_channels), *_bn_relu(out_channels))
        self.up = nn.Upsample(scale_factor=_OUTPUT_STRIDE // 4, mode="bilinear",
                              align_corners=True)
        self.block1 = nn.Sequential(nn.Conv2d(low_channels, _LOW_LEVEL_CHANNELS, 1, bias=False),
                                    *_bn_relu(_LOW_LEVEL_CHANNELS))
        self.block2 = nn.Sequential(
            SeparableConv2d(_LOW_LEVEL_CHANNELS + out_channels, out_channels),
            *_bn_relu(out_channels))

    def forward(self, low: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        fused = torch.cat([self.up(self.aspp(deep)), self.block1(low)], dim=1)
        return self.block2(fused)


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ with a ResNet-34 encoder; logits (N, n_classes, H, W).

    Parameters
    ----------
    in_channels
        Input bands.
    n_classes
        Output channels (logits, no activation).
    atrous_rates
        Dilation rates of the three ASPP 3x3 branches: smp's (12, 24, 36) by default, the
        paper's (6, 12, 18) for output stride 16 as an alternative.
    decoder_channels
        Width of the ASPP and the decoder (256).
    aspp_dropout
        Dropout after the ASPP projection (training only; 0.5).
    aspp_separable
        Depthwise-separable ASPP branches (smp's DeepLabV3+ default) or plain 3x3 ones.

    Notes
    -----
    Height and width must be multiples of 16. Initialisation follows smp: He-normal
    (fan-out) encoder convolutions as torchvision, He-uniform decoder convolutions, a
    Glorot-uniform classifier, unit batch norms, zero biases.
    """

    def __init__(self, in_channels: int, n_classes: int, *,
                 atrous_rates: Sequence[int] = (12, 24, 36), decoder_channels: int = 256,
                 aspp_dropout: float = 0.5, aspp_separable: bool = True) -> None:
        super().__init__()
        if in_channels < 1 or n_classes < 1 or decoder_channels < 1:
            raise ValueError("in_channels, n_classes and decoder_channels must be >= 1")
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.encoder = ResNet34Encoder(in_channels)
        self.decoder = DeepLabV3PlusDecoder(
            _RESNET_WIDTHS[0], _RESNET_WIDTHS[-1], decoder_channels, tuple(atrous_rates),
            separable=aspp_separable, dropout=aspp_dropout)
        self.segmentation_head = nn.Sequential(
            nn.Conv2d(decoder_channels, n_classes, 1),
            nn.Upsample(scale_factor=4, mode="bilinear", align_corners=True),
            nn.Identity())
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise every weight (see Notes)."""
        self._init_convs(self.encoder, nn.init.kaiming_normal_, mode="fan_out",
                         nonlinearity="relu")
        self._init_convs(self.decoder, nn.init.kaiming_uniform_, mode="fan_in",
                         nonlinearity="relu")
        self._init_convs(self.segmentation_head, nn.init.xavier_uniform_)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()

    @staticmethod
    def _init_convs(root: nn.Module, init: Callable[..., Any], **options: Any) -> None:
        for module in root.modules():
            if isinstance(module, nn.Conv2d):
                init(module.weight, **options)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, n_classes, H, W) of input (N, in_channels, H, W)."""
        self._check_input(x)
        return self.segmentation_head(self.decoder(*self.encoder(x)))

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (N, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        height, width = x.shape[2:]
        if height % _OUTPUT_STRIDE or width % _OUTPUT_STRIDE:
            raise ValueError(f"height and width must be multiples of {_OUTPUT_STRIDE}, got "
                             f"{height} x {width}: pad to {_round_up(height)} x {_round_up(width)}")

    def n_parameters(self) -> int:
        """Number of parameters (batch-norm statistics not counted)."""
        return sum(p.numel() for p in self.parameters())
