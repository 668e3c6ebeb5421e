"""CloudSEN12 UNetMobV2 (Aybar et al. 2022, 2024): clear, thick cloud, thin cloud, cloud shadow.

The network is segmentation_models_pytorch's ``Unet(encoder_name="mobilenet_v2")`` in plain
torch (:class:`~xcloud.models.unet_mobilenet.UnetMobileNetV2`, 6.6 M parameters with 13
bands). Four variants are registered; their band orders are those of the published models
(IPL-UV ``cloudsen12_models``), since the channel order of a checkpoint is its band order:

=====================  ==============================================  ====================
name                   bands (channel order)                           published model
=====================  ==============================================  ====================
``cloudsen12-l1c``     B01..B12 with B8A and B10 (13, S2 order), TOA   cloudsen12,
                                                                       UNetMobV2_V1, _V2
``cloudsen12-l2a``     B01..B12 with B8A, without B10 (12), BOA        cloudsen12l2a
``cloudsen12-rgbn``    B08, B04, B03, B02 (TOA)                        dtacs4bands
``cloudsen12-landsat`` B01, B02, B03, B04, B08, B10, B11, B12 (TOA)    landsat30
=====================  ==============================================  ====================

``cloudsen12-landsat`` takes the Sentinel-2 bands that Landsat 8/9 OLI also has: coastal
(OLI B1), blue, green, red (B2-B4), NIR (OLI B5 as S2 B08, as the published model chose it
rather than the narrower B8A), cirrus (OLI B9 ~ S2 B10) and the two SWIR bands (B6, B7).

Output channel ``k`` is CloudSEN12 class ``k`` (0 clear, 1 thick cloud, 2 thin cloud, 3 cloud
shadow); no data gets 255. The networks take reflectance as it is (DN / 10000), without
normalisation. Inference uses 512 px tiles (CloudSEN12's patch size) overlapping by 64 px: the
blending ramp across the overlap down-weights tile borders, where the convolutions' zero padding
and the 1/32 bottleneck make predictions least reliable.

No weights ship with xcloud (CloudSEN12's are CC-BY-4.0, published elsewhere): pass
``weights=PATH`` to a local file, either a torch state dict in smp's layout (a plain dict of
tensors or a dict with ``"state_dict"``, keys optionally prefixed ``model.`` as in the
published Lightning checkpoints; read with ``torch.load(weights_only=True)``, so nothing is
unpickled) or a ``.safetensors`` file. Three of the published models are TorchScript archives,
which xcloud does not run; in a trusted environment, convert them once with
``torch.save(torch.jit.load(PATH).state_dict(), "state_dict.pt")``.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..errors import MissingWeightsError, WeightsError
from ._checkpoint import load_state, read_checkpoint
from .classes import ClassScheme, CloudClass
from .protocol import BaseCloudModel, ModelInfo, Normalization
from .registry import ModelEntry, register
from .unet_mobilenet import UnetMobileNetV2

__all__ = [
    "CLOUDSEN12_BANDS",
    "CLOUDSEN12_MODELS",
    "CLOUDSEN12_SCHEME",
    "CloudSEN12Model",
    "load_network",
    "read_state_dict",
]

CLOUDSEN12_SCHEME = ClassScheme(
    name="cloudsen12",
    classes=(
        CloudClass(0, "clear", "clear surface", "#4daf4a"),
        CloudClass(1, "thick_cloud", "thick (opaque) cloud", "#ffffff"),
        CloudClass(2, "thin_cloud", "thin (semi-transparent) cloud", "#a6cee3"),
        CloudClass(3, "cloud_shadow", "cloud shadow", "#555555"),
    ),
    nodata=CloudClass(255, "no_data", "no valid input data", "#000000"),
)
"""CloudSEN12's label values; output channel ``k`` is value ``k``."""

_L1C = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
        "B12")
CLOUDSEN12_BANDS: dict[str, tuple[str, ...]] = {
    "l1c": _L1C,
    "l2a": tuple(b for b in _L1C if b != "B10"),
    "rgbn": ("B08", "B04", "B03", "B02"),
    "landsat": ("B01", "B02", "B03", "B04", "B08", "B10", "B11", "B12"),
}
"""Input bands of each variant, in channel order (that of the published models)."""

_LEVELS = {"l1c": "L1C", "l2a": "L2A", "rgbn": "L1C", "landsat": "L1C"}
_DESCRIPTIONS = {
    "l1c": "13 bands, L1C",
    "l2a": "12 bands (no B10), L2A",
    "rgbn": "NIR, red, green, blue, L1C",
    "landsat": "bands common to Sentinel-2 and Landsat 8/9 OLI, L1C",
}
_TILE_SIZE = 512
_TILE_OVERLAP = 64
_PREFIX = "model."
_REFERENCES = (
    "Aybar et al. 2022, CloudSEN12, a global dataset for semantic understanding of cloud and "
    "cloud shadow in Sentinel-2, Scientific Data 9, 782",
    "Aybar et al. 2024, CloudSEN12+: the largest dataset of expert-labeled pixels for cloud "
    "and cloud shadow detection in Sentinel-2, Data in Brief 56, 110852",
)
_NO_WEIGHTS = (
    "CloudSEN12 weights are not distributed with xcloud; download a published UNetMobV2 "
    "checkpoint elsewhere and pass weights=PATH ({name} takes a torch state_dict in "
    "segmentation_models_pytorch's Unet(encoder_name='mobilenet_v2') layout, {n} input bands "
    "in the order {bands}, 4 classes; .pt/.pth/.ckpt or .safetensors)"
)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _read_torch(path: Path, map_location: str) -> Mapping[str, object]:
    if _is_torchscript(path):
        raise WeightsError(
            f"{path} is a TorchScript archive, which xcloud does not run; in a trusted "
            "environment convert it once with torch.save(torch.jit.load(PATH).state_dict(), "
            "'state_dict.pt') and pass that file"
        )
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise WeightsError(
            f"{path} cannot be read as a weights-only torch file ({error}); xcloud never "
            "unpickles Python objects: save the network's state_dict with torch.save"
        ) from None
    if isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping):
        content = content["state_dict"]
    if not isinstance(content, Mapping):
        raise WeightsError(f"{path} holds a {type(content).__name__}, not a state_dict; save "
                           "the network's state_dict with torch.save")
    return content


def read_state_dict(path: str | os.PathLike[str], *,
                    map_location: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint, with a leading ``model.`` stripped from their keys.

    Parameters
    ----------
    path
        ``.safetensors``, or a torch file (any other suffix) holding a state dict or a dict
        with ``"state_dict"`` (Lightning checkpoints); read with ``weights_only=True``.
    map_location
        Device the tensors are loaded to.

    Raises
    ------
    MissingWeightsError
        The file does not exist.
    WeightsError
        It cannot be read as either, or it is a TorchScript archive.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"weights file {path} does not exist; pass weights=PATH to "
                                  "a local CloudSEN12 checkpoint")
    if path.suffix == ".safetensors":
        tensors: Mapping[str, object] = read_checkpoint(path, key="",
                                                        map_location=map_location)[0]
    else:
        tensors = _read_torch(path, map_location)
    return {str(k).removeprefix(_PREFIX): v for k, v in tensors.items()}


def load_network(path: str | os.PathLike[str], *, in_channels: int,
                 map_location: str = "cpu") -> UnetMobileNetV2:
    """A :class:`UnetMobileNetV2` (4 classes, eval mode) with the weights of ``path``.

    Keys and shapes must match exactly (``strict=True``); :class:`WeightsError` names those
    that do not.
    """
    network = UnetMobileNetV2(in_channels, 4).to(map_location)
    tensors = read_state_dict(path, map_location=map_location)
    try:
        load_state(network, tensors, source=Path(path))
    except WeightsError as error:
        raise WeightsError(
            f"{error}; pass a state_dict of segmentation_models_pytorch's Unet(encoder_name="
            f"'mobilenet_v2', in_channels={in_channels}, classes=4)"
        ) from None
    return network.eval()


class CloudSEN12Model(BaseCloudModel):
    """A CloudSEN12 network loaded for the engine: softmax over the 4 output channels."""

    def __init__(self, network: UnetMobileNetV2, info: ModelInfo, *,
                 device: str = "cpu") -> None:
        self.info = info
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 4, H, W) of reflectance (N, bands, H, W), in float32."""
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            logits = self.network(tensor.to(self.device))
            return torch.softmax(logits.float(), dim=1).cpu().numpy()


def _info(variant: str, *, version: str, weights_source: str) -> ModelInfo:
    return ModelInfo(
        name=f"cloudsen12-{variant}",
        version=version,
        bands=CLOUDSEN12_BANDS[variant],
        resolution=10.0,
        scheme=CLOUDSEN12_SCHEME,
        normalization=Normalization("none"),
        tile_size=_TILE_SIZE,
        tile_overlap=_TILE_OVERLAP,
        level=_LEVELS[variant],
        licence="weights: CC-BY-4.0 (CloudSEN12), not shipped; code: Apache-2.0",
        weights_source=weights_source,
        needs_weights_file=True,
        description=f"CloudSEN12 UNetMobV2, {_DESCRIPTIONS[variant]}: clear, thick cloud, "
                    "thin cloud, cloud shadow",
        references=_REFERENCES,
    )


def _load_model(variant: str, weights: str | os.PathLike[str] | None, device: str,
                runtime: str) -> CloudSEN12Model:
    if runtime not in ("auto", "torch"):
        raise ValueError(f"CloudSEN12 models run on torch: runtime must be 'auto' or 'torch', "
                         f"not {runtime!r}")
    bands = CLOUDSEN12_BANDS[variant]
    if weights is None:
        raise MissingWeightsError(_NO_WEIGHTS.format(name=f"cloudsen12-{variant}",
                                                     n=len(bands), bands=", ".join(bands)))
    path = Path(weights).expanduser()
    network = load_network(path, in_channels=len(bands))
    info = _info(variant, version=f"UNetMobV2 ({path.name})", weights_source=str(path))
    return CloudSEN12Model(network, info, device=device)


def _entry(variant: str) -> ModelEntry:
    def load(*, weights: str | os.PathLike[str] | None = None, device: str = "cpu",
             runtime: str = "auto") -> CloudSEN12Model:
        return _load_model(variant, weights, device, runtime)

    info = _info(variant, version="UNetMobV2 architecture (no weights shipped)",
                 weights_source="none shipped: pass weights=PATH (a state_dict in smp's layout)")
    return ModelEntry(info=info, loader=load)


CLOUDSEN12_MODELS = {entry.name: register(entry, overwrite=True)
                     for entry in map(_entry, CLOUDSEN12_BANDS)}
"""The registered variants by name."""
