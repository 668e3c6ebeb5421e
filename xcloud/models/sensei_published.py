"""SEnSeI-v2 weight formats: the authors' published model folders and xcloud's checkpoints.

Published folders (Hugging Face ``aliFrancis/SEnSeIv2``)::

    full-models/<name>/config.yaml    NAME, MODEL_TYPE, SEGFORMER_CONFIG | DEEPLAB_CONFIG,
                                      SEnSeIv2 (a sensei-config path), CLASSES, PATCH_SIZE
    full-models/<name>/weights.pt     torch.save(FullModel.state_dict()): senseiv2.*,
                                      segmenter.*, optionally recovery_module.*
    sensei-configs/<v>.yaml           the encoder's blocks

:func:`read_published` reads ``config.yaml`` (pyyaml ``safe_load``) and the sensei config it
names, found by its basename beside the model folder's ``config.yaml``, in
``<folder>/../../sensei-configs/`` (the authors' layout) or ``<folder>/../sensei-configs/``.
``SEGFORMER_CONFIG`` is a folder beside ``config.yaml`` holding a ``transformers``
``config.json``, or a hub name (``nvidia/mit-b0`` .. ``nvidia/mit-b5``) built from the size
table of :mod:`xcloud.models.segformer` (nothing is downloaded); ``DEEPLAB_CONFIG`` is an smp
encoder name. ``weights.pt`` is read with ``torch.load(weights_only=True)``: nothing is
unpickled. Every key inference needs must be in it (:class:`WeightsError` lists those
missing); ``recovery_module.*`` tensors are training-only and dropped (reported in
:attr:`LoadedWeights.dropped`); any other extra key is refused.

The authors' comparison models without SEnSeI-v2 (``SegFormerB2-S2-unambiguous``) have the same
folder layout, but ``config.yaml`` names ``NUM_CHANNELS`` (the bands, straight into the head)
instead of a sensei config and ``weights.pt`` holds only ``segmenter.*``:
:func:`read_published_baseline` and :func:`load_published_baseline` read them
(:class:`~xcloud.models.sensei_encoder.BaselineNetwork`); :func:`read_published` refuses them.

xcloud checkpoints (:func:`save_checkpoint`) hold the same network's tensors (``senseiv2.*``
keys as released, SegFormer keys of :mod:`xcloud.models.segformer`) and JSON metadata: the
sensei config, the head, the classes, the recovery-module config and optional band names.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._optional import import_optional
from .._version import __version__
from ..errors import MissingWeightsError, WeightsError
from ._checkpoint import (
    dump_metadata,
    load_state,
    parse_metadata,
    read_checkpoint,
    write_checkpoint,
)
from .deeplabv3plus import ENCODERS
from .sensei_encoder import BaselineNetwork, HeadSpec, SEnSeIv2, check_sensei_config

__all__ = [
    "BASELINE_MODEL",
    "LoadedWeights",
    "PublishedBaselineConfig",
    "PublishedConfig",
    "find_published_config",
    "load_checkpoint",
    "load_published",
    "load_published_baseline",
    "load_weights",
    "read_published",
    "read_published_baseline",
    "save_checkpoint",
    "segformer_spec",
]

_HUB_SIZE = re.compile(r"(?:nvidia/)?(?:mit|segformer)-(b[0-5])(?:[-_].*)?", re.IGNORECASE)


BASELINE_MODEL = "sensei-v2-baseline-segformer-b2-s2-unambiguous"
"""The xcloud model that loads the authors' published model without SEnSeI-v2."""


@dataclass(frozen=True)
class _FolderConfig:
    folder: Path
    config: dict[str, Any]

    @property
    def name(self) -> str:
        """``NAME`` of ``config.yaml`` (the folder name without one)."""
        return str(self.config.get("NAME") or self.folder.name)

    @property
    def patch_size(self) -> int | None:
        """``PATCH_SIZE`` of ``config.yaml``, if given."""
        size = self.config.get("PATCH_SIZE")
        return int(size) if size else None


@dataclass(frozen=True)
class PublishedConfig(_FolderConfig):
    """A published model folder, read: its ``config.yaml``, sensei config and head."""

    sensei_config: dict[str, Any]
    sensei_config_path: Path
    head: HeadSpec
    n_classes: int


@dataclass(frozen=True)
class PublishedBaselineConfig(_FolderConfig):
    """A published folder of a model without SEnSeI-v2, read: its ``config.yaml``, head,
    classes and ``NUM_CHANNELS``."""

    head: HeadSpec
    n_classes: int
    num_channels: int


@dataclass(frozen=True)
class LoadedWeights:
    """What a ``weights=`` argument held: its kind, source, bands and dropped keys."""

    kind: str  # "published" or "checkpoint"
    path: Path
    name: str
    bands: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    patch_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _yaml(path: Path) -> dict[str, Any]:
    yaml = import_optional("yaml", extra="sensei")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise WeightsError(f"weights=: {path} is not readable YAML ({error})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"weights=: {path} is not a YAML mapping")
    return data


def find_published_config(weights: str | os.PathLike[str]) -> Path | None:
    """The ``config.yaml`` of a published folder given as the folder, its ``config.yaml`` or
    its ``weights.pt``; None when ``weights`` is none of these."""
    path = Path(weights).expanduser()
    folder = path if path.is_dir() else path.parent
    candidate = folder / "config.yaml"
    if path.is_dir() or path.name in ("config.yaml", "weights.pt") or (
            path.suffix == ".pt" and candidate.is_file()):
        return candidate if candidate.is_file() else None
    return None


def segformer_spec(value: str, folder: Path) -> HeadSpec:
    """The SegFormer :class:`HeadSpec` of ``SEGFORMER_CONFIG``: a folder (beside
    ``config.yaml``) with a ``config.json``, or a hub name ``nvidia/mit-b0`` .. ``-b5``."""
    from .segformer import SegformerConfig, segformer_config

    local = folder / str(value) / "config.json"
    if local.is_file():
        try:
            data = json.loads(local.read_text())
            config = SegformerConfig.from_dict({**data, "num_labels": 2}).to_dict()
        except (ValueError, TypeError) as error:
            raise WeightsError(f"weights=: {local} is not a SegFormer config.json ({error})"
                               ) from None
    elif match := _HUB_SIZE.fullmatch(str(value)):
        config = segformer_config(match[1]).to_dict()
    else:
        raise WeightsError(f"weights=: SEGFORMER_CONFIG {value!r} is neither a folder with a "
                           f"config.json beside {folder / 'config.yaml'} nor a SegFormer size "
                           "name such as 'nvidia/mit-b2'")
    for key in ("num_channels", "num_labels"):
        config.pop(key, None)
    return HeadSpec("segformer", config)


def _config_path(weights: str | os.PathLike[str]) -> Path:
    path = find_published_config(weights)
    if path is None:
        raise MissingWeightsError(f"weights={weights}: no published SEnSeI-v2 folder there "
                                  "(a folder with config.yaml and weights.pt)")
    return path


def _head(config: Mapping[str, Any], path: Path) -> HeadSpec:
    model_type = config.get("MODEL_TYPE")
    if model_type == "Segformer":
        return segformer_spec(config.get("SEGFORMER_CONFIG", ""), path.parent)
    if model_type == "DeepLabv3+":
        encoder = str(config.get("DEEPLAB_CONFIG", ""))
        if encoder not in ENCODERS:
            raise WeightsError(f"weights=: {path} has DEEPLAB_CONFIG {encoder!r}; xcloud builds "
                               f"the smp encoders {', '.join(ENCODERS)}")
        return HeadSpec("deeplab", encoder=encoder)
    raise WeightsError(f"weights=: {path} has MODEL_TYPE {model_type!r}; xcloud reads "
                       "'Segformer' and 'DeepLabv3+'")


def _positive(config: Mapping[str, Any], key: str, path: Path, default: int | None = None
              ) -> int:
    value = config.get(key, default)
    try:
        number = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = 0
    if number < 1 or isinstance(value, bool) or number != value:
        raise WeightsError(f"weights=: {path} needs {key} as a positive integer, got {value!r}")
    return number


def read_published(weights: str | os.PathLike[str]) -> PublishedConfig:
    """Read a published folder (the folder, its ``config.yaml`` or its ``weights.pt``).

    Raises
    ------
    MissingWeightsError
        No ``config.yaml`` there, or the sensei config it names is not found.
    WeightsError
        A config xcloud cannot build, or a model without SEnSeI-v2 (see
        :func:`read_published_baseline`).
    """
    path = _config_path(weights)
    folder = path.parent
    config = _yaml(path)
    sensei_name = config.get("SEnSeIv2")
    if not sensei_name:
        raise WeightsError(f"weights=: {path} names no SEnSeIv2 config: it is a model without "
                           f"SEnSeI-v2 (NUM_CHANNELS bands straight into the head); load the "
                           f"authors' published one with model='{BASELINE_MODEL}'")
    base = Path(str(sensei_name)).name
    candidates = [folder / base, folder.parent.parent / "sensei-configs" / base,
                  folder.parent / "sensei-configs" / base]
    if Path(str(sensei_name)).is_absolute():
        candidates.insert(0, Path(str(sensei_name)))
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise MissingWeightsError(
            f"weights={weights}: the sensei config {sensei_name!r} named by {path} is not in "
            f"{', '.join(str(c.parent) for c in candidates)}; download sensei-configs/{base} "
            "from the authors' Hugging Face repository beside full-models/")
    try:
        sensei = check_sensei_config(_yaml(found), source=found)
    except ValueError as error:
        raise WeightsError(f"weights=: {error}") from None
    head = _head(config, path)
    return PublishedConfig(folder, config, sensei, found, head,
                           _positive(config, "CLASSES", path, 7))


def read_published_baseline(weights: str | os.PathLike[str]) -> PublishedBaselineConfig:
    """Read a published folder of a model without SEnSeI-v2 (``NUM_CHANNELS``, no
    ``SEnSeIv2``): the folder, its ``config.yaml`` or its ``weights.pt``.

    Raises
    ------
    MissingWeightsError
        No ``config.yaml`` there.
    WeightsError
        A SEnSeI-v2 model, a config without ``NUM_CHANNELS`` or ``CLASSES``, or a head xcloud
        cannot build.
    """
    path = _config_path(weights)
    config = _yaml(path)
    if config.get("SEnSeIv2"):
        raise WeightsError(f"weights=: {path} names a SEnSeIv2 config: it is a SEnSeI-v2 "
                           "model, not a baseline; load it with model='sensei-v2'")
    if config.get("RECOVERY_MODULE"):
        raise WeightsError(f"weights=: {path} names a RECOVERY_MODULE, which a model without "
                           "SEnSeI-v2 cannot have (the released code refuses it too)")
    return PublishedBaselineConfig(path.parent, config, _head(config, path),
                                   _positive(config, "CLASSES", path),
                                   _positive(config, "NUM_CHANNELS", path))


def _torch_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise WeightsError(
            f"weights={path} cannot be read as a weights-only torch file ({error}); xcloud "
            "never unpickles Python objects") from None
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        content = content["state_dict"]
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor)
                                                for v in content.values()):
        raise WeightsError(f"weights={path} is not a state dict (a dict of tensors)")
    return content


def load_published(weights: str | os.PathLike[str], *, device: str = "cpu",
                   recovery: Mapping[str, Any] | None = None
                   ) -> tuple[SEnSeIv2, LoadedWeights]:
    """The network of a published folder, in eval mode, and what was loaded.

    ``recovery`` (a recovery-module config) keeps the ``recovery_module.*`` tensors, e.g. to
    fine-tune; without it they are dropped.

    Raises
    ------
    MissingWeightsError
        No folder, config or ``weights.pt``.
    WeightsError
        Keys inference needs are missing (all listed), unknown keys, or shapes that differ.
    """
    published = read_published(weights)
    path = _weights_file(weights, published.folder)
    state = _torch_state(path)
    network = SEnSeIv2(published.sensei_config, published.head,
                       n_classes=published.n_classes, recovery=recovery)
    dropped = tuple(k for k in state if k.startswith("recovery_module.")) if recovery is None \
        else ()
    _load_all(network, {k: v for k, v in state.items() if k not in dropped}, path,
              published.name)
    loaded = LoadedWeights("published", path, published.name, dropped=dropped,
                           patch_size=published.patch_size)
    return network.to(device).eval(), loaded


def _weights_file(weights: str | os.PathLike[str], folder: Path) -> Path:
    path = folder / "weights.pt"
    if Path(weights).suffix == ".pt" and Path(weights).is_file():
        path = Path(weights)
    if not path.is_file():
        raise MissingWeightsError(f"weights={weights}: {path} does not exist")
    return path


def _load_all(network: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path,
              name: str) -> None:
    """Load ``state`` into ``network``: every tensor it needs, none it does not build."""
    try:
        result = network.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise WeightsError(f"weights={path}: tensors do not fit {name}'s config "
                           f"({error})") from None
    if result.missing_keys:
        raise WeightsError(f"weights={path} lacks {len(result.missing_keys)} tensors that "
                           f"{name} needs: {', '.join(result.missing_keys)}")
    if result.unexpected_keys:
        shown = ", ".join(result.unexpected_keys[:10])
        raise WeightsError(f"weights={path} holds tensors {name}'s config does not "
                           f"build ({len(result.unexpected_keys)}): {shown}")


def load_published_baseline(weights: str | os.PathLike[str], *, device: str = "cpu"
                            ) -> tuple[BaselineNetwork, LoadedWeights]:
    """The network of a published folder without SEnSeI-v2, in eval mode, and what was
    loaded: ``weights.pt``'s ``segmenter.*`` tensors, all of them and nothing else.

    Raises
    ------
    MissingWeightsError
        No folder, config or ``weights.pt``.
    WeightsError
        Not such a model, keys missing (all listed), unknown keys, or shapes that differ.
    """
    published = read_published_baseline(weights)
    path = _weights_file(weights, published.folder)
    network = BaselineNetwork(published.head, published.num_channels,
                              n_classes=published.n_classes)
    _load_all(network, _torch_state(path), path, published.name)
    loaded = LoadedWeights("published", path, published.name, patch_size=published.patch_size,
                           extra={"num_channels": published.num_channels})
    return network.to(device).eval(), loaded


# -- xcloud checkpoints -----------------------------------------------------------------------

_FORMAT = "xcloud-sensei-v2"
_FORMAT_VERSION = 2
_METADATA_KEY = "xcloud_sensei_v2"


def save_checkpoint(path: str | os.PathLike[str], model: SEnSeIv2, *,
                    bands: Sequence[str] = (), extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (all its tensors) and its configuration for ``weights=path``.

    Parameters
    ----------
    path
        ``.safetensors`` (metadata in the header) or ``.pt``/``.pth`` (a plain dict that
        ``torch.load(weights_only=True)`` reads); written atomically.
    model
        The :class:`~xcloud.models.sensei_encoder.SEnSeIv2` network.
    bands
        Band names the loaded model takes by default (empty: the loader's default).
    extra
        JSON-serialisable extras (training history, epoch...).
    """
    recovery = None if model.recovery_module is None else model.recovery_module.config
    meta = {"sensei_config": model.senseiv2.config, "head": model.head_spec.to_dict(),
            "n_classes": model.n_classes, "recovery": recovery, "bands": list(bands),
            "xcloud_version": __version__, "extra": dict(extra or {})}
    text = dump_metadata(meta, format_name=_FORMAT, version=_FORMAT_VERSION)
    return write_checkpoint(path, model, key=_METADATA_KEY, metadata=text)


def load_checkpoint(path: str | os.PathLike[str], *, device: str = "cpu"
                    ) -> tuple[SEnSeIv2, LoadedWeights]:
    """Read a :func:`save_checkpoint` file: the network (eval mode) and its metadata.

    Raises
    ------
    MissingWeightsError
        The file does not exist.
    WeightsError
        Not an xcloud SEnSeI-v2 checkpoint, or tensors that do not fit its metadata.
    """
    tensors, text = read_checkpoint(path, key=_METADATA_KEY)
    try:
        meta = parse_metadata(text, format_name=_FORMAT)
        network = SEnSeIv2(meta["sensei_config"], HeadSpec.from_dict(meta["head"]),
                           n_classes=int(meta["n_classes"]), recovery=meta.get("recovery"))
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise WeightsError(f"weights={path} has no readable xcloud SEnSeI-v2 metadata "
                           f"({error}); write checkpoints with "
                           "xcloud.models.sensei_published.save_checkpoint") from None
    load_state(network, tensors, source=path)
    loaded = LoadedWeights("checkpoint", Path(path), Path(path).name,
                           bands=tuple(meta.get("bands") or ()), extra=meta.get("extra") or {})
    return network.to(device).eval(), loaded


def load_weights(weights: str | os.PathLike[str], *, device: str = "cpu"
                 ) -> tuple[SEnSeIv2, LoadedWeights]:
    """A published folder (folder, ``config.yaml`` or ``weights.pt``) or an xcloud
    checkpoint (``.safetensors``/``.pt``/``.pth``), whichever ``weights`` is."""
    path = Path(weights).expanduser()
    if not path.exists():
        raise MissingWeightsError(f"weights={weights} does not exist")
    if find_published_config(path) is not None:
        return load_published(path, device=device)
    if path.is_dir():
        raise MissingWeightsError(f"weights={weights} is a folder without config.yaml: pass a "
                                  "published SEnSeI-v2 model folder (config.yaml, weights.pt)")
    return load_checkpoint(path, device=device)
