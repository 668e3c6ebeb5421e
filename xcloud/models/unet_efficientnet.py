"""U-Net with an EfficientNet encoder, in plain torch.

The layout (module and parameter names) follows ``segmentation_models_pytorch.Unet`` with an
``efficientnet-bX`` encoder (the encoder of ``efficientnet_pytorch``, with TensorFlow-style
"same" padding fixed at export time), so state dicts and ONNX initializers of such networks map
one to one onto this module. The network is fully convolutional: any batch size and any
height/width that is a multiple of 32 work.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .unet_decoder import UnetDecoder

__all__ = ["EfficientNetUNet", "EfficientNetUNetConfig", "MBConvConfig"]

_BN_EPS_ENCODER = 1e-3
_BN_MOMENTUM_ENCODER = 0.01
_BN_EPS_DECODER = 1e-5


@dataclass(frozen=True)
class MBConvConfig:
    """One mobile inverted bottleneck block of the encoder.

    ``pad`` is the fixed zero padding (begin, end) applied to height and width before the
    depthwise convolution, as exported by ``efficientnet_pytorch``.
    """

    in_channels: int
    out_channels: int
    expanded_channels: int
    se_channels: int
    kernel_size: int
    stride: int
    pad: tuple[int, int]


@dataclass(frozen=True)
class EfficientNetUNetConfig:
    """Everything needed to build the network; JSON serialisable via :meth:`to_dict`."""

    in_channels: int
    classes: int
    stem_channels: int
    stem_pad: tuple[int, int]
    blocks: tuple[MBConvConfig, ...]
    stage_ends: tuple[int, ...]
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a plain, JSON-serialisable dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EfficientNetUNetConfig:
        """Inverse of :meth:`to_dict`."""
        values = dict(data)
        values["blocks"] = tuple(
            MBConvConfig(**{**b, "pad": tuple(b["pad"])}) for b in values["blocks"]
        )
        values["stem_pad"] = tuple(values["stem_pad"])
        values["stage_ends"] = tuple(values["stage_ends"])
        values["decoder_channels"] = tuple(values["decoder_channels"])
        return cls(**values)


class _StaticPadConv2d(nn.Conv2d):
    """``nn.Conv2d`` preceded by a fixed asymmetric zero padding (TF "same" at export size)."""

    def __init__(self, *args: Any, pad: tuple[int, int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        begin, end = pad
        self._pad = (begin, end, begin, end)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self._pad))


def _encoder_bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS_ENCODER, momentum=_BN_MOMENTUM_ENCODER)


class _MBConvBlock(nn.Module):
    def __init__(self, cfg: MBConvConfig) -> None:
        super().__init__()
        self.cfg = cfg
        mid = cfg.expanded_channels
        if mid != cfg.in_channels:
            self._expand_conv = nn.Conv2d(cfg.in_channels, mid, 1, bias=False)
            self._bn0 = _encoder_bn(mid)
        self._depthwise_conv = _StaticPadConv2d(
            mid, mid, cfg.kernel_size, stride=cfg.stride, groups=mid, bias=False, pad=cfg.pad
        )
        self._bn1 = _encoder_bn(mid)
        self._se_reduce = nn.Conv2d(mid, cfg.se_channels, 1)
        self._se_expand = nn.Conv2d(cfg.se_channels, mid, 1)
        self._project_conv = nn.Conv2d(mid, cfg.out_channels, 1, bias=False)
        self._bn2 = _encoder_bn(cfg.out_channels)
        self.residual = cfg.stride == 1 and cfg.in_channels == cfg.out_channels

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.cfg.expanded_channels != self.cfg.in_channels:
            x = F.silu(self._bn0(self._expand_conv(x)))
        x = F.silu(self._bn1(self._depthwise_conv(x)))
        squeezed = F.adaptive_avg_pool2d(x, 1)
        squeezed = self._se_expand(F.silu(self._se_reduce(squeezed)))
        x = torch.sigmoid(squeezed) * x
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.residual else x


class _Encoder(nn.Module):
    def __init__(self, cfg: EfficientNetUNetConfig) -> None:
        super().__init__()
        self.stage_ends = cfg.stage_ends
        self._conv_stem = _StaticPadConv2d(
            cfg.in_channels, cfg.stem_channels, 3, stride=2, bias=False, pad=cfg.stem_pad
        )
        self._bn0 = _encoder_bn(cfg.stem_channels)
        self._blocks = nn.ModuleList(_MBConvBlock(b) for b in cfg.blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.silu(self._bn0(self._conv_stem(x)))
        features = [x]
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index + 1 in self.stage_ends:
                features.append(x)
        return features


class _Model(nn.Module):
    def __init__(self, cfg: EfficientNetUNetConfig) -> None:
        super().__init__()
        self.encoder = _Encoder(cfg)
        skip_channels = [cfg.blocks[end - 1].out_channels for end in cfg.stage_ends[:-1]]
        skip_channels = [*skip_channels[::-1], cfg.stem_channels]
        head = cfg.blocks[-1].out_channels
        self.decoder = UnetDecoder(skip_channels, head, cfg.decoder_channels,
                                   bn_eps=_BN_EPS_DECODER)
        self.segmentation_head = nn.Sequential(
            nn.Conv2d(cfg.decoder_channels[-1], cfg.classes, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmentation_head(self.decoder(self.encoder(x)))


class EfficientNetUNet(nn.Module):
    """U-Net (decoder channels 256..16) on an EfficientNet encoder; returns logits.

    Parameters are nested under ``model.`` as in the exported ukis-csmask graphs, so
    ``load_state_dict`` takes their initializers by name.
    """

    def __init__(self, config: EfficientNetUNetConfig) -> None:
        super().__init__()
        self.config = config
        self.model = _Model(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of a batch whose sides are multiples of 32."""
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(
                f"EfficientNetUNet needs height and width that are multiples of 32, got "
                f"{tuple(x.shape[-2:])}; pad the input first."
            )
        return self.model(x)
