"""DL-L8S2-UV (López-Puigdollers et al. 2021): a small separable-convolution U-Net, from Keras.

The authors' cloud detector (IPL-UV/DL-L8S2-UV, MIT), compared in the KappaMask paper, is
published as two Keras 2.2.4 full-model HDF5 files. :func:`load_keras_hdf5` (in the network's
file, :mod:`xcloud.models.dl_l8s2_uv_net`) reads such a file with h5py alone (no TensorFlow)
and builds the torch network from its ``model_config``, layer by layer, then copies the
weights. The published network (97,049 / 97,153 numbers in the file, 95,749 / 95,831 of them
trainable) is:

- ``normalization``: a frozen 1x1 ``Conv2D`` with a diagonal kernel, i.e. the per-band
  standardisation ``(x - mean) / std`` of the Landsat-8 Biome training set (kernel
  ``1 / std``, bias ``-mean / std``), kept as the 1x1 convolution it is;
- three levels of two blocks ``SeparableConv2D`` 3x3 (``same``) - ``BatchNormalization``
  (epsilon 1e-3) - ReLU, with 32, 64 and 128 filters, 2x2 max pooling between them;
- a decoder of ``Conv2DTranspose`` 2x2 (stride 2), concatenation with the skip connection
  (upsampled features first) and two blocks per level (64, then 32 filters);
- ``linear_model``: a 1x1 ``Conv2D`` with a sigmoid, the cloud probability.

Height and width must be multiples of 4 (two poolings); each output pixel sees 41 x 41 input
pixels (up to 23 px away). xcloud cuts 512 px tiles overlapping by 32 px.

=======================  ==========================  ===========================
model                    file                        bands (TOA reflectance)
=======================  ==========================  ===========================
``dl-l8s2-uv-rgbi``      landsatbiomeRGBI6.hdf5      B02 B03 B04 B08
``dl-l8s2-uv-rgbiswir``  landsatbiomeRGBISWIR7.hdf5  B02 B03 B04 B08 B11 B12
=======================  ==========================  ===========================

The networks were trained on Landsat-8 (Biome) at 30 m and applied to Sentinel-2 by the
authors, whose Sentinel-2 inference resamples the bands to 30 m by default: xcloud runs them
at 30 m too. Output is cloud (thin or thick) against everything else (clear surface and cloud
shadow); a pixel is cloud where the probability is at least 0.5, as in the authors' code.
Masks use the clear/cloud class scheme that s2cloudless uses too (0 clear, 1 cloud; clear
includes shadow), so they are scored at the ``cloud`` level.

No weights ship with xcloud: download the files from the authors' repository and pass
``weights=PATH``. A file named like a published one (``landsatbiomeRGBI6.hdf5``,
``landsatbiomeRGBISWIR7.hdf5``) must have its sha256; a file of another name is taken as the
user's own Keras model of this kind and loaded unchecked (its layers and bands still are).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import MissingWeightsError, WeightsError
from .classes import S2CLOUDLESS_SCHEME
from .dl_l8s2_uv_net import DLL8S2UVNet, KerasModelFile, load_keras_hdf5, read_keras_hdf5
from .protocol import ModelInfo
from .registry import PRECISIONS, ModelEntry, register, sha256
from .torch_model import TorchCloudModel

__all__ = [
    "DL_L8S2_UV_MODELS",
    "DLL8S2UVModel",
    "DLL8S2UVNet",
    "KerasModelFile",
    "load_keras_hdf5",
    "read_keras_hdf5",
]

_REPOSITORY = "https://github.com/IPL-UV/DL-L8S2-UV"
_REFERENCE = ("López-Puigdollers, Mateo-García and Gómez-Chova 2021, Benchmarking Deep Learning "
              "Models for Cloud Detection in Landsat-8 and Sentinel-2 Images, Remote Sensing "
              "13(5), 992")
_THRESHOLD = 0.5
_TILE_SIZE = 512
_TILE_OVERLAP = 32


# --------------------------------------------------------------------------- the xcloud model


class DLL8S2UVModel(TorchCloudModel):
    """A DL-L8S2-UV network loaded for the engine: probabilities [clear, cloud] in float32."""

    def __init__(self, network: DLL8S2UVNet, info: ModelInfo, *, device: str = "cpu",
                 precision: str = "float32") -> None:
        # channels-last measured 2-5x faster on CPU (depthwise convolutions)
        super().__init__(network, info, device=device, channels_last=True, precision=precision)

    def outputs(self, raw: torch.Tensor) -> torch.Tensor:
        """``[1 - p, p]`` (N, 2, H, W) from the network's cloud probability p."""
        cloud = raw.float()
        return torch.cat([1.0 - cloud, cloud], dim=1)

    def classify(self, proba: np.ndarray) -> np.ndarray:
        """Cloud (1) where the cloud probability is at least 0.5, as the authors threshold."""
        return (proba[-1] >= _THRESHOLD).astype(np.uint8)


@dataclass(frozen=True)
class _Variant:
    name: str
    file: str
    bands: tuple[str, ...]
    sha256: str


_VARIANTS = (
    _Variant("dl-l8s2-uv-rgbi", "landsatbiomeRGBI6.hdf5", ("B02", "B03", "B04", "B08"),
             "6ca3a18f5d8e916a41853961beb74de860af6ca369e0a824f68d63c745a4bf16"),
    _Variant("dl-l8s2-uv-rgbiswir", "landsatbiomeRGBISWIR7.hdf5",
             ("B02", "B03", "B04", "B08", "B11", "B12"),
             "ed8cf5ea52353fd4712010e2c0af3bf638b35b7dfd3b4d9297a76f85b43d97a1"),
)
_PUBLISHED = {variant.file: variant.sha256 for variant in _VARIANTS}


def _check_published(path: Path) -> None:
    """A file named like a published one must be it; other names are the user's own models."""
    expected = _PUBLISHED.get(path.name)
    if expected is None:
        return
    actual = sha256(path)
    if actual != expected:
        raise WeightsError(f"{path} has sha256 {actual}, but the published {path.name} has "
                           f"{expected}: the file is corrupt or altered; download it again from "
                           f"{_REPOSITORY} (dl_l8s2_uv/weights/), or rename your own model")


def _info(variant: _Variant, *, version: str, weights_source: str) -> ModelInfo:
    return ModelInfo(
        name=variant.name,
        version=version,
        bands=variant.bands,
        resolution=30.0,
        scheme=S2CLOUDLESS_SCHEME,
        tile_size=_TILE_SIZE,
        tile_overlap=_TILE_OVERLAP,
        level="L1C",
        licence="MIT (IPL-UV/DL-L8S2-UV; weights not shipped with xcloud)",
        weights_source=weights_source,
        needs_weights_file=True,
        description=f"DL-L8S2-UV separable-conv U-Net (Landsat-8 Biome), "
                    f"{len(variant.bands)} bands: cloud vs clear",
        references=(_REFERENCE,),
    )


def _load_model(variant: _Variant, weights: str | os.PathLike[str] | None, device: str,
                runtime: str, precision: str) -> DLL8S2UVModel:
    if runtime not in ("auto", "torch"):
        raise ValueError(f"DL-L8S2-UV runs on torch: runtime must be 'auto' or 'torch', "
                         f"not {runtime!r}")
    if weights is None:
        raise MissingWeightsError(
            f"{variant.name} needs the authors' Keras file {variant.file}, which xcloud does not "
            f"ship: download it from {_REPOSITORY} (folder dl_l8s2_uv/weights, MIT licence) and "
            f"pass weights=PATH (needs h5py: pip install 'xcloud[keras]')")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"weights file {path} does not exist")
    _check_published(path)
    network = load_keras_hdf5(path)
    if (network.in_channels, network.out_channels) != (len(variant.bands), 1):
        raise WeightsError(f"{path} maps {network.in_channels} bands to {network.out_channels} "
                           f"channels; {variant.name} needs {len(variant.bands)} bands "
                           f"({', '.join(variant.bands)}) and 1 (the cloud probability)")
    info = _info(variant, version=f"{path.name} (Keras {network.keras_version or '?'})",
                 weights_source=str(path))
    return DLL8S2UVModel(network, info, device=device, precision=precision)


def _entry(variant: _Variant) -> ModelEntry:
    def load(*, weights: str | os.PathLike[str] | None = None, device: str = "cpu",
             runtime: str = "auto", precision: str = "float32") -> DLL8S2UVModel:
        return _load_model(variant, weights, device, runtime, precision)

    info = _info(variant, version=f"{variant.file} of IPL-UV/DL-L8S2-UV (not shipped)",
                 weights_source=f"none shipped: pass weights=PATH to {variant.file} from "
                                f"{_REPOSITORY}")
    return ModelEntry(info=info, loader=load, sha256=variant.sha256,
                      weights_filename=variant.file, precisions=PRECISIONS)


DL_L8S2_UV_MODELS = {variant.name: register(_entry(variant), overwrite=True)
                     for variant in _VARIANTS}
"""The two registered DL-L8S2-UV models by name."""
