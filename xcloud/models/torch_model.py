"""The adapter base of every torch model: a network file plus this makes an xcloud model.

A torch model's adapter subclasses :class:`TorchCloudModel` and says only what is its own:
how the network's output becomes the authors' output channels (:meth:`TorchCloudModel.outputs`:
a softmax, sigmoids already applied, ``[1 - p, p]``), how the network is called
(:meth:`TorchCloudModel.forward`, e.g. with band descriptors), and whether images run one at a
time (``per_image``, for networks whose output depends on the other images of a batch). Moving
the batch to the device, inference mode, float32 and the shape check are done here once, and
so is the inference precision: the network's forward under :func:`torch.autocast` in
``bfloat16`` or ``float16`` (CUDA only), its output back in float32 before
:meth:`TorchCloudModel.outputs`.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from ..errors import BandError
from .protocol import BaseCloudModel, ModelInfo
from .registry import check_precision

__all__ = ["TorchCloudModel"]

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class TorchCloudModel(BaseCloudModel):
    """A torch network behind the :class:`~xcloud.models.protocol.CloudModel` protocol.

    Parameters
    ----------
    network
        The network; it is moved to ``device`` and put in eval mode.
    info
        The model's metadata; ``info.bands`` is the number of input channels.
    device
        Torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
    per_image
        Run the images of a batch one at a time (the network's output for an image would
        otherwise depend on the others).
    channels_last
        Keep the network and its input in channels-last memory format (faster for depthwise
        convolutions on CPUs).
    precision
        ``"float32"``, ``"bfloat16"`` or ``"float16"`` (CUDA only): the forward runs under
        :func:`torch.autocast` in that type; the probabilities are float32 either way.

    Raises
    ------
    ValueError
        ``precision`` is not one of those, or is ``"float16"`` on a device other than CUDA.
    """

    def __init__(self, network: nn.Module, info: ModelInfo, *, device: str = "cpu",
                 per_image: bool = False, channels_last: bool = False,
                 precision: str = "float32") -> None:
        check_precision(precision, device=str(device), model=info.name)
        self.info = info
        self.precision = precision
        self.device = torch.device(device)
        self.per_image = per_image
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.network = network.to(self.device).eval()
        if channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """The batch as the network takes it (float32, ``(N, bands, H, W)``); subclasses may
        reorder bands or pad."""
        return batch

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        """The network's raw output for a batch on the device."""
        return self.network(tensor)

    def outputs(self, raw: torch.Tensor) -> torch.Tensor:
        """The authors' output channels from the raw output (default: a softmax)."""
        return torch.softmax(raw.float(), dim=1)

    def finish(self, proba: np.ndarray, batch: np.ndarray) -> np.ndarray:
        """The probabilities for the caller's ``batch`` (e.g. cropped back after padding)."""
        return proba

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Output channels (N, C, H, W) float32 for a normalised batch (N, bands, H, W).

        Raises
        ------
        BandError
            The batch is not 4-D with one channel per band of ``info.bands``.
        """
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1] != len(self.info.bands):
            raise BandError(f"{self.info.name} takes (N, {len(self.info.bands)}, H, W) "
                            f"({', '.join(self.info.bands)}), got {batch.shape}")
        prepared = self.prepare(batch)
        groups = [prepared[i:i + 1] for i in range(len(prepared))] if self.per_image else [prepared]
        with torch.inference_mode():
            out = [self._run(group) for group in groups if len(group)]
        if not out:
            return np.zeros((0, len(self.info.scheme.classes), *batch.shape[2:]), np.float32)
        return self.finish(np.concatenate(out), batch)

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """The context the forward runs in: :func:`torch.autocast` to the precision's type,
        nothing for float32."""
        dtype = _DTYPES.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _run(self, group: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(group)).to(self.device)
        tensor = tensor.contiguous(memory_format=self.memory_format)
        with self.autocast():
            raw = self.forward(tensor)
        return self.outputs(raw.float()).float().cpu().numpy()
