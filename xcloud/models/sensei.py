"""SEnSeI-v2 (Francis 2024, IEEE TGRS 62) for the engine: bands, loaded models, registry.

The network is :mod:`xcloud.models.sensei_encoder` (the authors' released computation, their
state-dict keys); the weight formats are :mod:`xcloud.models.sensei_published` (the authors'
published model folders and xcloud's own checkpoints). This module names bands, wraps a
loaded network for the engine and registers the models::

    model = xcloud.models.load("sensei-v2", weights="hf_models/full-models/<name>",
                               bands=["B02", "B03", "B04", "B08"])
    proba = model.predict_proba(batch)          # (N, 7, H, W), the authors' channel order

Bands (``bands=``)
------------------
Any of:

* Sentinel-2 names ``B01`` .. ``B12`` and ``B8A`` (any alias xcloud knows: ``"B2"``,
  ``"blue"``), with the released descriptors (``senseiv2/constants.py``);
* Landsat 8/9 OLI/TIRS bands, sensor-qualified: ``"landsat-8:B1"`` .. ``"landsat-8:B11"``
  (``"landsat-9:..."`` the same descriptors); B10 and B11 are thermal
  (``"TOA Normalised Brightness Temperature"``, to be given scaled to about 0-1);
* ``"sentinel-1:VV"``, ``"sentinel-1:VH"``, ``"sentinel-1:angle"`` and ``"dem"``;
* the authors' own descriptor dicts (``{"band_type": "TOA Reflectance", "min_wavelength":
  450, "max_wavelength": 520}``, optionally with ``"name"``), so any sensor works.

``info.bands`` lists the names the engine picks from a Dataset, in channel order. A band
given only as a dict is named by its ``"name"`` entry or ``descriptor<i>``: the engine cannot
find it in a Dataset unless a variable has that name; such models are for direct
``predict_proba`` use. Without ``bands=`` a model takes the 13 Sentinel-2 L1C bands (or the
bands stored in an xcloud checkpoint).

Outputs
-------
``predict_proba`` returns the network's softmax channels in the authors' order: for the 7-class
models (``sensei-v2`` and the named 7-class entries) 0 land, 1 water, 2 snow, 3 thin cloud,
4 thick cloud, 5 cloud shadow, 6 no data (:data:`~xcloud.models.classes.SENSEI_V2_SCHEME`);
for the published 4-class model ``sensei-v2-deeplabv3-s2-unambiguous`` 0 clear, 1 thick cloud,
2 thin cloud, 3 cloud shadow (:data:`~xcloud.models.classes.SENSEI_V2_4CLASS_SCHEME`). An
entry refuses weights with another number of classes (``WeightsError`` naming the entry to
use). Every SEnSeI-v2 model computes every image of the batch on its
own (the released code, run with more than one image per batch, lets the images change each
other's results; see :mod:`xcloud.models.sensei_encoder`). Input is reflectance (0-1) as the
released loaders give it (Sentinel-2 ``(DN - offset) / 10000`` with the correct processing
baseline; xcloud's engine does that); non-finite values are read as 0, the value of missing
pixels in the released pipeline (the engine marks all-NaN pixels as no data anyway).

The baseline without SEnSeI-v2
------------------------------
``sensei-v2-baseline-segformer-b2-s2-unambiguous`` is the authors' comparison model
``SegFormerB2-S2-unambiguous``: a plain SegFormer-B2 (``NUM_CHANNELS: 13``, ``CLASSES: 4``)
whose input is the 13 Sentinel-2 L1C bands in the order of the released ``sentinel2_loader``
(B01 .. B08, B8A, B09 .. B12; :data:`SENTINEL2_L1C_BANDS`), as reflectance, without band
descriptors. As released, its logits (1/4 of the input size) are upsampled bilinearly
(``align_corners=False``) and softmaxed: 0 clear, 1 thick cloud, 2 thin cloud, 3 cloud shadow
(:class:`SEnSeIv2BaselineModel`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..data.bands import canonical_band_name
from ..errors import BandError, MissingWeightsError, WeightsError
from .classes import SENSEI_V2_4CLASS_SCHEME, SENSEI_V2_SCHEME, ClassScheme
from .fetch import resolve_weights
from .protocol import ModelInfo, Normalization
from .registry import PRECISIONS, ModelEntry, register
from .sensei_encoder import (
    DEFAULT_SENSEI_CONFIG,
    BaselineNetwork,
    HeadSpec,
    SEnSeIv2,
    descriptor_vector,
    descriptor_vectors,
)
from .sensei_published import (
    BASELINE_MODEL,
    LoadedWeights,
    load_published_baseline,
    load_weights,
    save_checkpoint,
)
from .torch_model import TorchCloudModel

__all__ = [
    "BASELINE_MODEL",
    "BASELINE_MODELS",
    "DEFAULT_RECOVERY",
    "HEADS",
    "LANDSAT89_DESCRIPTORS",
    "N_CLASSES",
    "PUBLISHED_MODELS",
    "SENSEI_V2_MODELS",
    "SENSOR_BANDS",
    "SENTINEL2_DESCRIPTORS",
    "SENTINEL2_L1C_BANDS",
    "SEnSeIv2",
    "SEnSeIv2BaselineModel",
    "SEnSeIv2Model",
    "band_descriptor",
    "band_descriptors",
    "band_names",
    "head_spec",
    "load_weights",
    "save_checkpoint",
    "sensei_v2",
    "sensei_v2_baseline_entry",
    "sensei_v2_entry",
]

N_CLASSES = 7
"""SEnSeI-v2's classes: land, water, snow, thin cloud, thick cloud, cloud shadow, no data."""

_REFLECTANCE = "TOA Reflectance"
_THERMAL = "TOA Normalised Brightness Temperature"


def _bands(rows: Sequence[tuple[str, str, float, float]]) -> dict[str, dict[str, Any]]:
    return {name: {"band_type": kind, "min_wavelength": low, "max_wavelength": high}
            for name, kind, low, high in rows}


SENTINEL2_DESCRIPTORS = _bands([
    ("B01", _REFLECTANCE, 425.0, 461.0), ("B02", _REFLECTANCE, 446.0, 542.0),
    ("B03", _REFLECTANCE, 537.5, 582.5), ("B04", _REFLECTANCE, 645.5, 684.5),
    ("B05", _REFLECTANCE, 694.0, 714.0), ("B06", _REFLECTANCE, 731.0, 749.0),
    ("B07", _REFLECTANCE, 767.0, 795.0), ("B08", _REFLECTANCE, 763.5, 904.5),
    ("B8A", _REFLECTANCE, 847.5, 880.5), ("B09", _REFLECTANCE, 930.5, 957.5),
    ("B10", _REFLECTANCE, 1337.0, 1413.0), ("B11", _REFLECTANCE, 1541.0, 1683.0),
    ("B12", _REFLECTANCE, 2074.0, 2314.0),
])
"""Sentinel-2 MSI descriptors of the released ``constants.py`` (wavelengths in nm)."""

LANDSAT89_DESCRIPTORS = _bands([
    ("B1", _REFLECTANCE, 435.0, 451.0), ("B2", _REFLECTANCE, 452.0, 512.0),
    ("B3", _REFLECTANCE, 533.5, 590.5), ("B4", _REFLECTANCE, 636.5, 673.5),
    ("B5", _REFLECTANCE, 851.0, 879.0), ("B6", _REFLECTANCE, 1566.5, 1651.5),
    ("B7", _REFLECTANCE, 2114.5, 2287.5), ("B8", _REFLECTANCE, 496.5, 683.5),
    ("B9", _REFLECTANCE, 1363.5, 1384.5), ("B10", _THERMAL, 10600.0, 11190.0),
    ("B11", _THERMAL, 11500.0, 12510.0),
])
"""Landsat 8/9 OLI/TIRS descriptors of the released ``constants.py`` (B10, B11 thermal)."""

SENSOR_BANDS: dict[str, dict[str, dict[str, Any]]] = {
    "sentinel-2": SENTINEL2_DESCRIPTORS,
    "landsat-8": LANDSAT89_DESCRIPTORS,
    "landsat-9": LANDSAT89_DESCRIPTORS,
    "sentinel-1": {"VV": {"band_type": "SAR VV"}, "VH": {"band_type": "SAR VH"},
                   "angle": {"band_type": "SAR Angle"}},
    "dem": {"dem": {"band_type": "DEM"}},
}
"""Descriptor tables by sensor; name a band ``"<sensor>:<band>"`` (Sentinel-2 bands also
plainly)."""

SENTINEL2_L1C_BANDS = tuple(SENTINEL2_DESCRIPTORS)
"""The 13 Sentinel-2 bands in the released order (B01 .. B08, B8A, B09 .. B12)."""


def _named(band: str) -> tuple[str, dict[str, Any]]:
    text = str(band).strip()
    sensor, _, name = text.rpartition(":")
    if not sensor and text.lower() == "dem":
        sensor, name = "dem", "dem"
    if sensor:
        table = SENSOR_BANDS.get(sensor.lower())
        if table is None:
            raise BandError(f"bands=: unknown sensor in {band!r}; sensors: "
                            f"{', '.join(SENSOR_BANDS)}")
        if table is SENTINEL2_DESCRIPTORS:
            name = canonical_band_name(name) or name
        key = next((k for k in table if k.lower() == name.lower()), None)
        if key is None:
            raise BandError(f"bands=: {sensor} has no band {name!r}; its bands: "
                            f"{', '.join(table)}")
        label = key if table is SENTINEL2_DESCRIPTORS else f"{sensor.lower()}:{key}"
        return label, dict(table[key])
    canonical = canonical_band_name(text)
    if canonical not in SENTINEL2_DESCRIPTORS:
        raise BandError(f"bands=: unknown band {band!r}: give a Sentinel-2 band (B01..B12, "
                        "B8A), a sensor-qualified band ('landsat-8:B10', 'sentinel-1:VV') or "
                        "a descriptor dict with 'band_type', 'min_wavelength', "
                        "'max_wavelength'")
    return canonical, dict(SENTINEL2_DESCRIPTORS[canonical])


def band_descriptor(band: str | Mapping[str, Any]) -> dict[str, Any]:
    """The released descriptor dict of a band name, or a copy of a descriptor dict (without
    its ``"name"``)."""
    if isinstance(band, Mapping):
        descriptor = {k: v for k, v in band.items() if k != "name"}
        try:
            descriptor_vector(descriptor)
        except BandError as error:
            raise BandError(f"bands=: {error}") from None
        return descriptor
    return _named(band)[1]


def band_names(bands: Sequence[str | Mapping[str, Any]]) -> tuple[str, ...]:
    """Canonical names of ``bands``: Sentinel-2 ``B02``, ``landsat-8:B10``..., a dict's
    ``"name"`` or ``descriptor<i>``; :class:`BandError` on unknown or repeated bands."""
    names = tuple(str(b.get("name", f"descriptor{i}")) if isinstance(b, Mapping)
                  else _named(b)[0] for i, b in enumerate(bands))
    if not names or len(set(names)) != len(names):
        raise BandError(f"bands= must name distinct bands, got {list(bands)}")
    return names


def band_descriptors(bands: Sequence[str | Mapping[str, Any]], *,
                     sensor: str | None = None) -> np.ndarray:
    """(len(bands), 74) float32 descriptor vectors (the default sensei config's layout).

    ``sensor`` qualifies names given plainly (``band_descriptors(["B2", "B10"],
    sensor="landsat-8")``).
    """
    if sensor is not None:
        bands = [f"{sensor}:{b}" if isinstance(b, str) and ":" not in b else b for b in bands]
    descriptors = DEFAULT_SENSEI_CONFIG["descriptors"]
    return descriptor_vectors([band_descriptor(b) for b in bands],
                              n_embeddings=descriptors["N_embeddings"],
                              size=descriptors["final_size"])


# -- building networks for training -----------------------------------------------------------

HEADS = ("segformer-b0", "segformer-b2", "deeplab", "deeplab-mobilenet_v2")
"""Heads :func:`sensei_v2` builds: SegFormer-B0/B2, DeepLabv3+ ResNet-34 or MobileNetV2."""

DEFAULT_RECOVERY = {"preconcatenation_layer_sizes": [64], "postconcatenation_layer_sizes": [32],
                    "sampling_rate": 4}
"""A recovery-module config (as the authors' ``RECOVERY_MODULE`` files)."""


def head_spec(head: str) -> HeadSpec:
    """The :class:`~xcloud.models.sensei_encoder.HeadSpec` of one of :data:`HEADS`."""
    if head not in HEADS:
        raise ValueError(f"unknown SEnSeI-v2 head {head!r}; heads: {', '.join(HEADS)}")
    if head.startswith("segformer"):
        from .segformer import segformer_config

        config = segformer_config(head.removeprefix("segformer-")).to_dict()
        return HeadSpec("segformer", {k: v for k, v in config.items()
                                      if k not in ("num_channels", "num_labels")})
    return HeadSpec("deeplab", encoder=head.removeprefix("deeplab").removeprefix("-")
                    or "resnet34")


def sensei_v2(head: str | HeadSpec = "segformer-b0", *, n_classes: int = N_CLASSES,
              sensei_config: Mapping[str, Any] | None = None,
              recovery: Mapping[str, Any] | None = None) -> SEnSeIv2:
    """A new SEnSeI-v2 network (the released architecture) with ``head``.

    ``sensei_config`` defaults to :data:`~xcloud.models.sensei_encoder.DEFAULT_SENSEI_CONFIG`;
    ``recovery`` (e.g. :data:`DEFAULT_RECOVERY`) adds the training-only recovery module.
    Build on ``torch.device("meta")`` to count parameters without allocating them.
    """
    spec = head if isinstance(head, HeadSpec) else head_spec(head)
    return SEnSeIv2(sensei_config, spec, n_classes=n_classes, recovery=recovery)


# -- the engine's model ------------------------------------------------------------------------

class SEnSeIv2Model(TorchCloudModel):
    """A loaded SEnSeI-v2 network for the engine: softmax over its classes, each image of a
    batch run alone (the released attention mixes the images of a batch), non-finite values
    read as 0.

    Parameters
    ----------
    network
        The :class:`~xcloud.models.sensei_encoder.SEnSeIv2` network.
    info
        Its metadata; ``info.bands`` names the input channels.
    descriptors
        One descriptor dict per input channel.
    device
        Torch device.
    loaded
        What ``weights=`` held (recovery-module keys dropped...), if known.
    """

    def __init__(self, network: SEnSeIv2, info: ModelInfo,
                 descriptors: Sequence[Mapping[str, Any]], *, device: str = "cpu",
                 loaded: LoadedWeights | None = None, precision: str = "float32") -> None:
        if len(descriptors) != len(info.bands):
            raise BandError(f"{len(descriptors)} descriptors for {len(info.bands)} bands")
        super().__init__(network, info, device=device, per_image=True, precision=precision)
        self.loaded = loaded
        self.descriptors = [dict(d) for d in descriptors]
        self._vectors = network.senseiv2.describe(self.descriptors).to(self.device)

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """Non-finite values as 0."""
        return np.nan_to_num(batch, nan=0.0, posinf=0.0, neginf=0.0)

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        """The network's logits, given the bands' descriptor vectors."""
        return self.network(tensor, self._vectors)


class SEnSeIv2BaselineModel(TorchCloudModel):
    """A loaded baseline without SEnSeI-v2 (the released ``FullModel`` with
    ``senseiv2=None``) for the engine: softmax over its classes, non-finite values read as 0.

    Parameters
    ----------
    network
        The :class:`~xcloud.models.sensei_encoder.BaselineNetwork`.
    info
        Its metadata; ``info.bands`` names the input channels, in the network's order.
    device
        Torch device.
    loaded
        What ``weights=`` held, if known.
    """

    def __init__(self, network: BaselineNetwork, info: ModelInfo, *, device: str = "cpu",
                 loaded: LoadedWeights | None = None, precision: str = "float32") -> None:
        if len(info.bands) != network.in_channels:
            raise BandError(f"{len(info.bands)} bands for a network of {network.in_channels} "
                            "input channels")
        super().__init__(network, info, device=device, precision=precision)
        self.loaded = loaded

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """Non-finite values as 0."""
        return np.nan_to_num(batch, nan=0.0, posinf=0.0, neginf=0.0)


_REFERENCE = ("Francis 2024, Sensor Independent Cloud and Shadow Masking With Partial Labels "
              "and Multimodal Inputs, IEEE Transactions on Geoscience and Remote Sensing 62")
_HF = "https://huggingface.co/aliFrancis/SEnSeIv2"
_TILE_SIZE = 256
_TILE_OVERLAP = 32


def _info(name: str, bands: tuple[str, ...], description: str, *,
          scheme: ClassScheme = SENSEI_V2_SCHEME) -> ModelInfo:
    return ModelInfo(
        name=name,
        version="SEnSeI-v2 as released (aliFrancis/SEnSeIv2 eba151dc)",
        bands=bands,
        resolution=10.0,
        scheme=scheme,
        normalization=Normalization("none"),
        tile_size=_TILE_SIZE,
        tile_overlap=_TILE_OVERLAP,
        level="L1C",
        licence=f"weights: GPL-3.0-only (the authors', {_HF}); code: Apache-2.0",
        weights_source=f"pass weights=FOLDER: a full-models/<name> folder of {_HF} (with "
                       "sensei-configs/ two levels up), or an xcloud SEnSeI-v2 checkpoint",
        needs_weights_file=True,
        description=description,
        references=(_REFERENCE,),
    )


def _load(info: ModelInfo, published_name: str | None, *,
          weights: str | os.PathLike[str] | None, device: str, runtime: str,
          bands: Sequence[str | Mapping[str, Any]] | None,
          precision: str = "float32") -> SEnSeIv2Model:
    if runtime not in ("auto", "torch"):
        raise ValueError(f"runtime=: SEnSeI-v2 runs on torch ('auto' or 'torch'), not "
                         f"{runtime!r}")
    weights = resolve_weights(info.name, weights)  # None: fetch the published folder
    if weights is None:
        raise MissingWeightsError(
            f"{info.name}: pass weights=FOLDER (a full-models/<name> folder of {_HF}, with "
            "its sensei-configs/, or one of the named published models, which xcloud "
            "fetches) or an xcloud checkpoint (.safetensors/.pt)")
    network, loaded = load_weights(weights, device=device)
    if published_name is not None and loaded.kind == "published" \
            and loaded.name != published_name:
        raise WeightsError(f"weights={weights} holds {loaded.name!r}, not {published_name!r}; "
                           f"load it with model='{_entry_for(loaded.name, network.n_classes)}'")
    expected = len(info.scheme.classes)
    if network.n_classes != expected:
        raise WeightsError(
            f"weights={weights} holds a {network.n_classes}-class model ({loaded.name}), but "
            f"model='{info.name}' has {expected} classes ({', '.join(info.scheme.names)}); "
            f"load it with model='{_entry_for(loaded.name, network.n_classes)}'")
    chosen = bands if bands is not None else (loaded.bands or SENTINEL2_L1C_BANDS)
    names = band_names(chosen)
    descriptors = [band_descriptor(b) for b in chosen]
    source = f"{loaded.path} ({loaded.kind}: {loaded.name})"
    if loaded.dropped:
        source += f"; dropped training-only {', '.join(loaded.dropped)}"
    version = f"{loaded.name} ({network.head_spec.kind} head)"
    return SEnSeIv2Model(network, replace(info, bands=names, weights_source=source,
                                          version=version),
                         descriptors, device=device, loaded=loaded, precision=precision)


def _entry_for(published_name: str, n_classes: int) -> str:
    """The xcloud model to load a SEnSeI-v2 model of ``n_classes`` with."""
    if n_classes == N_CLASSES:
        return next((name for name, published in PUBLISHED_MODELS.items()
                     if published == published_name and name != _FOUR_CLASS_MODEL),
                    "sensei-v2")
    if n_classes == len(SENSEI_V2_4CLASS_SCHEME.classes):
        return _FOUR_CLASS_MODEL
    return "<none: xcloud runs 7- and 4-class SEnSeI-v2 models>"


def sensei_v2_entry(name: str, *, published_name: str | None = None,
                    description: str = "", scheme: ClassScheme = SENSEI_V2_SCHEME
                    ) -> ModelEntry:
    """A registry entry: ``published_name`` pins the published model (its ``NAME``); None
    takes any published folder or xcloud checkpoint (the config decides the head). ``scheme``
    names the network's output channels; weights with another number of classes are
    refused."""
    info = _info(name, SENTINEL2_L1C_BANDS, description or (
        f"SEnSeI-v2 {published_name or '(any published model or xcloud checkpoint)'}: "
        f"{', '.join(c.description for c in scheme.classes)}; any bands (bands=)"),
        scheme=scheme)
    if published_name is not None:
        info = replace(info, weights_source=f"published: full-models/{published_name} of {_HF} "
                       "(fetched on first use), or weights=FOLDER")

    def load(*, weights: str | os.PathLike[str] | None = None, device: str = "cpu",
             runtime: str = "auto",
             bands: Sequence[str | Mapping[str, Any]] | None = None,
             precision: str = "float32") -> SEnSeIv2Model:
        return _load(info, published_name, weights=weights, device=device, runtime=runtime,
                     bands=bands, precision=precision)

    return ModelEntry(info=info, loader=load, precisions=PRECISIONS)


_FOUR_CLASS_MODEL = "sensei-v2-deeplabv3-s2-unambiguous"

PUBLISHED_MODELS = {
    "sensei-v2-segformer-b2-alldata-ambiguous": "SEnSeIv2-SegFormerB2-alldata-ambiguous",
    "sensei-v2-segformer-b2-s2-ambiguous": "SEnSeIv2-SegFormerB2-S2-ambiguous",
    _FOUR_CLASS_MODEL: "SEnSeIv2-DeepLabv3-S2-unambiguous",
}
"""xcloud names of the authors' published SEnSeI-v2 models (their ``NAME``; the first is the
default of their README). ``sensei-v2-deeplabv3-s2-unambiguous`` has 4 classes
(:data:`~xcloud.models.classes.SENSEI_V2_4CLASS_SCHEME`), the others 7."""

BASELINE_MODELS = {BASELINE_MODEL: "SegFormerB2-S2-unambiguous"}
"""xcloud names of the authors' published models without SEnSeI-v2 (:data:`BASELINE_MODELS`
entries load them with :func:`sensei_v2_baseline_entry`)."""


def _load_baseline(info: ModelInfo, published_name: str, *,
                   weights: str | os.PathLike[str] | None, device: str, runtime: str,
                   bands: Sequence[str] | None,
                   precision: str = "float32") -> SEnSeIv2BaselineModel:
    if runtime not in ("auto", "torch"):
        raise ValueError(f"runtime=: {info.name} runs on torch ('auto' or 'torch'), not "
                         f"{runtime!r}")
    weights = resolve_weights(info.name, weights)  # None: fetch the published folder
    if weights is None:
        raise MissingWeightsError(
            f"{info.name}: pass weights=FOLDER (the full-models/{published_name} folder of "
            f"{_HF})")
    network, loaded = load_published_baseline(weights, device=device)
    if loaded.name != published_name:
        raise WeightsError(f"weights={weights} holds {loaded.name!r}, not {published_name!r}")
    expected = len(info.scheme.classes)
    if network.n_classes != expected:
        raise WeightsError(f"weights={weights} holds a {network.n_classes}-class model, but "
                           f"model='{info.name}' has {expected} classes "
                           f"({', '.join(info.scheme.names)})")
    if bands is None:
        if network.in_channels != len(SENTINEL2_L1C_BANDS):
            raise BandError(f"bands=: weights={weights} takes {network.in_channels} bands "
                            "(NUM_CHANNELS); name them, in the network's order")
        bands = SENTINEL2_L1C_BANDS
    names = band_names(bands)
    if len(names) != network.in_channels:
        raise BandError(f"bands=: {info.name} takes {network.in_channels} bands "
                        f"(NUM_CHANNELS of weights={weights}), in its order, got {len(names)}")
    return SEnSeIv2BaselineModel(
        network, replace(info, bands=names, weights_source=f"{loaded.path} (published: "
                         f"{loaded.name})", version=f"{loaded.name} (no SEnSeI-v2)"),
        device=device, loaded=loaded, precision=precision)


def sensei_v2_baseline_entry(name: str, published_name: str, *,
                             scheme: ClassScheme = SENSEI_V2_4CLASS_SCHEME) -> ModelEntry:
    """A registry entry for one of the authors' published models without SEnSeI-v2: the
    bands go straight into the head (:class:`SEnSeIv2BaselineModel`); ``bands=`` renames the
    input channels (default: the 13 Sentinel-2 L1C bands in the released loader's order)."""
    info = _info(name, SENTINEL2_L1C_BANDS,
                 f"{published_name}, the authors' comparison model without SEnSeI-v2: "
                 f"{', '.join(c.description for c in scheme.classes)}; the 13 Sentinel-2 L1C "
                 "bands, in the released loader's order", scheme=scheme)
    info = replace(info, weights_source=f"published: full-models/{published_name} of {_HF} "
                   "(fetched on first use), or weights=FOLDER")

    def load(*, weights: str | os.PathLike[str] | None = None, device: str = "cpu",
             runtime: str = "auto", bands: Sequence[str] | None = None,
             precision: str = "float32") -> SEnSeIv2BaselineModel:
        return _load_baseline(info, published_name, weights=weights, device=device,
                              runtime=runtime, bands=bands, precision=precision)

    return ModelEntry(info=info, loader=load, precisions=PRECISIONS)


SENSEI_V2_MODELS = {entry.name: register(entry, overwrite=True) for entry in (
    sensei_v2_entry("sensei-v2"),
    *(sensei_v2_entry(name, published_name=published,
                      scheme=SENSEI_V2_4CLASS_SCHEME if name == _FOUR_CLASS_MODEL
                      else SENSEI_V2_SCHEME)
      for name, published in PUBLISHED_MODELS.items()),
    *(sensei_v2_baseline_entry(name, published) for name, published in BASELINE_MODELS.items()))}
"""The registered models: ``sensei-v2`` (any folder or checkpoint), the published SEnSeI-v2
models and the published baseline without SEnSeI-v2."""
