"""The SEnSeI-v2 network as released (aliFrancis/SEnSeIv2, commit eba151dc): encoder and heads.

SEnSeI-v2 (Francis 2024, IEEE TGRS 62) turns an image with any number of bands, each with a
**descriptor** dict saying what it is, into a fixed-size embedding that a segmentation head
classifies. This module computes what the authors' released code computes (their published
weights were trained with it; where it differs from the paper, the code wins), with the
released state-dict keys (``senseiv2.*``, ``segmenter.*``, ``recovery_module.*``), so a
published ``weights.pt`` loads as is.

Descriptors (:func:`descriptor_vector`)
---------------------------------------
A dict ``{"band_type": ..., "min_wavelength": nm, "max_wavelength": nm}`` becomes
``final_size`` values (74 for ``N_embeddings`` N = 32):

==========  ======================================================================
slots       content
==========  ======================================================================
0..N-1      ``sin``/``cos`` (even/odd i) of ``min_wavelength / 10000 ** (2 i / N)``
N..2N-1     the same of ``max_wavelength`` (nm, no log, no offset)
2N          1 for ``"TOA Reflectance"`` and ``"TOA Normalised Brightness Temperature"``
2N+1        1 for SAR (``"SAR VV"``: slots 0..N-1 are 1; ``"SAR VH"``: N..2N-1;
            ``"SAR Angle"``: 0..2N-1)
2N+2        1 for ``"DEM"``
2N+3        1 for ``"TOA Normalised Brightness Temperature"``
last        1 when the dict says ``"multitemporal": True`` (spectral bands only)
==========  ======================================================================

``"fill"`` is all zeros. The encoding is computed in float64 and rounded to float32.

Blocks (the ``blocks`` list of a sensei config, in order)
---------------------------------------------------------
``GLOBAL_STATS``
    appends each band's percentiles over its pixels (``torch.quantile`` semantics: linear
    interpolation, every pixel counts) to its descriptor.
``FCL``
    per layer LayerNorm -> ReLU -> Linear; with ``skips: true`` each layer's output is
    **doubled** (the released skip adds the Identity placeholder's output to its own input:
    ``2 * Linear(ReLU(LayerNorm(x)))``, not a residual ``x + f(x)``).
``ATTENTION``
    ``num_transformerencoders`` post-norm transformer-encoder layers (ReLU feed-forward
    ``intermediate_size``, dropout, LayerNorm eps 1e-5), keys of
    ``nn.TransformerEncoderLayer``. The released block feeds (batch, bands, features) to a
    ``batch_first=False`` layer, so its sequence axis is the **batch**: a band attends to the
    same band of the other images of the batch, never to the other bands, and its ``skips``
    has no effect. Run one image at a time (the released inference default, batch size 1)
    the attention is over one element (softmax = 1) and the layer is a per-band map:
    ``out_proj(v_proj(x))`` then the residuals and norms. That is what this module computes,
    for every image on its own, so a result never depends on the other images of a batch.
    (With two images per batch the released code changes the probabilities by up to 0.12
    with the SegFormer fixture and 0.79 with the DeepLab one; see docs/models/sensei-v2.md.)
``BAND_EMBEDDING``
    three FCL heads (``head_layer_sizes`` + ``[embedding_dims]``, ``skips_heads``) give per
    band gain ``a``, frequency ``w`` and phase ``f``; the embedding is
    ``E = sum over bands of a * sin(w * (x + f))`` (a sum, not a mean), then
    ``BatchNorm2d(embedding_dims, momentum=0.05)`` when ``normalize``.

The recovery module (:class:`RecoveryModule`, keys ``recovery_module.*``) estimates every band
from the embedding (subsampled by ``sampling_rate``) and the band's processed descriptor; it is
a training regulariser and never runs at inference. As released, its post-concatenation
convolutions take their widths from ``preconcatenation_layer_sizes``
(``postconcatenation_layer_sizes`` is ignored).

Heads (:func:`build_head`): SegFormer (:mod:`xcloud.models.segformer`, logits at 1/4
resolution) or DeepLabv3+ (:mod:`xcloud.models.deeplabv3plus`, smp 0.3.2 layout, upsampling 1;
encoders ``resnet34``, ``resnet50``, ``mobilenet_v2``); :class:`SEnSeIv2` upsamples the logits
bilinearly (``align_corners=False``) to the input size. :class:`BaselineNetwork` is the
released ``FullModel`` without SEnSeI-v2 (the authors' comparison models): the bands go
straight into the head.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BandError

__all__ = [
    "BAND_TYPES",
    "DEFAULT_SENSEI_CONFIG",
    "AttentionBlock",
    "BandEmbedding",
    "BandwiseTransformerLayer",
    "BaselineNetwork",
    "FCLBlock",
    "GlobalStats",
    "HeadSpec",
    "RecoveryModule",
    "SEnSeIv2",
    "SEnSeIv2Encoder",
    "build_head",
    "check_sensei_config",
    "descriptor_vector",
    "descriptor_vectors",
    "released_quantiles",
    "segment_logits",
    "wavelength_encoding",
]

BAND_TYPES = ("TOA Reflectance", "TOA Normalised Brightness Temperature", "SAR VV", "SAR VH",
              "SAR Angle", "DEM", "fill")
"""The ``band_type`` values the released SEnSeI-v2 descriptors know."""

_SPECTRAL = BAND_TYPES[:2]

DEFAULT_SENSEI_CONFIG: dict[str, Any] = {
    "descriptors": {"style": "SEnSeIv2", "N_embeddings": 32, "final_size": 74},
    "blocks": [
        {"type": "GLOBAL_STATS", "percentiles": [0.01, 0.1, 0.5, 0.9, 0.99]},
        {"type": "FCL", "layer_sizes": [128, 128, 128], "skips": True},
        {"type": "ATTENTION", "num_transformerencoders": 2, "num_heads": 4, "dims_per_head": 32,
         "intermediate_size": 256, "dropout": 0.2, "skips": True},
        {"type": "BAND_EMBEDDING", "embedding_dims": 32, "head_layer_sizes": [64],
         "skips_heads": True, "normalize": True},
    ],
}
"""The sensei config of the paper and the fixtures (``senseiv2-test.yaml``): 341,118
parameters; with SegFormer-B2 27,784,069."""


# -- descriptors -----------------------------------------------------------------------------

def wavelength_encoding(wavelength: float, n: int) -> np.ndarray:
    """``n`` float64 values: ``sin`` (even ``i``) / ``cos`` (odd ``i``) of
    ``wavelength / 10000 ** (2 i / n)`` (wavelength in nm), as the released code."""
    angles = np.array([wavelength / np.power(10000, 2 * i / n) for i in range(n)])
    angles[0::2] = np.sin(angles[0::2])
    angles[1::2] = np.cos(angles[1::2])
    return angles


def _wavelength(descriptor: Mapping[str, Any], key: str) -> float:
    value = descriptor.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise BandError(f"band descriptor {dict(descriptor)} needs a number {key!r} (nm)")
    return float(value)


def descriptor_vector(descriptor: Mapping[str, Any], *, n_embeddings: int = 32,
                      size: int = 74) -> np.ndarray:
    """The (``size``,) float32 vector of one descriptor dict (see the module docstring).

    Raises
    ------
    BandError
        Unknown ``band_type`` or missing wavelengths.
    """
    if not isinstance(descriptor, Mapping) or "band_type" not in descriptor:
        raise BandError(f"a band descriptor is a dict with 'band_type' (one of "
                        f"{', '.join(BAND_TYPES)}), got {descriptor!r}")
    kind = descriptor["band_type"]
    out = np.zeros(size, np.float32)
    n = n_embeddings
    if kind in _SPECTRAL:
        low, high = _wavelength(descriptor, "min_wavelength"), _wavelength(descriptor,
                                                                            "max_wavelength")
        out[:n] = wavelength_encoding(low, n)
        out[n:2 * n] = wavelength_encoding(high, n)
        out[2 * n] = 1.0
        if kind == _SPECTRAL[1]:
            out[2 * n + 3] = 1.0
        if descriptor.get("multitemporal", False):
            out[-1] = 1.0
    elif isinstance(kind, str) and "SAR" in kind:
        out[2 * n + 1] = 1.0
        if "VV" in kind:
            out[:n] = 1.0
        elif "VH" in kind:
            out[n:2 * n] = 1.0
        elif "Angle" in kind:
            out[:2 * n] = 1.0
    elif isinstance(kind, str) and "DEM" in kind:
        out[2 * n + 2] = 1.0
    elif kind != "fill":
        raise BandError(f"unknown band_type {kind!r}; SEnSeI-v2 knows {', '.join(BAND_TYPES)} "
                        "(note the British spelling 'Normalised')")
    return out


def descriptor_vectors(descriptors: Sequence[Mapping[str, Any]], *, n_embeddings: int = 32,
                       size: int = 74) -> np.ndarray:
    """(len(descriptors), ``size``) float32: :func:`descriptor_vector` of each dict."""
    return np.stack([descriptor_vector(d, n_embeddings=n_embeddings, size=size)
                     for d in descriptors]) if len(descriptors) else np.zeros((0, size),
                                                                              np.float32)


# -- blocks ----------------------------------------------------------------------------------

def released_quantiles(values: torch.Tensor, q: Sequence[float]) -> torch.Tensor:
    """Quantiles (..., len(q)) over the last axis of ``values``, as ``torch.quantile`` computes
    them (sort, rank ``q (n - 1)`` in the input's dtype, ``lerp`` of the neighbours), without
    its input-size limit. Differentiable."""
    ordered = torch.sort(values, dim=-1).values
    ranks = torch.tensor(list(q), dtype=torch.float32, device=values.device).to(values.dtype)
    ranks = ranks * (values.shape[-1] - 1)
    below = ranks.long()
    above = ranks.ceil().long()
    weights = (ranks - below.to(values.dtype)).expand(*values.shape[:-1], len(q))
    index = below.expand(*values.shape[:-1], len(q))
    low = ordered.gather(-1, index)
    high = ordered.gather(-1, above.expand(*values.shape[:-1], len(q)))
    return torch.lerp(low, high, weights)


class GlobalStats(nn.Module):
    """``GLOBAL_STATS``: each band's percentiles (fractions, e.g. 0.01) appended to its
    descriptor."""

    def __init__(self, config: Mapping[str, Any], input_size: int) -> None:
        super().__init__()
        self.percentiles = tuple(float(p) for p in config["percentiles"])
        self.output_size = input_size + len(self.percentiles)

    def forward(self, bands: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Features (N, B, D + P) of ``bands`` (N, B, H, W) and ``features`` (N, B, D)."""
        stats = released_quantiles(bands.flatten(2), self.percentiles)
        return torch.cat([features, stats.to(features.dtype)], dim=2)


class FCLBlock(nn.Module):
    """``FCL``: LayerNorm -> ReLU -> Linear per layer, doubled with ``skips`` (as released).

    ``layers`` is laid out as released (an ``Identity`` after each Linear with ``skips``), so
    the keys are ``layers.0`` (LayerNorm), ``layers.2`` (Linear), ``layers.4``...
    """

    def __init__(self, config: Mapping[str, Any], input_size: int) -> None:
        super().__init__()
        self.layer_sizes = [int(s) for s in config["layer_sizes"]]
        self.skips = bool(config.get("skips", False))
        layers: list[nn.Module] = []
        for width_in, width_out in zip([input_size, *self.layer_sizes[:-1]], self.layer_sizes,
                                       strict=True):
            linear = nn.Linear(width_in, width_out)
            nn.init.kaiming_uniform_(linear.weight)
            nn.init.constant_(linear.bias, 0.01)
            layers += [nn.LayerNorm(width_in), nn.ReLU(), linear]
            if self.skips:
                layers.append(nn.Identity())
        self.layers = nn.ModuleList(layers)
        self.output_size = self.layer_sizes[-1]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(..., input_size) -> (..., layer_sizes[-1])."""
        for layer in self.layers:
            # the released "skip" adds the Identity placeholder's output to its input: 2x
            features = features + features if isinstance(layer, nn.Identity) else layer(features)
        return features


class _SingleTokenAttention(nn.Module):
    """``nn.MultiheadAttention``'s parameters, computing self-attention over one element.

    With one element the attention weight is 1 (in training, dropped out per head as the
    released layer drops attention weights), so the output is ``out_proj(v_proj(x))``.
    """

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.width, self.heads, self.dropout = width, heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value = F.linear(x, self.in_proj_weight[2 * self.width:],
                         self.in_proj_bias[2 * self.width:])
        if self.training and self.dropout > 0:
            keep = F.dropout(value.new_ones(*value.shape[:-1], self.heads, 1), self.dropout)
            value = (value.unflatten(-1, (self.heads, -1)) * keep).flatten(-2)
        return self.out_proj(value)


class BandwiseTransformerLayer(nn.Module):
    """``nn.TransformerEncoderLayer`` (post-norm, ReLU) applied to each band on its own.

    Same parameters and keys (``self_attn.in_proj_weight``, ``linear1``, ``norm1``...) and the
    same result as the released layer run on one image (sequence length 1).
    """

    def __init__(self, width: int, heads: int, feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = _SingleTokenAttention(width, heads, dropout)
        self.linear1 = nn.Linear(width, feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(feedforward, width)
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., width) -> (..., width)."""
        x = self.norm1(x + self.dropout1(self.self_attn(x)))
        return self.norm2(x + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x))))))


class AttentionBlock(nn.Module):
    """``ATTENTION``: :class:`BandwiseTransformerLayer` s (``skips`` has no effect, as
    released)."""

    def __init__(self, config: Mapping[str, Any], input_size: int) -> None:
        super().__init__()
        heads, per_head = int(config["num_heads"]), int(config["dims_per_head"])
        width = heads * per_head
        if input_size != width:
            raise ValueError(f"ATTENTION block: the input width {input_size} must equal "
                             f"num_heads * dims_per_head = {width}")
        self.layers = nn.ModuleList(
            BandwiseTransformerLayer(width, heads, int(config["intermediate_size"]),
                                     float(config["dropout"]))
            for _ in range(int(config["num_transformerencoders"])))
        self.output_size = width

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, B, width) -> (N, B, width)."""
        for layer in self.layers:
            features = layer(features)
        return features


class BandEmbedding(nn.Module):
    """``BAND_EMBEDDING``: ``sum_b gain_b * sin(frequency_b * (x_b + phase_b))``, batch norm."""

    def __init__(self, config: Mapping[str, Any], input_size: int) -> None:
        super().__init__()
        self.embedding_dims = int(config["embedding_dims"])
        heads = {"layer_sizes": [*config["head_layer_sizes"], self.embedding_dims],
                 "skips": config.get("skips_heads", False)}
        self.frequency_head = FCLBlock(heads, input_size)
        self.phase_offset_head = FCLBlock(heads, input_size)
        self.gain_head = FCLBlock(heads, input_size)
        self.normalize = bool(config.get("normalize", False))
        if self.normalize:
            self.norm = nn.BatchNorm2d(self.embedding_dims, momentum=0.05)
        self.output_size = self.embedding_dims

    def forward(self, bands: torch.Tensor, features: torch.Tensor,
                band_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Embedding (N, C, H, W) of ``bands`` (N, B, H, W); ``band_mask`` (N, B) leaves the
        bands where it is False out of the sum."""
        frequency, phase, gain = (head(features)[..., None, None] for head in (
            self.frequency_head, self.phase_offset_head, self.gain_head))
        if band_mask is not None:
            gain = gain * band_mask[:, :, None, None, None].to(gain.dtype)
        embedding = bands.new_zeros((bands.shape[0], self.embedding_dims, *bands.shape[2:]))
        for b in range(bands.shape[1]):  # one band at a time: memory (N, C, H, W)
            embedding = embedding + gain[:, b] * torch.sin(
                frequency[:, b] * (bands[:, b, None] + phase[:, b]))
        return self.norm(embedding) if self.normalize else embedding


_BLOCKS = {"GLOBAL_STATS": GlobalStats, "FCL": FCLBlock, "ATTENTION": AttentionBlock,
           "BAND_EMBEDDING": BandEmbedding}


def check_sensei_config(config: Mapping[str, Any], *, source: object = "sensei config"
                        ) -> dict[str, Any]:
    """A validated deep copy of a sensei config (``descriptors`` + ``blocks``).

    Raises
    ------
    ValueError
        A style, block type or field xcloud does not implement, or the last block is not
        ``BAND_EMBEDDING``.
    """
    try:
        config = copy.deepcopy(dict(config))
        descriptors = dict(config["descriptors"])
        blocks = [dict(b) for b in config["blocks"]]
        style = descriptors.get("style")
        problems = [(style != "SEnSeIv2", f"descriptor style {style!r} (only 'SEnSeIv2')")]
        n, size = int(descriptors["N_embeddings"]), int(descriptors["final_size"])
        problems.append((size < 2 * n + 5, f"final_size {size} < 2 * N_embeddings + 5"))
        kinds = [b.get("type") for b in blocks]
        problems += [(k not in _BLOCKS, f"block type {k!r} (known: {', '.join(_BLOCKS)})")
                     for k in kinds]
        problems.append((not kinds or kinds[-1] != "BAND_EMBEDDING",
                         "the last block must be BAND_EMBEDDING"))
        problems.append((kinds.count("BAND_EMBEDDING") > 1, "more than one BAND_EMBEDDING"))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{source} is not a SEnSeI-v2 config ({error!r}): it needs "
                         "'descriptors' (style, N_embeddings, final_size) and 'blocks'"
                         ) from None
    found = [text for bad, text in problems if bad]
    if found:
        raise ValueError(f"{source} is not a SEnSeI-v2 config xcloud implements: "
                         f"{'; '.join(found)}")
    return {"descriptors": descriptors, "blocks": blocks}


class SEnSeIv2Encoder(nn.Module):
    """The released ``SEnSeIv2`` module: bands + descriptors -> embedding (N, C, H, W).

    Parameters
    ----------
    config
        A sensei config (the ``sensei-configs/<v>.yaml`` dict; default
        :data:`DEFAULT_SENSEI_CONFIG`).

    Notes
    -----
    Keys are ``blocks.<i>.*`` as released; the descriptor vectoriser has no parameters.
    Every image is processed on its own (see the module docstring on ``ATTENTION``).
    """

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.config = check_sensei_config(DEFAULT_SENSEI_CONFIG if config is None else config)
        self.n_embeddings = int(self.config["descriptors"]["N_embeddings"])
        self.descriptor_size = int(self.config["descriptors"]["final_size"])
        blocks, width = [], self.descriptor_size
        for spec in self.config["blocks"]:
            block = _BLOCKS[spec["type"]](spec, width)
            width = int(block.output_size)  # type: ignore[arg-type]
            blocks.append(block)
        self.blocks = nn.ModuleList(blocks)
        self.embedding_dims = width
        self.feature_size: int = next(
            (int(b.frequency_head.layers[2].in_features) for b in blocks  # type: ignore[arg-type]
             if isinstance(b, BandEmbedding)), self.descriptor_size)

    def describe(self, descriptors: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """(1, B, final_size) float32 descriptor vectors of descriptor dicts."""
        vectors = descriptor_vectors(descriptors, n_embeddings=self.n_embeddings,
                                     size=self.descriptor_size)
        return torch.from_numpy(vectors)[None]

    def forward(self, bands: torch.Tensor, descriptors: torch.Tensor | Sequence[Mapping], *,
                band_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embedding (N, C, H, W), band features (N, B, F))``.

        Parameters
        ----------
        bands
            (N, B, H, W) values as the network was trained on (reflectance).
        descriptors
            (N or 1, B, final_size) vectors, or a list of B descriptor dicts.
        band_mask
            (N, B) bool: bands that are present (False: padding, left out of the embedding).
        """
        if not isinstance(descriptors, torch.Tensor):
            descriptors = self.describe(descriptors)
        features = descriptors.to(device=bands.device, dtype=bands.dtype)
        if features.ndim != 3 or features.shape[1:] != (bands.shape[1], self.descriptor_size):
            raise ValueError(f"descriptors must be (N or 1, {bands.shape[1]}, "
                             f"{self.descriptor_size}) for bands {tuple(bands.shape)}, "
                             f"got {tuple(features.shape)}")
        features = features.expand(bands.shape[0], -1, -1)
        for block in self.blocks:
            if isinstance(block, GlobalStats):
                features = block(bands, features)
            elif isinstance(block, BandEmbedding):
                return block(bands, features, band_mask), features
            else:
                features = block(features)
        raise AssertionError("unreachable: check_sensei_config requires BAND_EMBEDDING")


class RecoveryModule(nn.Module):
    """The released recovery module (training only): each band estimated from the embedding
    and its processed descriptor features, at every ``sampling_rate``-th pixel.

    Keys ``preconcatenation_layers.{1,3..}`` (ReLU, Linear) and
    ``postconcatenation_layers.{1,3..}`` (ReLU, 1x1 convolution; widths from
    ``preconcatenation_layer_sizes``, as released; last to one value).
    """

    def __init__(self, config: Mapping[str, Any], feature_size: int,
                 embedding_dims: int) -> None:
        super().__init__()
        sizes = [int(s) for s in config["preconcatenation_layer_sizes"]]
        self.config = dict(config)
        self.sampling_rate = int(config["sampling_rate"])
        pre: list[nn.Module] = []
        for width_in, width_out in zip([feature_size, *sizes[:-1]], sizes, strict=True):
            pre += [nn.ReLU(), nn.Linear(width_in, width_out)]
        self.preconcatenation_layers = nn.Sequential(*pre)
        post: list[nn.Module] = []
        concatenated = embedding_dims + (sizes[-1] if sizes else feature_size)
        for width_in, width_out in zip([concatenated, *sizes[:-1]], sizes, strict=True):
            post += [nn.ReLU(), nn.Conv2d(width_in, width_out, 1)]
        post += [nn.ReLU(), nn.Conv2d(sizes[-1] if sizes else concatenated, 1, 1)]
        self.postconcatenation_layers = nn.Sequential(*post)

    def forward(self, embedding: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Band estimates (N, B, h, w) at every ``sampling_rate``-th pixel."""
        features = self.preconcatenation_layers(features)
        embedding = embedding[:, :, ::self.sampling_rate, ::self.sampling_rate]
        estimates = []
        for b in range(features.shape[1]):
            tiled = features[:, b, :, None, None].expand(-1, -1, *embedding.shape[2:])
            estimates.append(self.postconcatenation_layers(torch.cat([embedding, tiled], 1)))
        return torch.cat(estimates, dim=1)

    def loss(self, embedding: torch.Tensor, features: torch.Tensor, bands: torch.Tensor,
             band_mask: torch.Tensor | None = None) -> torch.Tensor:
        """MSE of :meth:`forward` against ``bands`` sampled alike (the released
        ``MSELoss``), over the bands ``band_mask`` keeps."""
        estimate = self(embedding, features)
        target = bands[:, :, ::self.sampling_rate, ::self.sampling_rate]
        if band_mask is None:
            return F.mse_loss(estimate, target)
        keep = band_mask[:, :, None, None].expand_as(target)
        return (estimate - target)[keep].square().mean()


# -- heads and the full network --------------------------------------------------------------

_DEEPLAB_MULTIPLE = 16

@dataclass(frozen=True)
class HeadSpec:
    """A segmentation head: ``kind`` ``"segformer"`` (``config``: a
    :class:`~xcloud.models.segformer.SegformerConfig` dict) or ``"deeplab"`` (``encoder``:
    an smp encoder name such as ``"resnet34"`` or ``"mobilenet_v2"``)."""

    kind: str
    config: dict[str, Any] = field(default_factory=dict)
    encoder: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"kind": self.kind, "config": dict(self.config), "encoder": self.encoder}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeadSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(str(data["kind"]), dict(data.get("config") or {}), str(data.get("encoder",
                                                                                   "")))


def build_head(spec: HeadSpec, channels: int, n_classes: int) -> nn.Module:
    """The head of ``spec`` taking ``channels`` inputs, giving ``n_classes`` logits."""
    if spec.kind == "segformer":
        from .segformer import SegformerConfig, SegformerForSemanticSegmentation

        config = SegformerConfig.from_dict({**spec.config, "num_channels": channels,
                                            "num_labels": n_classes})
        return SegformerForSemanticSegmentation(config)
    if spec.kind == "deeplab":
        from . import deeplabv3plus

        return deeplabv3plus.DeepLabV3Plus(channels, n_classes, encoder=spec.encoder or
                                           "resnet34", upsampling=1)
    raise ValueError(f"unknown SEnSeI-v2 head kind {spec.kind!r}: 'segformer' or 'deeplab'")


def segment_logits(segmenter: nn.Module, kind: str, x: torch.Tensor) -> torch.Tensor:
    """Logits (N, n_classes, H, W) of a head of ``kind`` on ``x`` (N, C, H, W), as the
    released ``FullModel``: the head's logits, upsampled bilinearly (``align_corners=False``)
    when smaller. DeepLabv3+ needs sizes that are multiples of 16: other sizes are
    reflect-padded at the bottom and right (the released code refuses them) and the logits
    cropped back."""
    height, width = x.shape[-2:]
    padded = x
    if kind == "deeplab":  # smp needs multiples of its output stride
        pad_h, pad_w = (-height) % _DEEPLAB_MULTIPLE, (-width) % _DEEPLAB_MULTIPLE
        if pad_h or pad_w:
            padded = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
    logits = segmenter(padded)
    if logits.shape[-2:] != padded.shape[-2:]:
        logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear",
                               align_corners=False)
    return logits[..., :height, :width]


class BaselineNetwork(nn.Module):
    """The released ``FullModel`` without SEnSeI-v2 (``senseiv2=None``): the authors'
    comparison models, whose config has ``NUM_CHANNELS`` instead of ``SEnSeIv2``.

    The bands go straight into the head (``segmenter.*`` keys, as released); logits
    (N, n_classes, H, W) at the input size (:func:`segment_logits`; softmax them for the
    released output).

    Parameters
    ----------
    head
        The :class:`HeadSpec`.
    in_channels
        ``NUM_CHANNELS``: the bands, in the order the network was trained on.
    n_classes
        Output channels (``CLASSES``).
    """

    def __init__(self, head: HeadSpec, in_channels: int, *, n_classes: int = 4) -> None:
        super().__init__()
        if in_channels < 1 or n_classes < 1:
            raise ValueError(f"in_channels and n_classes must be >= 1, got {in_channels} and "
                             f"{n_classes}")
        self.head_spec = head
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.segmenter = build_head(head, in_channels, n_classes)

    def forward(self, bands: torch.Tensor) -> torch.Tensor:
        """Logits (N, n_classes, H, W) of bands (N, in_channels, H, W)."""
        if bands.ndim != 4 or bands.shape[1] != self.in_channels:
            raise ValueError(f"expected bands (N, {self.in_channels}, H, W), got "
                             f"{tuple(bands.shape)}")
        return segment_logits(self.segmenter, self.head_spec.kind, bands)


class SEnSeIv2(nn.Module):
    """SEnSeI-v2 with a segmentation head, as the released ``FullModel``: logits (N, n_classes,
    H, W) at the input size (softmax them for the released output).

    Parameters
    ----------
    sensei_config
        The encoder's config (:data:`DEFAULT_SENSEI_CONFIG` when None).
    head
        The :class:`HeadSpec`.
    n_classes
        Output channels (7: land, water, snow, thin, thick, shadow, no data).
    recovery
        A recovery-module config (``preconcatenation_layer_sizes``, ``sampling_rate``) to
        train with; None for none.
    """

    def __init__(self, sensei_config: Mapping[str, Any] | None, head: HeadSpec, *,
                 n_classes: int = 7, recovery: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.senseiv2 = SEnSeIv2Encoder(sensei_config)
        self.head_spec = head
        self.n_classes = n_classes
        self.segmenter = build_head(head, self.senseiv2.embedding_dims, n_classes)
        self.recovery_module = None if recovery is None else RecoveryModule(
            recovery, self.senseiv2.feature_size, self.senseiv2.embedding_dims)

    def segment(self, embedding: torch.Tensor) -> torch.Tensor:
        """Logits (N, n_classes, H, W) of an embedding (:func:`segment_logits`)."""
        return segment_logits(self.segmenter, self.head_spec.kind, embedding)

    def forward(self, bands: torch.Tensor, descriptors: torch.Tensor | Sequence[Mapping], *,
                band_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (N, n_classes, H, W); see :meth:`SEnSeIv2Encoder.forward`."""
        return self.segment(self.senseiv2(bands, descriptors, band_mask=band_mask)[0])

    def forward_with_recovery(self, bands: torch.Tensor, descriptors: torch.Tensor, *,
                              band_mask: torch.Tensor | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, recovery MSE)`` for training (MSE 0 without a recovery module)."""
        embedding, features = self.senseiv2(bands, descriptors, band_mask=band_mask)
        logits = self.segment(embedding)
        if self.recovery_module is None:
            return logits, logits.new_zeros(())
        return logits, self.recovery_module.loss(embedding, features, bands, band_mask)

    def inference_state_keys(self) -> list[str]:
        """The state-dict keys inference needs (all but ``recovery_module.*``)."""
        return [k for k in self.state_dict() if not k.startswith("recovery_module.")]
