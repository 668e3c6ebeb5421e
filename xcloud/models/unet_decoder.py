"""segmentation_models_pytorch's U-Net decoder, shared by the U-Nets of several encoders.

smp's ``UnetDecoder`` without centre block or attention: per block, nearest upsampling x2,
concatenation with the encoder's skip feature (when there is one left), and two 3x3
convolution - batch norm - ReLU layers (``Conv2dReLU``, convolutions without bias). The
``state_dict`` keys are smp's (``blocks.{i}.conv1.0.weight``, ``blocks.{i}.conv1.1.running_mean``,
...), so the U-Nets that use it load smp checkpoints as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DecoderBlock", "UnetDecoder", "conv_bn_relu"]


def conv_bn_relu(in_channels: int, out_channels: int, *, bn_eps: float = 1e-5) -> nn.Sequential:
    """smp's ``Conv2dReLU``: 3x3 convolution without bias, batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels, eps=bn_eps),
        nn.ReLU(inplace=True),
    )


class DecoderBlock(nn.Module):
    """Upsample x2 (nearest), concatenate the skip (if any), two 3x3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, *,
                 bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(in_channels + skip_channels, out_channels, bn_eps=bn_eps)
        self.conv2 = conv_bn_relu(out_channels, out_channels, bn_eps=bn_eps)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """Upsample by 2, join the skip connection, then two convolutions."""
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UnetDecoder(nn.Module):
    """The decoder blocks over an encoder's features (shallowest first, deepest last).

    Parameters
    ----------
    skip_channels
        Channels of the skip features, deepest first (the encoder's features but the last,
        reversed); blocks past them get no skip.
    head_channels
        Channels of the deepest feature, the first block's input.
    channels
        Output channels of each block (smp's ``decoder_channels``).
    bn_eps
        Batch-norm epsilon.
    """

    def __init__(self, skip_channels: Sequence[int], head_channels: int,
                 channels: Sequence[int], *, bn_eps: float = 1e-5) -> None:
        super().__init__()
        inputs = [head_channels, *channels[:-1]]
        skips = [*skip_channels, *([0] * (len(channels) - len(skip_channels)))]
        self.blocks = nn.ModuleList(
            DecoderBlock(i, s, o, bn_eps=bn_eps)
            for i, s, o in zip(inputs, skips, channels, strict=True))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The last block's output, from the encoder's features (shallowest first)."""
        x, skips = features[-1], features[-2::-1]
        for index, block in enumerate(self.blocks):
            x = block(x, skips[index] if index < len(skips) else None)
        return x
