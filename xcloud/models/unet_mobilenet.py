"""U-Net with a MobileNetV2 encoder, in plain torch, laid out as segmentation_models_pytorch's.

The module and parameter names follow ``smp.Unet(encoder_name="mobilenet_v2")``: the encoder is
torchvision's ``MobileNetV2.features`` (``encoder.features.N...``; the classifier is dropped,
the first convolution takes ``in_channels`` bands), the decoder is smp's U-Net decoder
(``decoder.blocks.i.conv1/conv2``, each a 3x3 convolution, batch norm and ReLU; no attention,
no centre block; output channels ``decoder_channels``, smp's default 256, 128, 64, 32, 16) and
``segmentation_head.0`` a 3x3 convolution to the classes, without activation. State dicts of
such networks, as the published CloudSEN12 UNetMobV2 checkpoints are, load with
``strict=True``; :meth:`UnetMobileNetV2Config.from_state_dict` reads the construction
arguments off a state dict's shapes.

The decoder starts from the 1280-channel output at 1/32 and, five times, upsamples x2 (nearest),
concatenates the encoder output of that size (96 channels at 1/16, 32 at 1/8, 24 at 1/4, 16 at
1/2, none at full size) and applies its two convolutions. Height and width must be multiples
of 32.

With 13 bands and 4 classes the network has 6,632,260 parameters (288 per input band: the
first convolution's 32 3x3 kernels).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .unet_decoder import UnetDecoder

__all__ = ["DECODER_CHANNELS", "ENCODER_CHANNELS", "UnetMobileNetV2", "UnetMobileNetV2Config",
           "mobilenet_v2_features"]

DECODER_CHANNELS = (256, 128, 64, 32, 16)
"""Output channels of the five decoder blocks (smp's default)."""

ENCODER_CHANNELS = (16, 24, 32, 96, 1280)
"""Channels of the encoder outputs at 1/2, 1/4, 1/8, 1/16 and 1/32 of the input size."""

_STEM_CHANNELS = 32
# torchvision's inverted residual settings: expansion t, output channels c, repeats n, stride s
_INVERTED_RESIDUALS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
# ends of the slices of ``features`` whose outputs are ENCODER_CHANNELS (smp's stages)
_STAGE_ENDS = (2, 4, 7, 14, 19)
_MULTIPLE = 32


@dataclass(frozen=True)
class UnetMobileNetV2Config:
    """Input bands, output classes and decoder widths of a :class:`UnetMobileNetV2`."""

    in_channels: int
    n_classes: int
    decoder_channels: tuple[int, ...] = DECODER_CHANNELS

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.n_classes < 1:
            raise ValueError(f"in_channels and n_classes must be >= 1, got {self}")
        if len(self.decoder_channels) != len(ENCODER_CHANNELS) or min(
                self.decoder_channels) < 1:
            raise ValueError(f"decoder_channels must be {len(ENCODER_CHANNELS)} positive "
                             f"widths, got {self.decoder_channels}")

    @classmethod
    def from_state_dict(cls, tensors: Mapping[str, torch.Tensor]) -> UnetMobileNetV2Config:
        """The configuration whose network has the shapes of ``tensors`` (smp's names).

        ``in_channels`` from ``encoder.features.0.0.weight``, each decoder width from
        ``decoder.blocks.i.conv1.0.weight`` (else ``conv2``), ``n_classes`` from
        ``segmentation_head.0.weight``; what a state dict lacks keeps smp's default (4
        classes, 13 bands), so that loading it then names the missing keys.
        """
        def rows(name: str, axis: int = 0) -> int | None:
            tensor = tensors.get(name)
            if isinstance(tensor, torch.Tensor) and tensor.ndim == 4:
                return int(tensor.shape[axis])
            return None

        widths = []
        for index, default in enumerate(DECODER_CHANNELS):
            width = rows(f"decoder.blocks.{index}.conv1.0.weight")
            width = width or rows(f"decoder.blocks.{index}.conv2.0.weight")
            widths.append(width or default)
        return cls(in_channels=rows("encoder.features.0.0.weight", 1) or 13,
                   n_classes=rows("segmentation_head.0.weight") or 4,
                   decoder_channels=tuple(widths))


def _conv_bn_relu6(in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1,
                   groups: int = 1) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation``: convolution without bias, batch norm, ReLU6."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups,
                  bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class _InvertedResidual(nn.Module):
    """Expand (1x1, unless t = 1), depthwise 3x3, project (1x1, linear); residual if it fits."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = [_conv_bn_relu6(in_channels, hidden)] if expansion != 1 else []
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


def mobilenet_v2_features(in_channels: int) -> nn.Sequential:
    """torchvision's ``MobileNetV2(...).features`` (``0`` .. ``18``) taking ``in_channels`` bands.

    Output stride 32 and 1280 channels; the stages that smp's encoder returns end after
    features 1, 3, 6, 13 and 18.
    """
    layers: list[nn.Module] = [_conv_bn_relu6(in_channels, _STEM_CHANNELS, 3, 2)]
    channels = _STEM_CHANNELS
    for expansion, out_channels, repeats, stride in _INVERTED_RESIDUALS:
        for index in range(repeats):
            layers.append(_InvertedResidual(channels, out_channels, stride if index == 0 else 1,
                                            expansion))
            channels = out_channels
    layers.append(_conv_bn_relu6(channels, ENCODER_CHANNELS[-1]))
    return nn.Sequential(*layers)


class _MobileNetV2Encoder(nn.Module):
    """torchvision's MobileNetV2 features; returns the five stage outputs, finest first."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.features = mobilenet_v2_features(in_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs, start = [], 0
        for end in _STAGE_ENDS:
            x = self.features[start:end](x)
            outputs.append(x)
            start = end
        return outputs


class UnetMobileNetV2(nn.Module):
    """smp's ``Unet(encoder_name="mobilenet_v2")``; returns logits (N, n_classes, H, W).

    Parameters
    ----------
    in_channels
        Input bands (13 for CloudSEN12's L1C model).
    n_classes
        Output channels (4 for CloudSEN12: clear, thick cloud, thin cloud, cloud shadow).
    decoder_channels
        Output channels of the five decoder blocks (smp's ``decoder_channels``).

    Notes
    -----
    Height and width of the input must be multiples of 32. ``state_dict`` keys and shapes are
    those of ``segmentation_models_pytorch.Unet(encoder_name="mobilenet_v2",
    in_channels=in_channels, classes=n_classes, decoder_channels=decoder_channels)``.
    """

    def __init__(self, in_channels: int, n_classes: int = 4,
                 decoder_channels: tuple[int, ...] = DECODER_CHANNELS) -> None:
        super().__init__()
        self.config = UnetMobileNetV2Config(in_channels, n_classes, tuple(decoder_channels))
        self.encoder = _MobileNetV2Encoder(in_channels)
        self.decoder = UnetDecoder(tuple(reversed(ENCODER_CHANNELS[:-1])),
                                   ENCODER_CHANNELS[-1], self.config.decoder_channels)
        self.segmentation_head = nn.Sequential(
            nn.Conv2d(self.config.decoder_channels[-1], n_classes, 3, padding=1)
        )

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"UnetMobileNetV2 takes (N, {self.config.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        if x.shape[-2] % _MULTIPLE or x.shape[-1] % _MULTIPLE:
            raise ValueError(f"UnetMobileNetV2 needs height and width that are multiples of "
                             f"{_MULTIPLE}, got {tuple(x.shape[-2:])}; pad the input first")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, n_classes, H, W) of input (N, in_channels, H, W)."""
        self._check_input(x)
        return self.segmentation_head(self.decoder(self.encoder(x)))
