"""SegFormer (Xie et al. 2021) in plain torch, parameter for parameter as in ``transformers``.

:class:`SegformerForSemanticSegmentation` is the network of ``transformers``'
``SegformerForSemanticSegmentation``: a Mix Transformer encoder (overlapping patch embeddings,
efficient self-attention with sequence reduction, Mix-FFN with a depthwise 3x3 convolution)
and the all-MLP decode head. Its ``forward`` returns what ``transformers`` calls ``.logits``:
(N, num_labels, H / 4, W / 4), before any upsampling (:func:`upsample_logits` brings them to
the input size). No hub is involved: :class:`SegformerConfig` holds ``transformers``' field
names and defaults, and :func:`segformer_config` builds the published sizes B0-B5 from their
name alone.

Parameter names are those of ``transformers`` 5 (the layout its ``state_dict()`` writes)::

    segformer.stages.{i}.patch_embeddings.{proj,layer_norm}
    segformer.stages.{i}.blocks.{j}.{layernorm_before,layernorm_after}
    segformer.stages.{i}.blocks.{j}.attention.{q_proj,k_proj,v_proj,o_proj}
    segformer.stages.{i}.blocks.{j}.attention.sequence_reduction.{sequence_reduction,layer_norm}
    segformer.stages.{i}.blocks.{j}.mlp.{fc1,dwconv.dwconv,fc2}
    segformer.stages.{i}.layer_norm
    decode_head.linear_projections.{i}.proj, decode_head.{linear_fuse,batch_norm,classifier}

``load_state_dict`` also takes the layout of ``transformers`` 4 (in which SEnSeI-v2 and most
published SegFormer checkpoints were saved: ``segformer.encoder.patch_embeddings.{i}``,
``segformer.encoder.block.{i}.{j}.layer_norm_1``, ``.attention.self.query/key/value/sr/
layer_norm``, ``.attention.output.dense``, ``.layer_norm_2``, ``.mlp.dense1/dense2``,
``segformer.encoder.layer_norm.{i}``, ``decode_head.linear_c.{i}``), renaming it on the fly,
also when the network is part of a larger model.

Parameters with 13 input channels and 7 labels (the decode head's batch-norm statistics not
counted):

==========  ===========
size         parameters
==========  ===========
B0            3,731,623
B2           27,383,367
==========  ===========
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SEGFORMER_SIZES",
    "SegformerConfig",
    "SegformerDecodeHead",
    "SegformerForSemanticSegmentation",
    "SegformerModel",
    "segformer_b0",
    "segformer_b2",
    "segformer_config",
    "segformer_current_key",
    "upsample_logits",
]

_STAGE_FIELDS = ("depths", "sr_ratios", "hidden_sizes", "patch_sizes", "strides",
                 "num_attention_heads", "mlp_ratios")
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}
_LAYER_NORM_EPS = 1e-5  # transformers builds every LayerNorm with torch's default eps


@dataclass(frozen=True)
class SegformerConfig:
    """``transformers``' ``SegformerConfig``: same field names, same defaults (SegFormer-B0).

    Per-stage fields (``depths`` .. ``mlp_ratios``) hold one value per encoder stage.
    ``layer_norm_eps``, ``semantic_loss_ignore_index`` and ``reshape_last_stage`` are kept for
    compatibility: as in ``transformers``, none of them changes the segmentation logits
    (every LayerNorm uses eps 1e-5).
    """

    num_channels: int = 3
    num_labels: int = 2
    num_encoder_blocks: int = 4
    depths: tuple[int, ...] = (2, 2, 2, 2)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    hidden_sizes: tuple[int, ...] = (32, 64, 160, 256)
    patch_sizes: tuple[int, ...] = (7, 3, 3, 3)
    strides: tuple[int, ...] = (4, 2, 2, 2)
    num_attention_heads: tuple[int, ...] = (1, 2, 5, 8)
    mlp_ratios: tuple[int, ...] = (4, 4, 4, 4)
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    classifier_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    drop_path_rate: float = 0.1
    layer_norm_eps: float = 1e-6
    decoder_hidden_size: int = 256
    semantic_loss_ignore_index: int = 255
    reshape_last_stage: bool = True

    def __post_init__(self) -> None:
        for name in _STAGE_FIELDS:
            object.__setattr__(self, name, tuple(getattr(self, name)))
            if len(getattr(self, name)) != self.num_encoder_blocks:
                raise ValueError(f"{name} needs one value per encoder stage "
                                 f"({self.num_encoder_blocks}), got {getattr(self, name)}")
        if min(self.num_channels, self.num_labels, self.decoder_hidden_size) < 1:
            raise ValueError("num_channels, num_labels and decoder_hidden_size must be >= 1")
        for size, heads in zip(self.hidden_sizes, self.num_attention_heads, strict=True):
            if heads < 1 or size % heads:
                raise ValueError(f"hidden size {size} is not a multiple of {heads} heads")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {sorted(_ACTIVATIONS)}, "
                             f"got {self.hidden_act!r}")
        rates = (self.hidden_dropout_prob, self.attention_probs_dropout_prob,
                 self.classifier_dropout_prob, self.drop_path_rate)
        if not all(0.0 <= rate < 1.0 for rate in rates):
            raise ValueError(f"dropout and drop-path rates must be in [0, 1), got {rates}")

    def to_dict(self) -> dict[str, Any]:
        """Return a plain, JSON-serialisable dictionary (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SegformerConfig:
        """Build from :meth:`to_dict` output or a ``transformers`` ``config.json`` dictionary.

        Keys that are not fields (``architectures``, ``model_type``...) are ignored; without
        ``num_labels``, the length of ``id2label`` gives it, as in ``transformers``.
        """
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if "num_labels" not in values and data.get("id2label"):
            values["num_labels"] = len(data["id2label"])
        return cls(**values)

    @property
    def min_input_size(self) -> int:
        """Smallest height and width the network takes: every stage with sequence reduction
        must be at least ``sr_ratio`` tokens wide."""
        size = 1
        while not all(s >= r for s, r in zip(self.stage_sizes(size), self.sr_ratios,
                                              strict=True)):
            size += 1
        return size

    def stage_sizes(self, size: int) -> tuple[int, ...]:
        """Height (or width) of each stage's feature map for an input of ``size`` pixels."""
        sizes = []
        for patch, stride in zip(self.patch_sizes, self.strides, strict=True):
            size = (size + 2 * (patch // 2) - patch) // stride + 1
            sizes.append(size)
        return tuple(sizes)


SEGFORMER_SIZES: dict[str, dict[str, Any]] = {
    "b0": {"depths": (2, 2, 2, 2), "hidden_sizes": (32, 64, 160, 256), "decoder_hidden_size": 256},
    "b1": {"depths": (2, 2, 2, 2), "hidden_sizes": (64, 128, 320, 512), "decoder_hidden_size": 256},
    "b2": {"depths": (3, 4, 6, 3), "hidden_sizes": (64, 128, 320, 512), "decoder_hidden_size": 768},
    "b3": {"depths": (3, 4, 18, 3), "hidden_sizes": (64, 128, 320, 512),
           "decoder_hidden_size": 768},
    "b4": {"depths": (3, 8, 27, 3), "hidden_sizes": (64, 128, 320, 512),
           "decoder_hidden_size": 768},
    "b5": {"depths": (3, 6, 40, 3), "hidden_sizes": (64, 128, 320, 512),
           "decoder_hidden_size": 768},
}
"""What differs between the published sizes (Xie et al. 2021, table 6); all share heads
(1, 2, 5, 8), sequence-reduction ratios (8, 4, 2, 1), patch sizes (7, 3, 3, 3), strides
(4, 2, 2, 2) and MLP ratio 4."""


def segformer_config(size: str, *, num_channels: int = 3, num_labels: int = 2,
                     **options: Any) -> SegformerConfig:
    """Configuration of a published SegFormer size.

    Parameters
    ----------
    size
        ``"b0"`` .. ``"b5"`` (case-insensitive, ``"mit-b2"`` also works).
    num_channels, num_labels
        Input channels and output classes.
    **options
        Any other :class:`SegformerConfig` field (``drop_path_rate``, ``hidden_act``...).
    """
    key = str(size).lower().removeprefix("mit-")
    if key not in SEGFORMER_SIZES:
        raise ValueError(f"unknown SegFormer size {size!r}; known: {', '.join(SEGFORMER_SIZES)}")
    return SegformerConfig(num_channels=num_channels, num_labels=num_labels,
                           **{**SEGFORMER_SIZES[key], **options})


def segformer_b0(num_channels: int = 3, num_labels: int = 2, **options: Any) -> SegformerConfig:
    """SegFormer-B0 (3.7 M parameters): see :func:`segformer_config`."""
    return segformer_config("b0", num_channels=num_channels, num_labels=num_labels, **options)


def segformer_b2(num_channels: int = 3, num_labels: int = 2, **options: Any) -> SegformerConfig:
    """SegFormer-B2 (27.4 M parameters): see :func:`segformer_config`."""
    return segformer_config("b2", num_channels=num_channels, num_labels=num_labels, **options)


def upsample_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear upsampling of (N, C, h, w) logits to ``size`` (height, width), as
    ``transformers`` does for its loss and post-processing (``align_corners=False``)."""
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


# -- transformers 4 key layout -------------------------------------------------------------------

_LEGACY_BLOCK_PARTS = {
    "layer_norm_1.": "layernorm_before.",
    "layer_norm_2.": "layernorm_after.",
    "attention.self.query.": "attention.q_proj.",
    "attention.self.key.": "attention.k_proj.",
    "attention.self.value.": "attention.v_proj.",
    "attention.self.sr.": "attention.sequence_reduction.sequence_reduction.",
    "attention.self.layer_norm.": "attention.sequence_reduction.layer_norm.",
    "attention.output.dense.": "attention.o_proj.",
    "mlp.dense1.": "mlp.fc1.",
    "mlp.dense2.": "mlp.fc2.",
}
_LEGACY_BLOCK = re.compile(r"encoder\.block\.(\d+)\.(\d+)\.(.+)")
_LEGACY_ENCODER = re.compile(r"encoder\.(patch_embeddings|layer_norm)\.(\d+)\.(.+)")
_LEGACY_HEAD = re.compile(r"linear_c\.(\d+)\.(.+)")


def _legacy_encoder_key(key: str) -> str | None:
    """Current name of a ``transformers`` 4 encoder key (relative to ``segformer.``)."""
    if match := _LEGACY_ENCODER.fullmatch(key):
        stage, part, rest = match[2], match[1], match[3]
        return f"stages.{stage}.{part}.{rest}"
    if match := _LEGACY_BLOCK.fullmatch(key):
        rest = match[3]
        for old, new in _LEGACY_BLOCK_PARTS.items():
            if rest.startswith(old):
                rest = new + rest.removeprefix(old)
                break
        return f"stages.{match[1]}.blocks.{match[2]}.{rest}"
    return None


def _legacy_head_key(key: str) -> str | None:
    """Current name of a ``transformers`` 4 decode-head key (relative to ``decode_head.``)."""
    match = _LEGACY_HEAD.fullmatch(key)
    return f"linear_projections.{match[1]}.{match[2]}" if match else None


def segformer_current_key(key: str) -> str:
    """The current name of a :class:`SegformerForSemanticSegmentation` key: a
    ``transformers`` 4 key (``segformer.encoder.block.0.0.layer_norm_1.weight``,
    ``decode_head.linear_c.0.proj.weight``) renamed, any other key unchanged."""
    for prefix, rename in (("segformer.", _legacy_encoder_key),
                           ("decode_head.", _legacy_head_key)):
        if key.startswith(prefix):
            new = rename(key[len(prefix):])
            return key if new is None else prefix + new
    return key


def _rename_legacy_keys(rename: Callable[[str], str | None], module: nn.Module,
                        state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Load-state-dict pre-hook: rename old keys under ``prefix`` (never over a current one)."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        new = rename(key[len(prefix):])
        if new is not None and prefix + new not in state_dict:
            state_dict[prefix + new] = state_dict.pop(key)


# -- encoder --------------------------------------------------------------------------------------

def _tokens_to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, h*w, C) tokens to an (N, C, h, w) map."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)


class _DropPath(nn.Module):
    """Stochastic depth: drop the residual branch of whole samples (training only)."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class SegformerOverlapPatchEmbeddings(nn.Module):
    """Strided convolution (overlapping patches), then LayerNorm over the tokens."""

    def __init__(self, patch_size: int, stride: int, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=stride,
                              padding=patch_size // 2)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=_LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[2:]
        return self.layer_norm(x.flatten(2).transpose(1, 2)), height, width


class SegformerSequenceReduction(nn.Module):
    """Shorten keys and values: a ``ratio`` x ``ratio`` strided convolution and LayerNorm."""

    def __init__(self, hidden_size: int, ratio: int) -> None:
        super().__init__()
        self.sequence_reduction = nn.Conv2d(hidden_size, hidden_size, ratio, stride=ratio)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=_LAYER_NORM_EPS)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        reduced = self.sequence_reduction(_tokens_to_map(tokens, height, width))
        return self.layer_norm(reduced.flatten(2).transpose(1, 2))


class SegformerEfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from a reduced sequence."""

    def __init__(self, config: SegformerConfig, hidden_size: int, heads: int,
                 sr_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.o_proj = nn.Linear(hidden_size, hidden_size)
        self.sequence_reduction = (SegformerSequenceReduction(hidden_size, sr_ratio)
                                   if sr_ratio > 1 else None)
        self.attention_dropout = config.attention_probs_dropout_prob
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        query = self._split_heads(self.q_proj(tokens))
        context = tokens
        if self.sequence_reduction is not None:
            context = self.sequence_reduction(tokens, height, width)
        key = self._split_heads(self.k_proj(context))
        value = self._split_heads(self.v_proj(context))
        rate = self.attention_dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(query, key, value, dropout_p=rate)
        return self.dropout(self.o_proj(attended.transpose(1, 2).flatten(2)))


class SegformerDWConv(nn.Module):
    """Depthwise 3x3 convolution over the token map (Mix-FFN's positional information)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.dwconv(_tokens_to_map(tokens, height, width)).flatten(2).transpose(1, 2)


class SegformerMixFFN(nn.Module):
    """fc1, depthwise convolution, activation, fc2 (dropout after the activation and fc2)."""

    def __init__(self, config: SegformerConfig, hidden_size: int, mlp_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_size)
        self.dwconv = SegformerDWConv(mlp_size)
        self.fc2 = nn.Linear(mlp_size, hidden_size)
        self.activation = _ACTIVATIONS[config.hidden_act]
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        hidden = self.activation(self.dwconv(self.fc1(tokens), height, width))
        return self.dropout(self.fc2(self.dropout(hidden)))


class SegformerLayer(nn.Module):
    """Pre-norm transformer block: attention and Mix-FFN, each with a (drop-path) residual."""

    def __init__(self, config: SegformerConfig, stage: int, drop_path: float) -> None:
        super().__init__()
        size = config.hidden_sizes[stage]
        self.layernorm_before = nn.LayerNorm(size, eps=_LAYER_NORM_EPS)
        self.attention = SegformerEfficientSelfAttention(
            config, size, config.num_attention_heads[stage], config.sr_ratios[stage])
        self.drop_path = _DropPath(drop_path)
        self.layernorm_after = nn.LayerNorm(size, eps=_LAYER_NORM_EPS)
        self.mlp = SegformerMixFFN(config, size, int(size * config.mlp_ratios[stage]))

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        tokens = tokens + self.drop_path(
            self.attention(self.layernorm_before(tokens), height, width))
        return tokens + self.drop_path(self.mlp(self.layernorm_after(tokens), height, width))


class SegformerStage(nn.Module):
    """Patch embedding, ``depth`` transformer blocks, LayerNorm; returns an (N, C, h, w) map."""

    def __init__(self, config: SegformerConfig, stage: int, drop_paths: Sequence[float]) -> None:
        super().__init__()
        in_channels = config.hidden_sizes[stage - 1] if stage else config.num_channels
        self.patch_embeddings = SegformerOverlapPatchEmbeddings(
            config.patch_sizes[stage], config.strides[stage], in_channels,
            config.hidden_sizes[stage])
        self.blocks = nn.ModuleList(SegformerLayer(config, stage, rate) for rate in drop_paths)
        self.layer_norm = nn.LayerNorm(config.hidden_sizes[stage], eps=_LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, height, width = self.patch_embeddings(x)
        for block in self.blocks:
            tokens = block(tokens, height, width)
        return _tokens_to_map(self.layer_norm(tokens), height, width).contiguous()


class SegformerModel(nn.Module):
    """The Mix Transformer encoder; returns the four stages' maps (N, hidden_sizes[i], h, w).

    Drop-path rates grow linearly from 0 to ``drop_path_rate`` over all blocks.
    """

    def __init__(self, config: SegformerConfig) -> None:
        super().__init__()
        self.config = config
        rates = torch.linspace(0.0, config.drop_path_rate, sum(config.depths),
                               device="cpu").tolist()  # plain numbers, also on the meta device
        ends = [sum(config.depths[:i + 1]) for i in range(config.num_encoder_blocks)]
        self.stages = nn.ModuleList(
            SegformerStage(config, i, rates[end - depth:end])
            for i, (end, depth) in enumerate(zip(ends, config.depths, strict=True)))
        self.register_load_state_dict_pre_hook(partial(_rename_legacy_keys, _legacy_encoder_key))

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The four feature maps of the encoder, strides 4 to 32."""
        self._check_input(pixel_values)
        features = []
        x = pixel_values
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return tuple(features)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.num_channels:
            raise ValueError(f"expected input (N, {self.config.num_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        smallest = self.config.min_input_size
        if min(x.shape[2:]) < smallest:
            raise ValueError(f"height and width must be at least {smallest} px for this "
                             f"SegFormer, got {tuple(x.shape[2:])}")


# -- decoder --------------------------------------------------------------------------------------

class SegformerMLP(nn.Module):
    """Linear projection of one stage's map to the decoder width (an (N, D, h, w) map)."""

    def __init__(self, in_channels: int, decoder_hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, decoder_hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2:]
        return _tokens_to_map(self.proj(x.flatten(2).transpose(1, 2)), height, width)


class SegformerDecodeHead(nn.Module):
    """All-MLP head: project every stage, upsample to stage 1, fuse (1x1 conv, BN, ReLU),
    dropout, classify; logits (N, num_labels, h1, w1)."""

    def __init__(self, config: SegformerConfig) -> None:
        super().__init__()
        width = config.decoder_hidden_size
        self.linear_projections = nn.ModuleList(SegformerMLP(size, width)
                                                for size in config.hidden_sizes)
        self.linear_fuse = nn.Conv2d(width * config.num_encoder_blocks, width, 1, bias=False)
        self.batch_norm = nn.BatchNorm2d(width)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Conv2d(width, config.num_labels, 1)
        self.register_load_state_dict_pre_hook(partial(_rename_legacy_keys, _legacy_head_key))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits at stride 4 from the encoder's four feature maps."""
        size = features[0].shape[2:]
        projected = [upsample_logits(mlp(x), size)
                     for mlp, x in zip(self.linear_projections, features, strict=True)]
        fused = self.linear_fuse(torch.cat(projected[::-1], dim=1))
        return self.classifier(self.dropout(self.activation(self.batch_norm(fused))))


class SegformerForSemanticSegmentation(nn.Module):
    """SegFormer: encoder and all-MLP decode head; ``forward`` gives logits at 1/4 resolution.

    Parameters
    ----------
    config
        The architecture (:func:`segformer_b0`, :func:`segformer_b2`, :func:`segformer_config`
        or ``SegformerConfig.from_dict`` of a ``transformers`` config).

    Notes
    -----
    Any height and width of at least ``config.min_input_size`` (29 px for the published
    sizes) work; the logits are ``ceil(H / 4)`` x ``ceil(W / 4)``. Initialisation follows
    ``transformers``: normal(0, ``initializer_range``) weights and zero biases for linear and
    convolution layers, unit LayerNorms.
    """

    def __init__(self, config: SegformerConfig) -> None:
        super().__init__()
        self.config = config
        self.segformer = SegformerModel(config)
        self.decode_head = SegformerDecodeHead(config)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise every weight as ``transformers`` does."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                nn.init.normal_(module.weight, std=self.config.initializer_range)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm | nn.BatchNorm2d):
                module.reset_parameters()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_labels, ceil(H / 4), ceil(W / 4)) of input (N, num_channels, H, W)."""
        return self.decode_head(self.segformer(pixel_values))

    def full_resolution_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits upsampled to the input size (N, num_labels, H, W)."""
        return upsample_logits(self(pixel_values), pixel_values.shape[2:])

    def n_parameters(self) -> int:
        """Number of parameters (buffers such as batch-norm statistics not counted)."""
        return sum(p.numel() for p in self.parameters())

    @property
    def output_stride(self) -> int:
        """Input pixels per logit pixel (4 for the published sizes)."""
        return self.config.strides[0]
