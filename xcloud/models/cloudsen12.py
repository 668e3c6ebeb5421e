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
shadow), the order of the authors' ``CDModel.forward`` (uint8 argmax of the 4 logits);
:meth:`CloudSEN12Model.predict_proba` gives their softmax, and no data gets 255. The networks
take reflectance as it is (DN / 10000), without normalisation. Inference uses 512 px tiles
(CloudSEN12's patch size) overlapping by 64 px: the blending ramp across the overlap
down-weights tile borders, where the convolutions' zero padding and the 1/32 bottleneck make
predictions least reliable. An input whose height or width is not a multiple of 32 is
reflect-padded to the next multiple (at least 32; the pad split floor/ceil between the two
sides) and the output cropped, as ``CDModel.predict`` (``padded_predict``) does.

No weights ship with xcloud (CloudSEN12's are CC-BY-NC-4.0, published on Hugging Face,
``isp-uv-es/cloudsen12_models``). Without ``weights=`` each variant fetches its default
published file into the weights cache (:func:`~xcloud.models.fetch.resolve_weights`:
``UNetMobV2_V2.pt``, ``cloudsen12-s2-l2a-1.0.0.pt``, ``dtacs4bands.pt``, ``landsat30.pt``);
``weights=PATH`` takes a local file, one of

- the published TorchScript archives (``cloudsen12l2a.pt``, ``dtacs4bands.pt``,
  ``landsat30.pt``). Their tensors are *read, not run*:
  :func:`~xcloud.models.torchscript_archive.read_torchscript_tensors` unpickles only tensors
  and inert placeholders (any other global is refused) and never compiles or runs the
  archive's code, unlike ``torch.jit.load``; the tensors go into xcloud's own network;
- a torch state dict in smp's layout (a plain dict of tensors or a dict with
  ``"state_dict"``, keys optionally prefixed ``model.`` as in the published Lightning
  checkpoints ``cloudsen12.pt``, ``UNetMobV2_V1.pt``, ``UNetMobV2_V2.pt``), read with
  ``torch.load(weights_only=True)``;
- a ``.safetensors`` file.

The input bands and the decoder widths are read off the tensors' shapes (smp's
``decoder_channels``); the bands must match the variant's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..errors import MissingWeightsError, WeightsError
from ._checkpoint import load_state, load_weights_only, read_checkpoint
from .classes import CLOUDSEN12_SCHEME
from .fetch import resolve_weights
from .protocol import ModelInfo, Normalization
from .registry import PRECISIONS, ModelEntry, register
from .torch_model import TorchCloudModel
from .torchscript_archive import is_torchscript_archive, read_torchscript_tensors
from .unet_mobilenet import UnetMobileNetV2, UnetMobileNetV2Config

__all__ = [
    "CLOUDSEN12_BANDS",
    "CLOUDSEN12_MODELS",
    "CLOUDSEN12_SCHEME",
    "CloudSEN12Model",
    "load_network",
    "pad_to_multiple",
    "read_state_dict",
]

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
_MULTIPLE = 32
_PREFIX = "model."
_REFERENCES = (
    "Aybar et al. 2022, CloudSEN12, a global dataset for semantic understanding of cloud and "
    "cloud shadow in Sentinel-2, Scientific Data 9, 782",
    "Aybar et al. 2024, CloudSEN12+: the largest dataset of expert-labeled pixels for cloud "
    "and cloud shadow detection in Sentinel-2, Data in Brief 56, 110852",
)
_NO_WEIGHTS = (
    "CloudSEN12 weights are not distributed with xcloud; download a published UNetMobV2 "
    "model (Hugging Face isp-uv-es/cloudsen12_models{published}) and pass weights=PATH "
    "({name} takes a TorchScript archive as published, whose tensors are read and never run, "
    "or a torch state_dict in segmentation_models_pytorch's Unet(encoder_name='mobilenet_v2') "
    "layout; {n} input bands in the order {bands}, 4 classes; .pt/.pth/.ckpt or .safetensors)"
)
_PUBLISHED = {"l1c": "cloudsen12.pt, UNetMobV2_V1.pt or UNetMobV2_V2.pt",
              "l2a": "cloudsen12l2a.pt", "rgbn": "dtacs4bands.pt", "landsat": "landsat30.pt"}


def _read_torch(path: Path, map_location: str) -> Mapping[str, object]:
    if is_torchscript_archive(path):
        return read_torchscript_tensors(path, map_location=map_location)
    content = load_weights_only(path, map_location=map_location,
                                advice="save the network's state_dict with torch.save")
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
        ``.safetensors``; a TorchScript archive (its parameters and buffers by state-dict
        name, read by :func:`~xcloud.models.torchscript_archive.read_torchscript_tensors`,
        nothing in it is run); or a torch file (any other suffix) holding a state dict or a
        dict with ``"state_dict"`` (Lightning checkpoints), read with ``weights_only=True``.
    map_location
        Device the tensors are loaded to.

    Raises
    ------
    MissingWeightsError
        The file does not exist.
    WeightsError
        It cannot be read as any of these, or its pickle names anything but tensors.
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
    return {str(k).removeprefix(_PREFIX): v for k, v in tensors.items()
            if isinstance(v, torch.Tensor)}


def load_network(path: str | os.PathLike[str], *, in_channels: int,
                 map_location: str = "cpu") -> UnetMobileNetV2:
    """A :class:`UnetMobileNetV2` (4 classes, eval mode) with the weights of ``path``.

    The decoder widths are read off the tensors' shapes (smp's ``decoder_channels``); the
    input bands must be ``in_channels``. Keys and shapes must then match exactly
    (``strict=True``); :class:`WeightsError` names those that do not.
    """
    path = Path(path).expanduser()
    tensors = read_state_dict(path, map_location=map_location)
    config = UnetMobileNetV2Config.from_state_dict(tensors)
    stem = tensors.get("encoder.features.0.0.weight")
    if config.in_channels != in_channels and isinstance(stem, torch.Tensor):
        raise WeightsError(
            f"weights={path} is a network of {config.in_channels} input bands "
            f"(encoder.features.0.0.weight is {tuple(stem.shape)}); this model takes "
            f"{in_channels}: pass a state_dict of segmentation_models_pytorch's Unet("
            f"encoder_name='mobilenet_v2', in_channels={in_channels}, classes=4)")
    network = UnetMobileNetV2(in_channels, 4, config.decoder_channels).to(map_location)
    try:
        load_state(network, tensors, source=path)
    except WeightsError as error:
        raise WeightsError(
            f"{error}; pass weights= a state_dict of segmentation_models_pytorch's Unet("
            f"encoder_name='mobilenet_v2', in_channels={in_channels}, classes=4)"
        ) from None
    return network.eval()


def pad_to_multiple(batch: np.ndarray, multiple: int = _MULTIPLE
                    ) -> tuple[np.ndarray, tuple[slice, slice]]:
    """``batch`` (N, C, H, W) reflect-padded so that H and W are multiples of ``multiple``.

    As the authors' ``padded_predict``: each axis grows to the next multiple (at least
    ``multiple``), the pad split ``floor`` before and ``ceil`` after, mirrored without
    repeating the edge pixel (``numpy.pad(mode="reflect")``). Returns the padded batch and
    the (rows, columns) slices that crop an output back to H x W.
    """
    pads, crops = _padding(batch.shape[-2:], multiple)
    if any(after or before for before, after in pads):
        batch = np.pad(batch, [(0, 0), (0, 0), *pads], mode="reflect")
    return batch, crops


def _padding(shape: tuple[int, ...], multiple: int
             ) -> tuple[list[tuple[int, int]], tuple[slice, slice]]:
    pads, crops = [], []
    for length in shape:
        total = max(multiple, -(-length // multiple) * multiple) - length
        before = total // 2
        pads.append((before, total - before))
        crops.append(slice(before, before + length))
    return pads, (crops[0], crops[1])


class CloudSEN12Model(TorchCloudModel):
    """A CloudSEN12 network loaded for the engine: softmax over the 4 output channels, the
    input reflect-padded to a multiple of 32 and the output cropped back (``CDModel.predict``)."""

    def __init__(self, network: UnetMobileNetV2, info: ModelInfo, *,
                 device: str = "cpu", precision: str = "float32") -> None:
        super().__init__(network, info, device=device, precision=precision)

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """The batch reflect-padded to multiples of 32 (:func:`pad_to_multiple`)."""
        return pad_to_multiple(batch)[0]

    def finish(self, proba: np.ndarray, batch: np.ndarray) -> np.ndarray:
        """``proba`` cropped back to the batch's height and width."""
        rows, cols = _padding(batch.shape[-2:], _MULTIPLE)[1]
        return np.ascontiguousarray(proba[:, :, rows, cols])

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, 4, H, W) of reflectance (N, bands, H, W), in float32, padded and cropped
        as ``predict_proba``; their argmax is the authors' ``CDModel`` classes."""
        batch = np.asarray(batch, dtype=np.float32)
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(self.prepare(batch)))
            with self.autocast():
                raw = self.forward(tensor.to(self.device))
            logits = raw.float().cpu().numpy()
        return self.finish(logits, batch)


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
        licence="weights: CC-BY-NC-4.0 (CloudSEN12 model card), not shipped; code: Apache-2.0",
        weights_source=weights_source,
        needs_weights_file=True,
        description=f"CloudSEN12 UNetMobV2, {_DESCRIPTIONS[variant]}: clear, thick cloud, "
                    "thin cloud, cloud shadow",
        references=_REFERENCES,
    )


def _load_model(variant: str, weights: str | os.PathLike[str] | None, device: str,
                runtime: str, precision: str) -> CloudSEN12Model:
    if runtime not in ("auto", "torch"):
        raise ValueError(f"CloudSEN12 models run on torch: runtime must be 'auto' or 'torch', "
                         f"not {runtime!r}")
    bands = CLOUDSEN12_BANDS[variant]
    path = resolve_weights(f"cloudsen12-{variant}", weights)  # None: fetch the published one
    if path is None:
        raise MissingWeightsError(_NO_WEIGHTS.format(
            name=f"cloudsen12-{variant}", published=f": {_PUBLISHED[variant]}",
            n=len(bands), bands=", ".join(bands)))
    network = load_network(path, in_channels=len(bands))
    info = _info(variant, version=f"UNetMobV2 ({path.name})", weights_source=str(path))
    return CloudSEN12Model(network, info, device=device, precision=precision)


def _entry(variant: str) -> ModelEntry:
    def load(*, weights: str | os.PathLike[str] | None = None, device: str = "cpu",
             runtime: str = "auto", precision: str = "float32") -> CloudSEN12Model:
        return _load_model(variant, weights, device, runtime, precision)

    info = _info(variant, version="UNetMobV2 architecture (no weights shipped)",
                 weights_source="not shipped: the published file, fetched on first use, or "
                                "weights=PATH (the TorchScript archive or a state_dict in "
                                "smp's layout)")
    return ModelEntry(info=info, loader=load, precisions=PRECISIONS)


CLOUDSEN12_MODELS = {entry.name: register(entry, overwrite=True)
                     for entry in map(_entry, CLOUDSEN12_BANDS)}
"""The registered variants by name."""
