"""The per-process model cache: specs as keys."""

import numpy as np
import torch

from xcloud.engine.cache import ModelSpec, clear_cache, get_model, load_counts
from xcloud.models.kappamask import (
    KAPPAMASK_L1C_BANDS,
    KappaMaskUNet,
    default_range,
    save_checkpoint,
)


def test_specs_of_another_precision_are_other_keys():
    spec = ModelSpec.create("kappamask-l1c", weights=None, device="cpu", runtime="auto")
    reduced = ModelSpec.create("kappamask-l1c", weights=None, device="cpu", runtime="auto",
                               precision="bfloat16")
    assert spec.precision == "float32" and reduced.precision == "bfloat16"
    assert spec != reduced and hash(spec) != hash(reduced)
    assert len({spec, reduced, ModelSpec("kappamask-l1c")}) == 2


def test_each_precision_loads_its_own_model(tmp_path):
    torch.manual_seed(0)
    network = KappaMaskUNet(13, depth=3, filters=8)
    path = tmp_path / "km.pt"
    save_checkpoint(path, network, bands=KAPPAMASK_L1C_BANDS, minimum=[0.0] * 13,
                    maximum=default_range("L1C")[1], level="L1C")
    clear_cache()
    specs = [ModelSpec.create("kappamask-l1c", weights=path, device="cpu", runtime="auto",
                              precision=precision) for precision in ("float32", "bfloat16")]
    models = [get_model(spec) for spec in specs]
    assert [m.precision for m in models] == ["float32", "bfloat16"]
    assert get_model(specs[1]) is models[1]
    counts = load_counts()
    assert sorted(counts.values()) == [1, 1]
    assert sum(key.endswith("|bfloat16") for key in counts) == 1
    x = np.random.default_rng(0).random((1, 13, 32, 32), dtype=np.float32)
    assert not np.array_equal(*(m.predict_proba(x) for m in models))
    clear_cache()
