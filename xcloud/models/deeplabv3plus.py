"""DeepLabV3+ (Chen et al. 2018) as segmentation_models_pytorch 0.3.2 builds it, in plain torch.

The network is ``smp.DeepLabV3Plus(encoder_name=encoder, encoder_weights=None,
in_channels=in_channels, classes=n_classes, upsampling=upsampling)`` of smp 0.3.2 (the version
SEnSeI-v2 pins; 0.3.3 builds the same network), so module and parameter names match
and smp state dicts load strictly:

* ``encoder.*``: the encoder (see :data:`ENCODERS`), without its classifier, its first
  convolution taking ``in_channels`` bands. smp calls its five downsampling stages 1 .. 5
  (outputs at 1/2 .. 1/32 of the input size). For output stride 16 every convolution of
  stage 5 gets stride 1, dilation 2 and padding ``(k // 2) * 2`` (smp's
  ``replace_strides_with_dilation``; 1x1 convolutions included, where it changes nothing);
  for output stride 8 stage 4 gets dilation 2 and stage 5 dilation 4.

  - ``resnet34``: torchvision's ResNet-34 (``conv1``, ``bn1``, ``layer1`` .. ``layer4``;
    stage 5 is ``layer4``, the low-level features come from ``layer1``, 64 channels).
  - ``resnet50``: torchvision's ResNet-50 (v1.5: bottleneck blocks ``conv1`` 1x1, ``conv2``
    3x3 carrying the stride, ``conv3`` 1x1 to 4x the width, ``downsample.0/.1`` 1x1
    convolution + BN on each stage's first block); stage outputs 64, 256, 512, 1024, 2048
    channels, low-level features from ``layer1`` (256). Dilating ``layer4`` (smp's
    ``replace_strides_with_dilation``) makes every ``conv2`` 3x3 stride 1, dilation 2,
    padding 2, and the first block's ``downsample.0`` stride 1 (its 1x1 convolutions get
    dilation 2 and padding 0, without effect).
  - ``mobilenet_v2``: torchvision's MobileNetV2 ``features.0`` .. ``features.18`` (the
    layout of :mod:`xcloud.models.unet_mobilenet`; stages end after features 1, 3, 6, 13 and
    18, so stage 5 is ``features.14`` .. ``features.18``: every depthwise 3x3 there is
    dilated by 2). Low-level features: ``features.3``, 24 channels; deep: 1280 channels.

* ``decoder.aspp``: ASPP (1x1 branch, three separable 3x3 branches dilated by
  ``atrous_rates``, image pooling; 1x1 projection, BN, ReLU, dropout 0.5), then a separable
  3x3 convolution, BN, ReLU. ``decoder.up`` upsamples it bilinearly (``align_corners=True``)
  x4 (x2 at output stride 8) to the stride-4 features, which ``decoder.block1`` projects to
  48 channels; ``decoder.block2`` fuses both (separable 3x3, BN, ReLU), 256 channels at 1/4.
* ``segmentation_head.0``: 1x1 convolution to the classes, then bilinear upsampling by
  ``upsampling`` (``align_corners=True``, smp's ``UpsamplingBilinear2d``; none when it is 1).

Logits come out at ``(H / 4 * upsampling, W / 4 * upsampling)``: the input size for smp's
default ``upsampling=4``, 1/4 of it for SEnSeI-v2's ``upsampling=1`` (SEnSeI-v2 then
resizes them itself). Height and width must be multiples of the output stride (16), as smp
checks. The paper's ASPP rates for output stride 16 are (6, 12, 18); smp's default
(12, 24, 36) is this module's default too (``atrous_rates`` changes it; no parameter depends
on it).

Parameters (``n_parameters``; batch-norm statistics not counted): ``resnet34`` with 13 bands
and 7 classes 22,470,359 (encoder 21,316,032; torchvision's 21,284,672 at 3 bands, + 3,136 per
extra band); ``resnet50`` with 32 bands and 4 classes 26,769,300 (encoder 23,598,976;
torchvision's 23,508,032 at 3 bands, + 3,136 per extra band); ``mobilenet_v2`` with 32 bands
and 7 classes 4,388,407 (encoder 2,232,224; torchvision's 2,223,872 at 3 bands, + 288 per
extra band).

For other than 3 input bands smp's ``patch_first_conv`` gives the first convolution
``in_channels`` inputs (same key and shape as here; with ImageNet weights it repeats and
rescales their RGB filters, without them it re-initialises it). Loaded weights replace
either, so only the shape matters for published models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .unet_mobilenet import mobilenet_v2_features

__all__ = [
    "ENCODERS",
    "BasicBlock",
    "Bottleneck",
    "DeepLabV3Plus",
    "EncoderSpec",
    "MobileNetV2Backbone",
    "ResNet34Encoder",
    "ResNet50Encoder",
    "ResNetEncoder",
    "StagedEncoder",
    "replace_strides_with_dilation",
]

_RESNET34_BLOCKS = (3, 4, 6, 3)
_RESNET50_BLOCKS = (3, 4, 6, 3)
_RESNET_WIDTHS = (64, 128, 256, 512)
_LOW_LEVEL_CHANNELS = 48
_OUTPUT_STRIDES = (8, 16)
# smp's make_dilated: the stages (1-based) given dilation, per output stride
_DILATED_STAGES = {16: ((5, 2),), 8: ((4, 2), (5, 4))}


def _bn_relu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.ReLU()]


def replace_strides_with_dilation(module: nn.Module, rate: int) -> None:
    """Give every convolution in ``module`` stride 1 and dilation ``rate`` (in place).

    smp's ``replace_strides_with_dilation``: the padding becomes ``(k // 2) * rate`` so the
    size is kept; 1x1 convolutions get the dilation too (without effect).
    """
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d):
            kernel_h, kernel_w = conv.kernel_size
            conv.stride = (1, 1)
            conv.dilation = (rate, rate)
            conv.padding = ((kernel_h // 2) * rate, (kernel_w // 2) * rate)


# -- encoders ----------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: two 3x3 convolutions with BN and a residual."""

    expansion = 1
    """Output channels per unit of ``channels``."""

    def __init__(self, in_channels: int, channels: int, *, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = _downsample(in_channels, channels * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the residual block (identity or downsampled shortcut added)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck (v1.5): 1x1 reduce, 3x3 (with the stride), 1x1 to
    ``4 * channels``, BN after each, and a residual."""

    expansion = 4
    """Output channels per unit of ``channels``."""

    def __init__(self, in_channels: int, channels: int, *, stride: int = 1) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the bottleneck block (identity or downsampled shortcut added)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """torchvision's shortcut projection (1x1 convolution + BN) where the shape changes."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


_Block = type[BasicBlock] | type[Bottleneck]


def _resnet_layer(block: _Block, in_channels: int, channels: int, blocks: int, *,
                  stride: int) -> nn.Sequential:
    out_channels = channels * block.expansion
    rest = (block(out_channels, channels) for _ in range(blocks - 1))
    return nn.Sequential(block(in_channels, channels, stride=stride), *rest)


class StagedEncoder(nn.Module):
    """An smp encoder: ``stages()`` gives its five stage modules (shared with it, for
    dilation); ``forward`` returns the five stage outputs, finest first."""

    def stages(self) -> list[nn.Module]:  # pragma: no cover - abstract
        """The encoder stages in order, each returning one feature map."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five stage outputs of input ``x``, finest first."""
        outputs = []
        for stage in self.stages():
            x = stage(x)
            outputs.append(x)
        return outputs


class ResNetEncoder(StagedEncoder):
    """torchvision's ResNet without classifier (output stride 32 until dilated).

    ``forward`` returns the five stage outputs, finest first: 64 channels at 1/2 (after
    ``relu``), then ``layer1`` .. ``layer4`` (64, 128, 256, 512 times ``block.expansion``).

    Parameters
    ----------
    in_channels
        Input bands of ``conv1``.
    block
        :class:`BasicBlock` (ResNet-18/34) or :class:`Bottleneck` (ResNet-50/101/152).
    layers
        Blocks in ``layer1`` .. ``layer4``.
    """

    # added with add_module in __init__ (annotated here for type checkers only)
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, in_channels: int, block: _Block, layers: Sequence[int]) -> None:
        super().__init__()
        if len(layers) != len(_RESNET_WIDTHS):
            raise ValueError(f"a ResNet has four layers, got layers={tuple(layers)}")
        self.channels = (_RESNET_WIDTHS[0],
                         *(width * block.expansion for width in _RESNET_WIDTHS))
        self.conv1 = nn.Conv2d(in_channels, _RESNET_WIDTHS[0], 7, stride=2, padding=3,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(_RESNET_WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inputs = (_RESNET_WIDTHS[0], *self.channels[1:-1])
        for index, (i, o, n, s) in enumerate(zip(inputs, _RESNET_WIDTHS, layers,
                                                 (1, 2, 2, 2), strict=True), start=1):
            self.add_module(f"layer{index}", _resnet_layer(block, i, o, n, stride=s))

    def stages(self) -> list[nn.Module]:
        """smp's stages 1 .. 5 (their modules, shared with this encoder)."""
        return [nn.Sequential(self.conv1, self.bn1, self.relu),
                nn.Sequential(self.maxpool, self.layer1), self.layer2, self.layer3, self.layer4]


class ResNet34Encoder(ResNetEncoder):
    """torchvision's ResNet-34 without classifier: stage outputs 64, 64, 128, 256, 512."""

    channels = (64, 64, 128, 256, 512)
    """Channels of the five stage outputs."""

    def __init__(self, in_channels: int) -> None:
        super().__init__(in_channels, BasicBlock, _RESNET34_BLOCKS)


class ResNet50Encoder(ResNetEncoder):
    """torchvision's ResNet-50 without classifier: stage outputs 64, 256, 512, 1024, 2048."""

    channels = (64, 256, 512, 1024, 2048)
    """Channels of the five stage outputs."""

    def __init__(self, in_channels: int) -> None:
        super().__init__(in_channels, Bottleneck, _RESNET50_BLOCKS)


class MobileNetV2Backbone(StagedEncoder):
    """torchvision's MobileNetV2 ``features`` (output stride 32 until dilated).

    The layers are those of :class:`xcloud.models.unet_mobilenet.UnetMobileNetV2`'s encoder.
    ``forward`` returns the five stage outputs, finest first: 16, 24, 32, 96 and 1280
    channels at 1/2 .. 1/32.
    """

    channels = (16, 24, 32, 96, 1280)
    """Channels of the five stage outputs."""

    stage_ends = (2, 4, 7, 14, 19)
    """Where each stage's slice of ``features`` ends (smp's ``get_stages``)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.features = mobilenet_v2_features(in_channels)

    def stages(self) -> list[nn.Module]:
        """smp's stages 1 .. 5 (slices of ``features``, sharing its modules)."""
        starts = (0, *self.stage_ends[:-1])
        return [self.features[start:end] for start, end in zip(starts, self.stage_ends,
                                                               strict=True)]


@dataclass(frozen=True)
class EncoderSpec:
    """How to build one of smp's encoders.

    Attributes
    ----------
    build
        ``build(in_channels)``: a module with smp's parameter names whose ``forward`` returns
        the five stage outputs (1/2 .. 1/32 of the input size, finest first) and whose
        ``stages()`` returns the five stage modules (for dilation).
    channels
        Channels of the five stage outputs.
    """

    build: Callable[[int], StagedEncoder]
    channels: tuple[int, int, int, int, int]


ENCODERS: dict[str, EncoderSpec] = {
    "resnet34": EncoderSpec(ResNet34Encoder, ResNet34Encoder.channels),
    "resnet50": EncoderSpec(ResNet50Encoder, ResNet50Encoder.channels),
    "mobilenet_v2": EncoderSpec(MobileNetV2Backbone, MobileNetV2Backbone.channels),
}
"""The encoders, by smp's ``encoder_name``."""


# -- decoder -----------------------------------------------------------------------------------


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
                 rates: Sequence[int], *, output_stride: int, separable: bool,
                 dropout: float) -> None:
        super().__init__()
        self.aspp = nn.Sequential(
            ASPP(deep_channels, out_channels, rates, separable=separable, dropout=dropout),
            SeparableConv2d(out_channels, out_channels), *_bn_relu(out_channels))
        self.up = nn.Upsample(scale_factor=output_stride // 4, mode="bilinear",
                              align_corners=True)
        self.block1 = nn.Sequential(nn.Conv2d(low_channels, _LOW_LEVEL_CHANNELS, 1, bias=False),
                                    *_bn_relu(_LOW_LEVEL_CHANNELS))
        self.block2 = nn.Sequential(
            SeparableConv2d(_LOW_LEVEL_CHANNELS + out_channels, out_channels),
            *_bn_relu(out_channels))

    def forward(self, low: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        fused = torch.cat([self.up(self.aspp(deep)), self.block1(low)], dim=1)
        return self.block2(fused)


# -- network -----------------------------------------------------------------------------------


class DeepLabV3Plus(nn.Module):
    """smp 0.3.2's DeepLabV3+; logits (N, n_classes, H / 4 * upsampling, W / 4 * upsampling).

    Parameters
    ----------
    in_channels
        Input bands.
    n_classes
        Output channels (logits, no activation).
    encoder
        smp's ``encoder_name``: one of :data:`ENCODERS` (``"resnet34"``, ``"resnet50"``,
        ``"mobilenet_v2"``).
    upsampling
        Final bilinear upsampling of the logits: 4 (smp's default) gives logits at the input
        size, 1 (SEnSeI-v2) at 1/4 of it.
    encoder_output_stride
        16 (smp's default) or 8: the encoder's last stage (and at 8 also the one before) is
        dilated instead of strided.
    atrous_rates
        Dilation rates of the three ASPP 3x3 branches: smp's (12, 24, 36) by default, the
        paper's (6, 12, 18) for output stride 16 as an alternative.
    decoder_channels
        Width of the ASPP and the decoder (256).
    aspp_dropout
        Dropout after the ASPP projection (training only; 0.5).
    aspp_separable
        Depthwise-separable ASPP branches (smp's DeepLabV3+) or plain 3x3 ones.

    Notes
    -----
    Height and width must be multiples of ``encoder_output_stride``. Initialisation follows
    smp 0.3.2 with ``encoder_weights=None``: torchvision's encoder initialisation (He-normal,
    fan-out convolutions), except that a first convolution for other than 3 bands gets
    torch's default (smp's ``patch_first_conv`` resets it); torch's defaults in the decoder
    and head (smp 0.3.2's DeepLabV3+ never calls its ``initialize``); unit batch norms.
    """

    def __init__(self, in_channels: int, n_classes: int, *, encoder: str = "resnet34",
                 upsampling: int = 4, encoder_output_stride: int = 16,
                 atrous_rates: Sequence[int] = (12, 24, 36), decoder_channels: int = 256,
                 aspp_dropout: float = 0.5, aspp_separable: bool = True) -> None:
        super().__init__()
        if in_channels < 1 or n_classes < 1 or decoder_channels < 1 or upsampling < 1:
            raise ValueError("in_channels, n_classes, decoder_channels and upsampling must be "
                             f">= 1, got {in_channels}, {n_classes}, {decoder_channels} and "
                             f"{upsampling}")
        if encoder not in ENCODERS:
            raise ValueError(f"unknown DeepLabV3+ encoder={encoder!r}; encoders: "
                             f"{', '.join(ENCODERS)}")
        if encoder_output_stride not in _OUTPUT_STRIDES:
            raise ValueError(f"encoder_output_stride must be 8 or 16, got "
                             f"{encoder_output_stride}")
        spec = ENCODERS[encoder]
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.encoder_name = encoder
        self.upsampling = upsampling
        self.output_stride = encoder_output_stride
        self.encoder = spec.build(in_channels)
        stages = self.encoder.stages()
        for stage, rate in _DILATED_STAGES[encoder_output_stride]:
            replace_strides_with_dilation(stages[stage - 1], rate)
        self.decoder = DeepLabV3PlusDecoder(
            spec.channels[1], spec.channels[-1], decoder_channels, tuple(atrous_rates),
            output_stride=encoder_output_stride, separable=aspp_separable, dropout=aspp_dropout)
        self.segmentation_head = nn.Sequential(
            nn.Conv2d(decoder_channels, n_classes, 1),
            nn.Upsample(scale_factor=upsampling, mode="bilinear", align_corners=True)
            if upsampling > 1 else nn.Identity(),
            nn.Identity())
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise every weight (see Notes)."""
        first_conv = None
        for module in self.encoder.modules():
            if isinstance(module, nn.Conv2d):
                first_conv = module if first_conv is None else first_conv
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if first_conv is not None and self.in_channels != 3:
            first_conv.reset_parameters()
        for module in (*self.decoder.modules(), *self.segmentation_head.modules()):
            if isinstance(module, nn.Conv2d):
                module.reset_parameters()
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, n_classes, H / 4 * upsampling, W / 4 * upsampling) of (N, C, H, W)."""
        self._check_input(x)
        features = self.encoder(x)
        return self.segmentation_head(self.decoder(features[1], features[-1]))

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (N, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        height, width = x.shape[2:]
        stride = self.output_stride
        if height % stride or width % stride:
            raise ValueError(f"height and width must be multiples of {stride}, got {height} x "
                             f"{width}: pad to {-(-height // stride) * stride} x "
                             f"{-(-width // stride) * stride}")

    def n_parameters(self) -> int:
        """Number of parameters (batch-norm statistics not counted)."""
        return sum(p.numel() for p in self.parameters())
