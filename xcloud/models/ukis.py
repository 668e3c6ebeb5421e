"""The four ukis-csmask networks (DLR): U-Net with EfficientNet-B4 encoder, clear/cloud/shadow.

Weights are the ONNX graphs shipped in the ``ukis-csmask`` package (Apache-2.0), verified by
sha256. Two runtimes run them:

- ``"torch"``: a native float32 torch port (:mod:`xcloud.models.unet_efficientnet`) whose
  weights are read from the graph's initializers; this is the GPU path.
- ``"onnxruntime"``: the shipped graph as it is (float16 arithmetic), as ukis-csmask runs it.

``runtime="auto"`` picks torch on CUDA and onnxruntime on CPU, where it measured faster
(see ``benchmarks/``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._optional import import_optional
from ..errors import MissingWeightsError, WeightsError
from .classes import UKIS_SCHEME
from .protocol import BaseCloudModel, ModelInfo, Normalization
from .registry import ModelEntry, register, verify_checksum

if TYPE_CHECKING:
    from ._onnx_import import OnnxSignature

__all__ = ["UKIS_MODELS", "UkisModel"]

_SHA256 = {
    "4b_l1c": "81611f290adc315b86bb7e7c69b0f2496b3abe0390c2a5c8e9e9da9622e8a0c8",
    "4b_l2a": "3884d75ca497ec59d8335973477bd31eb038857007bbb36fb2aba1ad375ee043",
    "6b_l1c": "aa79e9a0f02ff8e0243d93771d1daf6a8d1166b7ac06c3771560b83367c6c573",
    "6b_l2a": "d11c530978637ca420eedc40791c62bf78997dd39e1201777e2527e4bd94904e",
}
_STATS_SHA256 = {
    "4b_l1c": "5577e4e5f2bec02fa4478ed6788f91dc71c8345404a7c552779183fd844e2fcd",
    "4b_l2a": "ac4108ce3b80ee70393df313faada01a7bcbe1be603965a44120e929c975f024",
    "6b_l1c": "b575f242f91699f8e2836161ebb362fba7043423cf2741d45ef58a02976b6b7f",
    "6b_l2a": "89b0df80fd67c33eb99843512f3703f3bb0415cc7f58157ce49c00d3ef88aae3",
}
_CLASSES = 3
_BANDS = {"4b": ("B02", "B03", "B04", "B08"), "6b": ("B02", "B03", "B04", "B08", "B11", "B12")}
_PRECISION_NOTE = ("ukis' ONNX graph runs as shipped on onnxruntime, and its torch port "
                   "reproduces that graph in float32")


def _package_file(variant: str, suffix: str) -> Path:
    try:
        import ukis_csmask
    except ImportError as error:
        raise MissingWeightsError(
            "the ukis models take their weights from the 'ukis-csmask' package; install it with "
            "pip install 'xcloud[ukis]'"
        ) from error
    return Path(ukis_csmask.__file__).parent / f"model_{variant}{suffix}"


def _normalization(variant: str) -> Normalization:
    path = _package_file(variant, ".json")
    verify_checksum(path, _STATS_SHA256[variant])
    stats = json.loads(path.read_text())["data"]["dataset_statistics"]["img"]
    return Normalization("standard", tuple(stats[0]), tuple(stats[1]))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class _OnnxRunner:
    def __init__(self, session) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


class _TorchRunner:
    def __init__(self, network, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.network = network.to(self.device, memory_format=torch.channels_last).eval()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            logits = self.network(tensor.contiguous(memory_format=torch.channels_last))
            return logits.float().cpu().numpy()


class UkisModel(BaseCloudModel):
    """A ukis-csmask network loaded for one runtime and device."""

    def __init__(self, info: ModelInfo, weights: Path, *, device: str, runtime: str) -> None:
        self.info = info
        self.weights = weights
        self.device = device
        if runtime == "auto":  # onnxruntime measured faster on CPU; torch is the GPU path
            runtime = "onnxruntime" if device == "cpu" else "torch"
        self.runtime = runtime
        self._run = self._runner()

    def _runner(self):
        if self.runtime == "onnxruntime":
            return _OnnxRunner(self._onnx_session())
        if self.runtime == "torch":
            from ._onnx_import import efficientnet_unet_from_onnx

            network = efficientnet_unet_from_onnx(self.weights, signature=self._signature())
            shape = (network.config.in_channels, network.config.classes)
            if shape != (len(self.info.bands), _CLASSES):
                raise WeightsError(
                    f"{self.weights} maps {shape[0]} bands to {shape[1]} classes; "
                    f"{self.info.name} needs {len(self.info.bands)} bands and {_CLASSES} "
                    "classes. The weights file does not match the model."
                )
            return _TorchRunner(network, self.device)
        raise ValueError(f"runtime must be 'auto', 'torch' or 'onnxruntime', not {self.runtime!r}")

    def _onnx_session(self):
        ort = import_optional("onnxruntime", extra="ukis")
        from .._threads import threads_per_task
        from ._onnx_import import session_ports

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads_per_task()
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = True  # reused activations: 5-8 % faster, same peak RSS
        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda"):
            providers.insert(0, "CUDAExecutionProvider")
        try:
            session = ort.InferenceSession(str(self.weights), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph errors
            raise WeightsError(f"{self.weights} is not a readable ONNX graph ({error}); pass "
                               "the ONNX file the model was published with") from None
        self._signature().check(*session_ports(session), source=self.weights)
        return session

    def _signature(self) -> OnnxSignature:
        """Inputs and outputs that the graph must have (those of the shipped graphs)."""
        from ._onnx_import import OnnxSignature

        return OnnxSignature(in_channels=len(self.info.bands), classes=_CLASSES)

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Softmax class probabilities (N, 3, H, W) for normalised input (N, bands, H, W)."""
        return _softmax(self._run(np.asarray(batch, dtype=np.float32)))


def _entry(variant: str) -> ModelEntry:
    bands, level = variant.split("_")
    name = f"ukis-{bands}-{level}"

    def load(*, weights: str | Path | None = None, device: str = "cpu",
             runtime: str = "auto") -> UkisModel:
        path = Path(weights) if weights is not None else _package_file(variant, ".onnx")
        if not path.is_file():
            raise MissingWeightsError(f"weights file {path} does not exist")
        if weights is None:
            verify_checksum(path, _SHA256[variant])
        info = _info(variant, name, level, bands, _normalization(variant))
        return UkisModel(info, path, device=device, runtime=runtime)

    try:
        normalization = _normalization(variant)
    except MissingWeightsError:  # listed without its package; loading says what to install
        normalization = Normalization("standard")
    return ModelEntry(info=_info(variant, name, level, bands, normalization), loader=load,
                      sha256=_SHA256[variant], weights_filename=f"model_{variant}.onnx",
                      precision_note=_PRECISION_NOTE)


def _info(variant: str, name: str, level: str, bands: str,
          normalization: Normalization) -> ModelInfo:
    return ModelInfo(
        name=name,
        version=f"1.0.0-{bands.upper()}{level.upper()}",
        bands=_BANDS[bands],
        resolution=30.0,
        scheme=UKIS_SCHEME,
        normalization=normalization,
        tile_size=256,
        tile_overlap=52,
        tile_anchor=-51,
        level=level.upper(),
        licence="Apache-2.0",
        weights_source=f"PyPI package ukis-csmask 1.0.0 (model_{variant}.onnx)",
        description=f"DLR ukis-csmask U-Net (EfficientNet-B4), {bands} bands, {level.upper()}",
        references=("Wieland et al. 2019, Remote Sensing of Environment 230, 111203",),
    )


UKIS_MODELS = {entry.name: register(entry, overwrite=True) for entry in map(_entry, _SHA256)}
