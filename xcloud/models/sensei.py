"""SEnSeI-v2 (Francis 2024, IEEE TGRS 62): cloud masks from any set of bands, of any sensor.

SEnSeI-v2 turns an image with *any* number of bands, in any order, into a fixed-size embedding
that a segmentation head classifies. Each band comes with a **descriptor** saying what it is
(wavelengths, or SAR/DEM type); the bands are treated as a set, so the output does not depend
on their order.

Descriptor (:func:`band_descriptor`, 74 values)
-----------------------------------------------
With wavelengths in nm, ``s(l) = log10(l - 300) - 2`` and ``N = 32`` frequencies
``w_i = 10000 ** (-2 i / N)`` (i = 0..31), ``enc(l)_i = sin(w_i s(l))`` for even ``i`` and
``cos(w_i s(l))`` for odd ``i``:

=========  ================================================================================
slots      content
=========  ================================================================================
0-31       ``enc(wavelength_min)``; all 1 for SAR VV and for the incidence angle
32-63      ``enc(wavelength_max)``; all 1 for SAR VH and for the incidence angle
64         spectral band (reflectance or thermal)
65         SAR (Sentinel-1 VV, VH or incidence angle: told apart by the slots above, as in
           the paper's Fig. 1)
66         DEM (wavelength slots 0)
67         thermal (brightness temperature)
68-73      spare, 0: room for more types without changing the descriptor size
=========  ================================================================================

Encoder (:class:`SEnSeIv2Encoder`), for image ``x`` (N, B, H, W) and descriptors ``d``
--------------------------------------------------------------------------------------
1. ``p_b``: the 1st, 10th, 50th, 90th and 99th percentiles of band ``b`` over the image's
   finite pixels (NaN and inf ignored; linear interpolation, as ``numpy.nanpercentile``),
   appended to ``d_b`` (74 + 5 = 79 features).
2. Fully connected layers per band (LayerNorm, ReLU, Linear; residual where the widths match):
   79 -> 128 -> 128 -> 128.
3. Two transformer-encoder layers across bands (post-norm; ``nn.MultiheadAttention`` with 4
   heads, ``batch_first=True``; feed-forward 256; dropout 0.2) without positional encoding:
   the bands form a set (permutation equivariant). Missing bands are masked as keys.
4. Band embedding: three small heads (128 -> 64 -> C, layers as in 2.) give per band ``b``
   gain ``a_b``, frequency ``w_b`` and phase ``f_b`` (each in R^C), and for each pixel

       E_c = sum_b m_b a_bc sin(w_bc S_b + f_bc) / max(1, sum_b m_b)

   with ``S_b`` the band's value at the pixel and ``m_b`` 1 where band ``b`` is present and
   finite (0 for masked bands and NaN pixels): the mean over the bands present at the pixel.
5. ``BatchNorm2d(C)`` on ``E`` (momentum 0.05): the output (N, C, H, W), C = 32 by default.

The **auxiliary decoder** (:meth:`SEnSeIv2Encoder.reconstruct`) estimates each band's values
from the embedding and the band's descriptor: ``r_b = v . relu(W E + u(d_b) + c) + e``
(a 1x1 convolution of the embedding concatenated with an MLP of the descriptor, then a 1x1
convolution to one value); :meth:`SEnSeIv2Encoder.reconstruction_loss` is the MSE over finite
values of present bands, trained jointly with the segmentation loss.

Where this may differ from the paper and its released code (``aliFrancis/SEnSeIv2``):

- the released code encodes wavelengths in nm without the log scaling used here (the issue
  text's formula); Sentinel-2 wavelengths are xcloud's (FWHM limits of Sentinel-2A, slightly
  narrower than the released table), Landsat 8/9's the USGS nominal band limits;
- the released band embedding is ``a sin(w (S + f))`` *summed* over bands; here
  ``a sin(w S + f)`` (the same family, the phase rescaled) *averaged* over the bands present,
  so its scale does not grow with the number of bands; batch norm follows in both;
- the released decoder ("recovery module") reads SEnSeI's processed descriptor features,
  this one the raw descriptors (subsample with ``stride`` to save memory, as its sampling rate);
- the heads are built from scratch (no ImageNet/ADE20k pretraining of SegFormer or ResNet-34).

Values: reflectance (0-1) for optical bands (SEnSeI normalises nothing: the percentiles tell
it each band's distribution); thermal bands as brightness temperature scaled to about 0-1
(the released code uses ``(BT - BT_min) / (BT_max - BT_min)`` with sensor limits); SAR
backscatter, incidence angle and elevation scaled by the caller to a similar range.

Full model and parameters
-------------------------
:class:`SEnSeIv2` puts a head on the encoder: SegFormer-B0/B2 (:mod:`xcloud.models.segformer`,
logits at 1/4 resolution upsampled bilinearly) or DeepLabv3+ with a ResNet-34 backbone
(:mod:`xcloud.models.deeplabv3plus`), taking the C-channel embedding, 7 classes. Parameters
of the default configuration (C = 32; batch-norm statistics not counted):

========================  ===========  ==========  ===========
network                    parameters   with the     with the
                           (head)       encoder      decoder too
========================  ===========  ==========  ===========
SEnSeI-v2 encoder                  --     341,118      352,255
+ SegFormer-B0              3,761,415   4,102,533    4,113,670
+ SegFormer-B2             27,442,951  27,784,069   27,795,206
+ DeepLabv3+ (ResNet-34)   22,529,943  22,871,061   22,882,198
========================  ===========  ==========  ===========

(The encoder makes the embedding: 43,934 parameters in the descriptor layers, 264,960 in
the two attention layers, 32,160 in the gain/frequency/phase heads, 64 in the batch norm. The
decoder, 11,137 parameters, is the auxiliary reconstruction module, used in training only;
it is part of the module and of its checkpoints.)

Outputs and registered models
-----------------------------
Channels are the SEnSeI-v2 classes: 0 land, 1 water, 2 snow, 3 thin cloud, 4 thick cloud,
5 cloud shadow, 6 no data (:data:`~xcloud.models.classes.SENSEI_V2_SCHEME`). The registered
models ``sensei-v2-segformer-b0``, ``sensei-v2-segformer-b2`` and ``sensei-v2-deeplab`` take
the 13 Sentinel-2 L1C bands from the engine (any order in the input), predict channels 0-5
(softmax over them) and mark missing input with value 6, SEnSeI-v2's own no-data code, as
for every xcloud model (no-data pixels are found from the input, not from channel 6).
They need a local checkpoint (:func:`save_checkpoint`); its metadata may list ``bands``, a
subset of the 13 in any order, that the network is then given. For inputs without some of
the 13 bands, register a model for the bands at hand::

    register(sensei_v2_entry("sensei-rgb", head="segformer-b0", bands=("B04", "B03", "B02")))
    xcloud.predict(scene, model="sensei-rgb", weights="sensei.safetensors")

Any checkpoint with that head works. Other sensors (Landsat 8/9, Sentinel-1, DEM) are used
through :class:`SEnSeIv2` directly, with :func:`band_descriptors`. Tiles are 256 px with
32 px overlap (the percentiles are per tile, so tiles much smaller than that give noisier
statistics; 256 is a multiple of 32, as both heads like), at 10 m.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._version import __version__
from ..data.bands import SENTINEL2_BANDS, Band, canonical_band_name
from ..errors import BandError, MissingWeightsError, WeightsError
from ._checkpoint import (
    dump_metadata,
    load_state,
    parse_metadata,
    read_checkpoint,
    write_checkpoint,
)
from .classes import SENSEI_V2_SCHEME
from .protocol import BaseCloudModel, ModelInfo, Normalization
from .registry import ModelEntry, register

__all__ = [
    "BAND_KINDS",
    "DESCRIPTOR_FLAGS",
    "DESCRIPTOR_SIZE",
    "FREQUENCIES",
    "HEADS",
    "N_CLASSES",
    "N_FREQUENCIES",
    "SENSEI_V2_MODELS",
    "SENSOR_BANDS",
    "SENTINEL2_L1C_BANDS",
    "CheckpointMeta",
    "SEnSeIv2",
    "SEnSeIv2Config",
    "SEnSeIv2Encoder",
    "SEnSeIv2Model",
    "SensorBand",
    "band_descriptor",
    "band_descriptors",
    "load_checkpoint",
    "nan_percentiles",
    "save_checkpoint",
    "sensei_v2",
    "sensei_v2_entry",
    "sensor_band",
    "wavelength_encoding",
]

# -- band descriptors ------------------------------------------------------------------------

N_FREQUENCIES = 32
"""Frequencies of the sinusoidal wavelength encoding."""

FREQUENCIES = 10000.0 ** (-2.0 * np.arange(N_FREQUENCIES) / N_FREQUENCIES)
"""``w_i = 10000 ** (-2 i / 32)``, i = 0..31."""

DESCRIPTOR_FLAGS = ("spectral", "sar", "dem", "thermal")
"""Type flags, at slots 64, 65, 66, 67 of a descriptor."""

_SPARE_FLAGS = 6
DESCRIPTOR_SIZE = 2 * N_FREQUENCIES + len(DESCRIPTOR_FLAGS) + _SPARE_FLAGS
"""74: two wavelength encodings, four type flags and six spare slots."""

BAND_KINDS: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "reflectance": (("spectral",), ()),
    "thermal": (("spectral", "thermal"), ()),
    "sar-vv": (("sar",), (0,)),
    "sar-vh": (("sar",), (1,)),
    "sar-angle": (("sar",), (0, 1)),
    "dem": (("dem",), ()),
}
"""Kinds of band: their flags, and which wavelength halves (0 min, 1 max) are set to 1."""

_WAVELENGTH_OFFSET = 300.0  # nm: s = log10(wavelength - 300) - 2


@dataclass(frozen=True)
class SensorBand:
    """One input layer of any sensor, as SEnSeI-v2 sees it.

    ``kind`` is a key of :data:`BAND_KINDS`; spectral kinds (``reflectance``, ``thermal``)
    need wavelength limits (nm, above 300), the others have none.
    """

    name: str
    kind: str = "reflectance"
    wavelength_min: float | None = None
    wavelength_max: float | None = None
    resolution: float | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in BAND_KINDS:
            raise BandError(f"band {self.name!r} has kind {self.kind!r}; kinds: "
                            f"{', '.join(BAND_KINDS)}")
        limits = (self.wavelength_min, self.wavelength_max)
        if not self.spectral:
            if limits != (None, None):
                raise BandError(f"{self.kind} band {self.name!r} takes no wavelengths")
            return
        if None in limits or not _WAVELENGTH_OFFSET < limits[0] <= limits[1]:
            raise BandError(f"spectral band {self.name!r} needs 300 nm < wavelength_min <= "
                            f"wavelength_max, got {limits}")

    @property
    def spectral(self) -> bool:
        """Whether the band has wavelengths (reflectance or thermal)."""
        return "spectral" in BAND_KINDS[self.kind][0]

    @classmethod
    def from_band(cls, band: Band) -> SensorBand:
        """The Sentinel-2 :class:`~xcloud.data.bands.Band` ``band`` (reflectance)."""
        if band.wavelength_min is None or band.wavelength_max is None:
            raise BandError(f"{band.name} ({band.description}) has no wavelengths: SEnSeI-v2 "
                            "has no descriptor for it")
        return cls(band.name, "reflectance", band.wavelength_min, band.wavelength_max,
                   band.resolution, band.description)


def _table(*bands: SensorBand) -> dict[str, SensorBand]:
    return {b.name: b for b in bands}


_SENTINEL2 = _table(*(SensorBand.from_band(b) for b in SENTINEL2_BANDS.values()
                      if b.wavelength_min is not None))
# USGS nominal limits of OLI/TIRS (Landsat 8) and OLI-2/TIRS-2 (Landsat 9).
_LANDSAT = _table(
    SensorBand("B1", "reflectance", 430, 450, 30, "coastal aerosol"),
    SensorBand("B2", "reflectance", 450, 510, 30, "blue"),
    SensorBand("B3", "reflectance", 530, 590, 30, "green"),
    SensorBand("B4", "reflectance", 640, 670, 30, "red"),
    SensorBand("B5", "reflectance", 850, 880, 30, "near infrared"),
    SensorBand("B6", "reflectance", 1570, 1650, 30, "shortwave infrared 1"),
    SensorBand("B7", "reflectance", 2110, 2290, 30, "shortwave infrared 2"),
    SensorBand("B8", "reflectance", 500, 680, 15, "panchromatic"),
    SensorBand("B9", "reflectance", 1360, 1380, 30, "cirrus"),
    SensorBand("B10", "thermal", 10600, 11190, 100, "thermal infrared 1 (TIRS)"),
    SensorBand("B11", "thermal", 11500, 12510, 100, "thermal infrared 2 (TIRS)"),
)
_SENTINEL1 = _table(
    SensorBand("VV", "sar-vv", resolution=10, description="C-band backscatter, VV"),
    SensorBand("VH", "sar-vh", resolution=10, description="C-band backscatter, VH"),
    SensorBand("angle", "sar-angle", resolution=10, description="incidence angle"),
)
_DEM = _table(SensorBand("DEM", "dem", resolution=30, description="elevation"))

SENSOR_BANDS: dict[str, dict[str, SensorBand]] = {
    "sentinel-2": _SENTINEL2,
    "landsat-8": _LANDSAT,
    "landsat-9": _LANDSAT,
    "sentinel-1": _SENTINEL1,
    "dem": _DEM,
}
"""Band tables by sensor: Sentinel-2 MSI (13 bands, wavelengths of
:data:`xcloud.data.bands.SENTINEL2_BANDS`), Landsat 8/9 OLI/TIRS (B1-B11, thermal B10/B11),
Sentinel-1 (``VV``, ``VH``, ``angle``) and ``dem`` (``DEM``)."""

SENTINEL2_L1C_BANDS = tuple(_SENTINEL2)
"""The 13 Sentinel-2 bands, B01..B12 with B8A after B08: the registered models' input."""


def sensor_band(name: str, *, sensor: str | None = None) -> SensorBand:
    """The :class:`SensorBand` called ``name``.

    ``name`` may be qualified as ``"sensor:name"`` (``"landsat-8:B10"``). Without a sensor,
    Sentinel-2 names and aliases come first (``"B02"``, ``"blue"``; ``"B1"`` is Sentinel-2's
    B01), then Sentinel-1's and the DEM's names (``"VV"``, ``"vh"``, ``"DEM"``).
    """
    if sensor is None and ":" in name:
        sensor, name = name.split(":", 1)
    if sensor is not None:
        table = SENSOR_BANDS.get(sensor.lower())
        if table is None:
            raise BandError(f"unknown sensor {sensor!r}; sensors: {', '.join(SENSOR_BANDS)}")
        found = _find(table, canonical_band_name(name) if table is _SENTINEL2 else name)
        if found is None:
            raise BandError(f"{sensor} has no band {name!r}; its bands: {', '.join(table)}")
        return found
    canonical = canonical_band_name(name)
    found = _SENTINEL2.get(canonical or "") or _find({**_SENTINEL1, **_DEM}, name)
    if found is None:
        raise BandError(f"unknown band {name!r}: name a Sentinel-2, Sentinel-1 or DEM band, "
                        "or qualify it with its sensor, e.g. 'landsat-8:B10'")
    return found


def _find(table: Mapping[str, SensorBand], name: str | None) -> SensorBand | None:
    key = str(name).lower()
    return next((b for n, b in table.items() if n.lower() == key), None)


def wavelength_encoding(wavelength: float) -> np.ndarray:
    """The 32 sinusoidal entries of a wavelength (nm): ``sin``/``cos`` (even/odd ``i``) of
    ``w_i (log10(wavelength - 300) - 2)``."""
    angles = (math.log10(wavelength - _WAVELENGTH_OFFSET) - 2.0) * FREQUENCIES
    return np.where(np.arange(N_FREQUENCIES) % 2 == 0, np.sin(angles), np.cos(angles))


def _as_sensor_band(band: SensorBand | Band | str) -> SensorBand:
    if isinstance(band, SensorBand):
        return band
    if isinstance(band, Band):
        return SensorBand.from_band(band)
    return sensor_band(band)


def band_descriptor(band: SensorBand | Band | str) -> np.ndarray:
    """The descriptor (:data:`DESCRIPTOR_SIZE`,) float32 of a band (see the module docstring).

    ``band`` is a :class:`SensorBand`, a Sentinel-2 :class:`~xcloud.data.bands.Band` or a
    name for :func:`sensor_band`.
    """
    band = _as_sensor_band(band)
    flags, filled = BAND_KINDS[band.kind]
    out = np.zeros(DESCRIPTOR_SIZE, np.float64)
    if band.spectral:
        out[:N_FREQUENCIES] = wavelength_encoding(band.wavelength_min)
        out[N_FREQUENCIES:2 * N_FREQUENCIES] = wavelength_encoding(band.wavelength_max)
    for half in filled:
        out[half * N_FREQUENCIES:(half + 1) * N_FREQUENCIES] = 1.0
    for flag in flags:
        out[2 * N_FREQUENCIES + DESCRIPTOR_FLAGS.index(flag)] = 1.0
    return out.astype(np.float32)


def band_descriptors(bands: Sequence[SensorBand | Band | str], *,
                     sensor: str | None = None) -> np.ndarray:
    """Descriptors (len(bands), :data:`DESCRIPTOR_SIZE`) float32, in the order of ``bands``.

    ``sensor`` qualifies the names given as strings (``band_descriptors(["B2", "B10"],
    sensor="landsat-8")``); mix sensors with :class:`SensorBand` objects or ``"sensor:name"``.
    Pass them to :class:`SEnSeIv2` as ``torch.from_numpy(...)[None]`` (one set for the batch).
    """
    if sensor is not None:
        bands = [sensor_band(b, sensor=sensor) if isinstance(b, str) else b for b in bands]
    return np.stack([band_descriptor(b) for b in bands]) if len(bands) else np.zeros(
        (0, DESCRIPTOR_SIZE), np.float32)


# -- the encoder -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SEnSeIv2Config:
    """Everything that builds a :class:`SEnSeIv2Encoder`; JSON serialisable via :meth:`to_dict`.

    ``percentiles`` in percent; ``descriptor_layers`` the widths of the fully connected layers
    on the descriptors (the last is the attention width, a multiple of ``attention_heads``);
    ``embedding_hidden`` the hidden widths of the gain/frequency/phase heads;
    ``decoder_hidden`` the width of the auxiliary decoder.
    """

    descriptor_size: int = DESCRIPTOR_SIZE
    percentiles: tuple[float, ...] = (1.0, 10.0, 50.0, 90.0, 99.0)
    descriptor_layers: tuple[int, ...] = (128, 128, 128)
    attention_layers: int = 2
    attention_heads: int = 4
    feedforward: int = 256
    dropout: float = 0.2
    embedding_channels: int = 32
    embedding_hidden: tuple[int, ...] = (64,)
    batch_norm: bool = True
    decoder_hidden: int = 64

    def __post_init__(self) -> None:
        for name in ("percentiles", "descriptor_layers", "embedding_hidden"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        widths = (self.descriptor_size, *self.descriptor_layers, self.attention_heads,
                  self.feedforward, self.embedding_channels, *self.embedding_hidden,
                  self.decoder_hidden)
        problems = [
            (not self.descriptor_layers, "descriptor_layers is empty"),
            (min(widths) < 1, f"widths must be >= 1, got {widths}"),
            (self.attention_layers < 0, "attention_layers must be >= 0"),
            (bool(self.descriptor_layers) and self.descriptor_layers[-1] % self.attention_heads,
             "the last descriptor layer must be a multiple of attention_heads"),
            (not all(0.0 <= p <= 100.0 for p in self.percentiles),
             f"percentiles must be in [0, 100], got {self.percentiles}"),
            (not 0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
        ]
        found = [text for bad, text in problems if bad]
        if found:
            raise ValueError(f"invalid SEnSeIv2Config: {'; '.join(found)}")

    def to_dict(self) -> dict[str, Any]:
        """Return a plain, JSON-serialisable dictionary."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SEnSeIv2Config:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)


def nan_percentiles(values: torch.Tensor, percentiles: Sequence[float]) -> torch.Tensor:
    """Percentiles (N, B, P) of each (image, band) of ``values`` (N, B, H, W) over its finite
    entries, interpolated linearly as ``numpy.nanpercentile``; 0 where none is finite.

    Sort-based (no size limit, unlike ``torch.quantile``) and differentiable.
    """
    flat = values.flatten(2)
    finite = torch.isfinite(flat)
    ordered = torch.sort(torch.where(finite, flat, torch.nan), dim=-1).values  # NaN sort last
    count = finite.sum(-1, keepdim=True)
    fractions = torch.tensor(percentiles, dtype=values.dtype, device=values.device) / 100.0
    position = fractions * (count - 1).clamp_min(0).to(values.dtype)
    low = position.floor().long()
    below = ordered.gather(-1, low)
    above = ordered.gather(-1, position.ceil().long())
    result = below + (position - low.to(values.dtype)) * (above - below)
    return torch.where(count > 0, result, torch.zeros_like(result))


class _PreActLinear(nn.Module):
    """LayerNorm, ReLU, Linear; residual when input and output widths match."""

    def __init__(self, in_features: int, out_features: int, *, residual: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_features)
        self.linear = nn.Linear(in_features, out_features)
        self.residual = residual and in_features == out_features
        nn.init.kaiming_uniform_(self.linear.weight, nonlinearity="relu")
        nn.init.constant_(self.linear.bias, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(F.relu(self.norm(x)))
        return x + y if self.residual else y


def _fcl(in_features: int, widths: Sequence[int], *, residual: bool) -> nn.Sequential:
    inputs = (in_features, *widths[:-1])
    return nn.Sequential(*(_PreActLinear(i, o, residual=residual)
                           for i, o in zip(inputs, widths, strict=True)))


class _AttentionLayer(nn.Module):
    """Post-norm transformer-encoder layer across bands (no positional encoding)."""

    def __init__(self, width: int, heads: int, feedforward: int, dropout: float) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(width)
        self.feedforward = nn.Sequential(nn.Linear(width, feedforward), nn.ReLU(),
                                         nn.Dropout(dropout), nn.Linear(feedforward, width))
        self.norm2 = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attention(x, x, x, key_padding_mask=padding, need_weights=False)
        x = self.norm1(x + self.dropout(attended))
        return self.norm2(x + self.dropout(self.feedforward(x)))


class _BandEmbedding(nn.Module):
    """``E_c = mean over present bands of a_bc sin(w_bc S_b + f_bc)`` (see the module doc)."""

    def __init__(self, width: int, channels: int, hidden: Sequence[int]) -> None:
        super().__init__()
        widths = (*hidden, channels)
        self.gain = _fcl(width, widths, residual=False)
        self.frequency = _fcl(width, widths, residual=False)
        self.phase = _fcl(width, widths, residual=False)

    def forward(self, values: torch.Tensor, features: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
        gain, frequency, phase = (head(features)[..., None, None]
                                  for head in (self.gain, self.frequency, self.phase))
        total = values.new_zeros((values.shape[0], gain.shape[2], *values.shape[2:]))
        for b in range(values.shape[1]):  # one band at a time: memory (N, C, H, W)
            wave = gain[:, b] * torch.sin(frequency[:, b] * values[:, b, None] + phase[:, b])
            total = total + weights[:, b, None] * wave
        return total / weights.sum(1, keepdim=True).clamp_min(1.0)


class _Decoder(nn.Module):
    """The auxiliary decoder: each band's values from the embedding and its descriptor."""

    def __init__(self, channels: int, descriptor_size: int, hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Conv2d(channels, hidden, 1)
        self.descriptor = nn.Sequential(nn.Linear(descriptor_size, hidden), nn.ReLU(),
                                        nn.Linear(hidden, hidden))
        self.output = nn.Conv2d(hidden, 1, 1)

    def forward(self, embedding: torch.Tensor, descriptors: torch.Tensor) -> torch.Tensor:
        base = self.embedding(embedding)
        shift = self.descriptor(descriptors).expand(embedding.shape[0], -1, -1)
        return torch.cat([self.output(F.relu(base + shift[:, b, :, None, None]))
                          for b in range(shift.shape[1])], dim=1)


class SEnSeIv2Encoder(nn.Module):
    """SEnSeI-v2: any set of bands with their descriptors to an embedding (N, C, H, W).

    Parameters
    ----------
    config
        The architecture (:class:`SEnSeIv2Config`; the defaults are the ones documented in
        the module docstring).

    Notes
    -----
    :meth:`forward` is permutation invariant: shuffling the bands together with their
    descriptors (and mask) gives the same embedding, up to float rounding.
    """

    def __init__(self, config: SEnSeIv2Config | None = None) -> None:
        super().__init__()
        self.config = config = config or SEnSeIv2Config()
        width = config.descriptor_layers[-1]
        self.descriptor_layers = _fcl(config.descriptor_size + len(config.percentiles),
                                      config.descriptor_layers, residual=True)
        self.attention = nn.ModuleList(
            _AttentionLayer(width, config.attention_heads, config.feedforward, config.dropout)
            for _ in range(config.attention_layers))
        self.band_embedding = _BandEmbedding(width, config.embedding_channels,
                                             config.embedding_hidden)
        self.norm = (nn.BatchNorm2d(config.embedding_channels, momentum=0.05)
                     if config.batch_norm else nn.Identity())
        self.decoder = _Decoder(config.embedding_channels, config.descriptor_size,
                                config.decoder_hidden)

    @property
    def embedding_channels(self) -> int:
        """C, the channels of the embedding."""
        return self.config.embedding_channels

    def _check(self, image: torch.Tensor, descriptors: torch.Tensor,
               band_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Descriptors (N, B, D) in the image's dtype and the band mask (N, B)."""
        if image.ndim != 4:
            raise ValueError(f"SEnSeI-v2 takes images (N, bands, H, W), got {tuple(image.shape)}")
        n, bands = image.shape[:2]
        if descriptors.ndim == 2:
            descriptors = descriptors[None]
        size = self.config.descriptor_size
        if descriptors.ndim != 3 or descriptors.shape[0] not in (1, n) or descriptors.shape[
                1:] != (bands, size):
            raise ValueError(f"descriptors must be ({n} or 1, {bands}, {size}) for images "
                             f"{tuple(image.shape)}, got {tuple(descriptors.shape)}: one "
                             "descriptor per band (band_descriptors)")
        if band_mask is None:
            band_mask = torch.ones((1, bands), dtype=torch.bool, device=image.device)
        if band_mask.ndim != 2 or band_mask.shape[0] not in (1, n) or band_mask.shape[1] != bands:
            raise ValueError(f"band_mask must be ({n} or 1, {bands}), got "
                             f"{tuple(band_mask.shape)}")
        return (descriptors.to(image.dtype).expand(n, -1, -1),
                band_mask.to(torch.bool).expand(n, -1))

    def forward(self, image: torch.Tensor, descriptors: torch.Tensor, *,
                band_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The embedding (N, C, H, W).

        Parameters
        ----------
        image
            (N, B, H, W) band values (reflectance for optical bands); NaN where a value is
            missing (it is left out of the percentiles and of the pixel's band average).
        descriptors
            (N, B, D), (1, B, D) or (B, D): one descriptor per band, in the image's band order
            (:func:`band_descriptors`).
        band_mask
            Optional (N, B) or (1, B) booleans, False for bands to ignore (padding when images
            of one batch have different bands). Bands without any finite value are ignored
            too; pixels without any band get an all-zero embedding (before batch norm).
        """
        descriptors, band_mask = self._check(image, descriptors, band_mask)
        finite = torch.isfinite(image) & band_mask[..., None, None]
        stats = nan_percentiles(torch.where(finite, image, torch.nan), self.config.percentiles)
        features = self.descriptor_layers(torch.cat([descriptors, stats], dim=-1))
        padding = ~finite.flatten(2).any(-1)
        padding = padding & ~padding.all(-1, keepdim=True)  # all masked: attend to all
        for layer in self.attention:
            features = layer(features, padding)
        values = torch.where(finite, image, torch.zeros_like(image))
        return self.norm(self.band_embedding(values, features, finite.to(image.dtype)))

    def reconstruct(self, embedding: torch.Tensor, descriptors: torch.Tensor) -> torch.Tensor:
        """Each band's values (N, B, H, W) estimated from ``embedding`` (N, C, H, W) and the
        bands' descriptors ((N or 1, B, D) or (B, D)): the auxiliary decoder."""
        if descriptors.ndim == 2:
            descriptors = descriptors[None]
        return self.decoder(embedding, descriptors.to(embedding.dtype))

    def reconstruction_loss(self, embedding: torch.Tensor, image: torch.Tensor,
                            descriptors: torch.Tensor, *, band_mask: torch.Tensor | None = None,
                            stride: int = 1) -> torch.Tensor:
        """Mean squared error of :meth:`reconstruct` against ``image`` (N, B, H, W).

        Only finite values of bands that ``band_mask`` keeps count. ``stride`` subsamples
        the pixels (every ``stride``-th row and column) to save memory.
        """
        descriptors, band_mask = self._check(image, descriptors, band_mask)
        target = image[..., ::stride, ::stride]
        predicted = self.reconstruct(embedding[..., ::stride, ::stride], descriptors)
        valid = torch.isfinite(target) & band_mask[..., None, None]
        error = torch.where(valid, predicted - torch.nan_to_num(target), 0.0)
        return error.square().sum() / valid.sum().clamp_min(1)


# -- encoder + segmentation head -------------------------------------------------------------

HEADS = ("segformer-b0", "segformer-b2", "deeplab")
"""Segmentation heads: SegFormer-B0, SegFormer-B2 and DeepLabv3+ (ResNet-34)."""

N_CLASSES = 7
"""SEnSeI-v2's classes: land, water, snow, thin cloud, thick cloud, cloud shadow, no data."""


def _build_head(name: str, channels: int, n_classes: int) -> nn.Module:
    if name not in HEADS:
        raise ValueError(f"unknown SEnSeI-v2 head {name!r}; heads: {', '.join(HEADS)}")
    if name == "deeplab":
        from .deeplabv3plus import DeepLabV3Plus

        return DeepLabV3Plus(channels, n_classes)
    from .segformer import SegformerForSemanticSegmentation, segformer_b0, segformer_b2

    size = segformer_b0 if name == "segformer-b0" else segformer_b2
    return SegformerForSemanticSegmentation(size(channels, n_classes))


class SEnSeIv2(nn.Module):
    """SEnSeI-v2 with a segmentation head: logits (N, n_classes, H, W) from any bands.

    Parameters
    ----------
    encoder
        The :class:`SEnSeIv2Encoder`.
    head
        One of :data:`HEADS`; built with the encoder's C input channels.
    n_classes
        Output channels (7: the SEnSeI-v2 classes, see :data:`N_CLASSES`).

    Examples
    --------
    Training with the auxiliary loss::

        embedding = model.encoder(image, descriptors, band_mask=mask)
        logits = model.segment(embedding)
        loss = task_loss(logits, labels) + model.encoder.reconstruction_loss(
            embedding, image, descriptors, band_mask=mask, stride=4)
    """

    def __init__(self, encoder: SEnSeIv2Encoder, head: str = "segformer-b0", *,
                 n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.encoder = encoder
        self.head_name = head
        self.n_classes = n_classes
        self.head = _build_head(head, encoder.embedding_channels, n_classes)

    def forward(self, image: torch.Tensor, descriptors: torch.Tensor, *,
                band_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (N, n_classes, H, W) of ``image`` (N, B, H, W) with ``descriptors`` (N or 1,
        B, D); see :meth:`SEnSeIv2Encoder.forward` for NaN values and ``band_mask``."""
        return self.segment(self.encoder(image, descriptors, band_mask=band_mask))

    def segment(self, embedding: torch.Tensor) -> torch.Tensor:
        """Logits (N, n_classes, H, W) of an embedding (N, C, H, W) (bilinear upsampling of
        SegFormer's 1/4-resolution logits)."""
        logits = self.head(embedding)
        if logits.shape[-2:] != embedding.shape[-2:]:
            logits = F.interpolate(logits, size=embedding.shape[-2:], mode="bilinear",
                                   align_corners=False)
        return logits


def sensei_v2(head: str = "segformer-b0", *, n_classes: int = N_CLASSES,
              **options: Any) -> SEnSeIv2:
    """Build SEnSeI-v2 with ``head`` (one of :data:`HEADS`).

    ``options`` are :class:`SEnSeIv2Config` fields, e.g. ``embedding_channels=32`` (C).
    Build on ``torch.device("meta")`` (as a context manager) to count parameters without
    allocating them.
    """
    return SEnSeIv2(SEnSeIv2Encoder(SEnSeIv2Config(**options)), head, n_classes=n_classes)


# -- checkpoints -----------------------------------------------------------------------------

_FORMAT = "xcloud-sensei-v2"
_FORMAT_VERSION = 1
_METADATA_KEY = "xcloud_sensei_v2"


@dataclass(frozen=True)
class CheckpointMeta:
    """What a SEnSeI-v2 checkpoint says besides its tensors.

    ``bands`` (optional) are the Sentinel-2 bands, in any order, that a registered model gives
    the network (a subset of its input; empty: all of them). ``extra`` is free JSON.
    """

    head: str
    encoder: SEnSeIv2Config
    n_classes: int = N_CLASSES
    bands: tuple[str, ...] = ()
    xcloud_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The metadata as stored in the checkpoint."""
        return dump_metadata({**asdict(self), "encoder": self.encoder.to_dict()},
                             format_name=_FORMAT, version=_FORMAT_VERSION)

    @classmethod
    def from_json(cls, text: str, *, source: object = "checkpoint") -> CheckpointMeta:
        """Parse :meth:`to_json`'s output; :class:`WeightsError` if it does not fit."""
        try:
            data = parse_metadata(text, format_name=_FORMAT)
            meta = cls(encoder=SEnSeIv2Config.from_dict(data.pop("encoder")),
                       bands=tuple(data.pop("bands", ())), **data)
        except (TypeError, ValueError, KeyError, AttributeError) as error:
            raise WeightsError(f"{source} has no readable xcloud SEnSeI-v2 metadata ({error}); "
                               "write checkpoints with xcloud.models.sensei.save_checkpoint"
                               ) from None
        meta.check(source)
        return meta

    def check(self, source: object = "checkpoint") -> None:
        """Raise :class:`WeightsError` unless head, classes and bands are usable."""
        unknown = [b for b in self.bands if canonical_band_name(b) not in _SENTINEL2]
        problems = [
            (self.head not in HEADS, f"head {self.head!r}, not one of {', '.join(HEADS)}"),
            (self.n_classes < 1, f"{self.n_classes} classes"),
            (bool(unknown), f"bands {unknown} that are not Sentinel-2 spectral bands"),
            (len(set(self.bands)) != len(self.bands), f"repeated bands {self.bands}"),
        ]
        found = [text for bad, text in problems if bad]
        if found:
            raise WeightsError(f"{source} does not fit a SEnSeI-v2 model: {'; '.join(found)}")


def save_checkpoint(path: str | os.PathLike[str], model: SEnSeIv2, *,
                    bands: Sequence[str] = (), extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (encoder, auxiliary decoder and head) for ``predict(weights=path)``.

    Parameters
    ----------
    path
        ``.safetensors`` (metadata JSON in the header) or ``.pt``/``.pth`` (a plain dict that
        ``torch.load(path, weights_only=True)`` reads). Written atomically.
    model
        The network.
    bands
        Sentinel-2 bands (any alias, any order) the registered models give the network; empty
        for all of the model's input bands.
    extra
        JSON-serialisable extras (training history, epoch...).

    Returns
    -------
    pathlib.Path
        The written file.
    """
    canonical = tuple(canonical_band_name(b) or str(b) for b in bands)
    meta = CheckpointMeta(model.head_name, model.encoder.config, model.n_classes, canonical,
                          extra=dict(extra or {}))
    meta.check("the checkpoint to save")
    return write_checkpoint(path, model, key=_METADATA_KEY, metadata=meta.to_json())


def load_checkpoint(path: str | os.PathLike[str], *,
                    map_location: str | torch.device = "cpu") -> tuple[SEnSeIv2, CheckpointMeta]:
    """Read a :func:`save_checkpoint` file: the network (in eval mode) and its metadata.

    Nothing is unpickled; tensors, keys and shapes are checked against the metadata.

    Raises
    ------
    MissingWeightsError
        The file does not exist.
    WeightsError
        It is not a SEnSeI-v2 checkpoint or its tensors do not fit its configuration.
    """
    tensors, text = read_checkpoint(path, key=_METADATA_KEY, map_location=map_location)
    meta = CheckpointMeta.from_json(text, source=path)
    network = SEnSeIv2(SEnSeIv2Encoder(meta.encoder), meta.head, n_classes=meta.n_classes)
    load_state(network, tensors, source=path)
    return network.to(map_location).eval(), meta


# -- the engine's model ----------------------------------------------------------------------


class SEnSeIv2Model(BaseCloudModel):
    """A SEnSeI-v2 network loaded for the engine.

    Parameters
    ----------
    network
        The :class:`SEnSeIv2` network.
    info
        Its metadata; ``info.bands`` is the input the engine gives (reflectance, any
        Sentinel-2 bands).
    bands
        The bands of the input given to the network, in any order (default: all of
        ``info.bands``).
    device
        Torch device.

    Notes
    -----
    Pixels where every band is exactly 0 (how the engine fills missing data) are NaN to the
    network, so they do not bias the percentiles. Probabilities are a softmax over the
    channels of the scheme's classes (0-5: the no-data channel 6 is left out), in float32.
    """

    def __init__(self, network: SEnSeIv2, info: ModelInfo, *,
                 bands: Sequence[str] | None = None, device: str = "cpu") -> None:
        self.info = info
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.bands = tuple(canonical_band_name(b) or str(b) for b in (bands or info.bands))
        missing = [b for b in self.bands if b not in info.bands]
        if missing:
            raise BandError(f"bands {missing} are not among the model's input "
                            f"({', '.join(info.bands)})")
        self._order = [info.bands.index(b) for b in self.bands]
        self._descriptors = torch.from_numpy(band_descriptors(self.bands))[None].to(self.device)
        self._channels = list(info.scheme.values)

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 6, H, W) for reflectance (N, bands, H, W)."""
        batch = np.ascontiguousarray(np.asarray(batch, dtype=np.float32)[:, self._order])
        with torch.inference_mode():
            image = torch.from_numpy(batch).to(self.device)
            image = image.masked_fill((image == 0).all(1, keepdim=True), torch.nan)
            logits = self.network(image, self._descriptors)[:, self._channels]
            return torch.softmax(logits.float(), dim=1).cpu().numpy()


_TILE_SIZE = 256
_TILE_OVERLAP = 32
_REFERENCE = ("Francis 2024, Sensor Independent Cloud and Shadow Masking With Partial Labels "
              "and Multimodal Inputs, IEEE Transactions on Geoscience and Remote Sensing 62")
_NO_WEIGHTS = (
    "SEnSeI-v2 weights are not distributed with xcloud; pass weights=PATH to a checkpoint "
    "(.safetensors or .pt) with a {head} head, written with "
    "xcloud.models.sensei.save_checkpoint"
)


def _info(name: str, head: str, bands: tuple[str, ...], level: str) -> ModelInfo:
    return ModelInfo(
        name=name,
        version="architecture of Francis 2024 (no weights shipped)",
        bands=bands,
        resolution=10.0,
        scheme=SENSEI_V2_SCHEME,
        normalization=Normalization("none"),
        tile_size=_TILE_SIZE,
        tile_overlap=_TILE_OVERLAP,
        level=level,
        licence="weights: yours (local file); code: Apache-2.0",
        weights_source="none shipped: pass weights=PATH (a save_checkpoint file)",
        needs_weights_file=True,
        description=f"SEnSeI-v2 + {head}, bands {', '.join(bands)}: land, water, snow, thin "
                    "cloud, thick cloud, cloud shadow",
        references=(_REFERENCE,),
    )


def _load_model(info: ModelInfo, head: str, weights: str | os.PathLike[str] | None,
                device: str, runtime: str) -> SEnSeIv2Model:
    if runtime not in ("auto", "torch"):
        raise ValueError(f"SEnSeI-v2 runs on torch: runtime must be 'auto' or 'torch', "
                         f"not {runtime!r}")
    if weights is None:
        raise MissingWeightsError(_NO_WEIGHTS.format(head=head))
    path = Path(weights).expanduser()
    network, meta = load_checkpoint(path)
    if meta.head != head or meta.n_classes != N_CLASSES:
        raise WeightsError(f"{path} holds SEnSeI-v2 with a {meta.head} head and "
                           f"{meta.n_classes} classes; {info.name} needs a {head} head and "
                           f"{N_CLASSES} classes (use model='sensei-v2-{meta.head}')")
    extra = [b for b in meta.bands if b not in info.bands]
    if extra:
        raise WeightsError(f"{path} asks for bands {extra} that {info.name} does not take "
                           f"({', '.join(info.bands)}); register a model with them "
                           "(sensei_v2_entry)")
    loaded = replace(info, version=f"{path.name} ({head}, C={meta.encoder.embedding_channels})",
                     weights_source=str(path))
    return SEnSeIv2Model(network, loaded, bands=meta.bands or None, device=device)


def sensei_v2_entry(name: str, *, head: str, bands: Sequence[str] = SENTINEL2_L1C_BANDS,
                    level: str = "L1C") -> ModelEntry:
    """A registry entry for SEnSeI-v2 with ``head`` on any Sentinel-2 ``bands``.

    Register it (:func:`xcloud.models.register`) to predict from scenes that have only those
    bands; any checkpoint with that head loads (see the module docstring).
    """
    if head not in HEADS:
        raise ValueError(f"unknown SEnSeI-v2 head {head!r}; heads: {', '.join(HEADS)}")
    canonical = tuple(canonical_band_name(b) or str(b) for b in bands)
    unknown = [b for b in canonical if b not in _SENTINEL2]
    if unknown or not canonical or len(set(canonical)) != len(canonical):
        raise BandError(f"a SEnSeI-v2 model takes distinct Sentinel-2 spectral bands, got "
                        f"{list(bands)}")
    info = _info(name, head, canonical, level)

    def load(*, weights: str | os.PathLike[str] | None = None, device: str = "cpu",
             runtime: str = "auto") -> SEnSeIv2Model:
        return _load_model(info, head, weights, device, runtime)

    return ModelEntry(info=info, loader=load)


SENSEI_V2_MODELS = {entry.name: register(entry, overwrite=True)
                    for entry in (sensei_v2_entry(f"sensei-v2-{head}", head=head)
                                  for head in HEADS)}
"""The registered models: ``sensei-v2-segformer-b0``, ``-segformer-b2`` and ``-deeplab``."""
