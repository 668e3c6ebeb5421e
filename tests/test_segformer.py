"""SegFormer: transformers' parameter layout, the B0 fixture's logits, the B2 size, shapes."""

import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from xcloud.models.segformer import (
    SegformerConfig,
    SegformerForSemanticSegmentation,
    segformer_b0,
    segformer_b2,
    segformer_config,
    upsample_logits,
)

from .conftest import need_data

FIXTURE = "fixtures/segformer_b0"
B2_PARAMETERS = 27_383_367  # 13 channels, 7 labels

# transformers 5 names -> transformers 4 names (the layout of older checkpoints)
LEGACY = [
    (r"segformer\.stages\.(\d+)\.patch_embeddings\.", r"segformer.encoder.patch_embeddings.\1."),
    (r"segformer\.stages\.(\d+)\.layer_norm\.", r"segformer.encoder.layer_norm.\1."),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.", r"segformer.encoder.block.\1.\2."),
    (r"\.layernorm_before\.", ".layer_norm_1."),
    (r"\.layernorm_after\.", ".layer_norm_2."),
    (r"\.attention\.q_proj\.", ".attention.self.query."),
    (r"\.attention\.k_proj\.", ".attention.self.key."),
    (r"\.attention\.v_proj\.", ".attention.self.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attention.self.sr."),
    (r"\.attention\.sequence_reduction\.layer_norm\.", ".attention.self.layer_norm."),
    (r"\.mlp\.fc1\.", ".mlp.dense1."),
    (r"\.mlp\.fc2\.", ".mlp.dense2."),
    (r"decode_head\.linear_projections\.", "decode_head.linear_c."),
]


def legacy_key(key):
    for pattern, replacement in LEGACY:
        key = re.sub(pattern, replacement, key)
    return key


def parameter_count(config):
    """SegFormer's parameters, counted layer by layer from the paper's description."""
    total, previous = 0, config.num_channels
    for c, depth, sr, patch, ratio in zip(config.hidden_sizes, config.depths, config.sr_ratios,
                                          config.patch_sizes, config.mlp_ratios, strict=True):
        mlp = ratio * c
        block = 4 * c + 4 * (c * c + c) + (c * c * sr * sr + 3 * c if sr > 1 else 0)
        block += (c * mlp + mlp) + 10 * mlp + (mlp * c + c)
        total += previous * c * patch * patch + 3 * c + depth * block + 2 * c
        previous = c
    d = config.decoder_hidden_size
    total += sum(c * d + d for c in config.hidden_sizes) + 4 * d * d + 2 * d
    return total + d * config.num_labels + config.num_labels


@pytest.fixture(scope="module")
def fixture():
    folder = need_data(FIXTURE)
    with np.load(folder / "io.npz") as io:
        x, logits = torch.from_numpy(io["x"]), torch.from_numpy(io["logits"])
    state = torch.load(next(folder.glob("*state_dict*")), weights_only=True)
    return json.loads((folder / "meta.json").read_text()), state, x, logits


def eval_logits(config, state, x):
    model = SegformerForSemanticSegmentation(config)
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        return model.eval()(x)


def test_fixture_config_is_the_b0_preset(fixture):
    meta = fixture[0]
    assert SegformerConfig.from_dict(meta["config"]) == segformer_b0(13, 7)


def test_fixture_loads_strictly_and_reproduces_the_logits(fixture):
    meta, state, x, expected = fixture
    model = SegformerForSemanticSegmentation(segformer_b0(13, 7))
    assert list(model.state_dict()) == list(state)
    assert model.n_parameters() == meta["n_parameters"] == parameter_count(model.config)
    logits = eval_logits(model.config, state, x)
    assert logits.shape == (1, 7, 32, 32)
    assert (logits - expected).abs().max().item() < 1e-4


def test_transformers4_layout_loads_too_also_inside_a_larger_model(fixture):
    _, state, x, expected = fixture
    legacy = {legacy_key(k): v for k, v in state.items()}
    assert "segformer.encoder.block.3.1.attention.self.query.weight" in legacy
    assert "decode_head.linear_c.0.proj.weight" in legacy
    assert (eval_logits(segformer_b0(13, 7), legacy, x) - expected).abs().max() < 1e-4

    outer = nn.Module()
    outer.head = SegformerForSemanticSegmentation(segformer_b0(13, 7))
    outer.load_state_dict({f"head.{k}": v for k, v in legacy.items()}, strict=True)
    torch.testing.assert_close(outer.head.decode_head.classifier.weight,
                               state["decode_head.classifier.weight"], rtol=0, atol=0)


def test_a_wrong_checkpoint_is_refused_by_a_strict_load(fixture):
    state = dict(fixture[1])
    state.pop("segformer.stages.2.blocks.1.mlp.fc2.bias")
    with pytest.raises(RuntimeError, match=r"mlp\.fc2\.bias"):
        SegformerForSemanticSegmentation(segformer_b0(13, 7)).load_state_dict(state)


def test_config_reads_a_transformers_config_json():
    document = {"architectures": ["SegformerForSemanticSegmentation"], "model_type": "segformer",
                "num_channels": 13, "id2label": {str(i): f"c{i}" for i in range(4)},
                "depths": [3, 4, 6, 3], "hidden_sizes": [64, 128, 320, 512],
                "decoder_hidden_size": 768}
    assert SegformerConfig.from_dict(document) == segformer_b2(13, 4)
    config = segformer_b2(13, 7, drop_path_rate=0.2)
    assert SegformerConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_b2_is_built_by_size_alone_with_the_b0_key_pattern():
    b0 = SegformerForSemanticSegmentation(segformer_b0(13, 7))
    b2 = SegformerForSemanticSegmentation(segformer_config("B2", num_channels=13, num_labels=7))
    assert b2.config == segformer_b2(13, 7)
    assert b2.n_parameters() == B2_PARAMETERS == parameter_count(b2.config)

    def pattern(model):
        return {re.sub(r"blocks\.\d+\.", "blocks.#.", k) for k in model.state_dict()}

    assert pattern(b2) == pattern(b0)
    state = b2.state_dict()
    blocks = {m[0] for k in state if (m := re.match(r"segformer\.stages\.\d+\.blocks\.\d+", k))}
    assert sorted(blocks)[-1] == "segformer.stages.3.blocks.2" and len(blocks) == 16
    assert state["segformer.stages.3.blocks.0.mlp.fc1.weight"].shape == (2048, 512)
    assert state["segformer.stages.0.blocks.0.attention.sequence_reduction"
                 ".sequence_reduction.weight"].shape == (64, 64, 8, 8)
    assert state["decode_head.linear_fuse.weight"].shape == (768, 3072, 1, 1)
    with torch.no_grad():
        assert b2.eval()(torch.randn(1, 13, 40, 36)).shape == (1, 7, 10, 9)


@pytest.mark.parametrize(("height", "width"), [(29, 29), (33, 50), (61, 47)])
def test_any_size_from_29_px_gives_logits_at_a_quarter(height, width):
    model = SegformerForSemanticSegmentation(segformer_b0(13, 7)).eval()
    x = torch.randn(2, 13, height, width)
    with torch.no_grad():
        logits = model(x)
        full = model.full_resolution_logits(x)
    assert logits.shape == (2, 7, -(-height // 4), -(-width // 4))
    assert full.shape == (2, 7, height, width)
    torch.testing.assert_close(full, upsample_logits(logits, (height, width)))


def test_inputs_it_cannot_take_are_refused():
    model = SegformerForSemanticSegmentation(segformer_b0(13, 7)).eval()
    assert model.config.min_input_size == 29
    with pytest.raises(ValueError, match="at least 29 px"):
        model(torch.randn(1, 13, 28, 64))
    with pytest.raises(ValueError, match=r"\(N, 13, H, W\)"):
        model(torch.randn(1, 12, 64, 64))


def test_train_mode_differs_only_by_dropout_drop_path_and_batch_norm():
    quiet = segformer_b0(4, 3, drop_path_rate=0.0, classifier_dropout_prob=0.0)
    model = SegformerForSemanticSegmentation(quiet)
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        reference = model.eval()(x)
        model.train()
        model.decode_head.batch_norm.eval()
        torch.testing.assert_close(model(x), reference)
        model.decode_head.batch_norm.train()
        assert not torch.allclose(model(x), reference)

        noisy = SegformerForSemanticSegmentation(segformer_b0(4, 3)).train()
        noisy.decode_head.batch_norm.eval()
        torch.manual_seed(0)
        assert not torch.equal(noisy(x), noisy(x))
    rates = [b.drop_path.rate for s in noisy.segformer.stages for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1) and rates == sorted(rates)


@pytest.mark.parametrize("options", [{"depths": (2, 2, 2)}, {"num_attention_heads": (3, 2, 5, 8)},
                                     {"hidden_act": "tanh"}, {"drop_path_rate": 1.0}])
def test_bad_configurations_are_refused(options):
    with pytest.raises(ValueError):
        segformer_b0(13, 7, **options)


def test_unknown_sizes_are_refused():
    with pytest.raises(ValueError, match="unknown SegFormer size"):
        segformer_config("b9")
