"""KappaMask (Domnich et al. 2021, Remote Sensing 13, 4100): the published networks for the engine.

KappaZeta publishes four Keras HDF5 weights files, ``{l1c,l2a}_{unet,deeplabv3plus}.hdf5``,
read here as they are (no conversion; :mod:`xcloud.models.keras_hdf5`), plus xcloud's own
checkpoints (:func:`save_checkpoint`, what ``xcloud.train`` writes) of the same U-Net:

==============================  ==========  =====  =========================================
model                           network     bands  published file
==============================  ==========  =====  =========================================
``kappamask-l1c``               U-Net          13  ``l1c_unet.hdf5``
``kappamask-l2a``               U-Net          13  ``l2a_unet.hdf5``
``kappamask-l1c-deeplabv3plus`` DeepLabv3+     13  ``l1c_deeplabv3plus.hdf5``
``kappamask-l2a-deeplabv3plus`` DeepLabv3+     14  ``l2a_deeplabv3plus.hdf5``
==============================  ==========  =====  =========================================

Bands, in channel order, as km_predict gives them: L1C (both networks) B01 B02 B03 B04 B05 B06
B07 B08 B8A B09 B10 B11 B12; L2A U-Net AOT B01 B02 B03 B04 B05 B06 B08 B8A B09 B11 B12 WVP (no
B07, no B10); L2A DeepLabv3+ the same with B07 after B06. A file's architecture and width are
read from the file (:class:`~xcloud.models.kappamask_unet.KappaMaskUNet`,
``xcloud.models.kappamask_deeplab``); a file of the other architecture names the model that
takes it.

Normalisation (km_predict's DataGenerator): ``x = max(0, v / max_v)`` per band, where ``v`` is
the digital number over 65535 and ``max_v`` the generator's table for the level and network
(:data:`KAPPAMASK_MAX_V`; no upper clip). From :func:`xcloud.load`'s units (reflectance =
(DN + offset) / 10000, AOT and WVP = DN / 1000) that is ``x = max(0, value / (max_v * 65535 /
10000))`` (``/ 1000`` for AOT and WVP): :data:`~xcloud.models.protocol.Normalization` kind
``"minmax_floor"``. Two differences from km_predict, both fixes of its pipeline:

- km_predict adds ``offset / 65535`` to ``max_v`` on every ``DataGenerator.__getitem__`` and
  Keras' ``predict`` calls it twice per batch, so every batch is normalised with
  ``max_v + 2 * offset / 65535`` (L1C of processing baseline >= 04.00, offset -1000: B10
  0.055 -> 0.0245, every band 0.0305 lower). xcloud uses ``max_v``.
- km_predict applies no offset to L2A (it looks for the L1C metadata field); xcloud's
  reflectance has the BOA offset applied, which is what the training data (baseline < 04.00,
  no offset) looked like.

Outputs: all six channels in the authors' order (UNDEFINED, CLEAR, CLOUD_SHADOW,
SEMI_TRANSPARENT_CLOUD, CLOUD, MISSING): the U-Net's independent sigmoids, DeepLabv3+'s softmax;
the class is the argmax over all six, written as the channel index
(:data:`~xcloud.models.classes.KAPPAMASK_SCHEME`, km_predict's product coding with UNDEFINED 0).
Tiles: 512 px with 32 px overlap, as km_predict's sub-tiles (overlap 0.0625); xcloud blends
the overlaps where km_predict crops 16 px from each shared edge.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from .._version import __version__
from ..data.bands import canonical_band_name
from ..errors import MissingWeightsError, WeightsError
from ._checkpoint import (
    SUFFIXES,
    dump_metadata,
    load_state,
    parse_metadata,
    read_checkpoint,
    write_checkpoint,
)
from .classes import KAPPAMASK_SCHEME
from .fetch import resolve_weights
from .kappamask_unet import KAPPAMASK_CHANNELS, KappaMaskConfig, KappaMaskUNet
from .keras_hdf5 import KerasWeights, is_keras_hdf5, read_keras_weights
from .protocol import ModelInfo, Normalization
from .registry import PRECISIONS, ModelEntry, register
from .torch_model import TorchCloudModel

__all__ = [
    "KAPPAMASK_CHANNELS",
    "KAPPAMASK_L1C_BANDS",
    "KAPPAMASK_L2A_BANDS",
    "KAPPAMASK_L2A_DEEPLAB_BANDS",
    "KAPPAMASK_MAX_V",
    "KAPPAMASK_MODELS",
    "CheckpointMeta",
    "KappaMaskConfig",
    "KappaMaskModel",
    "KappaMaskUNet",
    "bands_of",
    "default_range",
    "kappamask_normalization",
    "load_checkpoint",
    "model_name",
    "save_checkpoint",
]

KAPPAMASK_L1C_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09",
                       "B10", "B11", "B12")
"""Level-1C input of both networks, in channel order: the 13 bands."""

KAPPAMASK_L2A_BANDS = ("AOT", "B01", "B02", "B03", "B04", "B05", "B06", "B08", "B8A", "B09",
                       "B11", "B12", "WVP")
"""Level-2A input of the U-Net, in channel order: AOT, 11 bands (no B07, no B10), WVP."""

KAPPAMASK_L2A_DEEPLAB_BANDS = ("AOT", "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08",
                               "B8A", "B09", "B11", "B12", "WVP")
"""Level-2A input of DeepLabv3+, in channel order: the U-Net's with B07 after B06."""

UNET, DEEPLAB = "unet", "deeplabv3plus"
_ARCHITECTURES = (UNET, DEEPLAB)
_LEVELS = ("L1C", "L2A")
_BANDS = {("L1C", UNET): KAPPAMASK_L1C_BANDS, ("L1C", DEEPLAB): KAPPAMASK_L1C_BANDS,
          ("L2A", UNET): KAPPAMASK_L2A_BANDS, ("L2A", DEEPLAB): KAPPAMASK_L2A_DEEPLAB_BANDS}

KAPPAMASK_MAX_V: dict[tuple[str, str], tuple[float, ...]] = {
    ("L1C", UNET): (0.21, 0.326, 0.264, 0.298, 0.245, 0.258, 0.266, 0.364, 0.259, 0.165, 0.055,
                    0.203, 0.208),
    ("L1C", DEEPLAB): (0.2065003365278244, 0.3510643243789673, 0.3327534794807434,
                       0.3624475598335266, 0.29547569155693054, 0.29562827944755554,
                       0.29103532433509827, 0.3791866898536682, 0.2850232720375061,
                       0.18451209366321564, 0.0799115002155304, 0.24786755442619324,
                       0.24827954173088074),
    ("L2A", UNET): (0.003906309604644775, 0.2833447754383087, 0.27905699610710144,
                    0.2668497860431671, 0.2558480203151703, 0.250980406999588,
                    0.24597543478012085, 0.24182498455047607, 0.24206912517547607,
                    0.2535133957862854, 0.2232242375612259, 0.23524834215641022,
                    0.07557793706655502),
    ("L2A", DEEPLAB): (0.010711833834648132, 0.32552072405815125, 0.3022507131099701,
                       0.28221559524536133, 0.2690470814704895, 0.27560845017433167,
                       0.2571450471878052, 0.2557412087917328, 0.2529335618019104,
                       0.2544899582862854, 0.2657511234283447, 0.2381628155708313,
                       0.2401922643184662, 0.14035248756408691),
}
"""km_predict's DataGenerator maxima ``max_v`` (DN / 65535) per ``(level, architecture)``, in
the bands' channel order (the minima are all 0)."""

_DN_RANGE = 65535.0
_DN_PER_UNIT = {"AOT": 1000.0, "WVP": 1000.0}  # as xcloud.load scales them; 10000 otherwise
_FORMAT = "xcloud-kappamask"
_FORMAT_VERSION = 2
_METADATA_KEY = "xcloud_kappamask"
_TILE_SIZE = 512
_TILE_OVERLAP = 32
_PUBLISHED_NAME = re.compile(r"(l1c|l2a)_(unet|deeplabv3plus)\.hdf5", re.IGNORECASE)
_SOURCE = "http://kappamask.s3-website.eu-central-1.amazonaws.com/model_weights/2022-09-13/"
_REFERENCE = ("Domnich et al. 2021, KappaMask: AI-based cloudmask processor for Sentinel-2, "
              "Remote Sensing 13(20), 4100")


def _level(level: str) -> str:
    upper = str(level).upper()
    if upper not in _LEVELS:
        raise ValueError(f"level must be 'L1C' or 'L2A', got {level!r}")
    return upper


def _architecture(architecture: str) -> str:
    lower = str(architecture).lower()
    if lower not in _ARCHITECTURES:
        raise ValueError(f"architecture must be 'unet' or 'deeplabv3plus', got "
                         f"{architecture!r}")
    return lower


def model_name(level: str, architecture: str = UNET) -> str:
    """The registry name of a published network: ``kappamask-l1c``,
    ``kappamask-l2a-deeplabv3plus``, ..."""
    level, architecture = _level(level), _architecture(architecture)
    suffix = "" if architecture == UNET else f"-{DEEPLAB}"
    return f"kappamask-{level.lower()}{suffix}"


def bands_of(level: str, architecture: str = UNET) -> tuple[str, ...]:
    """The input bands of a published network, in channel order."""
    return _BANDS[_level(level), _architecture(architecture)]


def _units(bands: Sequence[str]) -> np.ndarray:
    return np.array([_DN_PER_UNIT.get(b, 10000.0) for b in bands])


def default_range(level: str, architecture: str = UNET
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """km_predict's min-max range (minimum, maximum) of a network, in :func:`xcloud.load`
    units and the network's band order.

    The maxima are :data:`KAPPAMASK_MAX_V` (DN / 65535) times 65535 / 10000 (reflectance) or
    65535 / 1000 (AOT, WVP); the minima are 0.
    """
    key = (_level(level), _architecture(architecture))
    maximum = np.asarray(KAPPAMASK_MAX_V[key]) * _DN_RANGE / _units(_BANDS[key])
    return (0.0,) * len(maximum), tuple(float(v) for v in maximum)


def kappamask_normalization(level: str, architecture: str = UNET) -> Normalization:
    """km_predict's normalisation of a network from :func:`xcloud.load` units:
    ``max(0, value / maximum)`` (kind ``"minmax_floor"``; see the module docstring)."""
    minimum, maximum = default_range(level, architecture)
    return Normalization("minmax_floor", minimum, maximum)


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class CheckpointMeta:
    """What an xcloud KappaMask checkpoint says besides its tensors.

    ``minimum``/``maximum`` are the min-max normalisation per band, in the units of
    :func:`xcloud.load` (reflectance; AOT and WVP divided by 1000) and in ``bands`` order;
    values below the minimum become 0, as in km_predict. ``extra`` is free JSON (training
    history, epoch...).
    """

    config: KappaMaskConfig
    bands: tuple[str, ...]
    minimum: tuple[float, ...]
    maximum: tuple[float, ...]
    level: str
    xcloud_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    def normalization(self, bands: Sequence[str] | None = None) -> Normalization:
        """The :class:`Normalization` for ``bands`` (a reordering) or :attr:`bands`."""
        order = [self.bands.index(b) for b in bands or self.bands]
        low = tuple(self.minimum[i] for i in order)
        span = tuple(self.maximum[i] - self.minimum[i] for i in order)
        return Normalization("minmax_floor", low, span)

    def to_json(self) -> str:
        """The metadata as stored in the checkpoint."""
        return dump_metadata(asdict(self), format_name=_FORMAT, version=_FORMAT_VERSION)

    @classmethod
    def from_json(cls, text: str, *, source: object = "checkpoint") -> CheckpointMeta:
        """Parse and check :meth:`to_json`'s output; :class:`WeightsError` if it does not fit."""
        try:
            version = json.loads(text).get("format_version") if text else None
            data = parse_metadata(text, format_name=_FORMAT)
            meta = cls(config=KappaMaskConfig.from_dict(data.pop("config")),
                       bands=tuple(data.pop("bands")), minimum=tuple(data.pop("minimum")),
                       maximum=tuple(data.pop("maximum")), **data)
        except (TypeError, ValueError, KeyError, AttributeError) as error:
            raise WeightsError(f"{source} has no readable xcloud KappaMask metadata ({error}); "
                               "write checkpoints with xcloud.models.kappamask.save_checkpoint"
                               ) from None
        if version != _FORMAT_VERSION:
            raise WeightsError(
                f"{source} is an xcloud KappaMask checkpoint of format version {version}, "
                f"written for the earlier 5-channel softmax network; this xcloud reads version "
                f"{_FORMAT_VERSION} (the published 6-channel sigmoid network): train it again "
                f"with xcloud.train"
            )
        meta.check(source)
        return meta

    def check(self, source: object = "checkpoint") -> None:
        """Raise :class:`WeightsError` unless bands, range and level fit together."""
        n = self.config.in_channels
        unknown = [b for b in self.bands if canonical_band_name(b) != b]
        problems = [
            (len(self.bands) != n, f"{len(self.bands)} bands for {n} input channels"),
            (len(set(self.bands)) != len(self.bands), f"repeated bands {self.bands}"),
            (bool(unknown), f"bands {unknown} that are not canonical Sentinel-2 names"),
            (not len(self.minimum) == len(self.maximum) == n,
             f"{len(self.minimum)} minima and {len(self.maximum)} maxima for {n} bands"),
            (not all(np.isfinite(self.minimum)) or not all(np.isfinite(self.maximum)),
             "a minimum or maximum that is not finite"),
            (any(hi <= lo for lo, hi in zip(self.minimum, self.maximum, strict=False)),
             "a maximum that is not above its minimum"),
            (self.level not in _LEVELS, f"level {self.level!r}, not 'L1C' or 'L2A'"),
        ]
        found = [text for bad, text in problems if bad]
        if found:
            raise WeightsError(f"{source} does not fit a KappaMask model: {'; '.join(found)}")


def save_checkpoint(path: str | os.PathLike[str], model: KappaMaskUNet, *,
                    bands: Sequence[str], minimum: Sequence[float], maximum: Sequence[float],
                    level: str, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` with its bands and normalisation, for ``predict(weights=path)``.

    Parameters
    ----------
    path
        ``.safetensors`` (tensors, metadata as a JSON string in the header) or ``.pt``/``.pth``
        (a plain dict ``{"state_dict": tensors, "xcloud_kappamask": JSON string}`` that
        ``torch.load(path, weights_only=True)`` reads). Written atomically.
    model
        The network.
    bands
        Input bands in the network's channel order (any alias, e.g. ``"blue"``).
    minimum, maximum
        Min-max normalisation per band, in :func:`xcloud.load` units (see
        :func:`default_range`).
    level
        ``"L1C"`` or ``"L2A"``: which of ``kappamask-l1c``/``kappamask-l2a`` loads it.
    extra
        JSON-serialisable extras (training history, epoch...).

    Returns
    -------
    pathlib.Path
        The written file.
    """
    path = Path(path)
    canonical = tuple(canonical_band_name(b) or str(b) for b in bands)
    meta = CheckpointMeta(model.config, canonical, tuple(float(v) for v in minimum),
                          tuple(float(v) for v in maximum), str(level).upper(),
                          extra=dict(extra or {}))
    meta.check("the checkpoint to save")
    return write_checkpoint(path, model, key=_METADATA_KEY, metadata=meta.to_json())


def load_checkpoint(path: str | os.PathLike[str], *,
                    map_location: str | torch.device = "cpu"
                    ) -> tuple[KappaMaskUNet, CheckpointMeta]:
    """Read a :func:`save_checkpoint` file: the network (in eval mode) and its metadata.

    Nothing is unpickled (torch files are read with ``weights_only=True``); tensors, keys
    and shapes are checked against the configuration in the metadata.

    Raises
    ------
    MissingWeightsError
        The file does not exist.
    WeightsError
        It is not a KappaMask checkpoint or its tensors do not fit its configuration.
    """
    path = Path(path).expanduser()
    tensors, text = read_checkpoint(path, key=_METADATA_KEY, map_location=map_location)
    meta = CheckpointMeta.from_json(text, source=path)
    network = KappaMaskUNet.from_config(meta.config).to(map_location)
    load_state(network, tensors, source=path)
    return network.eval(), meta


# --------------------------------------------------------------------------- the model


class KappaMaskModel(TorchCloudModel):
    """A KappaMask network loaded for the engine.

    ``network`` maps normalised input ``(N, bands, H, W)`` to the six outputs ``(N, 6, H, W)``
    in the authors' channel order (U-Net: sigmoids; DeepLabv3+: softmax). ``band_order`` maps
    ``info.bands`` to the network's channels when they differ (a checkpoint whose bands are in
    another order). ``classify`` is the argmax over all six channels.
    """

    def __init__(self, network: nn.Module, info: ModelInfo, *, device: str = "cpu",
                 band_order: Sequence[int] | None = None,
                 meta: CheckpointMeta | None = None, precision: str = "float32") -> None:
        super().__init__(network, info, device=device, precision=precision)
        self.meta = meta
        order = list(band_order) if band_order is not None else None
        self._order = None if order is None or order == list(range(len(order))) else order

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """The batch in the network's band order."""
        return batch if self._order is None else batch[:, self._order]

    def outputs(self, raw: torch.Tensor) -> torch.Tensor:
        """The network's own outputs: its sigmoids (U-Net) or softmax (DeepLabv3+)."""
        return raw


def _no_weights(name: str, level: str, architecture: str) -> str:
    published = f"{level.lower()}_{architecture}.hdf5"
    text = (f"{name}: pass weights=PATH to the published {published} (from "
            f"{_SOURCE}{published}, read as it is)")
    if architecture == UNET:
        text += (f", or an xcloud checkpoint (.safetensors or .pt) trained with `xcloud train` "
                 f"/ xcloud.train(..., level={level!r})")
    return text


def _info(level: str, architecture: str, *, normalization: Normalization, version: str,
          weights_source: str, bands: tuple[str, ...] | None = None) -> ModelInfo:
    network = "U-Net" if architecture == UNET else "DeepLabv3+"
    return ModelInfo(
        name=model_name(level, architecture),
        version=version,
        bands=bands or _BANDS[level, architecture],
        resolution=10.0,
        scheme=KAPPAMASK_SCHEME,
        normalization=normalization,
        tile_size=_TILE_SIZE,
        tile_overlap=_TILE_OVERLAP,
        level=level,
        licence="weights: unstated by KappaZeta (ask them before commercial use); "
                "km_predict code: Apache-2.0",
        weights_source=weights_source,
        needs_weights_file=True,
        description=f"KappaMask {network}, {level}: undefined, clear, cloud shadow, "
                    f"semi-transparent cloud, cloud, missing",
        references=(_REFERENCE,),
    )


def _deeplab_module() -> ModuleType | None:
    try:
        from . import kappamask_deeplab
    except ImportError:
        return None
    return kappamask_deeplab


def _file_architecture(weights: KerasWeights, path: Path) -> str:
    deeplab = _deeplab_module()
    if deeplab is not None and deeplab.KappaMaskDeepLabV3Plus.looks_like(weights.layers):
        return DEEPLAB
    if KappaMaskUNet.looks_like(weights.layers):
        return UNET
    raise WeightsError(f"weights={path} is a Keras HDF5 file ({len(weights.layers)} weighted "
                       f"layers) but neither a KappaMask U-Net nor a KappaMask DeepLabv3+; pass "
                       f"one of the published {{l1c,l2a}}_{{unet,deeplabv3plus}}.hdf5")


def _in_channels(weights: KerasWeights) -> int:
    first = weights.layers[0].arrays[0]
    return int(first.shape[2])


def _check_file_fits(path: Path, level: str, architecture: str, weights: KerasWeights) -> None:
    name = model_name(level, architecture)
    found = _file_architecture(weights, path)
    channels = _in_channels(weights)
    if found != architecture:
        if found == UNET:
            right = f"model='{model_name(level, UNET)}' (or the other level's U-Net)"
        else:
            right = f"model='{model_name('L2A' if channels == 14 else level, DEEPLAB)}'"
        raise WeightsError(f"weights={path} holds a KappaMask "
                           f"{'U-Net' if found == UNET else 'DeepLabv3+'}, not the "
                           f"{'U-Net' if architecture == UNET else 'DeepLabv3+'} of {name}; "
                           f"use {right}")
    published = _PUBLISHED_NAME.fullmatch(path.name)
    if published and model_name(published[1], published[2]) != name:
        raise WeightsError(f"weights={path} is named like the published file of "
                           f"model='{model_name(published[1], published[2])}'; use that model, "
                           f"or pass {level.lower()}_{architecture}.hdf5 to {name}")
    needed = len(_BANDS[level, architecture])
    if channels != needed:
        raise WeightsError(f"weights={path} takes {channels} input bands; {name} takes "
                           f"{needed} ({' '.join(_BANDS[level, architecture])})")


def _keras_network(path: Path, level: str, architecture: str) -> tuple[nn.Module, str]:
    weights = read_keras_weights(path)
    _check_file_fits(path, level, architecture, weights)
    if architecture == DEEPLAB:
        deeplab = _deeplab_module()
        assert deeplab is not None  # _file_architecture found it
        network = deeplab.KappaMaskDeepLabV3Plus(_in_channels(weights), 6)
        network.load_keras_layers(weights.layers)
        return network, f"{path.name} (Keras {weights.keras_version or '?'}, DeepLabv3+)"
    config = KappaMaskConfig.from_keras_layers(weights.layers)
    if config.n_classes != len(KAPPAMASK_CHANNELS):
        raise WeightsError(f"weights={path} has {config.n_classes} output channels; the "
                           f"KappaMask networks have {len(KAPPAMASK_CHANNELS)}")
    network = KappaMaskUNet.from_config(config)
    network.load_keras_layers(weights.layers)
    return network, (f"{path.name} (Keras {weights.keras_version or '?'}, U-Net "
                     f"{config.depth} levels x {config.filters} filters)")


def _checkpoint_model(path: Path, level: str, architecture: str, *,
                      device: str, precision: str) -> KappaMaskModel:
    name = model_name(level, architecture)
    if architecture != UNET:
        raise WeightsError(f"weights={path}: xcloud checkpoints hold the KappaMask U-Net; load "
                           f"them with model='{model_name(level, UNET)}', or pass the published "
                           f"{level.lower()}_{DEEPLAB}.hdf5 to {name}")
    network, meta = load_checkpoint(path)
    if meta.level != level:
        raise WeightsError(f"weights={path} was saved for level {meta.level}; use it with "
                           f"model='{model_name(meta.level, UNET)}', or pass a {level} "
                           "checkpoint")
    layout = _BANDS[level, UNET]
    missing = [b for b in layout if b not in meta.bands]
    extra = [b for b in meta.bands if b not in layout]
    if missing or extra:
        raise WeightsError(f"weights={path} has bands {', '.join(meta.bands)}; {name} needs "
                           f"{', '.join(layout)} (missing: {missing}, not used: {extra})")
    if meta.config.n_classes != len(KAPPAMASK_CHANNELS):
        raise WeightsError(f"weights={path} predicts {meta.config.n_classes} channels; KappaMask "
                           f"has {len(KAPPAMASK_CHANNELS)} ({', '.join(KAPPAMASK_CHANNELS)})")
    config = meta.config
    info = _info(level, UNET, normalization=meta.normalization(layout),
                 version=f"{path.name} (xcloud checkpoint, U-Net {config.depth} levels x "
                         f"{config.filters} filters)",
                 weights_source=str(path))
    order = [layout.index(b) for b in meta.bands]
    return KappaMaskModel(network, info, device=device, band_order=order, meta=meta,
                          precision=precision)


def _load_model(level: str, architecture: str, weights: str | os.PathLike[str] | None,
                device: str, runtime: str, precision: str) -> KappaMaskModel:
    if runtime not in ("auto", "torch"):
        raise ValueError(f"KappaMask runs on torch: runtime must be 'auto' or 'torch', "
                         f"not {runtime!r}")
    name = model_name(level, architecture)
    path = resolve_weights(name, weights)  # None: fetch the published file into the cache
    if path is None:
        raise MissingWeightsError(_no_weights(name, level, architecture))
    if not path.is_file():
        raise MissingWeightsError(f"weights={path} is not a file; "
                                  f"{_no_weights(name, level, architecture)}")
    if path.suffix in SUFFIXES:
        return _checkpoint_model(path, level, architecture, device=device,
                                 precision=precision)
    if not is_keras_hdf5(path):
        raise WeightsError(f"weights={path} is neither an HDF5 file nor an xcloud checkpoint "
                           f"({', '.join(SUFFIXES)}); {_no_weights(name, level, architecture)}")
    network, version = _keras_network(path, level, architecture)
    info = _info(level, architecture, normalization=kappamask_normalization(level, architecture),
                 version=version, weights_source=str(path))
    return KappaMaskModel(network, info, device=device, precision=precision)


def _entry(level: str, architecture: str) -> ModelEntry:
    def load(*, weights: str | os.PathLike[str] | None = None, device: str = "cpu",
             runtime: str = "auto", precision: str = "float32") -> KappaMaskModel:
        return _load_model(level, architecture, weights, device, runtime, precision)

    published = f"{level.lower()}_{architecture}.hdf5"
    info = _info(level, architecture, normalization=kappamask_normalization(level, architecture),
                 version=f"KappaZeta's published {published} (2022-09-13), read as it is",
                 weights_source=f"published: {_SOURCE}{published} (fetched on first use), "
                                f"or weights=PATH")
    return ModelEntry(info=info, loader=load, precisions=PRECISIONS)


KAPPAMASK_MODELS = {entry.name: register(entry, overwrite=True)
                    for entry in (_entry(level, architecture) for level in _LEVELS
                                  for architecture in _ARCHITECTURES)}
