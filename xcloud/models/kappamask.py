"""KappaMask (Domnich et al. 2021, Remote Sensing 13, 4100): a U-Net for Sentinel-2 L1C/L2A.

The network is the published Keras model in torch: per level two 3x3 convolutions with ReLU
(``padding="same"``, He-normal initialisation), 2x2 max pooling, dropout 0.5 on the two deepest
levels, nearest-neighbour upsampling followed by a 2x2 convolution and concatenation with the
skip connection, then a 3x3 convolution to 2 channels and a 1x1 convolution to the classes.
Depth (levels including the bottleneck) and width (filters of the first level, doubling per
level) are parameters: the paper's grid is 5/6/7 levels x 32/64/128 filters.

=====================  ======  =======  =============
network                levels  filters     parameters
=====================  ======  =======  =============
L1C (13 bands)              5       64     31,038,609
L2A (14 bands)              5       64     31,039,185
L1C, smallest of grid       5       32      7,763,537
L1C, largest of grid        7      128  1,990,631,697
=====================  ======  =======  =============

The default L1C network has 31,038,609 parameters (the published Keras model, with its 6th
output channel, 31,038,612; with one input band and one class, 31,031,685 as the classic
U-Net it derives from).

Output channel ``k`` is KappaMask class ``k``: 0 MISSING, 1 CLEAR, 2 CLOUD SHADOW,
3 SEMI-TRANSPARENT CLOUD, 4 CLOUD (and 5 UNDEFINED in networks trained with it, as the
published Keras weights are). :class:`KappaMaskModel` predicts channels 1-4 (softmax over
them); missing data is found from the input and gets the value 0, KappaMask's own code.

No weights ship with xcloud: ``kappamask-l1c`` and ``kappamask-l2a`` load a local checkpoint
(:func:`save_checkpoint`: safetensors, or a weights-only torch file) that carries its bands
and its min-max normalisation. Inference follows the paper: 512 px tiles, 32 px overlap.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._optional import import_optional
from .._version import __version__
from ..data.bands import canonical_band_name
from ..errors import MissingWeightsError, WeightsError
from ._checkpoint import (
    check_suffix,
    dump_metadata,
    load_state,
    parse_metadata,
    read_checkpoint,
)
from .classes import KAPPAMASK_SCHEME
from .protocol import BaseCloudModel, ModelInfo, Normalization
from .registry import ModelEntry, register

__all__ = [
    "KAPPAMASK_L1C_BANDS",
    "KAPPAMASK_L2A_BANDS",
    "KAPPAMASK_MODELS",
    "CheckpointMeta",
    "KappaMaskConfig",
    "KappaMaskModel",
    "KappaMaskUNet",
    "default_range",
    "load_checkpoint",
    "save_checkpoint",
]

KAPPAMASK_L1C_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09",
                       "B10", "B11", "B12")
"""Level-1C input, in KappaMask's order: the 13 bands."""

KAPPAMASK_L2A_BANDS = ("AOT", "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A",
                       "B09", "B11", "B12", "WVP")
"""Level-2A input, in KappaMask's order: AOT, the 12 bands without B10, WVP."""

# The KappaMask predictor divides digital numbers by 65535, then by these per-band maxima
# (as its Keras ports in ml4floods and cloudSEN12's maskay do). The published L2A list has
# 13 entries: B07 is missing from it.
_PREDICTOR_MAXIMA = {
    "L1C": dict(zip(KAPPAMASK_L1C_BANDS, (0.21, 0.326, 0.264, 0.298, 0.245, 0.258, 0.266,
                                          0.364, 0.259, 0.165, 0.055, 0.203, 0.208),
                    strict=True)),
    "L2A": {"AOT": 0.003906309604644775, "B01": 0.2833447754383087,
            "B02": 0.27905699610710144, "B03": 0.2668497860431671, "B04": 0.2558480203151703,
            "B05": 0.250980406999588, "B06": 0.24597543478012085,
            "B08": 0.24182498455047607, "B8A": 0.24206912517547607,
            "B09": 0.2535133957862854, "B11": 0.2232242375612259,
            "B12": 0.23524834215641022, "WVP": 0.07557793706655502},
}
_PREDICTOR_MAXIMA["L2A"]["B07"] = (_PREDICTOR_MAXIMA["L2A"]["B06"]
                                   + _PREDICTOR_MAXIMA["L2A"]["B08"]) / 2  # not published
_LAYOUTS = {"L1C": KAPPAMASK_L1C_BANDS, "L2A": KAPPAMASK_L2A_BANDS}
_DN_RANGE = 65535.0
_DN_PER_UNIT = {"AOT": 1000.0, "WVP": 1000.0}  # as xcloud.load scales them; 10000 otherwise
_FORMAT = "xcloud-kappamask"
_FORMAT_VERSION = 1
_METADATA_KEY = "xcloud_kappamask"
_TILE_SIZE = 512
_TILE_OVERLAP = 32
_REFERENCE = ("Domnich et al. 2021, KappaMask: AI-based cloudmask processor for Sentinel-2, "
              "Remote Sensing 13(20), 4100")


def default_range(level: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Default min-max normalisation (minimum, maximum) of a layout, in its band order.

    The values are the KappaMask predictor's (minimum 0; maxima per band in units of
    DN / 65535), converted to the units of :func:`xcloud.load`: reflectance for the bands,
    AOT and WVP divided by 1000. B07 of L2A has no published maximum: the mean of B06's and
    B08's stands in. Checkpoints carry their own range, which replaces these. xcloud clips
    normalised values to [0, 1] (the predictor does not; these maxima are dataset maxima, so
    few values exceed them).
    """
    level = _level(level)
    maxima = _PREDICTOR_MAXIMA[level]
    maximum = tuple(round(maxima[b] * _DN_RANGE / _DN_PER_UNIT.get(b, 10000.0), 6)
                    for b in _LAYOUTS[level])
    return (0.0,) * len(maximum), maximum


def _level(level: str) -> str:
    upper = str(level).upper()
    if upper not in _LAYOUTS:
        raise ValueError(f"level must be 'L1C' or 'L2A', got {level!r}")
    return upper


@dataclass(frozen=True)
class KappaMaskConfig:
    """Everything that builds a :class:`KappaMaskUNet`; JSON serialisable via :meth:`to_dict`.

    ``head_channels`` is the width of the 3x3 convolution before the classifier (2 in the
    published model; 0 leaves it out), ``batch_norm`` adds batch normalisation after every
    convolution but the classifier (the published model has none). The published 2-channel
    ReLU head is often dead over most pixels at random initialisation (flat output); when
    training from scratch stalls, ``head_channels=0`` avoids it.
    """

    in_channels: int
    n_classes: int = 5
    depth: int = 5
    filters: int = 64
    dropout: float = 0.5
    head_channels: int = 2
    batch_norm: bool = False

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.n_classes < 1 or self.filters < 1:
            raise ValueError(f"in_channels, n_classes and filters must be >= 1, got {self}")
        if self.depth < 2:
            raise ValueError(f"depth counts the levels including the bottleneck: >= 2, "
                             f"got {self.depth}")
        if not 0.0 <= self.dropout < 1.0 or self.head_channels < 0:
            raise ValueError(f"dropout must be in [0, 1) and head_channels >= 0, got {self}")

    def to_dict(self) -> dict[str, Any]:
        """Return a plain, JSON-serialisable dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KappaMaskConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)


def _conv(in_channels: int, out_channels: int, kernel: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel,
                                         padding=1 if kernel == 3 else 0)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _double_conv(in_channels: int, out_channels: int, batch_norm: bool) -> nn.Sequential:
    return nn.Sequential(_conv(in_channels, out_channels, 3, batch_norm),
                         _conv(out_channels, out_channels, 3, batch_norm))


class _UpBlock(nn.Module):
    """Upsample x2 (nearest), 2x2 convolution, concatenate with the skip, two 3x3 convolutions."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool) -> None:
        super().__init__()
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2.0, mode="nearest"),
            nn.ZeroPad2d((0, 1, 0, 1)),  # Keras "same" with an even kernel pads after
            _conv(in_channels, out_channels, 2, batch_norm),
        )
        self.conv = _double_conv(2 * out_channels, out_channels, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class KappaMaskUNet(nn.Module):
    """The KappaMask U-Net; returns logits (N, n_classes, H, W).

    Parameters
    ----------
    in_channels
        Input bands (13 for L1C, 14 for L2A).
    n_classes
        Output channels; channel ``k`` is KappaMask class ``k`` (5: 0 MISSING .. 4 CLOUD).
    depth, filters
        Levels including the bottleneck, and filters of the first level (doubling per level:
        64 .. 1024 for the default 5 x 64). Height and width must be multiples of
        ``2 ** (depth - 1)``.
    dropout
        Dropout rate on the deepest encoder level and the bottleneck (training only).
    head_channels, batch_norm
        See :class:`KappaMaskConfig`.
    """

    def __init__(self, in_channels: int, *, n_classes: int = 5, depth: int = 5,
                 filters: int = 64, dropout: float = 0.5, head_channels: int = 2,
                 batch_norm: bool = False) -> None:
        super().__init__()
        self.config = KappaMaskConfig(in_channels, n_classes, depth, filters, dropout,
                                      head_channels, batch_norm)
        widths = [filters * 2**level for level in range(depth)]
        inputs = [in_channels, *widths[:-2]]
        self.encoder = nn.ModuleList(_double_conv(i, o, batch_norm)
                                     for i, o in zip(inputs, widths[:-1], strict=True))
        self.bottleneck = _double_conv(widths[-2], widths[-1], batch_norm)
        self.decoder = nn.ModuleList(_UpBlock(widths[level + 1], widths[level], batch_norm)
                                     for level in reversed(range(depth - 1)))
        self.dropout = nn.Dropout(dropout)
        self.head = _conv(filters, head_channels, 3, batch_norm) if head_channels else None
        self.classifier = nn.Conv2d(head_channels or filters, n_classes, 1)
        self.reset_parameters()

    @classmethod
    def from_config(cls, config: KappaMaskConfig) -> KappaMaskUNet:
        """Build the network described by ``config``."""
        values = config.to_dict()
        return cls(values.pop("in_channels"), **values)

    def reset_parameters(self) -> None:
        """Keras' initialisation: He-normal convolutions, Glorot-uniform classifier, zero bias."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                if module is self.classifier:
                    nn.init.xavier_uniform_(module.weight)
                else:
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def _check_input(self, x: torch.Tensor) -> None:
        multiple = 2 ** (self.config.depth - 1)
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"KappaMaskUNet takes (N, {self.config.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        if x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise ValueError(
                f"a KappaMaskUNet of depth {self.config.depth} needs height and width that are "
                f"multiples of {multiple}, got {tuple(x.shape[-2:])}; pad the input first"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level == len(self.encoder) - 1:
                x = self.dropout(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.dropout(self.bottleneck(x))
        for block, skip in zip(self.decoder, reversed(skips), strict=True):
            x = block(x, skip)
        if self.head is not None:
            x = self.head(x)
        return self.classifier(x)


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says besides its tensors.

    ``minimum``/``maximum`` are the min-max normalisation per band, in the units of
    :func:`xcloud.load` (reflectance; AOT and WVP divided by 1000) and in ``bands`` order.
    ``extra`` is free JSON (training history, epoch...).
    """

    config: KappaMaskConfig
    bands: tuple[str, ...]
    minimum: tuple[float, ...]
    maximum: tuple[float, ...]
    level: str
    xcloud_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    def normalization(self, bands: Sequence[str] | None = None) -> Normalization:
        """The min-max :class:`Normalization`, for ``bands`` (a reordering) or :attr:`bands`."""
        order = [self.bands.index(b) for b in bands or self.bands]
        low = tuple(self.minimum[i] for i in order)
        span = tuple(self.maximum[i] - self.minimum[i] for i in order)
        return Normalization("minmax", low, span)

    def to_json(self) -> str:
        """The metadata as stored in the checkpoint."""
        return dump_metadata(asdict(self), format_name=_FORMAT, version=_FORMAT_VERSION)

    @classmethod
    def from_json(cls, text: str, *, source: object = "checkpoint") -> CheckpointMeta:
        """Parse and check :meth:`to_json`'s output; :class:`WeightsError` if it does not fit."""
        try:
            data = parse_metadata(text, format_name=_FORMAT)
            meta = cls(config=KappaMaskConfig.from_dict(data.pop("config")),
                       bands=tuple(data.pop("bands")), minimum=tuple(data.pop("minimum")),
                       maximum=tuple(data.pop("maximum")), **data)
        except (TypeError, ValueError, KeyError, AttributeError) as error:
            raise WeightsError(f"{source} has no readable xcloud KappaMask metadata ({error}); "
                               "write checkpoints with xcloud.models.kappamask.save_checkpoint"
                               ) from None
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
            (self.level not in _LAYOUTS, f"level {self.level!r}, not 'L1C' or 'L2A'"),
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
    text = meta.to_json()
    state = {k: v.detach().to("cpu", copy=True).contiguous()
             for k, v in model.state_dict().items()}
    check_suffix(path)
    partial = path.with_name(f".{path.name}.partial")
    if path.suffix == ".safetensors":
        safetensors_torch = import_optional("safetensors.torch", extra="training")
        safetensors_torch.save_file(state, str(partial), metadata={_METADATA_KEY: text})
    else:
        torch.save({"state_dict": state, _METADATA_KEY: text}, partial)
    os.replace(partial, path)
    return path


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


class KappaMaskModel(BaseCloudModel):
    """A KappaMask checkpoint loaded for the engine.

    ``info.bands`` is the registered layout; the checkpoint may order its bands differently
    (its channels are taken in its own order). Probabilities are a softmax over the channels
    of the scheme's classes (1-4), in float32.
    """

    def __init__(self, network: KappaMaskUNet, meta: CheckpointMeta, info: ModelInfo, *,
                 device: str = "cpu") -> None:
        self.meta = meta
        self.info = info
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        order = [info.bands.index(b) for b in meta.bands]
        self._order = None if order == list(range(len(order))) else order
        self._channels = list(info.scheme.values)

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 4, H, W) for normalised input (N, bands, H, W)."""
        batch = np.asarray(batch, dtype=np.float32)
        if self._order is not None:
            batch = batch[:, self._order]
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            logits = self.network(tensor)[:, self._channels]
            return torch.softmax(logits.float(), dim=1).cpu().numpy()


_NO_WEIGHTS = (
    "KappaMask weights are not distributed with xcloud; pass weights=PATH to a {level} "
    "checkpoint (.safetensors or .pt): train one with `xcloud train` / "
    "xcloud.train(..., level={level!r}), or convert the published KappaMask weights and write "
    "them with xcloud.models.kappamask.save_checkpoint"
)


def _check_layout(meta: CheckpointMeta, level: str, source: Path) -> None:
    if meta.level != level:
        raise WeightsError(f"{source} was saved for level {meta.level}; use it with "
                           f"model='kappamask-{meta.level.lower()}', or pass a {level} checkpoint")
    missing = [b for b in _LAYOUTS[level] if b not in meta.bands]
    extra = [b for b in meta.bands if b not in _LAYOUTS[level]]
    if missing or extra:
        raise WeightsError(f"{source} has bands {', '.join(meta.bands)}; kappamask-"
                           f"{level.lower()} needs {', '.join(_LAYOUTS[level])} "
                           f"(missing: {missing}, not used: {extra})")
    needed = max(KAPPAMASK_SCHEME.values) + 1
    if meta.config.n_classes < needed:
        raise WeightsError(f"{source} predicts {meta.config.n_classes} classes; KappaMask "
                           f"needs at least {needed} (channel k = class k: 0 missing .. 4 cloud)")


def _info(level: str, *, normalization: Normalization, version: str,
          weights_source: str) -> ModelInfo:
    return ModelInfo(
        name=f"kappamask-{level.lower()}",
        version=version,
        bands=_LAYOUTS[level],
        resolution=10.0,
        scheme=KAPPAMASK_SCHEME,
        normalization=normalization,
        tile_size=_TILE_SIZE,
        tile_overlap=_TILE_OVERLAP,
        level=level,
        licence="weights: yours (local file); code: Apache-2.0",
        weights_source=weights_source,
        needs_weights_file=True,
        description=f"KappaMask U-Net, {level}: clear, cloud shadow, semi-transparent cloud, "
                    "cloud",
        references=(_REFERENCE,),
    )


def _load_model(level: str, weights: str | os.PathLike[str] | None, device: str,
                runtime: str) -> KappaMaskModel:
    if runtime not in ("auto", "torch"):
        raise ValueError(f"KappaMask runs on torch: runtime must be 'auto' or 'torch', "
                         f"not {runtime!r}")
    if weights is None:
        raise MissingWeightsError(_NO_WEIGHTS.format(level=level))
    path = Path(weights).expanduser()
    network, meta = load_checkpoint(path)
    _check_layout(meta, level, path)
    config = meta.config
    info = _info(level, normalization=meta.normalization(_LAYOUTS[level]),
                 version=f"{path.name} ({config.depth} levels x {config.filters} filters)",
                 weights_source=str(path))
    return KappaMaskModel(network, meta, info, device=device)


def _entry(level: str) -> ModelEntry:
    def load(*, weights: str | os.PathLike[str] | None = None, device: str = "cpu",
             runtime: str = "auto") -> KappaMaskModel:
        return _load_model(level, weights, device, runtime)

    minimum, maximum = default_range(level)
    span = tuple(hi - lo for lo, hi in zip(minimum, maximum, strict=True))
    info = _info(level, normalization=Normalization("minmax", minimum, span),
                 version="architecture of Domnich et al. 2021 (no weights shipped)",
                 weights_source="none shipped: pass weights=PATH (a save_checkpoint file)")
    return ModelEntry(info=info, loader=load)


KAPPAMASK_MODELS = {entry.name: register(entry, overwrite=True)
                    for entry in map(_entry, _LAYOUTS)}
