"""The torch adapter's inference precision: autocast around the forward, float32 out."""

import numpy as np
import pytest
import torch
from torch import nn

from xcloud.models.kappamask import KAPPAMASK_L1C_BANDS, KappaMaskModel, KappaMaskUNet
from xcloud.models.registry import get
from xcloud.models.torch_model import TorchCloudModel


def small_kappamask(precision: str = "float32", *, seed: int = 0) -> KappaMaskModel:
    """A KappaMask-like U-Net with random weights (no published file needed)."""
    torch.manual_seed(seed)
    network = KappaMaskUNet(len(KAPPAMASK_L1C_BANDS), depth=3, filters=8, head_channels=0)
    return KappaMaskModel(network, get("kappamask-l1c").info, precision=precision)


def batch(seed: int = 0, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).random((2, 13, size, size), dtype=np.float32)


def test_bfloat16_on_the_cpu_is_close_to_float32_and_not_equal():
    x = batch()
    full = small_kappamask().predict_proba(x)
    reduced = small_kappamask("bfloat16").predict_proba(x)
    assert reduced.dtype == np.float32 and reduced.shape == full.shape
    difference = float(np.abs(reduced - full).max())
    agreement = float((reduced.argmax(1) == full.argmax(1)).mean())
    assert 0 < difference < 0.05, difference  # measured 0.0057: the option has an effect
    assert agreement >= 0.99, agreement  # measured 0.9996


def test_float16_on_the_cpu_is_refused_naming_precision_and_the_fix():
    with pytest.raises(ValueError, match=r"precision='float16' needs a CUDA device.*bfloat16"):
        small_kappamask("float16")


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match=r"precision must be one of .*'float64'"):
        small_kappamask("float64")


class _Conv(nn.Module):
    """A network whose output keeps the autocast type (a 1x1 convolution)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(13, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_outputs_see_float32_and_the_forward_runs_in_the_precision():
    seen: list[torch.dtype] = []

    class Model(TorchCloudModel):
        def outputs(self, raw: torch.Tensor) -> torch.Tensor:
            seen.append(raw.dtype)
            return torch.softmax(raw, dim=1)

    network = _Conv()
    network.register_forward_hook(lambda _, args, out: seen.append(out.dtype))
    model = Model(network, get("kappamask-l1c").info, precision="bfloat16")
    proba = model.predict_proba(batch(size=8))
    assert seen == [torch.bfloat16, torch.float32] and proba.dtype == np.float32
